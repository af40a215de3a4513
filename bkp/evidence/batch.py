"""The summary of a decommission batch: one signed PDF listing every medium sanitized or
destroyed in a period, with its record, certificate id, hash and validation state.

A batch of disks leaves together (to a destruction service, back to a lessor, to
recycling); the receiving party and the auditor want one sheet for the batch that points at
each medium's own certificate. The sheet proves nothing on its own: each line names the
certificate that does (`bkp certificate verify`). It is signed like a certificate (PAdES,
the installation's current key) and carries its listing as a JSON attachment.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from bkp import catalog as cat
from bkp.errors import OperationError, UsageError

FORMAT = "bkp-certificate-batch/1"
ATTACHMENT = "batch.json"


def parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def batch_summary(ctx, since: date, until: date | None = None) -> dict:
    """Every closed sanitization and destruction of the period with its latest certificate
    (pure reading of the catalog)."""
    if until is not None and until < since:
        raise UsageError(f"--until {until} is before --since {since}")
    lines = []
    for row in _records(ctx):
        day = (row["time"] or "")[:10]
        if day < since.isoformat() or (until is not None and day > until.isoformat()):
            continue
        certificate = cat.latest_certificate(ctx.catalog, row["id"])
        payload = json.loads(certificate["payload"]) if certificate else {}
        validation = payload.get("validation") or {}
        lines.append({
            "record_id": row["id"], "kind": row["kind"], "serial": row["serial"],
            "time": row["time"], "method": row["method"], "category": row["category"],
            "technique": row.get("technique") or payload.get("technique"),
            "result": row["result"], "hash": row["hash"],
            "certificate_id": certificate["id"] if certificate else None,
            "validation": ("validated" if validation.get("decision") == "approved" else
                           "rejected" if validation.get("validator") else "not validated")
            if certificate else None,
        })
    return {"format": FORMAT, "generated": cat.utc_now(),
            "period": {"since": since.isoformat(),
                       "until": until.isoformat() if until else None},
            "media": lines, "count": len(lines),
            "not_validated": sum(1 for line in lines if line["validation"] != "validated")}


def _records(ctx) -> list[dict]:
    rows = []
    for row in cat.closed_sanitizations(ctx.catalog):
        rows.append({**row, "kind": "sanitization", "time": row["ended_at"]})
    for row in cat.all_destructions(ctx.catalog):
        rows.append({**row, "kind": "destruction", "result": "destroyed",
                     "time": row.get("destroyed_on") or row["performed_at"]})
    return sorted(rows, key=lambda r: r["id"])


def render_pdf(summary: dict, organization: str | None) -> bytes:
    """A4 landscape: the batch's media, one line each, with certificate and hash."""
    from fpdf import FPDF

    from bkp.evidence.certificates import _latin

    pdf = FPDF(orientation="L", format="A4")
    pdf.set_creation_date(datetime.now(UTC))
    pdf.set_title("Decommission batch summary")
    pdf.set_creator("bkp")
    pdf.set_margins(10, 10, 10)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, "Decommission batch summary", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 8)
    period = summary["period"]
    pdf.cell(0, 4, _latin(f"{organization or ''}  Period {period['since']} to "
                          f"{period['until'] or summary['generated'][:10]}; "
                          f"{summary['count']} media, {summary['not_validated']} not "
                          f"validated. Generated {summary['generated']}."),
             new_x="LMARGIN", new_y="NEXT")
    pdf.cell(0, 4, "Each line names the medium's own signed certificate: check it with "
                   "bkp certificate verify. NIST SP 800-88 Rev. 2.", new_x="LMARGIN",
             new_y="NEXT")
    pdf.ln(2)
    widths = (20, 38, 14, 30, 34, 18, 14, 24, 0)
    header = ("record", "serial", "cert.", "method", "technique", "result", "date",
              "validation", "verification hash (SHA-256)")
    pdf.set_font("Helvetica", "B", 7)
    for width, title in zip(widths, header, strict=True):
        pdf.cell(width, 5, title, border="B")
    pdf.ln()
    pdf.set_font("Helvetica", "", 7)
    for line in summary["media"]:
        cells = (f"{line['kind'][:5]} {line['record_id']}", line["serial"],
                 str(line["certificate_id"] or "-"),
                 f"{line['method']} ({line['category']})", line["technique"] or "-",
                 line["result"], (line["time"] or "")[:10], line["validation"] or "-")
        for width, text in zip(widths, cells, strict=False):
            pdf.cell(width, 4.5, _latin(str(text))[:40])
        pdf.set_font("Courier", "", 6.5)
        pdf.cell(0, 4.5, line["hash"] or "-", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 7)
    pdf.ln(6)
    for x, who in ((10, "Handed over by"), (110, "Received by"), (200, "Validated by")):
        y = pdf.get_y() + 8
        pdf.line(x, y, x + 80, y)
        pdf.set_xy(x, y + 1)
        pdf.cell(80, 4, f"{who}: name, date, signature")
    pdf.embed_file(bytes=json.dumps(summary, ensure_ascii=True).encode("ascii"),
                   basename=ATTACHMENT, desc="the batch listing",
                   mime_type="application/json")
    return bytes(pdf.output())


def signed_pdf(ctx, summary: dict, organization: str | None) -> bytes:
    """The summary PDF signed with the installation's current key; no key is created for
    it (a batch of records without certificates has nothing to sum up)."""
    from bkp.evidence import keyring, pdf_signature

    if not summary["media"]:
        raise OperationError(f"no medium was sanitized or destroyed since "
                             f"{summary['period']['since']}: nothing to sum up")
    with keyring.signing_key(ctx.settings.home, create=False) as signer:
        return pdf_signature.sign_pdf(render_pdf(summary, organization), signer.private_key,
                                      signer.key.certificate_pem,
                                      reason=f"Decommission batch since "
                                             f"{summary['period']['since']}")
