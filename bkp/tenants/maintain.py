"""`bkp maintain`: retention on append-only destinations, through their other door.

An append-only server refuses the nightly credential every deletion, so nightly runs never
forget there (bkp.tenants.retention.pending_retention counts what waits). Maintenance runs
where the credential that may delete lives (maintenance_credentials_file, usually another
host), reaches the same repository through maintenance_url, and applies the keep rules per
kind exactly as a nightly run does elsewhere. It holds the tenant's lock and leaves a run
record and an audit event like every writer.

An append-only copy at another site (`copies:` with append_only) is maintained the same way,
through its own maintenance_url and credential, in the same run: each copy's result is in
`copies` of the tenant's entry, and a copy that could not be maintained fails the tenant
(exit 1, or 3 when its credential is not on this host), named.
"""

from __future__ import annotations

import json

from bkp.context import Context, Outcome, interrupt, locked, open_tenant_run, stopping
from bkp.errors import BkpError, OperationError, PolicyError
from bkp.policy import Copy, Destination, Policy, at_copy
from bkp.restic import Restic, version_on_record
from bkp.results import MaintainEntry
from bkp.tenants.backup import repository_size
from bkp.tenants.retention import forget_beyond_rules, kept_fields


def append_only_copies(policy: Policy) -> list[Copy]:
    return [copy for copy in policy.copies if copy.destination.append_only]


def has_maintenance(policy: Policy) -> bool:
    """Whether `bkp maintain` has anything to do for the tenant (what --all selects)."""
    return policy.destination.append_only or bool(append_only_copies(policy))


def maintenance_refusal(policy: Policy) -> PolicyError | None:
    """Why this tenant has nothing `bkp maintain` could do (exit 3), or None."""
    dest = policy.destination
    if not has_maintenance(policy):
        return PolicyError(f"{policy.tenant} has no append_only destination or copy: its "
                           f"nightly runs apply retention themselves; nothing to maintain")
    if not dest.append_only:
        return None  # only copies: each is judged on its own (credential_refusal)
    return credential_refusal(policy.tenant, "destination", dest)


def credential_refusal(tenant: str, where: str, dest: Destination) -> PolicyError | None:
    """Why the repository `where` (destination, or `copy ID`) cannot be maintained here."""
    key = "destination" if where == "destination" else f"{where}:"
    if dest.maintenance_credentials_file is None:
        return PolicyError(f"{tenant}: {key}.maintenance_credentials_file is not set (legal "
                           f"hold: nothing is ever forgotten); nothing to maintain"
                           if where == "destination" else
                           f"{tenant}: {where} has no maintenance_credentials_file; nothing "
                           f"to maintain there")
    if not dest.maintenance_credentials_file.exists():
        return PolicyError(f"{tenant}: the maintenance credential "
                           f"{dest.maintenance_credentials_file}"
                           f"{'' if where == 'destination' else f' of {where}'} is not on "
                           f"this host; run `bkp maintain` on the maintenance host, where it "
                           f"lives")
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
            error="legal hold: nothing is forgotten",
            extra=_copies_field(policy, [
                {"id": c.id, "status": "ok", "result": "legal_hold", "snapshots_kept": None,
                 "snapshots_forgotten": 0, "repository": None, "error": None}
                for c in append_only_copies(policy)])))
    return locked(ctx, policy, "maintain", lambda: _maintain(ctx, policy), MaintainEntry)


def _maintain(ctx: Context, policy: Policy) -> Outcome:
    from bkp.destinations.rest import RestDestination

    run_id = open_tenant_run(ctx, policy, "maintain", trigger="manual", slot=None,
                             restic_version=version_on_record())
    destination = RestDestination(policy, ctx.settings.home, maintenance=True) \
        if policy.destination.append_only else None
    restic: Restic | None = None
    fields: dict = {}
    forgotten: list[str] = []
    error: BkpError | None = None
    copies: list[dict] = []
    try:
        if destination is not None:
            try:
                restic, fields, forgotten = _maintain_destination(ctx, policy, destination)
            except BkpError as exc:  # the copies are another site: they are still done
                error = exc
        copies = [_maintain_copy(ctx, policy, copy, run_id)
                  for copy in append_only_copies(policy)]
        error = combined(error, copies_failure(copies))
    except BkpError as exc:
        error = exc
    except KeyboardInterrupt:
        interrupt()
        error = OperationError("stopped by a signal")
        _close(ctx, policy, run_id, error, fields, forgotten, restic, destination, copies)
        raise
    except Exception as exc:  # an unforeseen error still closes the record honestly
        error = OperationError(f"unexpected {exc.__class__.__name__}: {exc}")
        _close(ctx, policy, run_id, error, fields, forgotten, restic, destination, copies)
        raise
    return _close(ctx, policy, run_id, error, fields, forgotten, restic, destination, copies)


def _maintain_destination(ctx: Context, policy: Policy, destination
                          ) -> tuple[Restic, dict, list[str]]:
    """Retention at the destination (or, with a policy at a copy, at that copy)."""
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
              "repository_bytes": repository_size(destination)}
    return restic, fields, forgotten


