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
        clauses, args = [], []
        if tenant:
            clauses.append("tenant = ?")
            args.append(tenant)
        if since:
            clauses.append("time >= ?")
            args.append(since)
        if action:
            clauses.append("action = ?")
            args.append(action)
        where = " and ".join(clauses) or None
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
