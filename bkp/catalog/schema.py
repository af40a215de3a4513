"""The catalog's schema: sqlite-utils migrations, applied in the order they are registered.
sqlite-utils is imported only to apply them: reading which ones a catalog has needs none of it
(see tables.py for why that matters).

Each migration runs in its own transaction together with the record that it ran
(`_sqlite_migrations`, set "bkp"). Catalogs made before sqlite-utils 4 kept that record in
`_migrations`; those names count as applied (see `applied_names`).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils
    from sqlite_utils.migrations import Migrations

SET = "bkp"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite-utils' record of what it applied
LEGACY_TABLE = "_migrations"
_REGISTERED: list[tuple[str, Callable]] = []


def migration(name: str):
    def register(function: Callable) -> Callable:
        _REGISTERED.append((name, function))
        return function
    return register


@functools.cache
def migrations() -> Migrations:
    """The registered migrations as sqlite-utils' set, which applies them."""
    from sqlite_utils.migrations import Migrations

    chosen = Migrations(SET)
    for name, function in _REGISTERED:
        chosen(name=name)(function)
    return chosen


def apply(conn) -> None:
    """Apply what is pending, on this connection."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    with db.atomic():
        adopt_legacy_record(db)
    migrations().apply(db)


# What every migration together leaves, as SQL: a new catalog (every pod's) is made from it in
# one transaction, without sqlite-utils and its seventeen steps. tests/unit/test_catalog_tables
# proves it equal to the migrations' result; after adding a migration, write it anew with
# `python -c 'from bkp.catalog import schema; schema.write_snapshot()'`.
SNAPSHOT = Path(__file__).with_name("schema.sql")


def create(conn: sqlite3.Connection) -> None:
    """Make the schema in a database without tables, and record every migration as applied
    (as sqlite-utils records them)."""
    statements = [s for s in SNAPSHOT.read_text(encoding="utf-8").split(";\n") if s.strip()]
    applied_at = str(datetime.now(UTC))
    conn.execute("begin immediate")
    try:
        for statement in statements:
            conn.execute(statement)
        conn.executemany(f"insert into [{MIGRATIONS_TABLE}] (migration_set, name, applied_at) "
                         f"values (?, ?, ?)",
                         [(SET, name, applied_at) for name in registered_names()])
    except BaseException:
        conn.execute("rollback")
        raise
    conn.execute("commit")


def snapshot_sql() -> str:
    """The schema the migrations make, in the order SQLite keeps it."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        apply(conn)
        rows = conn.execute("select sql from sqlite_master where sql is not null and name "
                            "not like 'sqlite_%' order by rowid").fetchall()
    finally:
        conn.close()
    return "".join(f"{sql};\n" for (sql,) in rows)

# Tables the code relies on; one missing means the catalog was damaged or tampered with.
TABLES = ("runs", "audit_log", "media", "media_events", "records", "sanitizations",
          "destructions", "certificates", "policy_versions", "policy_flags", "approvals",
          "database_dumps", "inbox", "copy_results", "erasures")


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


def registered_names() -> list[str]:
    return [name for name, _ in _REGISTERED]


def applied_names(db) -> list[str]:
    """Applied migrations, from sqlite-utils' record and from the pre-4 one (any object with
    sqlite3's execute: a connection, tables.Database or sqlite_utils.Database)."""
    present = {row[0] for row in db.execute(
        "select name from sqlite_master where type = 'table' and name in (?, ?)",
        [MIGRATIONS_TABLE, LEGACY_TABLE])}
    names = []
    if MIGRATIONS_TABLE in present:
        names = [row[0] for row in db.execute(
            f"select name from [{MIGRATIONS_TABLE}] where migration_set = ? order by rowid",
            [SET])]
    if LEGACY_TABLE in present:
        names += [row[0] for row in db.execute(f"select name from [{LEGACY_TABLE}] order by "
                                               f"rowid") if row[0] not in names]
    return names


def pending_names(db) -> list[str]:
    applied = set(applied_names(db))
    return [name for name in registered_names() if name not in applied]


def unknown_names(db) -> list[str]:
    """Migrations a newer bkp applied that this one does not know."""
    known = set(registered_names())
    return [name for name in applied_names(db) if name not in known]


def adopt_legacy_record(db: sqlite_utils.Database) -> None:
    """Copy the pre-4 record of applied migrations into sqlite-utils' table, once."""
    if not db[LEGACY_TABLE].exists():
        return
    migrations().ensure_migrations_table(db)
    recorded = {m.name for m in migrations().applied(db)}
    for row in db[LEGACY_TABLE].rows:
        if row["name"] not in recorded:
            db[MIGRATIONS_TABLE].insert({
                "migration_set": SET, "name": row["name"], "applied_at": row["applied_at"]})


