"""The auditor's evidence report: per tenant and per promise, what was done, when, and the
proof, with every gap named.

The report is built from the records only (runs with what they observed, drills, policy
versions and `policy.changed` events, the media register and certificates, the audit
trail) and judged here by pure functions: every control is `met`, `not_met` or
`not_evidenced`, with the evidence items behind the verdict. Missing data is never `met`:
a run rebuilt by `catalog sync` observed nothing, so what only observations can show
(off-site in the EEA, encrypted in transit) is `not_evidenced` for it.

JSON is the source (report_files.py signs and renders it as HTML and PDF). The only write
a report makes is one `report.issued` audit event with the SHA-256 of what it wrote.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from bkp import eea
from bkp.catalog import as_json, parse_time
from bkp.errors import UsageError

FORMAT = "bkp-report/1"
YEAR = timedelta(days=365)
MET, NOT_MET, NOT_EVIDENCED = "met", "not_met", "not_evidenced"
UNCONFIRMED = "unconfirmed"  # a run's status when the audit trail does not record it
VERDICT_ORDER = {NOT_MET: 0, NOT_EVIDENCED: 1, MET: 2}

# Each control: what the privacy statement promises, and the ISO/IEC 27002:2022 and BIO
# controls it answers. Order is the order of the report.
CONTROLS = {
    "backup-current": {
        "title": "Backups are current (RPO met over the period)",
        "promise": "Your data is backed up at least as often as agreed (the recovery point "
                   "objective), so little can be lost.",
        "iso27002": "8.13 Information backup", "bio": "8.13.01"},
    "restore-tested": {
        "title": "Restores are tested (a passed drill within 12 months and after every "
                 "change of destination)",
        "promise": "We regularly prove that your backups can be restored.",
        "iso27002": "8.13 Information backup", "bio": "8.13.04"},
    "offsite-eea": {
        "title": "Backups rest off-site, in the EEA",
        "promise": "Backups are kept at another location than your data, and never leave "
                   "the European Economic Area.",
        "iso27002": "8.13 Information backup (remote location); 5.34 Privacy and "
                    "protection of PII", "bio": "8.13.03"},
    "encrypted": {
        "title": "Backups are encrypted at rest and in transit",
        "promise": "Backups are encrypted while stored and while sent.",
        "iso27002": "8.24 Use of cryptography; 8.13 Information backup", "bio": "8.13.03"},
    "copies": {
        "title": "A second copy at another site",
        "promise": "A second copy of your backups is kept at another site.",
        "iso27002": "8.13 Information backup", "bio": "8.13.03"},
    "retention": {
        "title": "Retention rules applied, or a legal hold",
        "promise": "Backups are kept as long as agreed and no longer, unless the law "
                   "requires keeping them.",
        "iso27002": "8.10 Information deletion; 8.13 Information backup", "bio": "8.13.02"},
    "traceability": {
        "title": "Every action is traceable (audit chain intact)",
        "promise": "Every action on your backups is recorded and cannot be altered "
                   "unnoticed.",
        "iso27002": "8.15 Logging", "bio": "8.15.01"},
    "media-sanitized": {
        "title": "Every medium leaving service has a certificate",
        "promise": "Disks that held your data are wiped or destroyed, with a certificate, "
                   "before they leave our care.",
        "iso27002": "7.14 Secure disposal or re-use of equipment; 7.10 Storage media",
        "bio": "7.14.01"},
}
SECURE_TRANSPORTS = {"ssh", "https"}


# ---------------------------------------------------------------- the period

@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    def holds(self, moment: datetime | None) -> bool:
        return moment is not None and self.start <= moment <= self.end

    def to_json(self) -> dict:
        return {"from": stamp(self.start), "to": stamp(self.end)}


def period_of(start: str | None, end: str | None, now: datetime) -> Period:
    """--from/--to: a date (the whole day, UTC) or a time; by default the year up to now."""
    # A period cannot end after now: the time to come is not time without backups.
    until = min(_moment(end, "--to", day_end=True), now) if end else now
    try:
        year_before = until - YEAR  # the drills and checks of the last 12 months are judged
        since = _moment(start, "--from", day_end=False) if start else year_before
    except OverflowError:
        raise UsageError(f"--to {end!r} leaves no year before it to report on") from None
    if since >= until:
        raise UsageError(f"--from {stamp(since)} is not before "
                         f"{'--to ' if until != now else 'now, '}{stamp(until)}")
    return Period(since, until)


def _moment(text: str, option: str, day_end: bool) -> datetime:
    try:
        if len(text.strip()) == 10:
            day = date.fromisoformat(text.strip())
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) - timedelta(microseconds=1) if day_end \
                else moment
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        moment.astimezone(UTC)  # a time at the edge of the calendar can overflow here
    except OverflowError:
        raise UsageError(f"{option} {text!r} is at the edge of the calendar: give a date "
                         f"between the years 2 and 9998") from None
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 "
                         f"time") from None
    return moment


def stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = parse_time(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------- records -> report

@dataclass
class TenantRecords:
    """What the catalog holds about one tenant, as plain rows (gathered by `gather`)."""

    policy: object  # bkp.policy.Policy
    runs: list[dict]
    versions: list[dict]
    events: list[dict]  # the tenant's audit events
    media: list[dict]  # media registered to the tenant, each with "records"


def build_report(*, tenants: list[TenantRecords], audit: dict, certificates: list[dict],
                 period: Period, organization: str | None, now: datetime) -> dict:
    """The report document, unsigned. Pure: the same records give the same report."""
    sections = [tenant_section(t, audit, period, now) for t in tenants]
    media, erasures = certificate_sections(certificates, period)
    return {
        "format": FORMAT,
        "generated": stamp(now),
        "organization": organization,
        "period": period.to_json(),
        "audit": audit,
        "fleet": fleet_overview(sections),
        "tenants": sections,
        "media": media,
        "erasures": erasures,
        "controls": [{"id": key, **value} for key, value in CONTROLS.items()],
    }


def fleet_overview(sections: list[dict]) -> list[dict]:
    """Every tenant's controls in one row, failures first: the page an auditor reads in
    ten seconds."""
    rows = []
    for section in sections:
        verdicts = {c["id"]: c["status"] for c in section["controls"]}
        rows.append({"tenant": section["tenant"], "controls": verdicts,
                     "not_met": sum(v == NOT_MET for v in verdicts.values()),
                     "not_evidenced": sum(v == NOT_EVIDENCED for v in verdicts.values())})
    rows.sort(key=lambda r: (-r["not_met"], -r["not_evidenced"], r["tenant"]))
    return rows


def tenant_section(records: TenantRecords, audit: dict, period: Period,
                   now: datetime) -> dict:
    policy = records.policy
    runs = [dict(r, _time=_time(r.get("started_at"))) for r in records.runs]
    runs.sort(key=lambda r: (r["_time"] or datetime.min.replace(tzinfo=UTC), r["id"]))
    backups = [r for r in runs if r["kind"] == "backup" and r["status"] != "running"]
    drills = [r for r in runs if r["kind"] == "drill" and r["status"] != "running"]
    in_period = [r for r in backups if period.holds(r["_time"])]
    changes = (destination_changes(records.versions, records.events)
               + unrecorded_destination_change(records.versions, policy, now))
    facts = {
        "tenant": policy.tenant,
        "description": policy.description or None,
        "purpose": policy.purpose,
        "classification": policy.classification,
        "destination": destination_facts(policy.destination),
        "copies": [{"id": c.id, **destination_facts(c.destination)}
                   for c in getattr(policy, "copies", ()) or ()],
        "encryption": {"at_rest": "restic repository encryption (every repository)",
                       "in_transit": transit_promise(policy.destination)},
        "retention": retention_facts(policy),
        "policy": policy_facts(records, period, changes),
        "backups": backup_facts(backups, in_period, policy.rpo_hours, period),
        "drills": [drill_facts(d) for d in drills if period.holds(d["_time"])],
        "pack_coverage": pack_coverage(drills, period),
        "media": [medium_facts(m) for m in records.media],
    }
    facts["controls"] = [
        judge_backup_current(facts["backups"], backups, period),
        judge_restore_tested(drills, changes, period),
        judge_offsite(policy, in_period),
        judge_encrypted(policy, in_period),
        judge_copies(policy, in_period),
        judge_retention(policy, in_period, runs, period),
        judge_traceability(audit),
        judge_media(records.media, period),
    ]
    return facts


# ---------------------------------------------------------------- facts

def destination_facts(destination) -> dict:
    """Where the data rests, without a credential (paths to secret files are left out)."""
    kind = destination.type
    facts = {"type": kind, "country": destination.country,
             "site": getattr(destination, "site", None), "off_site": kind != "local"}
    if kind == "s3":
        host = _host(destination.endpoint)
        region = eea.region_info(host, destination.region)
        facts.update(location=f"{destination.endpoint} bucket {destination.bucket}",
                     region=destination.region,
                     provider=region.provider if region else eea.provider_of(host))
    elif kind == "sftp":
        facts.update(location=f"{destination.host}:{destination.path}")
    elif kind == "rest":
        facts.update(location=destination.url, append_only=destination.append_only)
    else:
        facts.update(location=destination.path)
    return facts


def transit_promise(destination) -> str:
    return {"sftp": "SSH to a pinned host key", "s3": "TLS (https endpoint)",
            "rest": "TLS (https)", "local": "no network: a path on this host"
            }.get(destination.type, destination.type)


def _host(url: str | None) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname if url else None


def retention_facts(policy) -> dict:
    retention = policy.retention
    rules = {k: getattr(retention, k) for k in ("last", "hourly", "daily", "weekly",
                                                 "monthly", "yearly") if getattr(retention, k)}
    keep_until = getattr(retention, "keep_until", None)
    return {"rules": rules, "legal_hold": retention.legal_hold,
            "keep_until": str(keep_until) if keep_until else None}


def policy_facts(records: TenantRecords, period: Period, changes: list[dict]) -> dict:
    from bkp.evidence.policy_changes import fingerprint

    changed = []
    for event in records.events:
        if event["action"] != "policy.changed" or not period.holds(_time(event["time"])):
            continue
        details = _details(event)
        changed.append({"time": stamp(_time(event["time"])), "audit_seq": event["seq"],
                        "keys": [c.get("key") for c in details.get("changes") or []],
                        "weakenings": details.get("weakenings") or [],
                        "fingerprint": details.get("fingerprint")})
    return {"fingerprint": fingerprint(records.policy),
            "recorded": bool(records.versions)
            and records.versions[-1]["fingerprint"] == fingerprint(records.policy),
            "changes": changed,
            "destination_changes": [c for c in changes if period.holds(_time(c["time"]))]}


def destination_changes(versions: list[dict], events: list[dict]) -> list[dict]:
    """When the tenant's destination changed, from the policy versions bkp acted under
    (and the `policy.changed` event that recorded each change)."""
    found, previous = [], None
    by_print = {}
    for event in events:
        if event["action"] == "policy.changed":
            by_print.setdefault(_details(event).get("fingerprint"), event)
    for version in versions:
        try:
            destination = json.loads(version["document"]).get("destination")
        except (ValueError, AttributeError):
            destination = None
        if previous is not None and destination != previous:
            event = by_print.get(version["fingerprint"])
            found.append({"time": stamp(_time(version["seen_at"])),
                          "fingerprint": version["fingerprint"],
                          "audit_seq": event["seq"] if event else None})
        previous = destination
    return found


def unrecorded_destination_change(versions: list[dict], policy, now: datetime) -> list[dict]:
    """A destination edited in the policy file since bkp last acted: versions are recorded
    only when bkp acts, so without this the old destination's drill would stand for the
    new one. Dated now: a report of an earlier period is not judged by today's file."""
    if not versions:
        return []
    try:
        recorded = json.loads(versions[-1]["document"]).get("destination")
        current = json.loads(policy.document).get("destination")
    except (ValueError, AttributeError, TypeError):
        return []
    if recorded == current:
        return []
    return [{"time": stamp(now), "fingerprint": None, "audit_seq": None,
             "unrecorded": True}]


