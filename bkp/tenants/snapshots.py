"""List a tenant's snapshots from its repository."""

from __future__ import annotations

from bkp.context import Context
from bkp.destinations import open_repository
from bkp.policy import Policy


def list_snapshots(ctx: Context, policy: Policy) -> list[dict]:
    """`policy` may be the view at a copy (bkp.policy.at_copy): then the copy's."""
    return open_repository(policy, ctx.settings.home).snapshots()
