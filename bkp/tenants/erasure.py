"""What `bkp offboard` and `bkp erase` share: the rules that refuse an erasure, every place a
tenant's backups rest, the request and its approval, and the record an auditor reads.

An erasure cannot be undone, so everything that can refuse it does so before anything is
touched (exit 4): a legal hold, `retention.keep_until` not yet passed, another operation
on the tenant, an unconfirmed command, a provider that still holds the objects (S3 Object
Lock), another repository inside this one. With operators registered, a second person
approves with their own key (bkp.evidence.approvals) before the same command, run again,
carries it out.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from bkp import catalog as cat
from bkp.access import Actor
from bkp.context import Context
from bkp.destinations import Destination, StoredObject, cache_dir, destination_for
from bkp.errors import BkpError, SafetyError
from bkp.evidence import approvals
from bkp.evidence.certificates import erasure_hash
from bkp.locks import LockHeld, tenant_lock
from bkp.policy import Policy, at_copy
from bkp.restic import Restic

# What the certificate says is kept, and why: nothing in it is the tenant's content.
KEPT = (
    {"what": "the catalog's run records and audit events of the tenant (times, sizes, "
             "snapshot ids, outcomes, operators)",
     "why": "they hold no tenant content and are the evidence of what was done, this "
            "erasure included (ISO 27002 8.15); they travel in the evidence repository"},
    {"what": "drill reports and drill problems that name file paths of the tenant",
     "why": "the evidence of past restore tests; they hold paths and hashes, never file "
            "content (review them with the customer's request if paths are themselves "
            "personal data)"},
    {"what": "versions the storage provider keeps outside the location bkp can list (the "
             "provider's own snapshots or replication of the storage server)",
     "why": "beyond bkp's reach; what bkp erased was encrypted and its keys were removed "
            "first, so such copies cannot be read without the key escrow"},
    {"what": "the repository password in the key escrow",
     "why": "outside bkp: destroy it as runbooks/offboard-tenant.md says, and it opens "
            "nothing that may be left anywhere"},
)
METHOD = ("the repository's key files removed through the destination itself (every object "
          "that survives is then unreadable), then every object at the location deleted "
          "(S3: every version and delete marker), then the tenant's restic cache and "
          "scratch space on the bkp host removed")
ERASE_METHOD = ("restic forget of the requested snapshots, then restic prune --max-unused 0 "
                "(no byte of them left in partly used packs), at every place the tenant's "
                "backups rest; then the tenant's restic cache removed")
# How each is verified: bkp.evidence.certificates.ERASURE_VERIFICATIONS.


@dataclass(frozen=True)
class Target:
    """One place the tenant's backups rest: the destination, or one of its copies."""

    id: str  # "destination", or the copy's id
    policy: Policy  # the tenant's policy with this place as its destination
    destination: Destination

    @property
    def label(self) -> str:
        return self.destination.repository().label

    def restic(self) -> Restic:
        return Restic(self.destination.repository(), self.policy.tenant,
                      timeout=self.policy.timeout_minutes * 60)


def targets(policy: Policy, home: Path) -> list[Target]:
    """Every place the tenant's backups rest, each reached with a credential that may
    delete (an append_only REST server: the maintenance credential). Each copy
    (`copies:` in the policy) is a place like the destination."""
    return [_target("destination", policy, home),
            *(_target(copy.id, at_copy(policy, copy), home) for copy in policy.copies)]


def _target(name: str, policy: Policy, home: Path) -> Target:
    destination = destination_for(policy, home)
    deleting = getattr(destination, "for_maintenance", None)
    return Target(name, policy, deleting() if deleting else destination)


# ---------------------------------------------------------------- refusals (pure)

def protection(policy: Policy, today: date | None = None) -> str | None:
    """Why the law keeps this tenant's backups (refused, exit 4), or None."""
    today = today or datetime.now(UTC).date()
    if policy.retention.legal_hold:
        return (f"tenant {policy.tenant} is under a legal hold (retention.legal_hold: true "
                f"in {policy.file}): nothing may be erased while it holds. Nothing was "
                f"touched")
    until = policy.retention.keep_until
    if until and date.fromisoformat(until) >= today:
        return (f"tenant {policy.tenant} must be kept until {until} (retention.keep_until in "
                f"{policy.file}): erasure is possible from the day after. Nothing was "
                f"touched")
    return None