def backup_facts(backups: list[dict], in_period: list[dict], rpo_hours: float,
                 period: Period) -> dict:
    ok = [r for r in in_period if r["status"] == "ok"]
    last = in_period[-1] if in_period else None
    coverage = rpo_coverage(backups, rpo_hours, period)
    return {
        "count": len(in_period), "ok": len(ok), "failed": len(in_period) - len(ok),
        "last": None if last is None else {
            "time": stamp(last["_time"]), "status": last["status"], "run_id": last["id"],
            "snapshot_id": last["snapshot_id"]},
        "last_ok": None if not ok else {
            "time": stamp(ok[-1]["_time"]), "run_id": ok[-1]["id"],
            "snapshot_id": ok[-1]["snapshot_id"]},
        "rpo_hours": rpo_hours,
        "rpo_met_pct": coverage["pct"],
        "measured_from": coverage["from"],
        "longest_gap_hours": coverage["longest_gap_hours"],
        "uncovered_hours": coverage["uncovered_hours"],
        "rebuilt_by_sync": sum(r.get("source") == "repository" for r in in_period),
        "series": [{"time": stamp(r["_time"]), "status": r["status"], "run_id": r["id"],
                    "snapshot_id": r["snapshot_id"], "bytes_added": r.get("bytes_added"),
                    "repository_bytes": r.get("repository_bytes")} for r in in_period],
    }


