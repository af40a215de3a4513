"""Policy changes on the record.

Every run records the fingerprint of the policy it ran under. When the fingerprint differs
from the last one bkp acted under, the change becomes a `policy.changed` audit event naming
the changed keys, and a change that weakens the tenant's protection (a legal hold lifted,
`keep_until` moved earlier, fewer snapshots kept, another destination, a lower
classification, a source no longer backed up) is flagged in `bkp status` and the report
until an admin acknowledges it. `bkp restic` records the policy it runs under too: a hold
lifted for one hand-run forget is on the record although no run saw it.
Values of keys that name secrets are never written, only that they changed.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from bkp.catalog import as_json
from bkp.policy import KEEP_RULES, SECRET_WORD

if TYPE_CHECKING:
    from bkp.context import Context
    from bkp.policy import Policy

HIDDEN = "(changed; not shown)"


def fingerprint(policy: Policy) -> str:
    return "sha256:" + hashlib.sha256(policy.document.encode("utf-8")).hexdigest()


def flatten(value, prefix: str = "") -> dict[str, object]:
    """{"retention.daily": 7, ...}; lists are one value (sources, host keys)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _secret(key: str) -> bool:
    return any(SECRET_WORD.search(part) for part in key.split("."))


def changed_keys(old: dict, new: dict) -> list[dict]:
    """[{"key", "from", "to"}] for every key added, removed or changed."""
    before, after = flatten(old), flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key) and (key in before) == (key in after):
            continue
        if _secret(key):
            changes.append({"key": key, "from": HIDDEN, "to": HIDDEN})
        else:
            changes.append({"key": key, "from": before.get(key), "to": after.get(key)})
    return changes


def weakenings(old: dict, new: dict) -> list[str]:
    """Why the new rules protect the tenant's data less than the old ones."""
    before, after = flatten(old), flatten(new)
    found = []
    if before.get("retention.legal_hold") is True and after.get("retention.legal_hold") \
            is not True:
        found.append("the legal hold was lifted (retention.legal_hold)")
    old_until, new_until = before.get("retention.keep_until"), after.get("retention.keep_until")
    if old_until and (not new_until or str(new_until) < str(old_until)):
        found.append(f"retention.keep_until moved earlier ({old_until} -> "
                     f"{new_until or 'removed'})")
    for rule in KEEP_RULES:
        was, now = before.get(f"retention.{rule}") or 0, after.get(f"retention.{rule}") or 0
        if isinstance(was, int) and isinstance(now, int) and now < was:
            found.append(f"retention.{rule} shortened ({was} -> {now or 'removed'})")
    moved = sorted(k for k in set(before) | set(after)
                   if k.startswith("destination.") and before.get(k) != after.get(k))
    if moved:
        found.append(f"the destination changed ({', '.join(moved)})")
    if before.get("classification") == "sensitive" and after.get("classification") != \
            "sensitive":
        found.append("the classification was lowered from sensitive")
    for key in sorted(k for k in before if k.startswith("copies") and k not in after):
        found.append(f"{key} was removed")
    for key in ("sources", "databases"):  # what is no longer backed up at all
        gone = _items(before.get(key)) - _items(after.get(key))
        if gone:
            found.append(f"{key}: no longer backed up: {', '.join(sorted(gone))}")
    return found


def _items(value) -> set[str]:
    """A list of sources (paths) or databases (mappings) as comparable strings."""
    if not isinstance(value, list):
        return set()
    return {item if isinstance(item, str) else json.dumps(item, sort_keys=True)
            for item in value}


def record_policy(ctx: Context, policy: Policy) -> str:
    """Note the policy this run (or hand-run restic command) acts under; a change becomes
    an audit event (and a flag when it weakens protection). Returns the fingerprint, for
    the run's record."""
    print_ = fingerprint(policy)
    with ctx.catalog.transaction():  # one version and one event per change, across processes
        last = ctx.catalog.latest_policy_version(policy.tenant)
        if last is not None and last["fingerprint"] == print_:
            return print_
        version = ctx.catalog.add_policy_version(policy.tenant, print_, policy.document,
                                                 ctx.settings.operator)
        if last is None:
            ctx.audit("policy.recorded", "ok", policy.tenant, fingerprint=print_,
                      file=str(policy.file))
            return print_
        old, new = json.loads(last["document"]), json.loads(policy.document)
        changes, weaker = changed_keys(old, new), weakenings(old, new)
        flag_id = ctx.catalog.add_policy_flag(policy.tenant, version, as_json(
            {"weakenings": weaker, "changes": changes})) if weaker else None
        ctx.audit("policy.changed", "flagged" if weaker else "ok", policy.tenant,
                  fingerprint=print_, previous=last["fingerprint"], file=str(policy.file),
                  changes=changes, weakenings=weaker, flag_id=flag_id)
    return print_


def unrecorded_change(catalog, policy: Policy) -> bool:
    """The policy file differs from the last version bkp acted under (read only)."""
    last = catalog.latest_policy_version(policy.tenant)
    return last is not None and last["fingerprint"] != fingerprint(policy)


def open_flags(catalog, tenant: str | None = None) -> list[dict]:
    """Weakening changes not yet acknowledged, as {"id","tenant","flagged_at","weakenings"}."""
    flags = []
    for row in catalog.open_policy_flags(tenant):
        changes = json.loads(row["changes"])
        flags.append({"id": row["id"], "tenant": row["tenant"], "flagged_at": row["flagged_at"],
                      "weakenings": changes.get("weakenings", [])})
    return flags


def acknowledge(ctx: Context, tenant: str, note: str | None = None) -> list[dict]:
    """An admin accepts the weakened rules of `tenant`; recorded with who and why."""
    with ctx.catalog.transaction():
        rows = ctx.catalog.acknowledge_policy_flags(tenant, ctx.settings.operator,
                                                    ctx.settings.os_user)
        if rows:
            ctx.audit("policy.acknowledged", "ok", tenant, flag_ids=[r["id"] for r in rows],
                      note=note)
    return [{"id": r["id"], "tenant": r["tenant"], "flagged_at": r["flagged_at"],
             "acknowledged_by": r["acknowledged_by"], "acknowledged_at": r["acknowledged_at"],
             "weakenings": json.loads(r["changes"]).get("weakenings", [])} for r in rows]
