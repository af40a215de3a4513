"""Actions: what bkp does for a tenant, with the records it leaves.

Each tenant is an independent unit of work: its own lock, its own records. One tenant
failing never stops the others; each result carries the exit code of its own outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bkp.errors import BkpError

if TYPE_CHECKING:  # only for annotations: importing them costs start-up time
    from bkp.catalog import Catalog
    from bkp.policy import Policy
    from bkp.results import TenantResult
    from bkp.settings import Settings

# Set when bkp was told to stop (SIGTERM, Ctrl-C): work cut short is recorded as
# `interrupted`, never as ok or as an ordinary failure.
stopping = threading.Event()


@dataclass
class Context:
    settings: Settings
    catalog: Catalog
    progress: Callable[[str], None] | None = None
    # tenant -> the snapshots its last good backup left, as recorded outside this catalog
    # (a pod's own signed record from the results inbox): believed only when the
    # repository's own listing agrees (tenants.retention).
    remembered: dict[str, list[dict]] = field(default_factory=dict)

    def audit(self, action: str, outcome: str, tenant: str | None = None, **details) -> dict:
        from bkp.evidence import audit

        return audit.record(self.catalog, operator=self.settings.operator,
                            os_user=self.settings.os_user, action=action, outcome=outcome,
                            tenant=tenant, details=details)


@dataclass
class Outcome:
    """One tenant's result (a typed value of bkp.results) and the exit code it implies."""

    tenant: str
    exit_code: int
    value: Any = None

    @property
    def data(self) -> dict:
        """The JSON document element of the command-line contract."""
        return self.value.to_json() if hasattr(self.value, "to_json") else (self.value or {})


def open_tenant_run(ctx: Context, policy: Policy, kind: str, *, trigger: str,
                    slot: str | None, restic_version: str | None) -> int:
    """Open a backup or drill run, recorded with the policy it runs under (a changed policy
    becomes an audit event first) and whether the clock stamping it is synchronised."""
    from bkp import clock
    from bkp.evidence.policy_changes import record_policy

    print_ = record_policy(ctx, policy)
    synchronized = clock.state().synchronized
    return ctx.catalog.open_run(
        policy.tenant, kind, operator=ctx.settings.operator, trigger=trigger, slot=slot,
        restic_version=restic_version, policy_fingerprint=print_,
        clock_synchronized=None if synchronized is None else int(synchronized))


def locked(ctx: Context, policy: Policy, action: str, work: Callable[[], Outcome],
           result: type[TenantResult]) -> Outcome:
    """Run `work` holding the tenant's lock. When another bkp process holds it the attempt
    is refused without a run record: a busy tenant is not a failed backup."""
    from bkp.locks import LockHeld, tenant_lock

    refusal = offboarded_refusal(ctx, policy, action, result)
    if refusal is not None:
        return refusal
    try:
        with tenant_lock(ctx.settings.locks, policy.tenant):
            return work()
    except LockHeld as exc:
        ctx.audit(action, "refused", policy.tenant, error=str(exc))
        return Outcome(policy.tenant, exc.exit_code, result.refused(policy.tenant, str(exc)))


def offboarded_refusal(ctx: Context, policy: Policy, action: str,
                       result: type[TenantResult]) -> Outcome | None:
    """A tenant whose offboarding has begun to erase gets no new backups (nor drills, nor a
    new repository): refused (4, audited) until its policy is removed. A tenant id is not
    reused after offboarding; a returning customer gets a new one."""
    from bkp.catalog import offboarded

    record = offboarded(ctx.catalog).get(policy.tenant)
    if record is None:
        return None
    message = (f"tenant {policy.tenant} was offboarded (erasure record {record['id']}, "
               f"{record['status']}): its backups are erased, so bkp does no {action} for "
               f"it. Remove its policy {policy.file}"
               + ("" if record["status"] == "erased" else
                  f"; finish the erasure first with `bkp offboard {policy.tenant}`"))
    ctx.audit(action, "refused", policy.tenant, error=message, record_id=record["id"])
    return Outcome(policy.tenant, 4, result.refused(policy.tenant, message))


def run_per_tenant(policies: Sequence[Policy], work: Callable[[Policy], Outcome],
                   jobs: int = 1, result: type[TenantResult] | None = None) -> list[Outcome]:
    """Run `work` for every tenant, `jobs` at a time; results in the policies' order.
    `result` is the type of each tenant's result, for the outcomes work never reached."""
    from bkp.results import TenantResult

    kind = result or TenantResult

    def guarded(policy: Policy) -> Outcome:
        if stopping.is_set():
            return Outcome(policy.tenant, 1, kind.skipped(policy.tenant))
        try:
            return work(policy)
        except BkpError as exc:  # work records its own failures; this is a last guard
            return Outcome(policy.tenant, exc.exit_code, kind.failure(policy.tenant, str(exc)))
        except Exception as exc:  # one tenant's surprise must not end the others' night
            return Outcome(policy.tenant, 1, kind.failure(
                policy.tenant, f"unexpected {type(exc).__name__}: {exc}"))

    if jobs <= 1 or len(policies) <= 1:
        return [guarded(p) for p in policies]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="tenant") as pool:
        futures = [pool.submit(guarded, p) for p in policies]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            interrupt()  # workers see their restic die and record `interrupted`
            raise


def interrupt() -> None:
    """bkp was told to stop: children are killed, unfinished work is recorded as such."""
    from bkp import runner

    stopping.set()
    runner.terminate_all()


def recover_dead_work(ctx: Context, lost_host: str | None = None) -> list[str]:
    """Close what died with its bkp process (SIGKILL, crash, power loss): runs become
    `interrupted`, sanitizations `aborted`, each with an audit event. An explicit first step
    of every command that acts; never a side effect of opening the catalog, so commands that
    only read change nothing. With `lost_host` (a reason), every running record is closed:
    the host that ran them is gone. Returns a note per record closed."""
    from bkp import catalog as cat

    notes = []
    for row in ctx.catalog.dead_runs(every_host=lost_host is not None):
        with ctx.catalog.transaction():  # the record and its event, or neither
            closed = ctx.catalog.close_dead_run(
                row, lost_host or f"bkp process {row['pid']} stopped before finishing "
                                  f"(killed, crashed or power loss)")
            if closed is None:
                continue  # another bkp process closed it first
            ctx.audit(row["kind"], "interrupted", row["tenant"], run_id=row["id"],
                      started_at=row["started_at"], started_by=row["operator"],
                      pid=row["pid"], error=closed["error"])
        notes.append(f"{row['kind']} of {row['tenant']} started {row['started_at']} was "
                     f"interrupted; recorded as such")
    for row in cat.abandoned_sanitizations(ctx.catalog, every_host=lost_host is not None):
        error = lost_host or (f"bkp process {row['pid']} stopped before the wipe finished "
                              f"(killed, crashed or power loss)")
        with ctx.catalog.transaction():
            closed = cat.close_sanitization(ctx.catalog, row["id"], "aborted", "aborted",
                                            error=error)
            if closed is None:
                continue
            medium = cat.get_medium(ctx.catalog, row["serial"]) or {}
            ctx.audit("sanitize", "aborted", medium.get("tenant"), record_id=row["id"],
                      serial=row["serial"], device=row["device"], method=row["method"],
                      error=error, reaped=True)
        notes.append(f"sanitization {row['id']} of {row['serial']} started "
                     f"{row['started_at']} never finished (its process is gone); recorded "
                     f"as aborted")
    return notes


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': sizes in progress lines."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def highest_exit(outcomes: Sequence[Outcome]) -> int:
    return max((o.exit_code for o in outcomes), default=0)