def missing_tables(db) -> list[str]:
    present = set(db.table_names())
    return [name for name in TABLES if name not in present]


@migration("0004_run_source")
def _run_source(db: sqlite_utils.Database) -> None:
    # Where a run row comes from: bkp's own record of the work ("bkp", the default), or
    # rebuilt from a repository's snapshots by `bkp catalog sync` ("repository").
    db["runs"].add_column("source", str)


@migration("0005_kept_snapshots")
def _kept_snapshots(db: sqlite_utils.Database) -> None:
    # The snapshots a backup left in the repository ({"id", "time"} as JSON, from forget's
    # own answer): the next night can tell that its keep rules would forget nothing.
    db["runs"].add_column("kept_snapshots", str)


@migration("0006_who_may_act")
def _who_may_act(db: sqlite_utils.Database) -> None:
    # Which policy each run used (its fingerprint), and whether the clock that stamped it
    # was synchronised: a time is evidence only when the clock can be trusted.
    db["runs"].add_column("policy_fingerprint", str)
    db["runs"].add_column("clock_synchronized", int)
    # Every version of a tenant's policy bkp acted under, as the rules it holds (policies
    # hold no secret values, only paths to secret files).
    db["policy_versions"].create({
        "id": int, "tenant": str, "fingerprint": str, "document": str, "seen_at": str,
        "operator": str,
    }, pk="id", not_null={"tenant", "fingerprint", "document", "seen_at"})
    db["policy_versions"].create_index(["tenant", "id"])
    # Changes that weaken a tenant's protection, until an admin acknowledges them.
    db["policy_flags"].create({
        "id": int, "tenant": str, "version_id": int, "changes": str, "flagged_at": str,
        "acknowledged_by": str, "acknowledged_os_user": str, "acknowledged_at": str,
    }, pk="id", not_null={"tenant", "version_id", "changes", "flagged_at"},
        foreign_keys=[("version_id", "policy_versions")])
    # Requests that wait for a second person's signed approval.
    db["approvals"].create({
        "id": int, "kind": str, "subject": str, "tenant": str, "requested_by": str,
        "requested_os_user": str, "requested_at": str, "expires_at": str, "message": str,
        "details": str, "status": str, "approved_by": str, "approved_os_user": str,
        "approved_at": str, "signature": str, "key_fingerprint": str,
    }, pk="id", not_null={"kind", "subject", "requested_by", "requested_at", "expires_at",
                          "message", "status"})
    db["approvals"].create_index(["kind", "subject"])


@migration("0007_database_dumps")
def _database_dumps(db: sqlite_utils.Database) -> None:
    # One row per database per backup run: what was dumped, into which snapshot, and the
    # tables and row counts it held at that moment (JSON) for the drills to compare with.
    db["database_dumps"].create({
        "id": int, "run_id": int, "tenant": str, "name": str, "type": str, "status": str,
        "snapshot_id": str, "inventory_snapshot_id": str, "bytes": int, "tables": str,
        "error": str, "duration_s": float, "dumped_at": str,
    }, pk="id", not_null={"run_id", "tenant", "name", "type", "status", "dumped_at"},
        foreign_keys=[("run_id", "runs")])
    db["database_dumps"].create_index(["tenant", "name", "id"])
    # The per-database findings of a drill (JSON list), beside the run's other findings.
    db["runs"].add_column("databases", str)


@migration("0010_immutability_proof")
def _immutability_proof(db: sqlite_utils.Database) -> None:
    # A drill of an append-only or object-locked destination: the canary it tried to delete
    # with the nightly credential, how, and whether the deletion was refused (JSON).
    db["runs"].add_column("immutability", str)
    # Append-only destinations: how many snapshots the keep rules would drop, waiting for
    # `bkp maintain` (a nightly backup counts them, a maintenance run sets 0).
    db["runs"].add_column("maintenance_pending", int)


@migration("0012_results_inbox")
def _results_inbox(db: sqlite_utils.Database) -> None:
    # Each object of the results inbox the gatherer has seen, once: ingested (with the runs
    # it became) or rejected (with why). A result read twice is recorded once.
    db["inbox"].create({
        "name": str, "result_id": str, "tenant": str, "kind": str, "status": str,
        "reason": str, "signed_by": str, "run_ids": str, "seen_at": str,
    }, pk="name", not_null={"status", "seen_at"})
    db["inbox"].create_index(["result_id"], unique=True)