def nested_repository(policy: Policy, others: list[tuple[str, object]]) -> str | None:
    """Another repository (tenant or evidence) inside one of this tenant's locations: an
    erasure deletes every object below the location, theirs too. `others` is (who,
    Destination) of every other policy."""
    mine = [policy.destination, *(copy.destination for copy in policy.copies)]
    for outer in mine:
        for who, inner in others:
            if _inside(inner.repository_identity(), outer.repository_identity()):
                return (f"the repository of {who} lies inside {policy.tenant}'s location "
                        f"({outer.type}): erasing every object there would erase it too. "
                        f"Nothing was touched; move one of them first")
    return None


def _inside(inner: tuple, outer: tuple) -> bool:
    if inner[:-1] != outer[:-1] or not isinstance(inner[-1], str):
        return False
    outer_path, inner_path = outer[-1].rstrip("/"), inner[-1].rstrip("/")
    return inner_path == outer_path or outer_path == "" or \
        inner_path.startswith(outer_path + "/")


# ---------------------------------------------------------------- confirmation and lock

def confirmed(tenant: str, yes: bool, ask: Callable[[], str | None]) -> None:
    """The operator typed the tenant id, or gave --yes (SafetyError otherwise). `ask`
    returns what was typed, or None when there is no terminal to ask on."""
    if yes:
        return
    typed = ask()
    if typed is None:
        raise SafetyError(f"not confirmed: type the tenant id on a terminal, or give --yes "
                          f"(unattended). Nothing of {tenant} was touched")
    if typed.strip() != tenant:
        raise SafetyError(f"not confirmed: {typed.strip()!r} is not {tenant}. Nothing was "
                          f"touched")


@dataclass
class Held:
    """The tenant's lock; another operation holding it is a refusal (4): an erasure never
    runs beside a backup or a drill of the same repository."""

    ctx: Context
    policy: Policy
    action: str
    _lock: object = field(default=None, init=False)

    def __enter__(self):
        self._lock = tenant_lock(self.ctx.settings.locks, self.policy.tenant)
        try:
            return self._lock.__enter__()
        except LockHeld as exc:
            raise SafetyError(f"{exc}: run the erasure when it is done. Nothing was "
                              f"touched") from None

    def __exit__(self, *exc_info):
        return self._lock.__exit__(*exc_info)


# ---------------------------------------------------------------- the request and approval

def current_record(ctx: Context, tenant: str, kind: str,
                   snapshots: list[str] | None = None) -> dict | None:
    """The tenant's unfinished request of this kind (for erase: of these snapshots)."""
    wanted = sorted(snapshots) if snapshots is not None else None
    for row in reversed(cat.unfinished_erasures(ctx.catalog, tenant, kind)):
        if wanted is None or sorted(json.loads(row["snapshots"] or "[]")) == wanted:
            return row
    return None


def new_record(ctx: Context, policy: Policy, kind: str, *, reason: str | None,
               witness: str | None, snapshots: list[str] | None, method: str) -> dict:
    record_id = cat.add_erasure(ctx.catalog, {
        "tenant": policy.tenant, "kind": kind, "status": "requested", "reason": reason,
        "witness": witness, "operator": ctx.settings.operator,
        "os_user": ctx.settings.os_user, "method": method,
        "snapshots": json.dumps(snapshots) if snapshots is not None else None})
    ctx.audit(kind, "requested", policy.tenant, record_id=record_id, reason=reason,
              witness=witness, snapshots=snapshots)
    return cat.get_erasure(ctx.catalog, record_id)