def rpo_coverage(backups: list[dict], rpo_hours: float, period: Period) -> dict:
    """The share of the period in which the last good backup was at most `rpo_hours` old
    (time-weighted), and the longest stretch without a good backup.

    Measured from the period's start, or from the tenant's first backup run when that is
    later: before it bkp held no promise for the tenant. A good backup counts from the time
    its run started (restic reads the data from then on)."""
    first = next((r["_time"] for r in backups if r["_time"]), None)
    if first is None or first > period.end:
        return {"pct": None, "from": None, "longest_gap_hours": None, "uncovered_hours": None}
    start = max(period.start, first)
    window = (period.end - start).total_seconds()
    rpo = timedelta(hours=rpo_hours)
    goods = sorted(r["_time"] for r in backups if r["status"] == "ok" and r["_time"]
                   and r["_time"] <= period.end)
    covered, cursor = 0.0, start
    for good in goods:
        lo, hi = max(good, cursor), min(good + rpo, period.end)
        if hi > lo:
            covered += (hi - lo).total_seconds()
            cursor = hi
    before = [g for g in goods if g < start]
    points = [before[-1] if before else start] + [g for g in goods if g >= start] + \
        [period.end]
    gap = max((b - a).total_seconds() for a, b in itertools.pairwise(points))
    uncovered = max(window - covered, 0.0)
    pct = 100.0 if window <= 0 else round(100.0 * covered / window, 3)
    if uncovered > 0 and pct == 100.0:
        pct = 99.999  # never round a gap away
    return {"pct": pct, "from": stamp(start), "longest_gap_hours": round(gap / 3600, 3),
            "uncovered_hours": round(uncovered / 3600, 4), "_uncovered_s": uncovered}


