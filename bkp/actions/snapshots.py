"""List a tenant's snapshots from its repository."""

from __future__ import annotations

from ..destinations import destination_for
from ..policy import Policy
from ..restic import Restic
from . import Context


def list_snapshots(ctx: Context, policy: Policy) -> list[dict]:
    destination = destination_for(policy, ctx.settings.home)
    destination.preflight()  # a wrong host key or bucket region is refused before restic
    return Restic(destination.repository(), policy.tenant,
                  timeout=policy.timeout_minutes * 60).snapshots()
