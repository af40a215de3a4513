"""The database part of a drill: every dump comes back, loads, and holds what it held.

For each database of the policy the latest dump is written from the repository into the
drill's scratch space, loaded into a scratch server bkp starts for the purpose, and its
tables and row counts are compared with the inventory recorded when the dump was made
(the inventory snapshot beside the dump; the catalog's copy when the repository lost it).
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from bkp.context import Context
from bkp.databases.inventory import Inventory
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
    expected, problem = _recorded_inventory(ctx, policy, restic, listed, dump)
    if problem:
        drill.findings.append(("inventory", "the tables and rows recorded at dump time",
                               problem))
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
                        dump: dict) -> tuple[dict[str, int] | None, str | None]:
    """The tables and rows recorded when `dump` was made, and what is wrong with that record
    (None when nothing): the repository's inventory snapshot, checked against the catalog's
    copy when both exist; either alone when the other was lost (a host rebuilt from nothing
    has only the repository). Without any, the sentence names the cause."""
    # In a copy (restic copy) the dump has a new id; its inventory names the original's.
    original = dump.get("original") or dump["id"]
    short = original[:8]
    stored, stored_problem = _stored_inventory(restic, listed, short)
    recorded = ctx.catalog.recorded_dump(policy.tenant, original) or \
        ctx.catalog.recorded_dump(policy.tenant, short)
    copy = None
    if recorded and recorded.get("status") == "ok" and recorded.get("tables") is not None:
        with suppress(ValueError, TypeError):
            copy = {str(k): int(v) for k, v in json.loads(recorded["tables"]).items()}
    if stored is not None and copy is not None and stored != copy:
        differ = "; ".join(f"{t}: {want} in the repository, {got} in the catalog"
                           for t, want, got in compare_inventories(stored, copy))
        return stored, (f"the inventory in the repository and the catalog's copy differ "
                        f"({differ[:400]}): one of them was altered")
    if stored is not None or copy is not None:
        return (stored if stored is not None else copy), None
    if stored_problem:
        return None, stored_problem
    if recorded and recorded.get("error"):
        return None, (f"no counts: backup run {recorded['run_id']} saved the dump but "
                      f"recorded this error: {recorded['error'][:400]}")
    if recorded:
        return None, (f"the inventory snapshot "
                      f"{(recorded.get('inventory_snapshot_id') or '?')[:8]} of backup run "
                      f"{recorded['run_id']} is not in the repository and the catalog holds "
                      f"no copy: it was deleted or lost")
    return None, ("no inventory in the repository and no record of this dump in the "
                  "catalog: the inventory snapshot was deleted, or bkp did not make this dump")


def _stored_inventory(restic: Restic, listed: list[dict],
                      short: str) -> tuple[dict[str, int] | None, str | None]:
    """The inventory snapshot beside the dump: (tables, None), (None, why unusable), or
    (None, None) when there is none."""
    snapshot = next((s for s in listed if s.get("kind") == KIND_INVENTORY
                     and (s.get("dump") or "")[:8] == short), None)
    if snapshot is None:
        return None, None
    filename = (snapshot.get("paths") or [""])[0]
    try:
        document = json.loads(restic.dump_bytes(snapshot["id"], filename))
        if isinstance(document, dict) and document.get("tables") is None \
                and document.get("error"):
            return None, (f"no counts: when the dump was made bkp could not count its "
                          f"tables: {str(document['error'])[:400]}")
        return Inventory.from_json(document).tables, None
    except (BkpError, ValueError) as exc:
        return None, (f"the inventory snapshot {snapshot['id'][:8]} cannot be read: "
                      f"{str(exc)[:300]}")


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