def drill_facts(run: dict) -> dict:
    restore_s = run.get("restore_s")
    measured = restore_s if restore_s is not None else run.get("duration_s")
    rto = run.get("rto_minutes")
    problems = _json_list(run.get("problems"))
    return {
        "time": stamp(run["_time"]), "status": run["status"], "run_id": run["id"],
        "snapshot_id": run.get("snapshot_id"), "rto_minutes": rto,
        "duration_s": run.get("duration_s"), "restore_s": restore_s,
        "rto_met": None if measured is None or rto is None else measured <= rto * 60,
        "files_checked": run.get("files_checked"), "bytes_restored": run.get("bytes_restored"),
        "sample_checked": run.get("sample_checked"), "subset": run.get("subset"),
        "problems": [p.get("message") if isinstance(p, dict) else str(p) for p in problems],
        "error": run.get("error"), "report": run.get("report"),
        "checked": _checked(run),
    }


def _checked(run: dict) -> list[str]:
    """What the drill verified, in the words of its report."""
    done = [f"restored snapshot {(run.get('snapshot_id') or '-')[:8]} with restic's "
            f"read-back verification ({run.get('files_checked') or 0} files)",
            "every file against the snapshot's listing (present, size)"]
    if run.get("sample_checked"):
        done.append(f"{run['sample_checked']} files against the live source by SHA-256")
    if run.get("subset"):
        done.append(f"repository check reading pack subset {run['subset']}")
    for database in _json_list(run.get("databases")):
        if isinstance(database, dict):
            done.append(f"database {database.get('name')} loaded into a scratch server: "
                        f"{database.get('status')}")
    return done


def pack_coverage(drills: list[dict], period: Period) -> dict | None:
    """Which share of the repository's pack files the drills of the last year read: each
    drill checks one rotating subset n/t of the packs, so t drills read every pack."""
    since = period.end - YEAR
    read: dict[int, set[int]] = {}
    for run in drills:
        if run["status"] not in ("passed", "failed") or not run["_time"]:
            continue
        if not (since <= run["_time"] <= period.end):
            continue
        parts = (run.get("subset") or "").split("/")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            read.setdefault(int(parts[1]), set()).add(int(parts[0]))
    if not read:
        return None
    total = max(read, key=lambda t: len(read[t]) / t)
    return {"subsets": total, "read": sorted(read[total]),
            "pct": round(100.0 * len(read[total]) / total, 1), "since": stamp(since)}


def medium_facts(medium: dict) -> dict:
    return {"serial": medium["serial"], "type": medium.get("type"),
            "state": medium.get("state"),
            "records": [{k: r.get(k) for k in ("record_id", "kind", "result", "time", "hash",
                                              "certificate_id")}
                        for r in medium.get("records", [])]}


# ---------------------------------------------------------------- controls

def control(key: str, status: str, reason: str, evidence: list[dict]) -> dict:
    meta = CONTROLS[key]
    return {"id": key, "status": status, "reason": reason, "evidence": evidence,
            "title": meta["title"], "promise": meta["promise"],
            "iso27002": meta["iso27002"], "bio": meta["bio"]}


