"""Who may act, on the record.

The operators list in bkp.yaml decides who may wipe a disk or approve an erasure, so a
change to it is a change of the rules that protect tenants' data: the first command that
acts under a new list records it (`operators.recorded`, then `operators.changed` naming
who was added, removed or given another role, OS user or key). The list lives in the
hash-chained audit trail itself, so nothing else can be edited to hide a change.

A list that disappears (bkp.yaml emptied, replaced, its `operators` key dropped, the file
gone) would otherwise give every identity every right without a word. Once operators were
registered, bkp refuses to act without them (exit 3) until bkp.yaml has them again or says
`operators: []`: access control is turned off only on purpose, and that is recorded too.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from bkp.errors import PolicyError

if TYPE_CHECKING:
    from bkp.context import Context
    from bkp.installation import Installation

ACTIONS = ("operators.recorded", "operators.changed")


def described(operators) -> list[dict]:
    """The list as recorded: who, as which OS users, in which role, with which key (its
    fingerprint; a public key is no secret, but the fingerprint is what people compare)."""
    from bkp.evidence.approvals import key_fingerprint

    return sorted(({"name": o.name, "os_users": sorted(o.os_users), "role": o.role,
                    "key_fingerprint": key_fingerprint(o.ssh_key)} for o in operators),
                  key=lambda o: o["name"])


def fingerprint(people: list[dict]) -> str:
    document = json.dumps(people, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(document.encode("utf-8")).hexdigest()


def last_recorded(catalog) -> list[dict] | None:
    """The operators list bkp last acted under; None when none was ever recorded."""
    event = catalog.last_event_of(ACTIONS)
    if event is None:
        return None
    return json.loads(event["details"] or "{}").get("operators", [])


def lost(catalog, installation: Installation) -> str | None:
    """Why bkp may not act: operators were registered and bkp.yaml lost them (read only)."""
    if installation.operators or installation.operators_declared:
        return None
    before = last_recorded(catalog)
    if not before:
        return None
    where = installation.file or "bkp.yaml (BKP_CONFIG, --config; default /etc/bkp/bkp.yaml)"
    return (f"{where} registers no operators, but bkp acted under {len(before)} registered "
            f"operator{'s' if len(before) != 1 else ''}: a lost or emptied bkp.yaml does not "
            f"turn access control off. Restore bkp.yaml, or write `operators: []` in it to "
            f"turn access control off on purpose (recorded)")


def record_operators(ctx: Context, installation: Installation) -> None:
    """Refuse (PolicyError, exit 3) when the list was lost; record it when it changed."""
    problem = lost(ctx.catalog, installation)
    if problem:
        raise PolicyError(problem)
    now = described(installation.operators)
    with ctx.catalog.transaction():  # one event per change, across processes
        before = last_recorded(ctx.catalog)
        if before is None and not now:
            return  # never registered: bkp works as before
        if before is not None and fingerprint(before) == fingerprint(now):
            return
        if before is None:
            ctx.audit("operators.recorded", "ok", None, operators=now,
                      fingerprint=fingerprint(now), file=str(installation.file))
            return
        ctx.audit("operators.changed", "ok", None, operators=now,
                  fingerprint=fingerprint(now), previous=fingerprint(before),
                  file=str(installation.file), **differences(before, now))


def differences(before: list[dict], now: list[dict]) -> dict:
    old = {o["name"]: o for o in before}
    new = {o["name"]: o for o in now}
    return {
        "added": [new[n] for n in sorted(set(new) - set(old))],
        "removed": [old[n] for n in sorted(set(old) - set(new))],
        "changed": [{"name": n, "from": old[n], "to": new[n]}
                    for n in sorted(set(old) & set(new)) if old[n] != new[n]]}
