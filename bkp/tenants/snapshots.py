"""List a tenant's snapshots from its repository."""

from __future__ import annotations

from bkp.context import Context
from bkp.destinations import destination_for
from bkp.policy import Policy
from bkp.restic import Restic


def list_snapshots(ctx: Context, policy: Policy) -> list[dict]:
    destination = destination_for(policy, ctx.settings.home)
    destination.preflight()  # a wrong host key or bucket region is refused before restic
    return Restic(destination.repository(), policy.tenant,
                  timeout=policy.timeout_minutes * 60).snapshots()
