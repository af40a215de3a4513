"""Copies at other sites (BIO 8.13.03): after each backup, every snapshot a copy lacks goes
there with `restic copy`, and the copy's retention is applied.

Every snapshot the copy lacks is copied, not only tonight's: a night whose copy failed
leaves no hole. Only snapshots the copy's keep rules would keep are copied, so a primary
that keeps more (an append-only server, forgotten only by `bkp maintain`) does not make
bkp copy and forget the same old snapshots every night.

restic's `copy` applies one set of -o options and one environment to both repositories: an
sftp.command or AWS_* variables meant for one would be used for the other. Where the two
sides' transports clash (sftp to sftp, s3 to s3), the copy's side goes through restic's
rclone backend with a remote defined in restic's environment only (destinations/), so each
side keeps its own host, port, key, known host key or credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bkp import runner
from bkp.context import Context
from bkp.destinations import destination_for
from bkp.errors import BkpError, OperationError
from bkp.policy import Copy, Policy, at_copy
from bkp.restic import Repository, Restic, pair_repository, transport_conflicts
from bkp.tenants.retention import kept_per_group

# The name of the copy's rclone remote inside restic's environment (one per process).
RCLONE_REMOTE = "bkpcopy"


@dataclass
class CopyResult:
    """One copy's part of a backup run (`copies` in the run's JSON)."""

    id: str
    destination: str  # the copy's repository as an operator recognises it, no credential
    status: str = "failed"  # ok | failed
    snapshot_id: str | None = None  # tonight's snapshot, as the copy names it
    error: str | None = None
    source_snapshot_id: str | None = None
    snapshot_time: str | None = None
    snapshots_copied: int = 0
    snapshots_kept: int | None = None
    duration_s: float | None = None
    kept_snapshots: str | None = None  # JSON: what the copy holds afterwards
    exit_code: int = field(default=1, repr=False)
    restic_calls: int = field(default=0, repr=False)

    def to_json(self) -> dict:
        return {"id": self.id, "destination": self.destination, "status": self.status,
                "snapshot_id": self.snapshot_id, "error": self.error,
                "snapshots_copied": self.snapshots_copied,
                "snapshots_kept": self.snapshots_kept}

    def to_record(self) -> dict:
        return {"copy_id": self.id, "destination": self.destination, "status": self.status,
                "snapshot_id": self.snapshot_id, "source_snapshot_id": self.source_snapshot_id,
                "snapshot_time": self.snapshot_time, "snapshots_copied": self.snapshots_copied,
                "snapshots_kept": self.snapshots_kept, "error": self.error,
                "duration_s": self.duration_s, "kept_snapshots": self.kept_snapshots}


def copy_destination(ctx: Context, policy: Policy, copy: Copy):
    return destination_for(at_copy(policy, copy), ctx.settings.home)


def pair_for(source: Repository, copy_destination) -> Repository:
    """The copy's repository with the primary as restic's source, each side with its own
    transport."""
    target = copy_destination.repository()
    clashes = transport_conflicts(source, target)
    if clashes:
        through_rclone = getattr(copy_destination, "rclone_repository", None)
        if through_rclone is None:  # only sftp and s3 carry transport settings
            raise OperationError(f"cannot copy to {target.label}: the transport settings "
                                 f"{', '.join(clashes)} of the two repositories clash")
        if not runner.which("rclone"):
            raise OperationError(f"copying to {target.label} needs rclone (each side of the "
                                 f"copy its own {', '.join(clashes)}): run "
                                 f"scripts/install.sh or apt-get install rclone")
        target = through_rclone(RCLONE_REMOTE)
    return pair_repository(source, target)


def plan_copy(primary: Sequence[dict], present: Sequence[dict], rules: dict[str, int] | None
              ) -> list[dict]:
    """The primary's snapshots the copy lacks and its keep rules would keep (rules None: a
    legal hold keeps everything), oldest first. A copied snapshot names its original."""
    # Short ids: restic 0.14 names a new snapshot by its short id, listings by the full one.
    have = {(s.get("original") or s["id"])[:8] for s in present} | {s["id"][:8] for s in present}
    lacking = [s for s in primary if s["id"][:8] not in have]
    if not lacking:
        return []
    if rules is not None:
        kept = kept_per_group([*as_originals(present), *lacking], rules)
        lacking = [s for s in lacking if s["id"] in kept]
    return sorted(lacking, key=lambda s: s["time"])


def as_originals(snapshots: Sequence[dict]) -> list[dict]:
    """A copy's snapshots under the ids they have at the primary: an inventory's `dump` tag
    names the dump's id there, so retention keeps an inventory with its dump."""
    return [{**s, "id": s.get("original") or s["id"], "copy_id": s["id"]} for s in snapshots]


def should_hold(primary: Sequence[dict], present: Sequence[dict],
                rules: dict[str, int] | None) -> list[dict]:
    """The primary's snapshots the copy should hold after tonight (what it has and what it
    lacks, as far as its keep rules keep them), oldest first."""
    if rules is None:
        return sorted(primary, key=lambda s: s["time"])
    kept = {k[:8] for k in kept_per_group([*as_originals(present), *primary], rules)}
    return sorted((s for s in primary if s["id"][:8] in kept), key=lambda s: s["time"])


def after_copy(present: Sequence[dict], primary: Sequence[dict],
               copied: dict[str, str]) -> list[dict]:
    """What the copy holds once restic copied `copied` (source short id -> copy short id):
    as records of the copy's snapshots (its id, the original's id, time, kind)."""
    by_short = {s["id"][:8]: s for s in primary}
    held = [_remembered(s) for s in present
            if (s.get("original") or s["id"])[:8] not in copied]
    for source, target in copied.items():
        original = by_short.get(source, {"id": source})
        held.append({**_remembered(original), "id": target, "original": original["id"]})
    return held


