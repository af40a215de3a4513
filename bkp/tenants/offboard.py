"""`bkp offboard`: every copy of a departing tenant's backups erased, verified, recorded and
certified; and `bkp erase`: particular snapshots erased on request.

Offboarding inventories first (snapshots, objects, bytes at every place), then erases
cryptographically before physically: the repository's key files go first, through the
destination itself (restic will not remove the key it uses), so that any object that
survives a failure is unreadable; then every object; then the tenant's restic cache and
scratch space on this host. It verifies that the location lists no object and that restic
can no longer open the repository. Anything left fails the attempt (exit 1), named and
recorded; the same command finishes the job when run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from bkp import catalog as cat
from bkp import restic as restic_tools
from bkp.access import Actor
from bkp.context import Context
from bkp.errors import BkpError, SafetyError, UsageError
from bkp.evidence.certify import ensure_can_certify, issue_certificate
from bkp.names import shown
from bkp.policy import Policy
from bkp.restic import KIND_INVENTORY
from bkp.tenants import erasure
from bkp.tenants.erasure import Held, Target

RESTIC_FOLDERS = ("keys", "data", "index", "snapshots", "locks")  # and the file "config"
LEFT_NAMED = 20  # objects named in the record when something is left; the count is exact


@dataclass(frozen=True)
class ErasureRequest:
    policy: Policy
    yes: bool = False
    reason: str | None = None
    witness: str | None = None
    snapshots: tuple[str, ...] = ()  # bkp erase
    paths: tuple[str, ...] = ()  # bkp erase --path: needs restic rewrite
    others: tuple = ()  # (who, Destination) of every other repository bkp knows


def refused(ctx: Context, action: str, tenant: str, work: Callable[[], tuple[dict, int]]):
    """Run `work`; a refusal is evidence too (audited), and nothing was touched."""
    try:
        return work()
    except SafetyError as exc:
        ctx.audit(action, "refused", tenant, error=str(exc))
        raise


# ---------------------------------------------------------------- offboard

def offboard(ctx: Context, actor: Actor, request: ErasureRequest,
             ask: Callable[[], str | None]) -> tuple[dict, int]:
    policy = request.policy
    return refused(ctx, "offboard", policy.tenant,
                   lambda: _offboard(ctx, actor, request, ask))


def _offboard(ctx, actor, request, ask):
    policy = request.policy
    problem = erasure.protection(policy) or erasure.nested_repository(
        policy, list(request.others))
    if problem:
        raise SafetyError(problem)
    erasure.confirmed(policy.tenant, request.yes, ask)
    with Held(ctx, policy, "offboard"):
        places = erasure.targets(policy, ctx.settings.home)
        record = erasure.current_record(ctx, policy.tenant, "offboard")
        earlier = _inventory_of(record)
        inventory = [_inventory(place, earlier.get(place.id)) for place in places]
        if record is None:
            record = erasure.new_record(ctx, policy, "offboard", reason=request.reason,
                                        witness=request.witness, snapshots=None,
                                        method=erasure.METHOD)
        waiting = erasure.approval_state(ctx, actor, record, _what_offboard(policy,
                                                                            inventory),
                                         places)
        if waiting is not None:
            return erasure.pending_document(record, waiting), 0
        ensure_can_certify(ctx)  # a tenant erased without its certificate is worse
        record = cat.start_attempt(ctx.catalog, record["id"], inventory=json.dumps(
            {**earlier, **{i["id"]: i for i in inventory if i["id"] not in earlier}}))
        ctx.audit("offboard", "started", policy.tenant, record_id=record["id"],
                  attempt=record["attempts"], inventory=inventory)
        stored = json.loads(record["inventory"])
        results = [_erase_place(ctx, record, place, stored[place.id]) for place in places]
        host = erasure.clear_host(ctx, policy.tenant)
        return _finish(ctx, record, results, host)


def _inventory_of(record: dict | None) -> dict:
    return json.loads(record["inventory"]) if record and record["inventory"] else {}


def _inventory(place: Target, earlier: dict | None) -> dict:
    """What rests at this place before anything is touched; refused (4) when the provider
    still holds it (Object Lock). Snapshots come from restic while it can open the
    repository, else from the first attempt's inventory."""
    blocked = place.destination.erasure_blocked_until()
    if blocked:
        raise SafetyError(f"{place.id} ({place.label}): {blocked}. Nothing was touched")
    objects = place.destination.stored_objects()
    summary = erasure.objects_summary(objects)
    snapshots = None
    if summary["keys"]:
        snapshots = erasure.list_snapshots(place)
    if objects and not earlier:
        _tenants_own(place, objects, snapshots)
    if snapshots is None and earlier:
        snapshots = earlier.get("snapshot_ids")
    if earlier:  # what was there when the erasure began is what it erased
        summary = {k: earlier[k] for k in ("objects", "bytes", "keys")}
    return {"id": place.id, "type": place.policy.destination.type, "location": place.label,
            "snapshots": len(snapshots) if snapshots is not None else None,
            "snapshot_ids": [s["id"] if isinstance(s, dict) else s for s in snapshots or []],
            **summary}


