"""Nightly database dumps: consistent, streamed into restic, with what they hold on record.

Each dump is one snapshot (`kind=database`, `database=NAME`) made from the client's stdout
without touching the disk, followed by a tiny snapshot of its inventory (`kind=inventory`,
`dump=ID`): the tables and row counts at the moment of the dump, kept in the repository so
that a host rebuilt from nothing can still prove the dump in a drill.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bkp.databases import clients
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
    exit_code: int = 1

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "status": self.status,
                "snapshot_id": self.snapshot_id, "bytes": self.bytes, "error": self.error,
                "tables": len(self.tables), "rows": sum(self.tables.values()),
                "duration_s": self.duration_s}


def inventory_document(database: Database, dump: DatabaseDump, counted_at: str) -> bytes:
    return json.dumps({"database": database.name, "type": database.type,
                       "dump_snapshot_id": dump.snapshot_id, "counted_at": counted_at,
                       "tables": dump.tables}, sort_keys=True, indent=1).encode("utf-8")


def dump_database(restic: Restic, policy: Policy, database: Database, host: str) -> DatabaseDump:
    """Dump one database into the repository; a failure is recorded, never raised (the
    other databases and the tenant's files go on)."""
    result = DatabaseDump(database.name, database.type)
    started = time.monotonic()
    try:
        _dump(restic, policy, database, host, result)
        result.status, result.exit_code = "ok", 0
    except BkpError as exc:
        result.error, result.exit_code = f"{database.label}: {exc}", exc.exit_code
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def _dump(restic: Restic, policy: Policy, database: Database, host: str,
          result: DatabaseDump) -> None:
    counted_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with _consistent_inventory(database) as (producer, env, on_chunk, inventory):
        piped = restic.backup_stream(
            policy, host, clients.dump_filename(database), KIND_DATABASE,
            {"database": database.name}, producer, env.env, env.secrets, on_chunk)
        if not piped.producer.ok:
            raise OperationError(_client_error(piped.producer.stderr_tail, piped.producer))
        if not piped.consumer.ok:
            raise restic.failure(piped.consumer, "backup").exception()
        summary = parse_backup_output(piped.consumer.stdout)
        if not summary.snapshot_id:
            raise OperationError("restic saved no snapshot of the dump")
        result.snapshot_id, result.bytes = summary.snapshot_id, piped.bytes
        result.tables = inventory()
    saved = restic.backup_bytes(
        policy, host, clients.inventory_filename(database), KIND_INVENTORY,
        {"database": database.name, "dump": result.snapshot_id},
        inventory_document(database, result, counted_at))
    result.inventory_snapshot_id = saved.snapshot_id


@contextmanager
def _consistent_inventory(database: Database) -> Iterator[tuple]:
    """(producer argv, its environment, a tee for the stream, () -> the row counts).

    PostgreSQL: the counts come from an exported snapshot held open while pg_dump reads the
    same snapshot. MariaDB cannot share a snapshot: the rows are counted in the stream."""
    from bkp.databases import scratch

    if database.type == "postgresql":
        env = clients.postgresql_env(database)
        with scratch.exported_snapshot(env.env) as (snapshot_id, inventory):
            yield (clients.pg_dump_argv(database, snapshot_id), env, None,
                   lambda: dict(inventory.tables))
        return
    counter = scratch.MariadbDumpCounter()
    yield (clients.mariadb_dump_argv(database), clients.mariadb_env(database), counter.feed,
           lambda: dict(counter.inventory().tables))


def _client_error(tail: str, done) -> str:
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    said = errors[-1] if errors else f"exit code {done.returncode}"
    if done.timed_out:
        said = "the dump did not finish within timeout_minutes"
    return f"the dump failed, no snapshot was saved: {said[:300]}"


def dump_all(restic: Restic, policy: Policy, host: str,
             progress: Callable[[str], None] | None = None) -> list[DatabaseDump]:
    dumps = []
    for database in policy.databases:
        if progress:
            progress(f"{policy.tenant}: dumping {database.label}")
        dumps.append(dump_database(restic, policy, database, host))
    return dumps
