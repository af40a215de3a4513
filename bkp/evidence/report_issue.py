"""Issue an evidence report: read the records, judge, sign with the key ring's current key,
render, and record one `report.issued` audit event with the SHA-256 of what was written.

Nothing else is written: the records are read from a read-only catalog, and the event is
appended through a catalog opened only for that (no migration of dead runs, no operators
event): an auditor's report must not change what it reports on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from bkp.evidence import keyring, pdf_signature
from bkp.evidence import report as rep
from bkp.evidence import report_files as files

ACTION = "report.issued"
FORMATS = ("json", "html", "pdf")


@dataclass
class Issued:
    content: bytes
    document: dict
    sha256: str
    audit_seq: int | None

    def summary(self, fmt: str, output) -> dict:
        return {"format": fmt, "output": str(output) if output else None,
                "sha256": self.sha256, "generated": self.document["generated"],
                "period": self.document["period"],
                "tenants": [t["tenant"] for t in self.document["tenants"]],
                "fleet": self.document["fleet"], "audit_event": self.audit_seq}


def issue_report(*, reader, settings, policies: list, period: rep.Period, fmt: str,
                 organization: str | None, record, deliver=None,
                 now: datetime | None = None) -> Issued:
    """`reader`: the read-only catalog; `record(sha256, details)`: appends the audit event
    and returns it (None when there is nowhere to record it); `deliver(content)`: writes
    the file first, so that a report that could not be written is not recorded as
    issued."""
    now = now or datetime.now(UTC)
    tenants, audit, certificates = rep.gather(reader, policies, period)
    document = rep.build_report(tenants=tenants, audit=audit, certificates=certificates,
                                period=period, organization=organization, now=now)
    with keyring.signing_key(settings.home, create=False) as signer:
        signed = files.sign_document(document, signer.private_key)
        if fmt == "json":
            content = files.json_bytes(signed)
        elif fmt == "html":
            content = files.render_html(signed, signer.private_key)
        else:
            content = pdf_signature.sign_pdf(
                files.render_pdf(signed), signer.private_key, signer.key.certificate_pem,
                reason=f"bkp evidence report {signed['period']['from'][:10]} to "
                       f"{signed['period']['to'][:10]}")
    digest = hashlib.sha256(content).hexdigest()
    if deliver is not None:
        deliver(content)
    event = record(digest, {
        "format": fmt, "sha256": digest,
        "signature": signed["signature"]["value"],
        "key_fingerprint": signed["signature"]["key_fingerprint"],
        "period": signed["period"], "tenants": [t["tenant"] for t in signed["tenants"]],
        "audit_head": audit["head"], "audit_events": audit["events"]})
    return Issued(content, signed, digest, event["seq"] if event else None)
