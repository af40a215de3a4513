"""The SQLite catalog at $BKP_HOME/catalog.db: schema, migrations and every query.

The catalog is evidence: rows are appended and closed, never rewritten into something
else. A run row is opened as `running` and closed as ok/failed/interrupted; a run whose
process died is found by its pid and process start time and closed as `interrupted`.
No secret is ever written here.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = []


def migration(name: str):
    def register(fn):
        MIGRATIONS.append((name, fn))
        return fn

    return register


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot: tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def process_alive(pid: int, start_ticks: int | None) -> bool:
    current = process_start_ticks(pid)
    return current is not None and (start_ticks is None or current == start_ticks)


HOST = socket.gethostname()


@migration("0001_runs")
def _runs(db: sqlite_utils.Database) -> None:
    db["runs"].create({
        "id": int, "tenant": str, "kind": str, "trigger": str, "slot": str,
        "status": str, "started_at": str, "ended_at": str, "duration_s": float,
        "snapshot_id": str, "files": int, "bytes_added": int, "bytes_processed": int,
        "snapshots_kept": int, "repository_bytes": int, "error": str,
        "host": str, "pid": int, "pid_start": int, "operator": str,
        "restic_version": str, "restic_calls": int,
    }, pk="id", not_null={"tenant", "kind", "status", "started_at"})
    db["runs"].create_index(["tenant", "kind", "started_at"])
    db["runs"].create_index(["status"])


@migration("0002_audit_log")
def _audit_log(db: sqlite_utils.Database) -> None:
    db["audit_log"].create({
        "seq": int, "time": str, "operator": str, "os_user": str, "host": str,
        "tenant": str, "action": str, "outcome": str, "details": str,
        "prev_hash": str, "hash": str,
    }, pk="seq", not_null={"time", "action", "outcome", "prev_hash", "hash"})
    db["audit_log"].create_index(["tenant", "time"])


@migration("0003_drill_fields")
def _drill_fields(db: sqlite_utils.Database) -> None:
    # Drills are runs of kind "drill": one table keeps the schedule logic and the
    # interrupted-run recovery the same for backups and drills.
    for column, kind in (("files_checked", int), ("bytes_restored", int), ("subset", str),
                         ("problems", str), ("sample_checked", int), ("sample_skipped", int),
                         ("rto_minutes", int), ("report", str), ("scratch", str)):
        db["runs"].add_column(column, kind)


class Catalog:
    """One open catalog. Safe to share between the threads of `--jobs N`."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._migrate()
        with suppress(OSError):
            path.chmod(0o600)

    def close(self) -> None:
        self.db.conn.close()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: two bkp processes never interleave a read-then-write."""
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction():
            if "_migrations" not in self.db.table_names():
                self.db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
            done = {row["name"] for row in self.db["_migrations"].rows}
            for name, fn in MIGRATIONS:
                if name not in done:
                    fn(self.db)
                    self.db["_migrations"].insert({"name": name, "applied_at": utc_now()})

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.db.query("select name from _migrations order by name")]

    # ------------------------------------------------------------------ runs

    def open_run(self, tenant: str, kind: str, *, operator: str, trigger: str = "manual",
                 slot: str | None = None, restic_version: str | None = None) -> int:
        pid = os.getpid()
        with self.transaction():
            return self.db["runs"].insert({
                "tenant": tenant, "kind": kind, "trigger": trigger, "slot": slot,
                "status": "running", "started_at": utc_now(), "host": HOST, "pid": pid,
                "pid_start": process_start_ticks(pid), "operator": operator,
                "restic_version": restic_version,
            }).last_pk

    def close_run(self, run_id: int, status: str, **fields) -> dict:
        with self.transaction():
            row = self.db["runs"].get(run_id)
            ended = utc_now()
            duration = (parse_time(ended) - parse_time(row["started_at"])).total_seconds()
            self.db["runs"].update(run_id, {"status": status, "ended_at": ended,
                                            "duration_s": round(duration, 3), **fields})
            return self.db["runs"].get(run_id)

    def reap_interrupted(self) -> list[dict]:
        """Close as `interrupted` the running rows of this host whose process is gone."""
        reaped = []
        with self.transaction():
            rows = list(self.db["runs"].rows_where("status = 'running' and host = ?", [HOST]))
            for row in rows:
                if process_alive(row["pid"], row["pid_start"]):
                    continue
                self.db["runs"].update(row["id"], {
                    "status": "interrupted", "ended_at": utc_now(),
                    "error": f"bkp process {row['pid']} stopped before finishing "
                             f"(killed, crashed or power loss)"})
                reaped.append(self.db["runs"].get(row["id"]))
        return reaped

    def previous_run_interrupted(self, tenant: str, before_id: int) -> bool:
        """Whether this tenant's last run before `before_id` died (it may have left a lock)."""
        row = self.db.execute(
            "select status from runs where tenant = ? and id < ? order by id desc limit 1",
            [tenant, before_id]).fetchone()
        return bool(row) and row[0] == "interrupted"

    def last_backup_size(self, tenant: str) -> int | None:
        """Bytes the tenant's last good backup read: the size a restore of it will write."""
        row = self.db.execute(
            "select bytes_processed from runs where tenant = ? and kind = 'backup' and "
            "status = 'ok' and bytes_processed is not null order by id desc limit 1",
            [tenant]).fetchone()
        return row[0] if row else None

    def runs(self, tenant: str | None = None, kind: str | None = None,
             limit: int = 100) -> list[dict]:
        where, args = _where(tenant=tenant, kind=kind)
        return list(self.db["runs"].rows_where(where, args, order_by="id desc", limit=limit))

    def last_run(self, tenant: str, kind: str, status: str | None = None) -> dict | None:
        where, args = _where(tenant=tenant, kind=kind, status=status)
        rows = list(self.db["runs"].rows_where(where, args, order_by="id desc", limit=1))
        return rows[0] if rows else None

    # ------------------------------------------------------------------ audit log

    def append_audit(self, build: Callable[[int, str], dict]) -> dict:
        """Insert the event that `build(seq, prev_hash)` returns, chained to the current head.

        The head is read and the event written in one IMMEDIATE transaction, so concurrent
        bkp processes cannot fork the chain.
        """
        with self.transaction() as conn:
            head = conn.execute(
                "select seq, hash from audit_log order by seq desc limit 1").fetchone()
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
            event = build(seq, prev_hash)
            self.db["audit_log"].insert(event)
            return event

    def audit_events(self, tenant: str | None = None, since: str | None = None,
                     action: str | None = None) -> list[dict]:
        where, args = _where(tenant=tenant, action=action)
        if since:
            where = " and ".join(filter(None, [where, "time >= ?"]))
            args.append(since)
        return list(self.db["audit_log"].rows_where(where, args, order_by="seq"))