def _tenants_own(place: Target, objects, snapshots) -> None:
    """Before the first object goes: the location is a restic repository and the tenant's
    password opens it. A policy pointed at a folder of other files, or at a repository
    that is someone else's, would otherwise be wiped as "the tenant's backups". A re-run
    of a started erasure has its first inventory instead (its keys may be gone by then)."""
    where = f"{place.id} ({place.label})"
    if not any(o.name == "config" and not o.marker for o in objects):
        raise SafetyError(f"{where} holds {len(objects)} object(s) but no restic repository "
                          f"(no config): it is not {place.policy.tenant}'s repository; fix "
                          f"the policy's destination. Nothing was touched")
    foreign = [o.name for o in objects if o.name != "config"
               and o.name.split("/", 1)[0] not in RESTIC_FOLDERS]
    if foreign:
        raise SafetyError(f"{where} also holds {len(foreign)} object(s) restic did not write, "
                          f"e.g. {', '.join(foreign[:3])}: they are not "
                          f"{place.policy.tenant}'s backups; move them elsewhere first. "
                          f"Nothing was touched")
    if snapshots is None:
        raise SafetyError(f"{where}: restic cannot open this repository with "
                          f"{place.policy.tenant}'s password, so it is not proven to be "
                          f"{place.policy.tenant}'s; fix the policy (destination or "
                          f"password_file). Nothing was touched")
    others = place.restic().other_tenants()
    if others:
        named = ", ".join(shown(t) for t in sorted(others))
        raise SafetyError(f"{where} holds snapshots of {named}: it is not only "
                          f"{place.policy.tenant}'s repository; fix the policy's "
                          f"destination. Nothing was touched")


def _what_offboard(policy: Policy, inventory: list[dict]) -> str:
    places = "; ".join(f"{i['id']} {i['location']}: {i['snapshots']} snapshots, "
                       f"{i['objects']} objects, {i['bytes']} bytes" for i in inventory)
    return f"offboard tenant {policy.tenant}: erase every backup ({places})"


def _erase_place(ctx: Context, record: dict, place: Target, inventory: dict) -> dict:
    """Keys, then every object, then the proof; a failure is this place's, named."""
    result = {"id": place.id, "type": inventory["type"], "location": inventory["location"],
              "snapshots": inventory["snapshots"] or 0,
              "snapshot_ids": inventory["snapshot_ids"], "objects": inventory["objects"],
              "bytes": inventory["bytes"], "keys": inventory["keys"], "status": "failed",
              "error": None, "left": [], "left_count": None,
              "verification": {"listed_objects": None, "repository_opens": None}}
    try:
        keys = place.destination.remove_keys()
        ctx.audit("offboard", "keys removed", record["tenant"], record_id=record["id"],
                  destination=place.id, keys=len(keys))
        place.destination.remove_objects()
    except BkpError as exc:
        result["error"] = f"{place.id} ({place.label}): {exc}"
    except Exception as exc:  # one place's surprise must not hide the others' results
        result["error"] = f"{place.id} ({place.label}): {erasure.failure_of(exc)}"
    _verify_place(place, result, removal_failed=result["error"] is not None)
    return result


def _verify_place(place: Target, result: dict, removal_failed: bool) -> None:
    """Nothing listed at the location, and restic cannot open it. After a failed removal
    restic is not asked (an endpoint that stopped would keep it retrying for minutes)."""
    try:
        left = place.destination.stored_objects()
    except BkpError as exc:
        result["error"] = result["error"] or f"{place.id} ({place.label}): {exc}"
        result["verification"]["detail"] = f"the location could not be listed: {exc}"
        _count_removed(result, None)
        return
    result["left"] = [o.describe() for o in left[:LEFT_NAMED]]
    result["left_count"] = len(left)
    result["verification"]["listed_objects"] = len(left)
    _count_removed(result, left)
    if removal_failed:
        return
    try:
        opens = place.restic().opens()
    except BkpError as exc:
        result["error"] = f"{place.id} ({place.label}): restic could not tell whether the " \
                          f"repository still opens: {exc}"
        return
    result["verification"]["repository_opens"] = opens
    if left:
        result["error"] = (f"{place.id} ({place.label}): {len(left)} object(s) left, e.g. "
                           f"{', '.join(result['left'][:3])}")
    elif opens:
        result["error"] = f"{place.id} ({place.label}): restic still opens the repository"
    else:
        result["status"] = "erased"