def _maintain_copy(ctx: Context, policy: Policy, copy: Copy, run_id: int) -> dict:
    """Retention at one append-only copy through its own maintenance door. The copy's
    snapshots carry their original ids (an inventory names its dump's original), so the
    keep rules are applied as the nightly copy applies them (copies.forget_plan). What the
    copy holds afterwards is recorded with the run, so the next night and `bkp status`
    start from it."""
    from bkp.destinations.rest import RestDestination
    from bkp.tenants.copies import _remembered as remembered
    from bkp.tenants.copies import forget_plan

    entry = {"id": copy.id, "status": "failed", "snapshots_kept": None,
             "snapshots_forgotten": None, "repository": None, "error": None}
    restic: Restic | None = None
    held: list[dict] | None = None
    code = 1
    try:
        refusal = credential_refusal(policy.tenant, copy.label, copy.destination)
        if refusal is not None:
            raise refusal
        destination = RestDestination(at_copy(policy, copy), ctx.settings.home,
                                      maintenance=True)
        entry["repository"] = destination.label
        if destination.preflight().initialised is False:
            raise OperationError(f"no repository at {destination.label}: is maintenance_url "
                                 f"the same repository as url?")
        restic = Restic(destination.repository(), policy.tenant,
                        timeout=policy.timeout_minutes * 60)
        if ctx.progress:
            ctx.progress(f"{policy.tenant}: applying retention at {copy.label} "
                         f"({destination.label})")
        held = [remembered(s) for s in restic.snapshots()]
        dropped, entry["snapshots_kept"] = forget_plan(held, policy.retention.keep_rules())
        if dropped:
            restic.forget_ids(dropped)
        held = [s for s in held if s["id"] not in dropped]
        entry.update(status="ok", snapshots_forgotten=len(dropped))
        code = 0
    except BkpError as exc:
        entry["error"] = f"{copy.label}: {exc}"
        code = exc.exit_code
    ctx.catalog.add_copy_result(run_id, policy.tenant, {
        "copy_id": copy.id, "destination": entry["repository"] or copy.destination.type,
        "status": entry["status"], "snapshots_copied": 0,
        "snapshots_kept": entry["snapshots_kept"], "error": entry["error"],
        "kept_snapshots": json.dumps(held) if entry["status"] == "ok" else None})
    return {**entry, "exit_code": code, "restic_calls": restic.calls if restic else 0}


def copies_failure(copies: list[dict]) -> BkpError | None:
    failed = [c for c in copies if c["status"] != "ok"]
    if not failed:
        return None
    error = OperationError("; ".join(c["error"] for c in failed))
    error.exit_code = max(c["exit_code"] for c in failed)
    return error


def combined(first: BkpError | None, second: BkpError | None) -> BkpError | None:
    if first is None or second is None:
        return first or second
    error = OperationError(f"{first}; {second}")
    error.exit_code = max(first.exit_code, second.exit_code)
    return error


def _copies_field(policy: Policy, copies: list[dict]) -> dict:
    if not append_only_copies(policy):
        return {}
    shown = ("id", "status", "result", "snapshots_kept", "snapshots_forgotten",
             "repository", "error")
    return {"copies": [{k: c.get(k) for k in shown if k in c} for c in copies]}


def _close(ctx: Context, policy: Policy, run_id: int, error: BkpError | None, fields: dict,
           forgotten: list[str], restic: Restic | None, destination,
           copies: list[dict] | None = None) -> Outcome:
    status = "ok" if error is None else "interrupted" if stopping.is_set() else "failed"
    copies = copies or []
    # The destination's count stands when only a copy failed: its retention went through.
    done_here = destination is not None and "snapshots_kept" in fields
    calls = (restic.calls if restic else 0) + sum(c["restic_calls"] for c in copies)
    label = destination.label if destination is not None else None
    with ctx.catalog.transaction():  # the record and its event, or neither
        row = ctx.catalog.close_run(run_id, status, error=str(error) if error else None,
                                    restic_calls=calls, **fields)
        ctx.audit("maintain", status, policy.tenant, run_id=run_id,
                  repository=label, snapshots_kept=row["snapshots_kept"],
                  snapshots_forgotten=len(forgotten) if done_here else None,
                  forgotten=[s[:8] for s in forgotten], error=row["error"],
                  **({"copies": [{"id": c["id"], "status": c["status"],
                                  "snapshots_forgotten": c["snapshots_forgotten"]}
                                 for c in copies]} if copies else {}))
    data = MaintainEntry(policy.tenant, "ok" if status == "ok" else "failed",
                         error=row["error"], result=status,
                         snapshots_kept=row["snapshots_kept"],
                         snapshots_forgotten=len(forgotten) if done_here else None,
                         repository=label, run_id=run_id,
                         duration_s=row["duration_s"], restic_calls=row["restic_calls"],
                         extra=_copies_field(policy, copies))
    return Outcome(policy.tenant, error.exit_code if error else 0, data)


