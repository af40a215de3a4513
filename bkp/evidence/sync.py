"""`bkp catalog sync`: rebuild what the catalog knows about backups from the repositories.

The repository is the truth about backups: every snapshot carries its tenant, purpose and
classification as tags. After losing the bkp host (or after recovering an older evidence
copy), syncing adds a backup row for every snapshot the catalog does not know, marked as
coming from the repository, so `bkp status` tells the real last backup and RPO state.
Idempotent: a second sync adds nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bkp.context import Context, Outcome
from bkp.destinations import open_repository
from bkp.errors import BkpError
from bkp.policy import Policy
from bkp.restic import snapshot_tenant
from bkp.results import SyncEntry


def _utc(text: str) -> str:
    """restic's RFC 3339 time (nanoseconds, any offset) in the catalog's format."""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tenant_snapshots(items: list[dict], tenant: str) -> list[dict]:
    """The snapshots whose tags name this tenant, oldest first, with catalog times."""
    found = []
    for item in items:
        if snapshot_tenant(item.get("tags") or []) != tenant:
            continue
        found.append({**item, "time": _utc(item["time"])})
    return sorted(found, key=lambda s: s["time"])


def sync_tenant(ctx: Context, policy: Policy) -> Outcome:
    try:
        items = open_repository(policy, ctx.settings.home).snapshots()
        snapshots = tenant_snapshots(items, policy.tenant)
        added = ctx.catalog.add_synced_backups(policy.tenant, snapshots, ctx.settings.operator)
    except BkpError as exc:
        ctx.audit("catalog.sync", "failed", policy.tenant, error=str(exc))
        return Outcome(policy.tenant, exc.exit_code, SyncEntry.failure(policy.tenant, str(exc)))
    latest = snapshots[-1] if snapshots else None
    latest_view = {"id": latest["id"], "time": latest["time"]} if latest else None
    ctx.audit("catalog.sync", "ok", policy.tenant, snapshots=len(snapshots), added=added,
              latest=latest_view)
    return Outcome(policy.tenant, 0, SyncEntry(policy.tenant, "ok", snapshots=len(snapshots),
                                               added=added, latest=latest_view))
