"""Restore a tenant's snapshot to a target directory: access to personal data, audited."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from bkp import locks
from bkp.context import Context
from bkp.destinations import open_repository
from bkp.errors import BkpError, SafetyError, UsageError, VerificationError
from bkp.policy import Policy
from bkp.restic import KIND_DATABASE, Listing
from bkp.tenants.drill import check_free_space, tail_problems

SNAPSHOT_ID = re.compile(r"latest|[0-9a-f]{8,64}")


def check_snapshot_id(snapshot: str | None) -> None:
    if snapshot is not None and not SNAPSHOT_ID.fullmatch(snapshot):
        raise UsageError(f"--snapshot {snapshot!r} is not a snapshot id (8 to 64 hex "
                         f"characters, or latest); `bkp snapshots TENANT` lists them")


def refuse_non_empty(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise SafetyError(f"restore target {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise SafetyError(f"restore target {target} is not empty; nothing was restored. "
                          f"Choose an empty directory, or add --force to restore over it")


def selected(listing: Listing, includes: Sequence[str]) -> tuple[int, int]:
    """Files and bytes the restore will write (restic's --include matches path prefixes)."""
    prefixes = [p.rstrip("/") for p in includes]
    files = [n for n in listing.files
             if not prefixes or any(n.path == p or n.path.startswith(p + "/") for p in prefixes)]
    return len(files), sum(n.size for n in files)


def from_copy(policy: Policy) -> dict:
    """`bkp restore TENANT --copy ID` (the primary site lost): the copy restored from, in
    the result and the audit event. A copy's snapshot ids are its own (`bkp snapshots
    TENANT --copy ID` lists them, with the original's id)."""
    return {"copy": policy.copy_id} if policy.copy_id else {}


def restore_tenant(ctx: Context, policy: Policy, target: Path, *, snapshot: str | None = None,
                   includes: Sequence[str] = (), force: bool = False) -> dict:
    target = target.absolute()
    details = {"target": str(target), "snapshot": snapshot or "latest",
               "includes": list(includes), "force": force, **from_copy(policy)}
    check_snapshot_id(snapshot)
    try:
        refuse_non_empty(target, force)
        with locks.tenant_lock(ctx.settings.locks, policy.tenant):
            result = _restore(ctx, policy, target, snapshot, includes)
    except BkpError as exc:
        ctx.audit("restore", "refused" if isinstance(exc, SafetyError) else "failed",
                  policy.tenant, **details, error=str(exc))
        raise
    ctx.audit("restore", "ok", policy.tenant, **details, snapshot_id=result["snapshot_id"],
              files=result["files"], bytes=result["bytes"])
    return result


def _restore(ctx: Context, policy: Policy, target: Path, snapshot: str | None,
             includes: Sequence[str]) -> dict:
    restic = open_repository(policy, ctx.settings.home)
    listing = restic.ls(snapshot)
    files, size = selected(listing, includes)
    if includes and files == 0 and not any(n.path.rstrip("/") in
                                           {p.rstrip("/") for p in includes}
                                           for n in listing.nodes):
        raise UsageError(f"--include {', '.join(includes)} matches nothing in snapshot "
                         f"{listing.short_id}; paths are absolute, as `restic ls` shows them")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_free_space(target, size)
    with _ProgressWhile(ctx, target, size):
        done = restic.restore(listing.snapshot_id, target, includes)
    if not done.ok:
        failure = restic.failure(done, "restore")
        if failure.cause != "damage":
            raise failure.exception()
        problems = "; ".join(p.found for p in tail_problems("restore", done.stderr_tail, 3))
        raise VerificationError(f"restore of {listing.short_id} to {target} found damaged "
                                f"data: {problems}. Run `bkp drill {policy.tenant}` and see "
                                f"runbooks/restore-drill.md")
    return {"tenant": policy.tenant, "snapshot_id": listing.snapshot_id, "target": str(target),
            "files": files, "bytes": size, "snapshot_time": listing.time, **from_copy(policy)}


def restore_database(ctx: Context, policy: Policy, name: str, target: Path, *,
                     snapshot: str | None = None) -> dict:
    """Write a database's dump (the latest, or `snapshot`) to the file `target`, which must
    not exist: a dump is loaded by the operator, never written over something."""
    target = target.absolute()
    details = {"target": str(target), "snapshot": snapshot or "latest", "database": name,
               **from_copy(policy)}
    check_snapshot_id(snapshot)
    try:
        if target.exists() or target.is_symlink():
            raise SafetyError(f"restore target {target} exists; nothing was written. Name a "
                              f"new file")
        if not target.parent.is_dir():
            raise UsageError(f"the folder of {target} does not exist")
        with locks.tenant_lock(ctx.settings.locks, policy.tenant):
            result = _restore_dump(ctx, policy, name, target, snapshot)
    except BkpError as exc:
        ctx.audit("restore", "refused" if isinstance(exc, SafetyError) else "failed",
                  policy.tenant, **details, error=str(exc))
        raise
    ctx.audit("restore", "ok", policy.tenant, **details, snapshot_id=result["snapshot_id"],
              bytes=result["bytes"])
    return result


def _restore_dump(ctx: Context, policy: Policy, name: str, target: Path,
                  snapshot: str | None) -> dict:
    restic = open_repository(policy, ctx.settings.home)
    dump = _chosen_dump(restic.snapshots(), policy, name, snapshot)
    restic.dump_to_file(dump["id"], (dump.get("paths") or [""])[0], target, exclusive=True)
    return {"tenant": policy.tenant, "database": name, "snapshot_id": dump["id"],
            "snapshot_time": dump["time"], "target": str(target),
            "bytes": target.stat().st_size, **from_copy(policy)}


def _chosen_dump(snapshots: list[dict], policy: Policy, name: str,
                 snapshot: str | None) -> dict:
    """`name` is NAME, or TYPE:NAME where a PostgreSQL and a MariaDB database share it."""
    kind, _, bare = name.rpartition(":")
    dumps = sorted((s for s in snapshots if s.get("kind") == KIND_DATABASE
                    and s.get("database") == bare and (not kind or s.get("database_type") == kind)),
                   key=lambda s: s["time"])
    if snapshot and snapshot != "latest":
        dumps = [s for s in dumps if s["id"].startswith(snapshot)]
    types = {s.get("database_type") for s in dumps}
    if len(types) > 1:
        raise UsageError(f"a postgresql and a mariadb database are both named {bare}: say "
                         f"which, e.g. --database postgresql:{bare}")
    if dumps:
        return dumps[-1]
    known = ", ".join(d.name for d in policy.databases) or "none"
    if snapshot and snapshot != "latest":
        raise UsageError(f"snapshot {snapshot} is not a dump of database {name}; "
                         f"`bkp snapshots {policy.tenant}` lists them")
    raise UsageError(f"the repository holds no dump of database {name} (databases in the "
                     f"policy: {known})")


class _ProgressWhile:
    """Report bytes written on stderr while restic restores (restic 0.14 restore is silent):
    read from the target filesystem's free space, which costs nothing to ask."""

    def __init__(self, ctx: Context, target: Path, total: int):
        self.ctx, self.target, self.total = ctx, target, total
        self.stop = threading.Event()

    def __enter__(self):
        if self.ctx.progress:
            self.start_free = shutil.disk_usage(self.target).free
            threading.Thread(target=self._report, daemon=True).start()
        return self

    def _report(self):
        while not self.stop.wait(2.0):
            written = max(0, self.start_free - shutil.disk_usage(self.target).free)
            share = f" of {self.total >> 20} MiB ({100 * written / self.total:.0f}%)" \
                if self.total else ""
            self.ctx.progress(f"restored {written >> 20} MiB{share}")

    def __exit__(self, *exc):
        self.stop.set()
        return False