def _run_item(run: dict, kind: str = "run") -> dict:
    item = {"kind": kind, "id": run["id"], "time": stamp(run["_time"])}
    if run.get("snapshot_id"):
        item["snapshot_id"] = run["snapshot_id"]
    return item


def judge_backup_current(facts: dict, backups: list[dict], period: Period) -> dict:
    if facts["rpo_met_pct"] is None:
        return control("backup-current", NOT_EVIDENCED,
                       "no backup of this tenant is recorded up to the end of the period: "
                       "nothing shows whether the RPO was met", [])
    goods = [r for r in backups if r["status"] == "ok" and period.holds(r["_time"])]
    evidence = [_run_item(r) for r in goods[-5:]]
    coverage = rpo_coverage(backups, facts["rpo_hours"], period)
    measured = ("" if facts["measured_from"] == stamp(period.start) else
                f" (measured from the tenant's first backup run, {facts['measured_from']})")
    if coverage["_uncovered_s"] > 0:
        failed = [r for r in backups if r["status"] != "ok" and period.holds(r["_time"])]
        return control("backup-current", NOT_MET,
                       f"the last good backup was older than the RPO of {facts['rpo_hours']} h "
                       f"for {facts['uncovered_hours']} h of the period{measured}: RPO met "
                       f"{facts['rpo_met_pct']}% of the time; longest gap "
                       f"{facts['longest_gap_hours']} h",
                       [_run_item(r) for r in failed[-5:]] + evidence)
    return control("backup-current", MET,
                   f"a good backup at most {facts['rpo_hours']} h old at every moment of the "
                   f"period{measured}; {facts['ok']} good backups, longest gap "
                   f"{facts['longest_gap_hours']} h", evidence)


def judge_restore_tested(drills: list[dict], changes: list[dict], period: Period) -> dict:
    since = period.end - YEAR
    done = [d for d in drills if d["_time"] and d["_time"] <= period.end]
    passed = [d for d in done if d["status"] == "passed" and d["_time"] >= since]
    if not passed:
        last = done[-1] if done else None
        why = ("no restore drill is recorded" if last is None else
               f"no drill passed in the 12 months before {stamp(period.end)} (last drill: "
               f"run {last['id']}, {last['status']}, {stamp(last['_time'])})")
        return control("restore-tested", NOT_MET, why,
                       [_run_item(last, "drill")] if last else [])
    # The last change up to the period's end: one after it must not hide one within it.
    known = [c for c in changes if _time(c["time"]) and _time(c["time"]) <= period.end]
    latest_change = known[-1] if known else None
    change_time = _time(latest_change["time"]) if latest_change else None
    if change_time and passed[-1]["_time"] < change_time:
        return control("restore-tested", NOT_MET,
                       f"the destination changed at {latest_change['time']} and no drill "
                       f"has passed since", [_run_item(passed[-1], "drill"),
                                             _change_item(latest_change)])
    if done[-1]["status"] != "passed":
        return control("restore-tested", NOT_MET,
                       f"the latest drill (run {done[-1]['id']}, {stamp(done[-1]['_time'])}) "
                       f"did not pass: {done[-1]['status']}",
                       [_run_item(done[-1], "drill"), _run_item(passed[-1], "drill")])
    evidence = [_run_item(d, "drill") for d in passed[-3:]]
    if latest_change:
        evidence.append(_change_item(latest_change))
    after = (f", after the last change of destination ({latest_change['time']})"
             if latest_change else "")
    return control("restore-tested", MET,
                   f"drill run {passed[-1]['id']} passed at {stamp(passed[-1]['_time'])}, "
                   f"within 12 months{after}", evidence)


def _change_item(change: dict) -> dict:
    return {"kind": "policy_change", "id": change.get("audit_seq"), "time": change["time"],
            "fingerprint": change["fingerprint"]}


def _observations(runs: list[dict]) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """(run, observation) for the runs that recorded one; the runs that did not."""
    seen, blind = [], []
    for run in runs:
        try:
            observed = json.loads(run["observations"]) if run.get("observations") else None
        except ValueError:
            observed = None
        if isinstance(observed, dict):
            seen.append((run, observed))
        else:
            blind.append(run)
    return seen, blind


def _observation_item(run: dict, observed: dict) -> dict:
    item = _run_item(run)
    item["observed"] = {k: v for k, v in observed.items() if k != "encryption_at_rest"}
    return item


def _distinct(seen: list[tuple[dict, dict]]) -> list[dict]:
    """One evidence item per distinct observation (its latest run), not one per night."""
    latest: dict[str, tuple[dict, dict]] = {}
    for run, observed in seen:
        latest[as_json({k: v for k, v in observed.items() if k != "encryption_at_rest"})] = \
            (run, observed)
    return [_observation_item(run, observed) for run, observed in latest.values()]


