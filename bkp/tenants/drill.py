"""Restore drills: restore the latest snapshot into scratch space and prove it came back.

A drill checks four things and names every problem it finds:
1. the repository: `restic check` reading a rotating subset of the pack files, so that the
   drills of a year read every pack at least once;
2. the restored content against the snapshot (restic's own `--verify`) and against the
   snapshot's listing (every file present, sizes equal);
3. a sample of files against the live source, where the source has not changed since the
   snapshot (same size and mtime): a different SHA-256 there is corruption, not change;
4. the time the restore took against the policy's RTO;
5. on an append-only or object-locked destination, that the nightly credential cannot
   delete (bkp.tenants.canary).
Scratch space is removed afterwards, whatever happened.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bkp.catalog import as_json
from bkp.context import Context, Outcome, interrupt, locked, open_tenant_run, stopping
from bkp.cron import croniter
from bkp.databases.drill import drill_databases
from bkp.destinations import open_repository
from bkp.errors import BkpError, OperationError, VerificationError
from bkp.files import file_sha256
from bkp.policy import Policy
from bkp.restic import (
    Listing,
    Node,
    NoSnapshot,
    Restic,
    parse_restored_snapshot,
    version_on_record,
)
from bkp.results import DrillRun
from bkp.tenants.canary import Immutability, prove_immutability

SCRATCH_MARGIN = 64 << 20
# restic reads `--read-data-subset n/t` for t up to 256: a daily drill shares groups.
MAX_SUBSETS = 256


@dataclass
class Problem:
    kind: str  # missing | size | content | restore | check | rto
    path: str
    expected: str
    found: str

    def message(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.kind}: {where}expected {self.expected}, found {self.found}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "expected": self.expected,
                "found": self.found, "message": self.message()}


@dataclass
class DrillResult:
    snapshot_id: str | None = None
    snapshot_time: str | None = None
    files_checked: int = 0
    bytes_restored: int = 0
    sample_checked: int = 0
    sample_skipped: int = 0
    subset: str | None = None
    restore_s: float | None = None
    problems: list[Problem] = field(default_factory=list)
    databases: list = field(default_factory=list)  # DatabaseDrill
    immutability: Immutability | None = None


# ---------------------------------------------------------------- pure parts

def drills_per_year(expression: str | None, start: datetime) -> int:
    """How many drills the schedule holds in a year: the number of check subsets."""
    if not expression:
        return 12
    itr = croniter(expression, start)
    end = start + timedelta(days=365)
    count = 0
    while count < MAX_SUBSETS and itr.get_next(datetime) <= end:
        count += 1
    return max(count, 1)


def next_subset(previous: str | None, total: int) -> str:
    """Rotate n/t: the subset after the last one recorded (restarting when t changed)."""
    match = re.fullmatch(r"(\d+)/(\d+)", previous or "")
    if not match or int(match.group(2)) != total:
        return f"1/{total}"
    return f"{int(match.group(1)) % total + 1}/{total}"


def mtime_ns(text: str) -> int | None:
    """restic's RFC 3339 time with nanoseconds -> ns since the epoch (datetime stops at µs)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return None
    base, fraction, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0")[:9])


def restored_path(root: Path, node: Node) -> Path:
    return root / node.path.lstrip("/")


def compare_listing(listing: Listing, root: Path) -> tuple[int, int, list[Problem]]:
    """Every file of the snapshot is there with its size; directories and links exist."""
    problems, checked, restored = [], 0, 0
    for node in listing.nodes:
        path = restored_path(root, node)
        if not path.exists() and not path.is_symlink():
            problems.append(Problem("missing", node.path, node.type, "nothing"))
            continue
        if node.type != "file":
            continue
        size = path.stat().st_size
        checked += 1
        restored += size
        if size != node.size:
            problems.append(Problem("size", node.path, f"{node.size} bytes", f"{size} bytes"))
    return checked, restored, problems


def choose_sample(listing: Listing, size: int) -> list[Node]:
    """`size` files, chosen the same way for the same snapshot (reproducible for auditors);
    0 means every file."""
    files = sorted(listing.files, key=lambda n: n.path)
    if size == 0 or size >= len(files):
        return files
    return random.Random(listing.snapshot_id).sample(files, size)


def sha256_of(path: Path) -> str:
    return file_sha256(path)