@migration("0013_run_observations")
def _run_observations(db: sqlite_utils.Database) -> None:
    # What a backup run saw of where its data went (transport, pinned host key, the
    # bucket's own region, TLS; JSON): the evidence report judges off-site and encryption
    # from these, not from the policy text. A run rebuilt by `catalog sync` has none.
    db["runs"].add_column("observations", str)
    # A drill's restore time (restore and listing check), the figure compared with the RTO.
    db["runs"].add_column("restore_s", float)

@migration("0014_sanitization_rev2")
def _sanitization_rev2(db: sqlite_utils.Database) -> None:
    # NIST SP 800-88 Rev. 2 and IEEE 2883: the classification a medium was registered with,
    # each person's details as they were when the record was made (JSON), the technique,
    # the outside tool and its version, a Clear accepted for a sensitive medium (the
    # reason), and what the drive itself said and showed (JSON: markers, sanitize status,
    # HPA/DCO, namespaces).
    db["media"].add_column("classification", str)
    for column in ("people", "technique", "tool", "accept_clear", "categorization",
                   "drive_evidence", "verification_result"):
        db["sanitizations"].add_column(column, str)
    # A destruction's service, where it happened, the service's own certificate number and
    # the day of the destruction (not only when it was recorded).
    for column in ("people", "technique", "service", "location", "service_certificate",
                   "destroyed_on"):
        db["destructions"].add_column(column, str)


@migration("0015_copy_results")
def _copy_results(db: sqlite_utils.Database) -> None:
    # One row per copy per backup run: whether tonight's snapshot reached the copy at the
    # other site, under which id there, and how many snapshots the copy lacked and got.
    db["copy_results"].create({
        "id": int, "run_id": int, "tenant": str, "copy_id": str, "destination": str,
        "status": str, "snapshot_id": str, "source_snapshot_id": str,
        "snapshot_time": str, "snapshots_copied": int, "snapshots_kept": int, "error": str,
        "duration_s": float, "copied_at": str,
        # The snapshots the copy holds afterwards (JSON: its id, the original's id, time,
        # kind): the next night plans its copy and retention without listing the copy.
        "kept_snapshots": str,
    }, pk="id", not_null={"run_id", "tenant", "copy_id", "status", "copied_at"},
        foreign_keys=[("run_id", "runs")])
    db["copy_results"].create_index(["tenant", "copy_id", "id"])
    # The run's own summary of its copies (JSON: id, destination, status, snapshot_id,
    # error), which travels with the run row (the evidence report, a pod's result).
    db["runs"].add_column("copies", str)


@migration("0016_erasures")
def _erasures(db: sqlite_utils.Database) -> None:
    # Erasure records share the record id space with sanitizations and destructions, so
    # `bkp certificate RECORD_ID` and `bkp approve RECORD_ID` need no kind. They erase a
    # tenant's backups, not a medium: a record names a serial or a tenant.
    db["records"].transform(not_null={"serial": False})
    db["records"].add_column("tenant", str)
    db["erasures"].create({
        "id": int, "tenant": str, "kind": str, "status": str, "reason": str, "witness": str,
        "operator": str, "os_user": str, "requested_at": str, "started_at": str,
        "ended_at": str, "snapshots": str, "inventory": str, "destinations": str,
        "kept": str, "method": str, "error": str, "attempts": int, "host": str,
    }, pk="id", not_null={"tenant", "kind", "status", "requested_at"},
        foreign_keys=[("id", "records")])
    db["erasures"].create_index(["tenant", "kind", "id"])


@migration("0017_runs_copy_id")
def _runs_copy_id(db: sqlite_utils.Database) -> None:
    # A copy drill (kind copy-drill) names the copy it drilled: the immutability of an
    # append-only copy is proven only by its own drill, and status names the last one.
    db["runs"].add_column("copy_id", str)


@migration("0018_runs_latest_first")
def _runs_latest_first(db: sqlite_utils.Database) -> None:
    # `bkp status` asks for each tenant's latest run of each kind, latest by
    # coalesce(ended_at, started_at) then id. Without an index in that order every question
    # sorted all of the tenant's runs: after a year of nights, status over a thousand
    # tenants took seconds.
    db.execute('create index "idx_runs_tenant_kind_latest" on "runs" '
               '("tenant", "kind", coalesce("ended_at", "started_at"), "id")')


def write_snapshot() -> Path:
    SNAPSHOT.write_text(snapshot_sql(), encoding="utf-8")
    return SNAPSHOT