def _blind_reason(blind: list[dict]) -> str:
    synced = sum(r.get("source") == "repository" for r in blind)
    return (f"{len(blind)} good backup(s) in the period recorded no observation of where the "
            f"data went" + (f" ({synced} rebuilt from the repository by `catalog sync`)"
                            if synced else " (made before bkp recorded observations)"))


def judge_offsite(policy, in_period: list[dict]) -> dict:
    goods = [r for r in in_period if r["status"] == "ok"]
    seen, blind = _observations(goods)
    local = [(r, o) for r, o in seen if not o.get("off_site")]
    if policy.destination.type == "local" or local:
        where = policy.destination.path if policy.destination.type == "local" else "a path"
        return control("offsite-eea", NOT_MET,
                       f"the destination is a local path ({where}) on this host: not off-site",
                       _distinct(local))
    outside = [(r, o) for r, o in seen if _observed_country(o) and
               not eea.is_eea(_observed_country(o))]
    if outside:
        return control("offsite-eea", NOT_MET,
                       "a run observed its data going outside the EEA "
                       f"({', '.join(sorted({_observed_country(o) for _, o in outside}))})",
                       _distinct(outside))
    if not goods:
        return control("offsite-eea", NOT_EVIDENCED,
                       "no good backup in the period: nothing was observed", [])
    if blind:
        return control("offsite-eea", NOT_EVIDENCED, _blind_reason(blind),
                       [_run_item(r) for r in blind[-5:]] + _distinct(seen))
    places = sorted({_place(o) for _, o in seen})
    return control("offsite-eea", MET,
                   f"every one of {len(goods)} good backups observed an off-site destination "
                   f"in the EEA: {'; '.join(places)}", _distinct(seen))


def _observed_country(observed: dict) -> str | None:
    """The country a run's observation shows: the bucket's own region where the provider
    is known, else the country the policy named at the time."""
    if observed.get("type") == "s3":
        region = eea.region_info(observed.get("host"), observed.get("bucket_region"))
        if region is not None:
            return region.country
    return observed.get("country")


def _place(observed: dict) -> str:
    kind = observed.get("type")
    country = _observed_country(observed)
    if kind == "sftp":
        return (f"sftp {observed.get('host')} proving host key {observed.get('host_key')}, "
                f"{country}")
    if kind == "s3":
        return (f"s3 {observed.get('host')} bucket {observed.get('bucket')} in region "
                f"{observed.get('bucket_region')} (asked from S3), {country}")
    return f"{kind} {observed.get('host') or observed.get('location')}, {country}"


def judge_encrypted(policy, in_period: list[dict]) -> dict:
    goods = [r for r in in_period if r["status"] == "ok"]
    seen, blind = _observations(goods)
    plain = [(r, o) for r, o in seen if o.get("transport") not in SECURE_TRANSPORTS | {"none"}]
    if plain:
        return control("encrypted", NOT_MET,
                       "data went to the destination unencrypted in transit ("
                       + ", ".join(sorted({f"{o.get('transport')} to {o.get('host')}"
                                           for _, o in plain})) + ")", _distinct(plain))
    if not goods:
        return control("encrypted", NOT_EVIDENCED,
                       "no good backup in the period: nothing was observed", [])
    if blind:
        return control("encrypted", NOT_EVIDENCED, _blind_reason(blind),
                       [_run_item(r) for r in blind[-5:]] + _distinct(seen))
    transports = sorted({_transport_text(o) for _, o in seen})
    at_rest = next((o.get("encryption_at_rest") for _, o in seen
                    if o.get("encryption_at_rest")), "restic repository encryption")
    return control("encrypted", MET,
                   f"at rest: {at_rest}; in transit, observed by every one of {len(goods)} "
                   f"good backups: {'; '.join(transports)}", _distinct(seen))


def _transport_text(observed: dict) -> str:
    transport = observed.get("transport")
    if transport == "ssh":
        return f"SSH to {observed.get('host')}, pinned host key {observed.get('host_key')}"
    if transport == "https":
        return f"TLS to {observed.get('host')}, certificate verified"
    if transport == "none":
        return "no network (a local path; a network filesystem mounted there is not seen " \
               "by bkp)"
    return f"{transport} to {observed.get('host')}"


