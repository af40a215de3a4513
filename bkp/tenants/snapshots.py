"""List a tenant's snapshots from its repository."""

from __future__ import annotations

from bkp.context import Context
from bkp.destinations import open_repository
from bkp.policy import Policy


def list_snapshots(ctx: Context, policy: Policy) -> list[dict]:
    return open_repository(policy, ctx.settings.home).snapshots()