def approval_state(ctx: Context, actor: Actor, record: dict, what: str,
                   places: list[Target], snapshots: tuple[str, ...] = ()) -> dict | None:
    """None when the erasure may go ahead (approved by a second registered person, or no
    operators registered); else the pending request, made now where there was none.

    An approval is of the places it names: a policy pointed elsewhere after the approval
    (another repository, a copy added) needs an approval of its own, or the approver's
    signature would carry out an erasure nobody read. The same for the snapshots a short
    id named when it was approved: another one that later starts the same is not them."""
    kind, subject = record["kind"], str(record["id"])
    if not actor.controlled:
        return None
    binding = {"places": approved_places(places), "snapshots": sorted(snapshots)}
    given = approvals.approved(ctx.catalog, kind, subject)
    if given is not None and _covers(json.loads(given["details"] or "{}"), binding):
        return None
    if given is not None:
        ctx.audit(kind, "approval does not apply", record["tenant"], record_id=record["id"],
                  approval_id=given["id"], now=binding)
        what = (f"{what} (the places or snapshots changed since request {given['id']} was "
                f"approved: this asks again)")
    waiting = approvals.pending(ctx.catalog, subject, kind)
    if waiting is not None and (approvals.expired(waiting) or not _covers(
            json.loads(waiting["details"] or "{}"), binding)):
        ctx.catalog.close_approval(waiting["id"], "expired")  # a new request replaces it
        waiting = None
    if waiting is None:
        waiting = approvals.request(ctx, kind, subject, record["tenant"], what, binding)
        cat.update_erasure(ctx.catalog, record["id"], status="pending_approval")
    return waiting


def _covers(approved: dict, binding: dict) -> bool:
    """The approval names these places, and every snapshot that would go now (a re-run
    after a partial attempt finds fewer)."""
    return approved.get("places") == binding["places"] and \
        set(binding["snapshots"]) <= set(approved.get("snapshots") or [])


def approved_places(places: list[Target]) -> list[str]:
    """What an approval binds: each place and the repository there, normalised."""
    return [f"{place.id} {json.dumps(list(place.policy.destination.repository_identity()))}"
            for place in places]


def pending_document(record: dict, request: dict) -> dict:
    return {"tenant": record["tenant"], "status": "pending_approval",
            "record_id": record["id"], "approval_id": request["id"],
            "expires_at": request["expires_at"], "message": request["message"],
            "snapshots_erased": 0, "destinations": [], "certificate": None}


# ---------------------------------------------------------------- inventory

def list_snapshots(target: Target) -> list[dict] | None:
    """The tenant's snapshots at this place; None when restic can no longer open it (a
    re-run after its keys were removed)."""
    restic = target.restic()
    if not restic.opens():
        return None
    return [{"id": s["id"], "time": s["time"]} for s in restic.snapshots()]


def objects_summary(objects: list[StoredObject]) -> dict:
    return {"objects": len(objects), "bytes": sum(o.size for o in objects),
            "keys": sum(1 for o in objects if o.is_key and not o.marker)}


# ---------------------------------------------------------------- host traces

def clear_host(ctx: Context, tenant: str) -> dict:
    """The tenant's restic cache and drill scratch space on this host: restic's cache holds
    the repository's index and snapshots (file names), scratch space restored files."""
    removed, left = [], []
    places = [cache_dir(ctx.settings.home, tenant)]
    scratch = ctx.settings.home / "scratch"
    if scratch.is_dir():
        places += sorted(scratch.glob(f"drill-{tenant}-*"))
    for place in places:
        if not place.exists():
            continue
        shutil.rmtree(place, ignore_errors=True)
        (left if place.exists() else removed).append(str(place))
    return {"removed": removed, "left": left}


# ---------------------------------------------------------------- closing the record

def close(ctx: Context, record: dict, status: str, destinations: list[dict], host: dict,
          error: str | None) -> dict:
    """The attempt's outcome on the record and in the audit trail, in one transaction."""
    digest = erasure_hash(destinations)  # the certificate's verification hash
    with ctx.catalog.transaction():
        row = cat.update_erasure(ctx.catalog, record["id"], status=status,
                                 ended_at=cat.utc_now(), error=error,
                                 destinations=json.dumps(destinations),
                                 kept=json.dumps({"kept": KEPT, "host": host}))
        ctx.audit(record["kind"], status, record["tenant"], record_id=record["id"],
                  hash=digest, attempt=row["attempts"],
                  destinations=[{k: d.get(k) for k in ("id", "status", "objects_removed",
                                                       "keys_removed", "left")}
                                for d in destinations], error=error)
    return row


def failure_of(exc: Exception) -> str:
    return str(exc) if isinstance(exc, BkpError) else f"unexpected {type(exc).__name__}: {exc}"