def compare_sample(sample: list[Node], root: Path) -> tuple[int, int, list[Problem]]:
    """Restored file vs live source, only where the source is unchanged since the snapshot."""
    checked = skipped = 0
    problems = []
    for node in sample:
        source = Path(node.path)
        try:
            stat = source.stat()
        except OSError:
            skipped += 1  # deleted since the snapshot: nothing to compare with
            continue
        if stat.st_size != node.size or _mtime_differs(stat.st_mtime_ns, node.mtime):
            skipped += 1
            continue
        restored = restored_path(root, node)
        if not restored.is_file():
            continue  # already reported by compare_listing
        checked += 1
        want, got = sha256_of(source), sha256_of(restored)
        if want != got:
            problems.append(Problem("content", node.path, f"sha256 {want} (live source)",
                                    f"sha256 {got} (restored)"))
    return checked, skipped, problems


def _mtime_differs(stat_ns: int, recorded: str) -> bool:
    want = mtime_ns(recorded)
    # Some filesystems keep microseconds only: compare at that precision.
    return want is None or stat_ns // 1000 != want // 1000


def tail_problems(kind: str, text: str, limit: int = 10) -> list[Problem]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    interesting = [ln for ln in lines if re.search(
        r"error|fatal|fail|mismatch|not found|missing|damaged|invalid", ln, re.I)] or lines
    return [Problem(kind, "", "no errors", ln[:300]) for ln in interesting[-limit:]]


# ---------------------------------------------------------------- the drill

def scratch_root(ctx: Context) -> Path:
    return ctx.settings.home / "scratch"


def remove_stale_scratch(ctx: Context) -> None:
    """Scratch left by a drill that died is removed by the next one."""
    root = scratch_root(ctx)
    if not root.is_dir():
        return
    for folder in root.iterdir():
        match = re.fullmatch(r"drill-.+-(\d+)", folder.name)
        row = ctx.catalog.get_run(int(match.group(1))) if match else None
        if row is None or row["status"] != "running":
            shutil.rmtree(folder, ignore_errors=True)


def check_free_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need + SCRATCH_MARGIN:
        raise OperationError(
            f"not enough free space for the drill in {folder}: the snapshot needs "
            f"{need >> 20} MiB, {free >> 20} MiB is free; free space or move BKP_HOME")


def drill_tenant(ctx: Context, policy: Policy, *, trigger: str = "manual",
                 slot: str | None = None) -> Outcome:
    return locked(ctx, policy, "drill", lambda: _drill(ctx, policy, trigger, slot), DrillRun)


def run_kind(policy: Policy) -> str:
    """A drill of a copy (`bkp drill TENANT --copy ID`) is recorded as a `copy-drill`: it
    proves that copy restorable, and never stands in for the drill the schedule owes the
    destination."""
    return "copy-drill" if policy.copy_id else "drill"


