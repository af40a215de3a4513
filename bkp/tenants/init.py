"""Prepare a tenant's destination and initialise its repository; idempotent."""

from __future__ import annotations

from bkp.context import Context, Outcome
from bkp.destinations import destination_for
from bkp.errors import BkpError, OperationError
from bkp.policy import Policy
from bkp.restic import Restic
from bkp.results import InitEntry


def init_tenant(ctx: Context, policy: Policy) -> Outcome:
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
            policy.tenant, "failed", error=str(exc), result="failed", repository=label))
    ctx.audit("init", status, policy.tenant, repository=label)
    return Outcome(policy.tenant, 0, InitEntry(policy.tenant, status, repository=label))
