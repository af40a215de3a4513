"""The hash-chained audit trail in the catalog's `audit_log` table.

Each event carries the SHA-256 of the one before it, over a canonical encoding of all its
fields, so changing, inserting or deleting an event breaks the chain. A truncated tail
leaves a valid chain: auditors anchor it by keeping `bkp audit head` and checking later
that the log still contains that hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from bkp.catalog import GENESIS_HASH, HOST, Catalog, as_json, utc_now

HASHED_FIELDS = ("seq", "time", "operator", "os_user", "host", "tenant", "action", "outcome",
                 "details", "prev_hash")


def event_hash(event: dict) -> str:
    canonical = as_json({k: event.get(k) for k in HASHED_FIELDS})
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record(catalog: Catalog, *, operator: str, os_user: str, action: str, outcome: str,
           tenant: str | None = None, details: dict | None = None) -> dict:
    """Append one event; `details` must never hold a secret."""

    def build(seq: int, prev_hash: str) -> dict:
        event = {"seq": seq, "time": utc_now(), "operator": operator, "os_user": os_user,
                 "host": HOST, "tenant": tenant, "action": action, "outcome": outcome,
                 "details": as_json(details or {}), "prev_hash": prev_hash}
        event["hash"] = event_hash(event)
        return event

    return catalog.append_audit(build)


@dataclass
class ChainReport:
    valid: bool
    events: int
    head: str
    problems: list[str] = field(default_factory=list)
    anchor_found: bool | None = None

    def to_json(self) -> dict:
        out = {"valid": self.valid, "events": self.events, "head": self.head,
               "problems": self.problems}
        if self.anchor_found is not None:
            out["anchor_found"] = self.anchor_found
        return out


def verify_chain(events: list[dict], anchor: str | None = None) -> ChainReport:
    """Recompute every hash and link; name each event where the chain breaks."""
    problems: list[str] = []
    prev_hash, expected_seq = GENESIS_HASH, 1
    hashes = set()
    for event in events:
        seq = event.get("seq")
        if seq != expected_seq:
            problems.append(f"event {seq}: expected sequence number {expected_seq} "
                            f"(events deleted or inserted)")
        if event.get("prev_hash") != prev_hash:
            problems.append(f"event {seq}: does not link to the event before it "
                            f"(an event before it was changed, inserted or deleted)")
        if event_hash(event) != event.get("hash"):
            problems.append(f"event {seq}: content does not match its hash (event changed)")
        hashes.add(event.get("hash"))
        prev_hash = event.get("hash")
        expected_seq = (seq or expected_seq) + 1
    anchor_found = None
    if anchor:
        anchor_found = anchor.strip().lower() in hashes
        if not anchor_found:
            problems.append(f"anchor {anchor[:16]}… is not in the log (events removed from "
                            f"the end, or the log was rebuilt)")
    return ChainReport(not problems, len(events), prev_hash, problems, anchor_found)


# Which event records the end of each kind of record, and the detail that names it.
def _expected_events(catalog: Catalog) -> list[tuple[str, str, int, str | None, str]]:
    """(action, detail key, record id, outcome or None, what) for every closed record."""
    from bkp import catalog as cat

    expected = []
    for run in catalog.closed_runs():
        if run.get("source") == "repository":
            continue  # rebuilt by `bkp catalog sync`; that sync has its own event
        expected.append((run["kind"], "run_id", run["id"], run["status"],
                         f"{run['kind']} run {run['id']} of {run['tenant']} "
                         f"({run['status']}, {run['started_at']})"))
    for row in cat.closed_sanitizations(catalog):
        expected.append(("sanitize", "record_id", row["id"], row["result"],
                         f"sanitization {row['id']} of {row['serial']} ({row['result']})"))
    for row in cat.all_destructions(catalog):
        expected.append(("destroy", "record_id", row["id"], None,
                         f"destruction {row['id']} of {row['serial']}"))
    for row in cat.closed_erasures(catalog):
        expected.append((row["kind"], "record_id", row["id"], row["status"],
                         f"erasure record {row['id']} ({row['kind']} of {row['tenant']}, "
                         f"{row['status']})"))
    for row in cat.all_certificates(catalog):
        expected.append(("certificate.issue", "certificate_id", row["id"], None,
                         f"certificate {row['id']} of record {row['record_id']}"))
    return expected


def _details(event: dict) -> dict | None:
    """An event's details; None for a changed event (the chain check names it)."""
    import json

    try:
        details = json.loads(event.get("details") or "{}")
    except ValueError:
        return None
    return details if isinstance(details, dict) else None


def _outcomes(events: list[dict]) -> dict[tuple[str, str, int], set[str]]:
    """(action, detail key, record id) -> the outcomes the trail records for it."""
    outcomes: dict[tuple[str, str, int], set[str]] = {}
    for event in events:
        details = _details(event)
        if details is None:
            continue
        for key in ("run_id", "record_id", "certificate_id"):
            if isinstance(details.get(key), int):
                outcomes.setdefault((event["action"], key, details[key]), set()).add(
                    event["outcome"])
    return outcomes


def unconfirmed_runs(catalog: Catalog, events: list[dict]) -> set[int]:
    """Closed runs made by bkp whose outcome the trail does not record (no event, or
    another outcome): a row edited or added behind bkp's back is no evidence."""
    outcomes = _outcomes(events)
    return {run["id"] for run in catalog.closed_runs()
            if run.get("source") != "repository"
            and run["status"] not in outcomes.get((run["kind"], "run_id", run["id"]), ())}


def record_problems(catalog: Catalog, events: list[dict]) -> list[str]:
    """Records in the catalog whose closing event is not in the trail: events were removed
    (a trail shorter than the work it records), or a record was forged without one."""

    outcomes = _outcomes(events)
    problems = _records_removed(catalog, events)
    for action, key, record_id, outcome, what in _expected_events(catalog):
        seen = outcomes.get((action, key, record_id))
        if seen is None:
            problems.append(f"{what} has no event in the audit trail: events were removed, "
                            f"or the record was added without one")
        elif outcome is not None and outcome not in seen:
            problems.append(f"{what}: the audit trail records it as {', '.join(sorted(seen))}"
                            f", the catalog as {outcome}")
    return problems


# Events that name a record by these detail keys: the record must still be there (nothing
# in bkp deletes a run, a sanitization, a certificate or a registered medium).
_NAMED_RECORDS = {"run_id": "run", "record_id": "record", "certificate_id": "certificate"}


def _records_removed(catalog: Catalog, events: list[dict]) -> list[str]:

    present = catalog.record_keys()
    problems = []
    for event in events:
        details = _details(event)
        if details is None:
            continue
        named = [(key, details[key]) for key in _NAMED_RECORDS
                 if isinstance(details.get(key), int)]
        if event.get("action") == "media.register" and isinstance(details.get("serial"), str):
            named.append(("serial", details["serial"]))
        for key, value in named:
            if value not in present[key]:
                what = _NAMED_RECORDS.get(key, "medium")
                problems.append(f"event {event.get('seq')} ({event.get('action')} "
                                f"{event.get('outcome')}) names {what} {value}, which is no "
                                f"longer in the catalog: records were removed")
    return problems


def verify_trail(catalog: Catalog, anchor: str | None = None) -> ChainReport:
    """The chain, the anchor, and every record's event in the chain."""
    events = catalog.audit_events()
    report = verify_chain(events, anchor)
    extra = record_problems(catalog, events)
    if extra:
        report.problems += extra
        report.valid = False
    return report