def _drill(ctx: Context, policy: Policy, trigger: str, slot: str | None) -> Outcome:
    run_id = open_tenant_run(ctx, policy, run_kind(policy), trigger=trigger, slot=slot,
                             restic_version=version_on_record())
    if policy.copy_id:
        ctx.catalog.update_run(run_id, copy_id=policy.copy_id)
    result = DrillResult()
    restic: Restic | None = None
    scratch = scratch_root(ctx) / f"drill-{policy.tenant}-{run_id}"
    error: BkpError | None = None
    try:
        remove_stale_scratch(ctx)
        restic = open_repository(policy, ctx.settings.home)
        _perform(ctx, policy, restic, scratch, result, run_id)
    except VerificationError as exc:  # restic found the repository damaged: a finding
        result.problems.append(Problem("repository", "", "a readable repository", str(exc)))
    except BkpError as exc:
        error = exc
    except KeyboardInterrupt:
        interrupt()
        error = OperationError("stopped by a signal")
        raise
    except Exception as exc:  # never record `passed` for a drill that crashed
        error = OperationError(f"unexpected {exc.__class__.__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        outcome = _close(ctx, policy, run_id, result, error, restic)
    return outcome


def _perform(ctx: Context, policy: Policy, restic: Restic, scratch: Path,
             result: DrillResult, run_id: int) -> None:
    started = time.monotonic()
    if ctx.catalog.previous_run_interrupted(policy.tenant, run_id):
        restic.unlock_stale()
    scratch.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        listing, restore = _list_and_restore(ctx, policy, restic, scratch)
    except NoSnapshot:
        _explain_missing_snapshot(ctx, policy, restic)
        raise
    result.snapshot_id, result.snapshot_time = listing.snapshot_id, listing.time
    _raise_if_operational(restore, restic, policy, "restore")
    restored = parse_restored_snapshot(restore.stdout)
    if restored and restored != listing.snapshot_id[:8]:
        raise OperationError(f"the latest snapshot changed during the drill ({restored} "
                             f"restored, {listing.short_id} listed): run the drill again")
    if not restore.ok:
        result.problems += tail_problems("restore", restore.stderr_tail)
    result.files_checked, result.bytes_restored, problems = compare_listing(listing, scratch)
    result.problems += problems
    result.restore_s = round(time.monotonic() - started, 3)

    sample = choose_sample(listing, policy.drill.sample)
    result.sample_checked, result.sample_skipped, problems = compare_sample(sample, scratch)
    result.problems += problems

    result.subset = next_subset(ctx.catalog.previous_drill_subset(policy.tenant),
                                drills_per_year(policy.schedule.drill, datetime.now(UTC)))
    _progress(ctx, policy, f"checking the repository, pack subset {result.subset}")
    check = restic.check(result.subset)
    _raise_if_operational(check, restic, policy, "check")
    if not check.ok:
        result.problems += tail_problems("check", check.stderr_tail)

    result.databases = drill_databases(ctx, policy, restic, scratch / ".databases")
    result.problems += [Problem("database", f"{d.type} database {d.name}: {what}", expected,
                                found)
                        for d in result.databases for what, expected, found in d.findings]

    limit = policy.drill.rto_minutes * 60
    if result.restore_s > limit:
        result.problems.append(Problem("rto", "", f"restore within {policy.drill.rto_minutes} "
                                                  f"min", f"{result.restore_s / 60:.1f} min"))

    if policy.destination.immutable:
        _progress(ctx, policy, "proving that the nightly credential cannot delete")
        try:
            result.immutability = prove_immutability(policy, ctx.settings.home, restic)
        except BkpError as exc:
            if not result.problems or isinstance(exc, VerificationError):
                raise
            # Problems are found already (5): the proof that could not be made joins them
            # instead of turning the verdict into "could not run" (1).
            result.problems.append(Problem("immutability", "", "the deletion refused",
                                           f"not proven: {exc}"))
            return
        if not result.immutability.proven:
            result.problems.append(Problem("immutability", "", "the deletion refused",
                                           result.immutability.problem_text()))


def _list_and_restore(ctx: Context, policy: Policy, restic: Restic, scratch: Path):
    estimate = ctx.catalog.last_backup_size(policy.tenant)
    if estimate is None:
        listing = restic.ls(None)  # the free-space check needs the size before anything
        check_free_space(scratch.parent, listing.total_bytes)
        return listing, _restore(ctx, policy, restic, listing.snapshot_id, scratch)
    check_free_space(scratch.parent, estimate)
    return _restore_and_list(ctx, policy, restic, scratch)


def _explain_missing_snapshot(ctx: Context, policy: Policy, restic: Restic) -> None:
    """No latest snapshot: a new tenant, or backups lost from the repository. restic skips a
    snapshot file it cannot read, and bkp's records name the snapshots it made: either one
    is damage found, not "no backup yet"."""
    restic.snapshots()  # raises VerificationError when restic reports a damaged snapshot
    recorded = ctx.catalog.last_run(policy.tenant, "backup", status="ok")
    if recorded and recorded["snapshot_id"]:
        raise VerificationError(
            f"snapshot {recorded['snapshot_id'][:8]} of backup run {recorded['id']} "
            f"({recorded['ended_at']}) is not in the repository, which lists no snapshot "
            f"of {policy.tenant}: the backups were deleted or lost. See "
            f"runbooks/restore-drill.md")


def _restore(ctx: Context, policy: Policy, restic: Restic, snapshot: str | None,
             scratch: Path):
    scratch.mkdir(mode=0o700, exist_ok=True)
    _progress(ctx, policy, f"restoring snapshot {snapshot or 'latest'}")
    return restic.restore(snapshot, scratch)


def _restore_and_list(ctx: Context, policy: Policy, restic: Restic, scratch: Path):
    """Read the snapshot's listing while restic restores it: every restic start costs a
    key derivation, and the listing is only needed once the restore is done."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls") as pool:
        listing = pool.submit(restic.ls, None, False)
        restore = _restore(ctx, policy, restic, None, scratch)
        listing = listing.result()
    if not restore.ok and parse_restored_snapshot(restore.stdout) is None:
        # "latest" selects kind=files; snapshots written before kinds carry no kind and
        # were found by the listing's own fallback: restore that one.
        shutil.rmtree(scratch, ignore_errors=True)
        restore = _restore(ctx, policy, restic, listing.snapshot_id, scratch)
    return listing, restore


def _raise_if_operational(done, restic: Restic, policy: Policy, action: str) -> None:
    """A failed restore or check is a finding only when restic named damage; any other
    cause means the drill could not run, and says why."""
    if not done.ok and restic.failure(done, action).cause != "damage":
        raise restic.failure(done, action).exception()


def _close(ctx: Context, policy: Policy, run_id: int, result: DrillResult,
           error: BkpError | None, restic: Restic | None) -> Outcome:
    if error is not None:
        status, code = ("interrupted" if stopping.is_set() else "error"), error.exit_code
    elif result.problems:
        status, code = "failed", 5
    else:
        status, code = "passed", 0
    problems = [p.to_json() for p in result.problems]
    from bkp.tenants.drill_report import write_report

    with ctx.catalog.transaction():  # the record, its report and its event, or none
        row = ctx.catalog.close_run(
            run_id, status, snapshot_id=result.snapshot_id, files=result.files_checked,
            files_checked=result.files_checked, bytes_restored=result.bytes_restored,
            subset=result.subset, problems=as_json(problems),
            sample_checked=result.sample_checked, sample_skipped=result.sample_skipped,
            rto_minutes=policy.drill.rto_minutes, error=str(error) if error else None,
            restore_s=result.restore_s, restic_calls=restic.calls if restic else 0,
            databases=as_json([d.to_json() for d in result.databases])
            if policy.databases else None,
            immutability=as_json(result.immutability.to_json())
            if result.immutability else None)
        # CLI.md's status is passed|failed; `result` says why a drill did not pass (found
        # problems, could not run, interrupted).
        data = DrillRun(
            tenant=policy.tenant, status="passed" if status == "passed" else "failed",
            result=status, snapshot_id=result.snapshot_id,
            files_checked=result.files_checked, bytes_restored=result.bytes_restored,
            duration_s=row["duration_s"], problems=problems, run_id=run_id,
            number=ctx.catalog.drill_number(policy.tenant, run_id),
            snapshot_time=result.snapshot_time, subset_read=result.subset,
            sample_checked=result.sample_checked, sample_skipped=result.sample_skipped,
            restore_s=result.restore_s, rto_minutes=policy.drill.rto_minutes,
            error=str(error) if error else None, restic_version=row["restic_version"],
            repository=restic.repo.label if restic else None,
            extra={**({"databases": [d.to_json() for d in result.databases]}
                       if policy.databases else {}),
                   **({"immutability": result.immutability.to_json()
                       if result.immutability else None}
                      if policy.destination.immutable else {}),
                   **({"copy": policy.copy_id} if policy.copy_id else {}),
                   **({"copies_immutability": copies_immutability(ctx, policy)}
                      if immutable_copies(policy) else {})})
        report, digest = write_report(ctx, policy, data.to_json())
        data.report, data.report_sha256 = str(report), digest
        ctx.catalog.update_run(run_id, report=data.report)
        ctx.audit(run_kind(policy), status, policy.tenant, run_id=run_id,
                  **({"copy": policy.copy_id} if policy.copy_id else {}),
                  snapshot_id=result.snapshot_id, files_checked=result.files_checked,
                  subset=result.subset, problems=len(problems), error=data.error,
                  report=data.report, report_sha256=digest,
                  **({"immutability": result.immutability.deletion
                      if result.immutability else None}
                     if policy.destination.immutable else {}))
    return Outcome(policy.tenant, code, data)


def immutable_copies(policy: Policy) -> list:
    return [c for c in policy.copies if c.destination.immutable]


def copies_immutability(ctx: Context, policy: Policy) -> list[dict]:
    """Per append-only or object-locked copy: whether its immutability is proven. The rule
    is simple and honest: a copy is proven only by its own copy drill (`bkp drill TENANT
    --copy ID`), which tries to delete the canary there with that copy's nightly
    credential; this drill proves the destination only, and names the copy's last proof."""
    return [{"id": copy.id, **copy_proof(ctx.catalog, policy.tenant, copy.id)}
            for copy in immutable_copies(policy)]


def copy_proof(catalog, tenant: str, copy_id: str) -> dict:
    import json

    row = catalog.last_copy_drill(tenant, copy_id)
    proof = json.loads(row["immutability"]) if row and row.get("immutability") else None
    if row is None or proof is None:
        return {"proven": False, "last_proof": None}
    return {"proven": proof.get("deletion") == "refused" and row["status"] == "passed",
            "last_proof": {"time": row["ended_at"] or row["started_at"], "run_id": row["id"],
                           "status": row["status"], "deletion": proof.get("deletion")}}


def _progress(ctx: Context, policy: Policy, line: str) -> None:
    if ctx.progress:
        ctx.progress(f"{policy.tenant}: {line}")