GENESIS_HASH = "0" * 64


def _where(**filters) -> tuple[str | None, list]:
    clauses, args = [], []
    for key, value in filters.items():
        if value is not None:
            clauses.append(f"{key} = ?")
            args.append(value)
    return (" and ".join(clauses) or None), args


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


# ==================================================================== media register
# Media, sanitizations, destructions and certificates (the decommission workflow).
# Migrations here are numbered 0100 and up.

MEDIA_TYPES = ("hdd", "ssd", "nvme", "usb", "tape", "optical", "other")
# A medium's state is the state of its latest event; the events are its history.
MEDIA_STATES = ("registered", "sanitizing", "sanitized", "failed", "aborted", "destroyed")


@migration("0100_media_register")
def _media_register(db: sqlite_utils.Database) -> None:
    db["media"].create({
        "serial": str, "type": str, "vendor": str, "model": str, "capacity": int,
        "asset_tag": str, "tenant": str, "host": str, "registered_at": str,
        "registered_by": str,
    }, pk="serial", not_null={"type", "registered_at"})
    db["media"].create_index(["tenant"])
    db["media_events"].create({
        "id": int, "serial": str, "time": str, "state": str, "record_id": int,
        "operator": str, "reason": str,
    }, pk="id", not_null={"serial", "time", "state"}, foreign_keys=[("serial", "media")])
    db["media_events"].create_index(["serial", "id"])