def _count_removed(result: dict, left) -> None:
    if left is None:
        result.update(keys_removed=None, objects_removed=None, bytes_removed=None)
        return
    result["keys_removed"] = max(result["keys"] - sum(1 for o in left if o.is_key
                                                      and not o.marker), 0)
    result["objects_removed"] = max(result["objects"] - len(left), 0)
    result["bytes_removed"] = max(result["bytes"] - sum(o.size for o in left), 0)


def _finish(ctx: Context, record: dict, results: list[dict], host: dict
            ) -> tuple[dict, int]:
    problems = [r["error"] for r in results if r["status"] != "erased"]
    problems += [f"could not remove {place} on this host" for place in host["left"]]
    status = "failed" if problems else "erased"
    error = "; ".join(p for p in problems if p) or None
    record = erasure.close(ctx, record, status, results, host, error)
    certificate = issue_certificate(ctx, record["id"]) if status == "erased" else None
    snapshots = sum(r["snapshots"] or 0 for r in results) if status == "erased" else 0
    document = {"tenant": record["tenant"], "status": status, "record_id": record["id"],
                "snapshots_erased": snapshots, "destinations": results, "host": host,
                "attempt": record["attempts"], "certificate": certificate, "error": error}
    return document, 0 if status == "erased" else 1


# ---------------------------------------------------------------- erase snapshots

def erase(ctx: Context, actor: Actor, request: ErasureRequest,
          ask: Callable[[], str | None]) -> tuple[dict, int]:
    policy = request.policy
    return refused(ctx, "erase", policy.tenant, lambda: _erase(ctx, actor, request, ask))


def rewrite_refusal(paths) -> None:
    """Dropping single paths from snapshots needs `restic rewrite` (restic >= 0.15)."""
    if not paths:
        return
    found = restic_tools.version()
    if not found.at_least(*restic_tools.REWRITE_SINCE):
        raise UsageError(f"restic {found} cannot rewrite snapshots to drop single paths "
                         f"(`restic rewrite` came with restic 0.15): erase whole snapshots "
                         f"with --snapshot ID, or install a newer restic")
    raise UsageError("bkp does not rewrite snapshots yet (restic rewrite is there, bkp's "
                     "use of it is not): erase whole snapshots with --snapshot ID")


def _erase(ctx, actor, request, ask):
    policy = request.policy
    rewrite_refusal(request.paths)
    wanted = sorted(dict.fromkeys(request.snapshots))
    if not wanted:
        raise UsageError("name the snapshots to erase with --snapshot ID (repeatable); "
                         "`bkp snapshots TENANT` lists them")
    _snapshot_ids_only(wanted)
    problem = erasure.protection(policy)
    if problem:
        raise SafetyError(problem)
    erasure.confirmed(policy.tenant, request.yes, ask)
    with Held(ctx, policy, "erase"):
        places = erasure.targets(policy, ctx.settings.home)
        for place in places:  # prune deletes objects: a provider holding them refuses
            blocked = place.destination.erasure_blocked_until()
            if blocked:
                raise SafetyError(f"{place.id} ({place.label}): {blocked}. Nothing was "
                                  f"touched")
        record = erasure.current_record(ctx, policy.tenant, "erase", wanted)
        found = {place.id: _matching(place, wanted) for place in places}
        _one_snapshot_each(wanted, found)
        if record is None:
            unknown = [w for w in wanted if not any(w in m for m in found.values())]
            if unknown:
                raise UsageError(f"no snapshot {', '.join(unknown)} of {policy.tenant} at "
                                 f"any place; `bkp snapshots {policy.tenant}` lists them")
            record = erasure.new_record(ctx, policy, "erase", reason=request.reason,
                                        witness=request.witness, snapshots=wanted,
                                        method=erasure.ERASE_METHOD)
        named = sorted({original for matches in found.values() for by_want in
                        matches.values() for original in by_want.values()})
        what = (f"erase snapshot(s) {', '.join(wanted)} ({', '.join(named) or 'none left'}) "
                f"of tenant {policy.tenant} at "
                f"{', '.join(f'{p.id} {p.label}' for p in places)}")
        waiting = erasure.approval_state(ctx, actor, record, what, places, tuple(named))
        if waiting is not None:
            return erasure.pending_document(record, waiting), 0
        ensure_can_certify(ctx)
        record = cat.start_attempt(ctx.catalog, record["id"])
        ctx.audit("erase", "started", policy.tenant, record_id=record["id"],
                  attempt=record["attempts"], snapshots=wanted)
        earlier = {d["id"]: d for d in json.loads(record["destinations"] or "[]")}
        results = [_erase_snapshots(place, wanted, {w: next(iter(m)) for w, m in
                                                    found[place.id].items()},
                                    earlier.get(place.id))
                   for place in places]
        host = erasure.clear_host(ctx, policy.tenant)
        return _finish(ctx, record, results, host)


