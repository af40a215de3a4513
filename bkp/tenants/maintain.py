"""`bkp maintain`: retention on append-only destinations, through their other door.

An append-only server refuses the nightly credential every deletion, so nightly runs never
forget there (bkp.tenants.retention.pending_retention counts what waits). Maintenance runs
where the credential that may delete lives (maintenance_credentials_file, usually another
host), reaches the same repository through maintenance_url, and applies the keep rules per
kind exactly as a nightly run does elsewhere. It holds the tenant's lock and leaves a run
record and an audit event like every writer.
"""

from __future__ import annotations

from bkp.context import Context, Outcome, interrupt, locked, open_tenant_run, stopping
from bkp.errors import BkpError, OperationError, PolicyError
from bkp.policy import Policy
from bkp.restic import Restic, version
from bkp.results import MaintainEntry
from bkp.tenants.retention import forget_beyond_rules, kept_fields


def maintenance_refusal(policy: Policy) -> PolicyError | None:
    """Why this tenant has nothing `bkp maintain` could do (exit 3), or None."""
    dest = policy.destination
    if not dest.append_only:
        return PolicyError(f"{policy.tenant} has no append_only destination: its nightly "
                           f"runs apply retention themselves; nothing to maintain")
    if dest.maintenance_credentials_file is None:
        return PolicyError(f"{policy.tenant}: destination.maintenance_credentials_file is not "
                           f"set (legal hold: nothing is ever forgotten); nothing to maintain")
    if not dest.maintenance_credentials_file.exists():
        return PolicyError(f"{policy.tenant}: the maintenance credential "
                           f"{dest.maintenance_credentials_file} is not on this host; run "
                           f"`bkp maintain` on the maintenance host, where it lives")
    return None


def maintain_tenant(ctx: Context, policy: Policy) -> Outcome:
    refusal = maintenance_refusal(policy)
    if refusal is not None:
        ctx.audit("maintain", "refused", policy.tenant, error=str(refusal))
        return Outcome(policy.tenant, refusal.exit_code,
                       MaintainEntry.failure(policy.tenant, str(refusal), "invalid"))
    if policy.retention.legal_hold:  # nothing may be forgotten: done, and said so
        ctx.audit("maintain", "skipped", policy.tenant, reason="legal hold")
        return Outcome(policy.tenant, 0, MaintainEntry(
            policy.tenant, "ok", result="legal_hold", snapshots_forgotten=0,
            error="legal hold: nothing is forgotten"))
    return locked(ctx, policy, "maintain", lambda: _maintain(ctx, policy), MaintainEntry)


def _maintain(ctx: Context, policy: Policy) -> Outcome:
    from bkp.destinations.rest import RestDestination

    run_id = open_tenant_run(ctx, policy, "maintain", trigger="manual", slot=None,
                             restic_version=_restic_version())
    destination = RestDestination(policy, ctx.settings.home, maintenance=True)
    restic: Restic | None = None
    fields: dict = {}
    forgotten: list[str] = []
    error: BkpError | None = None
    try:
        preflight = destination.preflight()  # the certificate before the credential
        if preflight.initialised is False:
            raise OperationError(f"no repository at {destination.label}: is maintenance_url "
                                 f"the same repository as url?")
        restic = Restic(destination.repository(), policy.tenant,
                        timeout=policy.timeout_minutes * 60)
        if ctx.progress:
            ctx.progress(f"{policy.tenant}: applying retention at {destination.label}")
        kept, forgotten = forget_beyond_rules(policy, restic)
        fields = {**kept_fields(kept), "maintenance_pending": 0,
                  "repository_bytes": _usage(destination)}
    except BkpError as exc:
        error = exc
    except KeyboardInterrupt:
        interrupt()
        error = OperationError("stopped by a signal")
        _close(ctx, policy, run_id, error, fields, forgotten, restic, destination)
        raise
    except Exception as exc:  # an unforeseen error still closes the record honestly
        error = OperationError(f"unexpected {exc.__class__.__name__}: {exc}")
        _close(ctx, policy, run_id, error, fields, forgotten, restic, destination)
        raise
    return _close(ctx, policy, run_id, error, fields, forgotten, restic, destination)


def _close(ctx: Context, policy: Policy, run_id: int, error: BkpError | None, fields: dict,
           forgotten: list[str], restic: Restic | None, destination) -> Outcome:
    status = "ok" if error is None else "interrupted" if stopping.is_set() else "failed"
    with ctx.catalog.transaction():  # the record and its event, or neither
        row = ctx.catalog.close_run(run_id, status, error=str(error) if error else None,
                                    restic_calls=restic.calls if restic else 0, **fields)
        ctx.audit("maintain", status, policy.tenant, run_id=run_id,
                  repository=destination.label, snapshots_kept=row["snapshots_kept"],
                  snapshots_forgotten=len(forgotten) if error is None else None,
                  forgotten=[s[:8] for s in forgotten], error=row["error"])
    data = MaintainEntry(policy.tenant, "ok" if status == "ok" else "failed",
                         error=row["error"], result=status,
                         snapshots_kept=row["snapshots_kept"],
                         snapshots_forgotten=len(forgotten) if error is None else None,
                         repository=destination.label, run_id=run_id,
                         duration_s=row["duration_s"], restic_calls=row["restic_calls"])
    return Outcome(policy.tenant, error.exit_code if error else 0, data)


def _usage(destination) -> int | None:
    try:
        return destination.usage_bytes()
    except Exception:
        return None


def _restic_version() -> str | None:
    try:
        return str(version())
    except BkpError:
        return None