def _remembered(snapshot: dict) -> dict:
    return {key: snapshot.get(key)
            for key in ("id", "original", "time", "kind", "database", "database_type", "dump")
            if snapshot.get(key) is not None}


def forget_plan(held: Sequence[dict], rules: dict[str, int]) -> tuple[list[str], int]:
    """The copy's own ids to forget, and how many file snapshots stay."""
    candidate = as_originals(held)
    kept = kept_per_group(candidate, rules)
    dropped = [s["copy_id"] for s in candidate if s["id"] not in kept]
    files = sum(1 for s in candidate if s["id"] in kept and (s.get("kind") or "files") == "files")
    return dropped, files


def copy_to_all(ctx: Context, policy: Policy, source: Restic, tonight: str | None,
                kept: str | None = None) -> list[CopyResult]:
    """Every copy of the tenant gets what it lacks; one copy failing never stops the
    others. `tonight`: the snapshot this run made (the one each copy must end up with);
    `kept`: what retention just left at the destination (JSON, from the run's fields),
    which spares listing it again."""
    if not policy.copies:
        return []
    primary = json.loads(kept) if kept else source.snapshots()
    return [copy_one(ctx, policy, copy, source, primary, tonight) for copy in policy.copies]


def copy_one(ctx: Context, policy: Policy, copy: Copy, source: Restic,
             primary: Sequence[dict], tonight: str | None) -> CopyResult:
    started = time.monotonic()
    destination = copy_destination(ctx, policy, copy)
    result = CopyResult(copy.id, _label(destination), source_snapshot_id=tonight)
    restic: Restic | None = None
    try:
        if ctx.progress:
            ctx.progress(f"{policy.tenant}: copying to copy {copy.id} ({result.destination})")
        # The nightly checks (bucket region, certificate; the pinned host key is enforced
        # by the ssh client or rclone) and, when something fails, the full preflight that
        # names the cause.
        preflight = destination.nightly_preflight()
        if preflight.initialised is False:
            raise OperationError(f"no repository at copy {copy.id} ({result.destination}): "
                                 f"run `bkp init {policy.tenant}` to initialise it")
        restic = Restic(destination.repository(), policy.tenant,
                        timeout=policy.timeout_minutes * 60)
        # What the copy holds: as the last good night left it (no restic process), else
        # listed.
        present = ctx.catalog.copy_kept_snapshots(policy.tenant, copy.id)
        if present is None:
            try:
                present = restic.snapshots()
            except OperationError as exc:
                raise _diagnosed(destination, preflight, exc) from None
        rules = None if policy.retention.legal_hold else policy.retention.keep_rules()
        wanted = plan_copy(primary, present, rules)
        copied: dict[str, str] = {}
        if wanted:
            # Every snapshot the copy should hold, not only those the records say it
            # lacks: restic skips what is there and brings back what went missing.
            pair = Restic(pair_for(source.repo, destination), policy.tenant,
                          timeout=policy.timeout_minutes * 60)
            try:
                copied = pair.copy([s["id"] for s in should_hold(primary, present, rules)])
            except OperationError as exc:
                raise _diagnosed(destination, preflight, exc) from None
            finally:
                result.restic_calls += pair.calls
        result.snapshots_copied = len(copied)
        _find_tonight(result, tonight, primary, present, copied)
        held = after_copy(present, primary, copied)
        if rules is not None and not copy.destination.append_only:
            dropped, result.snapshots_kept = forget_plan(held, rules)
            if dropped:
                restic.forget_ids(dropped)
                held = [s for s in held if s["id"] not in dropped]
        result.kept_snapshots = json.dumps(held)
        if tonight and result.snapshot_id is None:
            raise OperationError(f"snapshot {tonight[:8]} did not reach copy {copy.id}")
        result.status, result.exit_code = "ok", 0
    except BkpError as exc:
        result.error = f"copy {copy.id} ({result.destination}): {exc}"
        result.exit_code = exc.exit_code
    finally:
        result.duration_s = round(time.monotonic() - started, 3)
        result.restic_calls += restic.calls if restic else 0
    return result


def _diagnosed(destination, preflight, error: BkpError) -> BkpError:
    """A light nightly check left the cause to restic's words: the full preflight names it
    better (a changed host key is 4, an unreachable server, a refused key)."""
    if preflight.initialised is not None:
        return error
    try:
        found = destination.preflight()
    except BkpError as cause:
        return cause
    if found.initialised is False:
        return OperationError(f"no repository there: run `bkp init "
                              f"{destination.policy.tenant}` to initialise it")
    return error


def _find_tonight(result: CopyResult, tonight: str | None, primary: Sequence[dict],
                  present: Sequence[dict], copied: dict[str, str]) -> None:
    if not tonight:
        return
    short = tonight[:8]
    source = next((s for s in primary if s["id"][:8] == short), None)
    result.snapshot_time = source.get("time") if source else None
    if short in copied:
        result.snapshot_id = copied[short]
        return
    for snapshot in present:
        if (snapshot.get("original") or "")[:8] == short:
            result.snapshot_id = snapshot["id"]
            return


def _label(destination) -> str:
    return getattr(destination, "label", None) or destination.policy.destination.type


def failure_of(results: Sequence[CopyResult]) -> BkpError | None:
    """The run's error when a copy failed: each failed copy named, the highest exit code."""
    failed = [r for r in results if r.status != "ok"]
    if not failed:
        return None
    error = OperationError("; ".join(r.error or f"copy {r.id} failed" for r in failed)
                           + " (the snapshot stays at the destination; the next backup "
                             "copies what the copy lacks)")
    error.exit_code = max(r.exit_code for r in failed)
    return error