def judge_copies(policy, in_period: list[dict]) -> dict:
    copies = getattr(policy, "copies", ()) or ()
    if not copies:
        return control("copies", NOT_MET,
                       "the policy names no second copy (`copies`): the backups exist at one "
                       "site only", [])
    goods = [r for r in in_period if r["status"] == "ok"]
    if not goods:
        return control("copies", NOT_EVIDENCED, "no good backup in the period", [])
    # Each good run records its copies (`copies` JSON: id, status, snapshot_id) once bkp
    # copies snapshots; a run without that record shows nothing about the copy.
    unrecorded = [r for r in goods if not _json_list(r.get("copies"))]
    failed = [r for r in goods if any(c.get("status") != "ok" for c in
                                      _json_list(r.get("copies")) if isinstance(c, dict))]
    if failed:
        return control("copies", NOT_MET, f"{len(failed)} backup(s) in the period did not "
                       f"reach every copy", [_run_item(r) for r in failed[-5:]])
    if unrecorded:
        return control("copies", NOT_EVIDENCED,
                       f"{len(unrecorded)} good backup(s) recorded no copy",
                       [_run_item(r) for r in unrecorded[-5:]])
    return control("copies", MET, f"every one of {len(goods)} good backups reached its "
                   f"{len(copies)} copie(s)", [_run_item(r) for r in goods[-3:]])


def judge_retention(policy, in_period: list[dict], runs: list[dict], period: Period) -> dict:
    if policy.retention.legal_hold:
        return control("retention", MET,
                       "a legal hold: bkp forgets and prunes nothing for this tenant",
                       [{"kind": "policy", "id": None, "fingerprint": _fingerprint(policy)}])
    if policy.destination.append_only:
        applied = [r for r in runs if r["kind"] == "maintain" and r["status"] == "ok"
                   and period.holds(r["_time"])]
        if not applied:
            return control("retention", NOT_EVIDENCED,
                           "an append-only destination: retention is applied by `bkp "
                           "maintain`, and no maintenance run is recorded in the period", [])
        return control("retention", MET, f"applied by {len(applied)} maintenance run(s)",
                       [_run_item(r) for r in applied[-3:]])
    goods = [r for r in in_period if r["status"] == "ok" and r.get("source") != "repository"]
    if not goods:
        return control("retention", NOT_EVIDENCED,
                       "no backup made by bkp in the period, so no retention run", [])
    applied = [r for r in goods if r.get("snapshots_kept") is not None]
    if not applied or applied[-1]["id"] != goods[-1]["id"]:
        return control("retention", NOT_MET,
                       "the keep rules were not applied after the last good backup",
                       [_run_item(goods[-1])])
    rules = ", ".join(f"{k} {v}" for k, v in retention_facts(policy)["rules"].items())
    return control("retention", MET,
                   f"keep rules ({rules}) applied after {len(applied)} of {len(goods)} good "
                   f"backups, the last one included; {applied[-1]['snapshots_kept']} "
                   f"snapshots kept then", [_run_item(r) for r in applied[-3:]])


def _fingerprint(policy) -> str:
    from bkp.evidence.policy_changes import fingerprint

    return fingerprint(policy)


def judge_traceability(audit: dict) -> dict:
    item = {"kind": "audit_head", "id": audit.get("head"), "events": audit.get("events")}
    if audit.get("valid"):
        return control("traceability", MET,
                       f"the audit chain of {audit['events']} events verifies; head "
                       f"{audit['head']}", [item])
    problems = audit.get("problems") or []
    return control("traceability", NOT_MET,
                   "the audit trail does not verify: " + ("; ".join(problems[:3]) or
                                                         "no trail"), [item])


def judge_media(media: list[dict], period: Period) -> dict:
    left = [(m, r) for m in media for r in m.get("records", [])
            if r.get("left_service") and period.holds(_time(r.get("time")))]
    if not media:
        return control("media-sanitized", NOT_EVIDENCED,
                       "no medium of this tenant is in the media register", [])
    if not left:
        return control("media-sanitized", NOT_EVIDENCED,
                       "no medium of this tenant left service in the period", [])
    missing = [(m, r) for m, r in left if r.get("certificate_id") is None]
    items = [{"kind": "certificate" if r.get("certificate_id") else "record",
              "id": r.get("certificate_id") or r.get("record_id"), "serial": m["serial"],
              "record_id": r.get("record_id"), "time": r.get("time")} for m, r in left]
    if missing:
        return control("media-sanitized", NOT_MET,
                       f"{len(missing)} medium/media left service without a certificate: "
                       + ", ".join(m["serial"] for m, _ in missing), items)
    return control("media-sanitized", MET,
                   f"each of {len(left)} media that left service in the period has a "
                   f"certificate", items)


# ---------------------------------------------------------------- fleet sections