@migration("0101_sanitization_records")
def _sanitization_records(db: sqlite_utils.Database) -> None:
    # One id space for sanitizations and destructions: `bkp certificate RECORD_ID` needs no
    # kind to find a record.
    db["records"].create({"id": int, "kind": str, "serial": str, "created_at": str},
                         pk="id", not_null={"kind", "serial", "created_at"},
                         foreign_keys=[("serial", "media")])
    db["sanitizations"].create({
        "id": int, "serial": str, "device": str, "device_kind": str, "device_serial": str,
        "device_model": str, "method": str, "category": str, "passes": str,
        "verify_mode": str, "stream_seed": str, "sample_seed": str, "sample_plan": str,
        "result": str, "size": int, "bytes_written": int, "bytes_verified": int,
        "mismatches": int, "io_errors": int, "hash": str, "started_at": str,
        "ended_at": str, "duration_s": float, "throughput_bps": float, "operator": str,
        "witness": str, "organization": str, "tool_version": str, "hardware_command": str,
        "destination_after": str, "classification": str, "backup": str, "notes": str,
        "error": str, "host": str, "pid": int, "pid_start": int,
    }, pk="id", not_null={"serial", "method", "result", "started_at"},
        foreign_keys=[("id", "records"), ("serial", "media")])
    db["sanitizations"].create_index(["result"])
    db["destructions"].create({
        "id": int, "serial": str, "method": str, "category": str, "witness": str,
        "operator": str, "organization": str, "performed_at": str, "evidence": str,
        "hash": str, "destination_after": str, "notes": str, "host": str,
    }, pk="id", not_null={"serial", "method", "witness", "performed_at", "hash"},
        foreign_keys=[("id", "records"), ("serial", "media")])
    db["certificates"].create({
        "id": int, "record_id": int, "issued_at": str, "payload": str, "signature": str,
        "key_fingerprint": str, "public_key": str, "audit_seq": int, "audit_hash": str,
    }, pk="id", not_null={"record_id", "issued_at", "payload", "signature"},
        foreign_keys=[("record_id", "records")])
    db["certificates"].create_index(["record_id"])


def add_medium(catalog: Catalog, medium: dict, operator: str) -> dict | None:
    """Register a medium; None when its serial is already in the register."""
    with catalog.transaction():
        if catalog.db["media"].count_where("serial = ?", [medium["serial"]]):
            return None
        now = utc_now()
        catalog.db["media"].insert({**medium, "registered_at": now, "registered_by": operator})
        catalog.db["media_events"].insert({"serial": medium["serial"], "time": now,
                                           "state": "registered", "operator": operator})
    return get_medium(catalog, medium["serial"])


def add_media_event(catalog: Catalog, serial: str, state: str, operator: str,
                    record_id: int | None = None, reason: str | None = None) -> None:
    with catalog.transaction():
        catalog.db["media_events"].insert({"serial": serial, "time": utc_now(), "state": state,
                                           "record_id": record_id, "operator": operator,
                                           "reason": reason})


_MEDIA_WITH_STATE = """
select m.*, e.state as state, e.time as state_since from media m
join media_events e on e.id = (select max(id) from media_events where serial = m.serial)
"""


def get_medium(catalog: Catalog, serial: str) -> dict | None:
    rows = list(catalog.db.query(_MEDIA_WITH_STATE + " where m.serial = ?", [serial]))
    return rows[0] if rows else None


def list_media(catalog: Catalog, state: str | None = None,
               tenant: str | None = None) -> list[dict]:
    clauses, args = [], []
    if state:
        clauses.append("e.state = ?")
        args.append(state)
    if tenant:
        clauses.append("m.tenant = ?")
        args.append(tenant)
    where = (" where " + " and ".join(clauses)) if clauses else ""
    return list(catalog.db.query(_MEDIA_WITH_STATE + where + " order by m.registered_at, "
                                 "m.serial", args))


