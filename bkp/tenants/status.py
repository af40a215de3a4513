"""Per-tenant status from the catalog: last backup, RPO state, last drill, next drill due."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bkp.catalog import HOST, Catalog, parse_time, process_alive
from bkp.policy import Policy
from bkp.tenants.schedule import next_slot, plan_due, slot_label


def rpo_ok(last_good_time: str | None, rpo_hours: float, now: datetime) -> bool:
    """False when there is no good backup, or the last one is older than the RPO allows."""
    if not last_good_time:
        return False
    return now - parse_time(last_good_time) <= timedelta(hours=rpo_hours)


def backup_state(last: dict | None, within_rpo: bool) -> str:
    """One word for the operator. A failed night never reads as fine, even while an older
    backup is still inside the RPO window."""
    if last is None:
        return "never"
    if last["status"] in ("failed", "interrupted"):
        return "failed"
    if not within_rpo:
        return "late"
    return "ok"


def tenant_status(catalog: Catalog, policy: Policy, now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    last = _last_run(catalog, policy.tenant, "backup")
    good = _last_run(catalog, policy.tenant, "backup", status="ok")
    last_good_time = good["ended_at"] if good else None
    return {
        "tenant": policy.tenant,
        "policy_valid": True,
        "destination": policy.destination.type,
        "off_site": policy.destination.off_site,
        "last_backup": _backup_view(last),
        "last_good_backup": _backup_view(good),
        "rpo_hours": policy.rpo_hours,
        "rpo_ok": rpo_ok(last_good_time, policy.rpo_hours, now),
        "state": backup_state(last, rpo_ok(last_good_time, policy.rpo_hours, now)),
        "snapshot_count": good["snapshots_kept"] if good else None,
        "repository_bytes": good["repository_bytes"] if good else None,
        "last_drill": _drill_view(_last_run(catalog, policy.tenant, "drill")),
        **({"hint": NEVER_HINT.format(tenant=policy.tenant)} if last is None else {}),
        # The cause of a failed night in plain sight, without re-running it.
        **({"error": last["error"]} if last and last["status"] != "ok" and last["error"]
           else {}),
        **drill_schedule_state(catalog, policy, now),
        **policy_state(catalog, policy),
        **({"databases": database_state(catalog, policy, now)} if policy.databases else {}),
        **({"maintenance": maintenance_state(catalog, policy)}
           if policy.destination.append_only else {}),
        **({"copies": copies_state(catalog, policy)} if policy.copies else {}),
        **erasure_state(catalog, policy.tenant),
    }


def maintenance_state(catalog: Catalog, policy: Policy) -> dict:
    """An append-only destination: how many snapshots beyond the keep rules wait for
    `bkp maintain` (as the last backup or maintenance run counted them), and the last
    maintenance run."""
    listing = catalog.last_listing(policy.tenant)
    last = _last_run(catalog, policy.tenant, "maintain")
    return {"pending": listing.get("maintenance_pending") if listing else None,
            "last": None if last is None else {
                "time": last["ended_at"] or last["started_at"], "status": last["status"],
                "error": last["error"], "run_id": last["id"]}}


def copies_state(catalog: Catalog, policy: Policy) -> list[dict]:
    """Per copy: the last snapshot copied there, and how far the copy lags behind the
    destination (the destination's snapshots since then, and the hours between them)."""
    entries = []
    for copy in policy.copies:
        last = catalog.last_copy_result(policy.tenant, copy.id)
        good = catalog.last_copy_result(policy.tenant, copy.id, status="ok")
        copied = good["source_snapshot_id"] if good else None
        behind = catalog.good_backups_since(policy.tenant, copied)
        lag_hours = None
        if behind and good:
            lag_hours = round((parse_time(behind[-1]["ended_at"]) - parse_time(
                good["copied_at"])).total_seconds() / 3600, 1)
        entries.append({
            "id": copy.id, "destination": copy.destination.type,
            "site": copy.destination.site,
            "last_copy": None if last is None else {
                "time": last["copied_at"], "status": last["status"],
                "snapshot_id": last["snapshot_id"], "error": last["error"]},
            "last_copied": None if good is None else {
                "time": good["copied_at"], "snapshot_id": good["snapshot_id"],
                "source_snapshot_id": good["source_snapshot_id"],
                "snapshot_time": good["snapshot_time"]},
            "lag_snapshots": len(behind),
            "lag_hours": 0.0 if good and not behind else lag_hours,
            "ok": bool(good) and not behind and last["status"] == "ok",
            **({"maintenance": copy_maintenance_state(catalog, policy, copy)}
               if copy.destination.append_only else {}),
            **({"immutability": copy_immutability_state(catalog, policy, copy)}
               if copy.destination.immutable else {})})
    return entries


def erasure_state(catalog: Catalog, tenant: str) -> dict:
    """An offboarded tenant says so (state `offboarded`: backups refused until its policy is
    removed); erasure requests not yet finished are listed with their state."""
    from bkp.catalog import erasures_of, offboarded

    found = {}
    record = offboarded(catalog, tenant).get(tenant)
    if record is not None:
        found["state"] = "offboarded"
        found["offboarded"] = {"record_id": record["id"], "status": record["status"],
                               "time": record["ended_at"] or record["started_at"]}
        found["hint"] = (f"offboarded (erasure record {record['id']}, {record['status']}): "
                         f"remove the policy" if record["status"] == "erased" else
                         f"offboarding {record['status']}: run `bkp offboard {tenant}` again "
                         f"to finish")
    unfinished = [{"record_id": r["id"], "kind": r["kind"], "status": r["status"],
                   "requested_at": r["requested_at"]}
                  for r in erasures_of(catalog, tenant) if r["status"] != "erased"]
    if unfinished:
        found["erasures"] = unfinished
    return found


def copy_maintenance_state(catalog: Catalog, policy: Policy, copy) -> dict:
    """An append-only copy: how many of the snapshots it holds (as the last copy or
    maintenance recorded them) the keep rules would drop, and its last maintenance."""
    from bkp.tenants.copies import forget_plan

    held = catalog.copy_kept_snapshots(policy.tenant, copy.id)
    pending = None
    if held is not None:
        pending = 0 if policy.retention.legal_hold else len(
            forget_plan(held, policy.retention.keep_rules())[0])
    last = catalog.last_copy_result(policy.tenant, copy.id, kind="maintain")
    return {"pending": pending, "last": None if last is None else {
        "time": last["copied_at"], "status": last["status"], "error": last["error"],
        "run_id": last["run_id"]}}


def copy_immutability_state(catalog: Catalog, policy: Policy, copy) -> dict:
    """An append-only or object-locked copy: proven only by its own copy drill; the last
    one."""
    from bkp.tenants.drill import copy_proof

    proof = copy_proof(catalog, policy.tenant, copy.id)
    last = proof["last_proof"]
    return {"proven": proof["proven"], **({"time": last["time"], "run_id": last["run_id"],
                                          "deletion": last["deletion"]} if last else
                                         {"time": None, "run_id": None, "deletion": None})}


def database_state(catalog: Catalog, policy: Policy, now: datetime) -> list[dict]:
    """Per database of the policy: its last good dump, and whether it is within the RPO."""
    good = catalog.last_good_dumps(policy.tenant)
    entries = []
    for database in policy.databases:
        row = good.get((database.type, database.name))
        tables = json.loads(row["tables"]) if row and row["tables"] else {}
        entries.append({
            "name": database.name, "type": database.type,
            "last_good_dump": None if row is None else {
                "snapshot_id": row["snapshot_id"], "time": row["dumped_at"],
                "bytes": row["bytes"], "tables": len(tables), "rows": sum(tables.values()),
                "run_id": row["run_id"]},
            "rpo_ok": rpo_ok(row["dumped_at"] if row else None, policy.rpo_hours, now)})
    return entries


def policy_state(catalog: Catalog, policy: Policy) -> dict:
    """Weakened rules not yet acknowledged, and an edit not yet acted under."""
    from bkp.evidence.policy_changes import open_flags, unrecorded_change

    return {"policy_flags": open_flags(catalog, policy.tenant),
            "policy_changed_since_last_run": unrecorded_change(catalog, policy)}


def access_status(operators: tuple, actor, problem: str | None) -> dict:
    """Whether bkp knows who acts: registered operators, and who this caller is."""
    from bkp import clock

    if not operators:
        note = ("no operators registered in bkp.yaml: anyone with access acts under the "
                "name they give, and nothing needs a second person's approval")
    else:
        roles = {}
        for person in operators:
            roles[person.role] = roles.get(person.role, 0) + 1
        note = (f"{len(operators)} operator{'' if len(operators) == 1 else 's'} registered ("
                + ", ".join(f"{n} {role}" for role, n in sorted(roles.items())) + ")")
    return {"operators_registered": len(operators), "note": note,
            "you": actor.as_json() if actor else None, "problem": problem,
            "clock": clock.state().as_json()}


def approvals_status(catalog: Catalog, now: datetime | None = None) -> list[dict]:
    """Requests waiting for a second person; an expired one reads so (status never
    writes: the next command that acts closes it)."""
    now = now or datetime.now(UTC)
    rows = []
    for row in catalog.waiting_approvals():
        expired = parse_time(row["expires_at"]) <= now
        rows.append({"id": row["id"], "kind": row["kind"], "subject": row["subject"],
                     "tenant": row["tenant"], "requested_by": row["requested_by"],
                     "requested_at": row["requested_at"], "expires_at": row["expires_at"],
                     "status": "expired" if expired else "pending"})
    return rows


NEVER_HINT = ("no backup recorded here; if bkp's records were lost or recovered from an "
              "older copy, `bkp catalog sync {tenant}` reads the backups from the repository")


def evidence_status(catalog: Catalog, configured: bool) -> dict | None:
    """The last copy of bkp's own records off-site, when configured or ever made."""
    from bkp.installation import EVIDENCE_NAME

    last = _last_run(catalog, EVIDENCE_NAME, "evidence")
    if not configured and last is None:
        return None
    view = None if last is None else {
        "time": last["ended_at"] or last["started_at"], "status": last["status"],
        "snapshot_id": last["snapshot_id"], "error": last["error"], "run_id": last["id"]}
    return {"configured": configured, "last": view}


def invalid_status(catalog: Catalog, tenant: str, error: str) -> dict:
    """A tenant whose policy does not load: its history stays visible, and it is not fine."""
    last = _last_run(catalog, tenant, "backup")
    return {"tenant": tenant, "policy_valid": False, "state": "invalid",
            "last_backup": _backup_view(last),
            "last_good_backup": _backup_view(_last_run(catalog, tenant, "backup", status="ok")),
            "rpo_ok": False, "last_drill": _drill_view(_last_run(catalog, tenant, "drill")),
            "drill_due": None, "drill_overdue": False, "drill_ok": False, "error": error}


def drill_schedule_state(catalog: Catalog, policy: Policy, now: datetime) -> dict:
    """When the next drill is due, and whether the drill record is a problem.

    `drill_due` is the slot still waiting for a drill (in the past: overdue) or the next
    one; `drill_ok` is false when the last drill failed or the schedule has run past it.
    """
    if not policy.schedule.drill:
        return {"drill_due": None, "drill_overdue": False, "drill_ok": None}
    runs = catalog.runs(tenant=policy.tenant, kind="drill", limit=50)
    due = plan_due(policy.tenant, "drill", policy.schedule.drill, runs, now)
    when = due.slot if due.due else next_slot(policy.schedule.drill, now)
    last = _last_run(catalog, policy.tenant, "drill")
    # Overdue: a slot went by without a drill, beyond a grace for `bkp run` to get to it.
    overdue = due.due and now - due.slot > DRILL_GRACE
    # None: no drill yet and none owed yet (a new tenant), not a failure.
    ok = None if last is None and not overdue else (
        bool(last) and last["status"] == "passed" and not overdue)
    return {"drill_due": slot_label(when), "drill_overdue": overdue, "drill_ok": ok}


DRILL_GRACE = timedelta(hours=24)


def _last_run(catalog: Catalog, tenant: str, kind: str, status: str | None = None):
    return _as_it_is(catalog.last_run(tenant, kind, status=status))


def _as_it_is(row: dict | None) -> dict | None:
    """A run whose process died reads `interrupted` at once, although only the next command
    that acts records it: status never writes, and never shows a dead run as running."""
    if (row and row["status"] == "running" and row["host"] == HOST
            and not process_alive(row["pid"], row["pid_start"])):
        return {**row, "status": "interrupted",
                "error": f"bkp process {row['pid']} stopped before finishing; the next bkp "
                         f"command that acts records it"}
    return row


def _drill_view(row: dict | None) -> dict | None:
    if not row:
        return None
    return {"time": row["ended_at"] or row["started_at"], "status": row["status"],
            "snapshot_id": row["snapshot_id"], "error": row["error"], "run_id": row["id"]}


def _backup_view(row: dict | None) -> dict | None:
    if not row:
        return None
    return {"time": row["ended_at"] or row["started_at"], "status": row["status"],
            "snapshot_id": row["snapshot_id"], "error": row["error"], "run_id": row["id"]}