def certificate_sections(certificates: list[dict], period: Period) -> tuple[list, list]:
    """Certificates issued in the period: of media (sanitization, destruction) and of
    erasures of tenants' backups (`bkp offboard`/`bkp erase`), each with its hashes."""
    media, erasures = [], []
    for row in certificates:
        issued = _time(row.get("issued_at"))
        if not period.holds(issued):
            continue
        try:
            payload = json.loads(row["payload"])
        except (ValueError, TypeError):
            continue
        entry = {"certificate_id": row["id"], "record_id": row["record_id"],
                 "kind": payload.get("kind"), "issued_at": stamp(issued),
                 "certificate_sha256": hashlib.sha256(
                     as_json(payload).encode("utf-8")).hexdigest(),
                 "key_fingerprint": row.get("key_fingerprint")}
        verification = payload.get("verification") or {}
        if payload.get("kind") in ("sanitization", "destruction"):
            media_part = payload.get("media") or {}
            entry.update(serial=media_part.get("serial"),
                         tenant=(payload.get("data") or {}).get("tenant"),
                         result=(payload.get("sanitization") or {}).get("result"),
                         method=(payload.get("sanitization") or {}).get("method"),
                         hash=verification.get("hash"))
            media.append(entry)
        else:
            entry.update(tenant=payload.get("tenant") or (payload.get("data") or {}).get(
                "tenant"), result=payload.get("status") or payload.get("result"),
                hash=verification.get("hash"))
            erasures.append(entry)
    return media, erasures


def _details(event: dict) -> dict:
    try:
        details = json.loads(event.get("details") or "{}")
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


def _json_list(text) -> list:
    if isinstance(text, list):
        return text
    try:
        value = json.loads(text) if text else []
    except (ValueError, TypeError):
        return []
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- reading the records

def gather(catalog, policies: list, period: Period) -> tuple[list[TenantRecords], dict,
                                                               list[dict]]:
    """Everything the report is built from, read from the catalog (read-only)."""
    from bkp import catalog as cat
    from bkp.evidence.audit import unconfirmed_runs, verify_trail

    trail = verify_trail(catalog)
    events = catalog.audit_events()
    unconfirmed = unconfirmed_runs(catalog, events)
    audit = {"valid": trail.valid, "head": trail.head, "events": trail.events,
             "events_in_period": sum(period.holds(_time(e["time"])) for e in events),
             "problems": trail.problems}
    certificates = cat.all_certificates(catalog)
    latest_certificate = {}
    for row in certificates:
        latest_certificate[row["record_id"]] = row
    records_of = _media_records(cat.closed_sanitizations(catalog),
                                cat.all_destructions(catalog), latest_certificate)
    by_tenant: dict[str, list[dict]] = {}
    for event in events:
        by_tenant.setdefault(event.get("tenant"), []).append(event)
    tenants = []
    for policy in policies:
        media = [dict(m, records=records_of.get(m["serial"], []))
                 for m in cat.list_media(catalog, tenant=policy.tenant)]
        runs = catalog.tenant_runs(policy.tenant, ("backup", "drill", "maintain"))
        tenants.append(TenantRecords(
            policy=policy, runs=[_confirmed(r, unconfirmed) for r in runs],
            versions=catalog.policy_versions(policy.tenant),
            events=by_tenant.get(policy.tenant, []), media=media))
    return tenants, audit, certificates


def _confirmed(run: dict, unconfirmed: set[int]) -> dict:
    """A run whose outcome the audit trail does not record (its row edited or added behind
    bkp's back) counts as neither good nor passed: its status reads `unconfirmed`."""
    if run["id"] not in unconfirmed or run["status"] == "running":
        return run
    return dict(run, status=UNCONFIRMED, catalog_status=run["status"])


def _media_records(sanitizations: list[dict], destructions: list[dict],
                   certificates: dict[int, dict]) -> dict[str, list[dict]]:
    """Per serial: its sanitization and destruction records, whether each took the medium
    out of service (erased or destroyed), and the certificate issued for it."""
    out: dict[str, list[dict]] = {}
    for row in sanitizations:
        out.setdefault(row["serial"], []).append(_record(
            row, "sanitization", row["result"], row.get("ended_at") or row["started_at"],
            row["result"] == "erased", certificates))
    for row in destructions:
        out.setdefault(row["serial"], []).append(_record(
            row, "destruction", "destroyed", row["performed_at"], True, certificates))
    return out


def _record(row: dict, kind: str, result: str, when: str, left: bool,
            certificates: dict[int, dict]) -> dict:
    certificate = certificates.get(row["id"])
    return {"record_id": row["id"], "kind": kind, "result": result,
            "time": stamp(_time(when)), "hash": row.get("hash"), "left_service": left,
            "certificate_id": certificate["id"] if certificate else None}