def media_history(catalog: Catalog, serial: str) -> list[dict]:
    return list(catalog.db["media_events"].rows_where("serial = ?", [serial], order_by="id"))


def open_sanitization(catalog: Catalog, record: dict) -> int:
    """Open a `running` sanitization with this process's identity, so a dead one is found."""
    pid = os.getpid()
    with catalog.transaction():
        now = utc_now()
        record_id = catalog.db["records"].insert({
            "kind": "sanitization", "serial": record["serial"], "created_at": now}).last_pk
        catalog.db["sanitizations"].insert({
            **record, "id": record_id, "result": "running", "started_at": now, "host": HOST,
            "pid": pid, "pid_start": process_start_ticks(pid)})
        catalog.db["media_events"].insert({"serial": record["serial"], "time": now,
                                           "state": "sanitizing", "record_id": record_id,
                                           "operator": record.get("operator")})
    return record_id


def close_sanitization(catalog: Catalog, record_id: int, result: str,
                       medium_state: str, **fields) -> dict | None:
    """Close a running sanitization; None when it was already closed (records are closed
    once and never rewritten)."""
    with catalog.transaction():
        row = catalog.db["sanitizations"].get(record_id)
        if row["result"] != "running":
            return None
        ended = utc_now()
        duration = (parse_time(ended) - parse_time(row["started_at"])).total_seconds()
        catalog.db["sanitizations"].update(record_id, {
            **fields, "result": result, "ended_at": ended, "duration_s": round(duration, 3)})
        catalog.db["media_events"].insert({"serial": row["serial"], "time": ended,
                                           "state": medium_state, "record_id": record_id,
                                           "operator": row["operator"],
                                           "reason": fields.get("error")})
    return catalog.db["sanitizations"].get(record_id)


def note_sample_plan(catalog: Catalog, record_id: int, sample_plan: str) -> None:
    """The sample plan is known once the wipe is done; recorded before it is read."""
    with catalog.transaction():
        row = catalog.db["sanitizations"].get(record_id)
        if row["result"] == "running":
            catalog.db["sanitizations"].update(record_id, {"sample_plan": sample_plan})


def abandoned_sanitizations(catalog: Catalog) -> list[dict]:
    """Running sanitizations of this host whose process is gone (killed, crash, power)."""
    rows = catalog.db["sanitizations"].rows_where("result = 'running' and host = ?", [HOST])
    return [row for row in rows if not process_alive(row["pid"], row["pid_start"])]


def get_sanitization(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["sanitizations"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def add_destruction(catalog: Catalog, record: dict) -> int:
    with catalog.transaction():
        now = utc_now()
        record_id = catalog.db["records"].insert({
            "kind": "destruction", "serial": record["serial"], "created_at": now}).last_pk
        catalog.db["destructions"].insert({**record, "id": record_id, "host": HOST})
        catalog.db["media_events"].insert({"serial": record["serial"], "time": now,
                                           "state": "destroyed", "record_id": record_id,
                                           "operator": record.get("operator")})
    return record_id


def get_destruction(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["destructions"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def get_record(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["records"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def add_certificate(catalog: Catalog, build: Callable[[int], dict]) -> dict:
    """Insert the certificate that `build(certificate_id)` returns. The id is part of the
    signed content, so it is taken and used in one transaction: two bkp processes never
    sign the same number."""
    with catalog.transaction() as conn:
        certificate_id = conn.execute(
            "select coalesce(max(id), 0) + 1 from certificates").fetchone()[0]
        row = build(certificate_id)
        catalog.db["certificates"].insert({**row, "id": certificate_id})
    return catalog.db["certificates"].get(certificate_id)


def latest_certificate(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["certificates"].rows_where("record_id = ?", [record_id],
                                                      order_by="id desc", limit=1))
    return rows[0] if rows else None


def audit_event(catalog: Catalog, seq: int) -> dict | None:
    rows = list(catalog.db["audit_log"].rows_where("seq = ?", [seq]))
    return rows[0] if rows else None
