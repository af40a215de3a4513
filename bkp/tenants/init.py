"""Prepare a tenant's destination and initialise its repository, then each copy's with the
same chunker parameters (so the same files deduplicate in every copy); idempotent."""

from __future__ import annotations

from bkp.context import Context, Outcome, offboarded_refusal
from bkp.destinations import destination_for
from bkp.errors import BkpError, OperationError
from bkp.policy import Copy, Policy
from bkp.restic import Repository, Restic
from bkp.results import InitEntry


def init_tenant(ctx: Context, policy: Policy) -> Outcome:
    refusal = offboarded_refusal(ctx, policy, "init", InitEntry)
    if refusal is not None:
        return refusal
    destination = destination_for(policy, ctx.settings.home)
    label = policy.tenant
    try:
        preflight = destination.preflight()
        label = destination.repository().label
        if preflight.initialised:
            status = "exists"
        else:
            if not preflight.reachable:
                raise OperationError(f"{policy.tenant}: {preflight.detail}")
            destination.prepare()
            Restic(destination.repository(), policy.tenant,
                   timeout=policy.timeout_minutes * 60).init()
            status = "initialised"
    except BkpError as exc:
        ctx.audit("init", "failed", policy.tenant, repository=label, error=str(exc))
        return Outcome(policy.tenant, exc.exit_code, InitEntry(
            policy.tenant, "failed", error=str(exc), result="failed", repository=label,
            extra=_not_reached(policy)))
    ctx.audit("init", status, policy.tenant, repository=label)
    copies = [init_copy(ctx, policy, copy, destination.repository())
              for copy in policy.copies]
    failed = [c for c in copies if c["status"] == "failed"]
    entry = InitEntry(policy.tenant, "failed" if failed else status, repository=label,
                      error="; ".join(c["error"] for c in failed) or None,
                      result="failed" if failed else None,
                      extra={"copies": copies} if policy.copies else {})
    return Outcome(policy.tenant, max((c.pop("exit_code") for c in copies), default=0), entry)


def init_copy(ctx: Context, policy: Policy, copy: Copy, primary: Repository) -> dict:
    """One copy's repository, initialised with the primary's chunker parameters."""
    from bkp.tenants.copies import copy_destination, pair_for

    destination = copy_destination(ctx, policy, copy)
    label = getattr(destination, "label", copy.destination.type)
    try:
        preflight = destination.preflight()
        if preflight.initialised:
            status = "exists"
        else:
            if not preflight.reachable:
                raise OperationError(preflight.detail)
            destination.prepare()
            Restic(pair_for(primary, destination), policy.tenant,
                   timeout=policy.timeout_minutes * 60).init_copy()
            status = "initialised"
    except BkpError as exc:
        error = f"copy {copy.id} ({label}): {exc}"
        ctx.audit("init", "failed", policy.tenant, copy=copy.id, repository=label, error=error)
        return {"id": copy.id, "status": "failed", "repository": label, "error": error,
                "exit_code": exc.exit_code}
    ctx.audit("init", status, policy.tenant, copy=copy.id, repository=label)
    return {"id": copy.id, "status": status, "repository": label, "error": None,
            "exit_code": 0}


def _not_reached(policy: Policy) -> dict:
    if not policy.copies:
        return {}
    return {"copies": [{"id": c.id, "status": "failed", "repository": None,
                        "error": "not initialised: the destination's repository is not ready"}
                       for c in policy.copies]}
