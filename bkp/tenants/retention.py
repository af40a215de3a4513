"""Retention per kind: `last: 3` keeps three file snapshots and three dumps of each database.

restic's forget groups by host, paths or the whole tag set, and cannot exclude a tag: a
tenant's dumps would compete with its file snapshots for the same `last` slots, and a
changed purpose tag would start a group that is never forgotten. So bkp lists the
snapshots, applies the keep rules to each (kind, database) group with restic's own
algorithm (restic.kept_by_rules), and has restic forget exactly the others. An inventory
lives as long as the dump it describes.

A tenant that never had a dump keeps the single `forget --group-by ''` call it always had.

When nothing would be forgotten no restic process is started at all: the snapshots are
known from the catalog (the last good backup recorded them), or, in a pod that has no
catalog, from the pod's own signed record of the last night (Context.remembered); such a
record is believed only when the names of the repository's snapshot files, read without
restic (no key derivation), are exactly its snapshots and tonight's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

from bkp.context import Context
from bkp.policy import Policy
from bkp.restic import KIND_FILES, KIND_INVENTORY, Restic, kept_by_rules, snapshot_group


def kept_per_group(snapshots: Sequence[dict], rules: dict[str, int]) -> set[str]:
    """Ids kept by the rules applied to each (kind, database) group; inventories follow
    their dump (an inventory whose dump is gone goes too)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    inventories = []
    for snapshot in snapshots:
        if snapshot_group(snapshot)[0] == KIND_INVENTORY:
            inventories.append(snapshot)
        else:
            groups[snapshot_group(snapshot)].append(snapshot)
    kept: set[str] = set()
    for members in groups.values():
        kept |= kept_by_rules(members, rules)
    short = {k[:8] for k in kept}
    for inventory in inventories:
        if (inventory.get("dump") or "")[:8] in short:
            kept.add(inventory["id"])
    return kept


def _remembered(snapshot: dict) -> dict:
    return {key: snapshot.get(key)
            for key in ("id", "time", "kind", "database", "database_type", "dump")
            if snapshot.get(key) is not None}


def known_snapshots(ctx: Context, policy: Policy, made: Sequence[dict],
                    destination=None) -> list[dict] | None:
    """What the repository held before tonight's snapshots (`made`), without restic: the
    catalog's record, or the pod's own record when the repository's listing confirms it.
    None: not known, restic lists."""
    known = ctx.catalog.kept_snapshots(policy.tenant)
    if known is not None:
        return known
    remembered = ctx.remembered.get(policy.tenant)
    if remembered is None or destination is None or not all(s.get("id") for s in made):
        return None
    listed = destination.snapshot_ids()
    if listed is None or not same_snapshots(listed, [*remembered, *made]):
        return None
    return remembered


def same_snapshots(listed: set[str], recorded: Sequence[dict]) -> bool:
    """Whether the repository's full ids are exactly the recorded ones (restic's backup
    reports a short id: a prefix of exactly one listed id each)."""
    if len(listed) != len(recorded):
        return False
    matched = set()
    for snapshot in recorded:
        found = [full for full in listed if full.startswith(snapshot["id"])]
        if len(found) != 1 or found[0] in matched:
            return False
        matched.add(found[0])
    return True


def apply_retention(ctx: Context, policy: Policy, restic: Restic,
                    made: Sequence[dict], destination=None) -> dict:
    """forget + prune what the rules drop, unless everything the last night left plus
    tonight's snapshots (`made`: id, time, kind, database, dump) would be kept: then nothing
    is forgotten and no restic process is started. Returns the run's retention fields."""
    rules = policy.retention.keep_rules()
    known = known_snapshots(ctx, policy, made, destination)
    if known is not None and made and all(s.get("id") for s in made):
        candidate = [*known, *made]
        if kept_per_group(candidate, rules) == {s["id"] for s in candidate}:
            return kept_fields([_remembered(s) for s in candidate])
    ever_dumped = policy.databases or any(
        (s.get("kind") or KIND_FILES) != KIND_FILES for s in [*(known or []), *made])
    if not ever_dumped:
        result = restic.forget(policy.retention)
        return kept_fields([{**s, "kind": KIND_FILES} for s in result.kept_snapshots])
    listed = restic.snapshots()
    kept = kept_per_group(listed, rules)
    dropped = [s["id"] for s in listed if s["id"] not in kept]
    if dropped:
        restic.forget_ids(dropped)
    return kept_fields([_remembered(s) for s in listed if s["id"] in kept])


def pending_retention(ctx: Context, policy: Policy, restic: Restic,
                      made: Sequence[dict], destination=None) -> dict:
    """On an append-only destination nothing is forgotten at night: the run records every
    snapshot the repository holds and how many of them the keep rules would drop, which
    wait for `bkp maintain` (shown by `bkp status`). No restic process when the last
    record plus tonight's snapshots say it."""
    known = known_snapshots(ctx, policy, made, destination)
    if known is not None and made and all(s.get("id") for s in made):
        present = [*known, *made]
    else:
        present = [_remembered(s) for s in restic.snapshots()]
    kept = kept_per_group(present, policy.retention.keep_rules())
    return {**kept_fields(present),
            "maintenance_pending": sum(1 for s in present if s["id"] not in kept)}


def forget_beyond_rules(policy: Policy, restic: Restic) -> tuple[list[dict], list[str]]:
    """`bkp maintain`: the snapshots the keep rules keep, and forget + prune of the others,
    grouped per kind as every night does elsewhere. The immutability canary carries no
    tenant tag, so it is never listed here and never forgotten."""
    listed = restic.snapshots()
    kept = kept_per_group(listed, policy.retention.keep_rules())
    dropped = [s["id"] for s in listed if s["id"] not in kept]
    if dropped:
        restic.forget_ids(dropped)
    return [_remembered(s) for s in listed if s["id"] in kept], dropped


def kept_fields(kept: list[dict]) -> dict:
    files = [s for s in kept if (s.get("kind") or KIND_FILES) == KIND_FILES]
    return {"snapshots_kept": len(files), "kept_snapshots": json.dumps(kept)}