def _snapshot_ids_only(wanted: list[str]) -> None:
    """A snapshot id or its start, nothing else: "" is the start of every id."""
    for want in wanted:
        if not want or any(c not in "0123456789abcdef" for c in want):
            raise UsageError(f"--snapshot {want!r} is not a snapshot id (hexadecimal, as "
                             f"`bkp snapshots TENANT` lists them); nothing was touched")


def _matching(place: Target, wanted: list[str]) -> dict[str, dict[str, str]]:
    """requested id -> {id at this place: the snapshot it is (the original's id)}. A copy
    made by `restic copy` has its own id and names the original; a short id matches as
    restic's own do."""
    matches: dict[str, dict[str, str]] = {}
    listed = place.restic().snapshots()
    for snapshot in listed:
        for want in wanted:
            if any((value or "").startswith(want) for value in
                   (snapshot["id"], snapshot.get("original"))):
                matches.setdefault(want, {})[snapshot["id"]] = \
                    snapshot.get("original") or snapshot["id"]
    _with_inventories(listed, matches)
    return matches


def _with_inventories(listed: list[dict], matches: dict[str, dict[str, str]]) -> None:
    """A dump's inventory (its tables and row counts) goes with its dump: it is tagged
    `dump=` the dump's id (at a copy, the original's), short or whole."""
    for want, found in list(matches.items()):
        for snapshot in listed:
            dump = snapshot.get("dump") or ""
            if snapshot.get("kind") != KIND_INVENTORY or len(dump) < 8:
                continue
            if any(sid.startswith(dump) or original.startswith(dump)
                   for sid, original in found.items()):
                matches[f"inventory {snapshot['id'][:8]} of {want}"] = {
                    snapshot["id"]: snapshot.get("original") or snapshot["id"]}


def _one_snapshot_each(wanted: list[str], found: dict[str, dict[str, dict[str, str]]]
                       ) -> None:
    """A short id that names two snapshots (at one place, or one here and another at a
    copy) is ambiguous, as restic says: which one goes must not be bkp's guess (exit 2)."""
    for want in wanted:
        snapshots = {original for matches in found.values()
                     for original in matches.get(want, {}).values()}
        if len(snapshots) > 1:
            raise UsageError(f"--snapshot {want} names {len(snapshots)} snapshots "
                             f"({', '.join(sorted(s[:12] for s in snapshots))}): give "
                             f"more of the id. Nothing was touched")


def _erase_snapshots(place: Target, wanted: list[str], matches: dict[str, str],
                     earlier: dict | None) -> dict:
    done_before = set((earlier or {}).get("snapshot_ids") or [])
    result = {"id": place.id, "type": place.policy.destination.type,
              "location": place.label, "snapshots": 0, "snapshot_ids": sorted(done_before),
              "keys_removed": 0, "objects_removed": None, "bytes_removed": None,
              "status": "failed", "error": None, "left": [],
              "verification": {"snapshots_listed": None}}
    try:
        restic = place.restic()
        if matches:
            result["prune"] = _prune_summary(restic.erase_snapshots(sorted(matches.values())))
        listed = {s["id"] for s in restic.snapshots()}
        left = sorted(want for want, sid in matches.items() if sid in listed)
        result["snapshot_ids"] = sorted(done_before | {matches[w] for w in matches
                                                        if w not in left})
        result["snapshots"] = len(result["snapshot_ids"])
        result["left"] = left
        result["verification"]["snapshots_listed"] = len(left)
        if left:
            result["error"] = f"{place.id} ({place.label}): still listed: {', '.join(left)}"
        else:
            result["status"] = "erased"
    except BkpError as exc:
        result["error"] = f"{place.id} ({place.label}): {exc}"
    return result


def _prune_summary(output: str) -> list[str]:
    """prune's own lines on what it removed (restic prints no JSON for prune)."""
    return [line.strip() for line in output.splitlines()
            if line.strip().startswith(("this removes", "total prune", "remaining",
                                        "unused size after prune", "to delete"))][:8]
