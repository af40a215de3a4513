"""Nightly database dumps: consistent, streamed into restic, with what they hold on record.

Each dump is one snapshot (`kind=database`, `database=NAME`) made from the client's stdout
without touching the disk, followed by a tiny snapshot of its inventory (`kind=inventory`,
`dump=ID`): the tables and row counts at the moment of the dump, kept in the repository so
that a host rebuilt from nothing can still prove the dump in a drill.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bkp.databases import clients
from bkp.databases.inventory import MariadbDumpCounter, exported_snapshot
from bkp.errors import BkpError, OperationError
from bkp.policy import Database, Policy
from bkp.restic import KIND_DATABASE, KIND_INVENTORY, Restic, parse_backup_output


@dataclass
class DatabaseDump:
    """What one night did with one database (CLI.md's `databases` entries of a run)."""

    name: str
    type: str
    status: str = "failed"  # ok | failed
    snapshot_id: str | None = None
    bytes: int | None = None
    error: str | None = None
    tables: dict[str, int] = field(default_factory=dict)
    inventory_snapshot_id: str | None = None
    duration_s: float | None = None
    failure: BkpError | None = None  # what failed, with its exit code (a changed key is 4)

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "status": self.status,
                "snapshot_id": self.snapshot_id, "bytes": self.bytes, "error": self.error,
                "tables": len(self.tables), "rows": sum(self.tables.values()),
                "duration_s": self.duration_s}


def inventory_document(database: Database, dump: DatabaseDump, counted_at: str,
                       problem: str | None = None) -> bytes:
    """What the drill compares with. Without counts (`problem`), the document says why, so
    that a drill of this dump names the cause instead of a missing inventory."""
    document = {"database": database.name, "type": database.type,
                "dump_snapshot_id": dump.snapshot_id, "counted_at": counted_at,
                "tables": None if problem else dump.tables}
    if problem:
        document["error"] = problem
    return json.dumps(document, sort_keys=True, indent=1).encode("utf-8")


def dump_database(restic: Restic, policy: Policy, database: Database, host: str) -> DatabaseDump:
    """Dump one database into the repository; a failure is recorded, never raised (the
    other databases and the tenant's files go on)."""
    result = DatabaseDump(database.name, database.type)
    started = time.monotonic()
    try:
        _dump(restic, policy, database, host, result)
        result.status = "ok"
    except BkpError as exc:
        result.error = f"{database.label}: {exc}"
        result.failure = type(exc)(result.error)
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def _dump(restic: Restic, policy: Policy, database: Database, host: str,
          result: DatabaseDump) -> None:
    counted_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    clients.require_reachable_socket_path(database)
    if database.type == "postgresql":
        piped, counted = _dump_postgresql(restic, policy, database, host)
    else:
        piped, counted = _dump_mariadb(restic, policy, database, host)
    if not piped.producer.ok:
        raise OperationError(_client_error(piped.producer))
    if not piped.consumer.ok:
        raise restic.failure(piped.consumer, "backup").exception()
    summary = parse_backup_output(piped.consumer.stdout)
    if not summary.snapshot_id:
        raise OperationError("restic saved no snapshot of the dump")
    result.snapshot_id = summary.snapshot_id
    result.bytes = piped.bytes if piped.bytes is not None else summary.bytes_processed
    tables, problem = counted()
    result.tables = tables or {}
    saved = restic.backup_bytes(
        policy, host, clients.inventory_filename(database), KIND_INVENTORY,
        {"database": database.name, "database_type": database.type,
         "dump": result.snapshot_id},
        inventory_document(database, result, counted_at, problem))
    result.inventory_snapshot_id = saved.snapshot_id
    if problem:
        # The dump is kept (it may be the only one of the night), but not called good:
        # no drill can prove what it holds.
        raise OperationError(f"the dump was saved as snapshot {result.snapshot_id[:8]}, but "
                             f"its tables could not be counted, so no drill can prove it: "
                             f"{problem}")


def _dump_tags(database: Database) -> dict[str, str]:
    return {"database": database.name, "database_type": database.type}


def _dump_postgresql(restic: Restic, policy: Policy, database: Database, host: str):
    """pg_dump reads an exported snapshot; the same snapshot is counted meanwhile, in a
    second server process, so the night does not read the database twice in a row."""
    connection = clients.postgresql_connection(database)
    env = clients.postgresql_env(connection)
    with exported_snapshot(connection) as snapshot, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="count") as pool:
        counted = pool.submit(snapshot.inventory, restic.timeout)
        piped = restic.backup_stream(
            policy, host, clients.dump_filename(database), KIND_DATABASE,
            _dump_tags(database), clients.pg_dump_argv(database, snapshot.snapshot_id),
            env.env, env.secrets)
        try:
            inventory, problem = counted.result(), None
        except BkpError as exc:
            inventory, problem = None, _one_line(exc)
    return piped, lambda: (dict(inventory.tables) if inventory else None, problem)


def _dump_mariadb(restic: Restic, policy: Policy, database: Database, host: str):
    """MariaDB cannot share a snapshot: the rows are counted in the dump stream itself."""
    counter = MariadbDumpCounter()

    def vet() -> str | None:
        counter.close()
        return None if counter.completed else (
            "mariadb-dump ended without its closing line: the dump is incomplete")

    env = clients.mariadb_env(database)
    piped = restic.backup_stream(
        policy, host, clients.dump_filename(database), KIND_DATABASE,
        _dump_tags(database), clients.mariadb_dump_argv(database), env.env, env.secrets,
        counter.feed, vet)
    return piped, lambda: (dict(counter.inventory.tables), counter.problem())


def _one_line(exc: Exception) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _client_error(done) -> str:
    if done.stopped:
        return f"the dump failed, no snapshot was saved: {done.stopped}"
    lines = [ln.strip() for ln in done.stderr_tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    said = errors[-1] if errors else f"exit code {done.returncode}"
    if done.timed_out:
        said = "the dump did not finish within timeout_minutes"
    return f"the dump failed, no snapshot was saved: {said[:300]}"
