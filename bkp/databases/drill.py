"""The database part of a drill: every dump comes back, loads, and holds what it held.

For each database of the policy the latest dump is written from the repository into the
drill's scratch space, loaded into a scratch server bkp starts for the purpose, and its
tables and row counts are compared with the inventory recorded when the dump was made
(the inventory snapshot beside the dump; the catalog's copy when the repository lost it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from bkp.context import Context
from bkp.errors import BkpError, OperationError, VerificationError
from bkp.policy import Database, Policy
from bkp.restic import KIND_DATABASE, KIND_INVENTORY, Restic


@dataclass
class DatabaseDrill:
    name: str
    type: str
    status: str = "failed"  # passed | failed
    snapshot_id: str | None = None
    tables: int = 0
    rows: int = 0
    load_s: float | None = None
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # (what, expected, found)

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "status": self.status,
                "snapshot_id": self.snapshot_id, "tables": self.tables, "rows": self.rows,
                "load_s": self.load_s}


def compare_inventories(expected: dict[str, int], found: dict[str, int]) -> list[tuple]:
    """(table, expected, found) for every table missing, extra or with other row counts."""
    differences = []
    for table in sorted(set(expected) | set(found)):
        want, got = expected.get(table), found.get(table)
        if want != got:
            differences.append((table, "absent" if want is None else f"{want} rows",
                                "absent" if got is None else f"{got} rows"))
    return differences


def drill_databases(ctx: Context, policy: Policy, restic: Restic,
                    scratch_dir: Path) -> list[DatabaseDrill]:
    if not policy.databases:
        return []
    from bkp.databases import scratch

    scratch.remove_leftovers(ctx.settings.home)  # what a SIGKILLed drill left running
    listed = restic.snapshots()
    return [_drill_one(ctx, policy, restic, database, listed, scratch_dir)
            for database in policy.databases]


def _drill_one(ctx: Context, policy: Policy, restic: Restic, database: Database,
               listed: list[dict], scratch_dir: Path) -> DatabaseDrill:
    drill = DatabaseDrill(database.name, database.type)
    dumps = sorted((s for s in listed if s.get("kind") == KIND_DATABASE
                    and s.get("database") == database.name
                    and s.get("database_type") == database.type), key=lambda s: s["time"])
    if not dumps:
        drill.findings.append(("dump", "a dump in the repository", _missing_dump(ctx, policy,
                                                                                database)))
        return drill
    dump = dumps[-1]
    drill.snapshot_id = dump["id"]
    expected = _recorded_inventory(ctx, policy, restic, listed, dump)
    if expected is None:
        drill.findings.append(("inventory", "the tables and rows recorded at dump time",
                               "no inventory in the repository or the catalog"))
    if ctx.progress:
        ctx.progress(f"{policy.tenant}: loading {database.label} (snapshot "
                     f"{dump['id'][:8]}) into a scratch server")
    scratch_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = scratch_dir / f"{database.type}-{database.name}.dump"
    try:
        restic.dump_to_file(dump["id"], (dump.get("paths") or [""])[0], path, exclusive=False)
    except VerificationError as exc:
        drill.findings.append(("dump", "a readable dump", str(exc)[:500]))
        return drill
    except OperationError as exc:  # a full disk, a lost destination: the drill cannot run
        raise OperationError(f"{database.label}: could not write its dump to "
                             f"{scratch_dir}: {_one_line(exc)}") from None
    found = _load_and_count(ctx, database, path, drill)
    path.unlink(missing_ok=True)
    if found is None:
        return drill
    drill.tables, drill.rows = len(found), sum(found.values())
    if expected is not None:
        drill.findings += [(f"table {t}", want, got)
                           for t, want, got in compare_inventories(expected, found)]
    drill.status = "passed" if not drill.findings else "failed"
    return drill


def _missing_dump(ctx: Context, policy: Policy, database: Database) -> str:
    recorded = ctx.catalog.last_good_dumps(policy.tenant).get((database.type, database.name))
    if recorded:
        return (f"none, though backup run {recorded['run_id']} saved dump "
                f"{recorded['snapshot_id'][:8]}: the dumps were deleted or lost")
    return "none (no backup has dumped it yet)"


def _recorded_inventory(ctx: Context, policy: Policy, restic: Restic, listed: list[dict],
                        dump: dict) -> dict[str, int] | None:
    short = dump["id"][:8]
    for snapshot in listed:
        if snapshot.get("kind") == KIND_INVENTORY and (snapshot.get("dump") or "")[:8] == short:
            filename = (snapshot.get("paths") or [""])[0]
            try:
                document = json.loads(restic.dump_bytes(snapshot["id"], filename))
                return {str(k): int(v) for k, v in document["tables"].items()}
            except (BkpError, ValueError, KeyError, TypeError, AttributeError):
                break  # unreadable: the catalog's copy may still say
    recorded = ctx.catalog.recorded_dump(policy.tenant, dump["id"]) or \
        ctx.catalog.recorded_dump(policy.tenant, short)
    if recorded and recorded.get("tables"):
        return json.loads(recorded["tables"])
    return None


def _load_and_count(ctx: Context, database: Database, path: Path,
                    drill: DatabaseDrill) -> dict[str, int] | None:
    from bkp.databases import scratch

    try:
        with scratch.scratch_server(database.type, ctx.settings.home) as server:
            started = time.monotonic()
            server.load(path, database.name)
            drill.load_s = round(time.monotonic() - started, 3)
            return dict(server.inventory(database.name).tables)
    except VerificationError as exc:
        drill.findings.append(("load", "the dump loads", str(exc)[:500]))
        return None
    except OperationError as exc:  # no scratch server, a full disk: no finding, no verdict
        raise OperationError(f"{database.label}: the drill could not load its dump: "
                             f"{_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
