"""The central gatherer's half of the results inbox: `bkp catalog sync --all` ingests each
result once, in the order written, after checking its signature.

The gatherer is the single writer of the central catalog. A verified result becomes the run
rows and the audit events the pod recorded (appended to the one audit chain, each naming the
result it came from), and its drill report. A result without a valid signature of its
tenant's key is rejected and reported (exit 5) and changes nothing but the note that it was
seen. No repository is opened per result: the repositories' snapshot lists are read once per
tenant afterwards (evidence.sync), so a result lost on its way still shows as a backup.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bkp.context import Context
from bkp.destinations.inbox import NotAResult, is_result_name, open_inbox
from bkp.errors import BkpError
from bkp.evidence.pod_results import Rejected, Verified, load_public, verify

# What a result may never carry into the central catalog (the chain's own fields).
CHAIN_FIELDS = ("seq", "prev_hash", "hash")


@dataclass
class IngestReport:
    ingested: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    already: int = 0
    error: str | None = None
    error_exit: int = 1  # the error's own exit code: 4 for an inbox refused for safety

    @property
    def exit_code(self) -> int:
        if self.rejected:
            return 5
        return self.error_exit if self.error else 0

    def to_json(self) -> dict:
        return {"ingested": len(self.ingested), "already_ingested": self.already,
                "rejected": self.rejected, "error": self.error}


def ingest_inbox(ctx: Context, results, tenants: set[str]) -> IngestReport:
    """Every new object of the inbox, oldest first. `results`: the installation's Results;
    `tenants`: the tenants with a valid policy here (a result of another is rejected)."""
    report = IngestReport()
    with open_inbox(results.inbox) as inbox:  # one connection for the whole ingest
        try:
            names = inbox.names()
        except BkpError as exc:
            report.error, report.error_exit = str(exc), exc.exit_code
            ctx.audit("results.ingest", "failed", error=report.error)
            return report
        _ingest_names(ctx, inbox, names, results, tenants, report)
    return report


def _ingest_names(ctx: Context, inbox, names: list[str], results, tenants: set[str],
                  report: IngestReport) -> None:
    seen = ctx.catalog.seen_objects()
    keys: dict[str, bytes | None] = {}

    def public_key_of(tenant: str) -> bytes | None:
        if tenant not in tenants:
            return None
        if tenant not in keys:
            keys[tenant] = load_public(results.public_key(tenant))
        return keys[tenant]

    for name in names:
        if name in seen:
            if seen[name]["status"] == "rejected":
                report.rejected.append({"object": name, "reason": seen[name]["reason"],
                                        "new": False})
            else:
                report.already += 1
            continue
        if not is_result_name(name):  # never opened: what it holds cannot make it a result
            _reject(ctx, name, None, "not named as a result (TIME-TENANT-KIND-ID.json)", report)
            continue
        try:
            data = inbox.get(name)
        except NotAResult as exc:
            _reject(ctx, name, None, str(exc), report)
            continue
        except BkpError as exc:
            report.error, report.error_exit = str(exc), exc.exit_code  # read again next time
            continue
        _ingest_one(ctx, name, data, public_key_of, report)


def _ingest_one(ctx: Context, name: str, data: bytes, public_key_of,
                report: IngestReport) -> None:
    try:
        verified = verify(name, data, public_key_of)
        if ctx.catalog.result_seen(verified.document["id"]):
            raise Rejected(f"a copy of result {verified.document['id']}, already ingested "
                           f"under another name")
    except Rejected as exc:
        _reject(ctx, name, data, str(exc), report)
        return
    with ctx.catalog.transaction():  # the runs, the events and the note: all or nothing
        run_ids = _record(ctx, name, verified)
    report.ingested.append({"object": name, "tenant": verified.document["tenant"],
                            "kind": verified.document["kind"], "run_ids": run_ids})


def _reject(ctx: Context, name: str, data: bytes | None, reason: str,
            report: IngestReport) -> None:
    """`data`: what was read; None for an object refused unopened (it gets no digest: a
    digest of nothing would read as the object's)."""
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    with ctx.catalog.transaction():
        ctx.catalog.note_object(name, "rejected", reason=reason)
        ctx.audit("result.rejected", "failed", object=name, reason=reason, sha256=digest)
    report.rejected.append({"object": name, "reason": reason, "new": True})


def _record(ctx: Context, name: str, verified: Verified) -> list[int]:
    document = verified.document
    tenant = document["tenant"]
    reports = _keep_reports(ctx, tenant, document["id"][:12], document.get("reports") or {})
    central: dict[object, int] = {}
    for run in document["runs"]:
        report_path = reports.get(Path(str(run.get("report") or "")).name)
        central[run.get("id")] = ctx.catalog.add_result_run(
            tenant, run, str(document.get("host") or "pod"), report_path)
    for event in document["events"]:
        details = _details(event)
        if "run_id" in details:
            details["pod_run_id"] = details["run_id"]
            details["run_id"] = central.get(details["run_id"])
        details.update(result=name, pod_time=event.get("time"), pod_host=event.get("host"))
        from bkp.evidence import audit

        audit.record(ctx.catalog, operator=str(event.get("operator") or "pod"),
                     os_user=str(event.get("os_user") or "pod"),
                     action=str(event.get("action")), outcome=str(event.get("outcome")),
                     tenant=tenant, details=details)
    run_ids = list(central.values())
    ctx.catalog.note_object(name, "ingested", result_id=document["id"], tenant=tenant,
                            kind=document["kind"], signed_by=verified.signed_by,
                            run_ids=run_ids)
    ctx.audit("result.ingested", "ok", tenant, object=name, result_id=document["id"],
              signed_by=verified.signed_by, run_ids=run_ids)
    return run_ids


def _details(event: dict) -> dict:
    details = event.get("details")
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except ValueError:
            details = {"text": details}
    details = dict(details) if isinstance(details, dict) else {}
    for key in CHAIN_FIELDS:
        details.pop(key, None)
    return details


def _keep_reports(ctx: Context, tenant: str, result: str, reports: dict) -> dict[str, str]:
    """A drill's report where this host keeps its own (reports/drills/TENANT/), its name
    led by the result's id: every pod numbers its drills from 1."""
    from bkp.names import file_name

    folder = ctx.settings.home / "reports" / "drills" / tenant
    kept = {}
    for name, text in reports.items():
        if not isinstance(text, str):
            continue
        try:
            safe = file_name(str(name), "a drill report")
        except BkpError:
            continue  # not a name a file can have: the report stays in the inbox only
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / f"{result}-{safe}"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        kept[safe] = str(path)
    return kept
