"""The evidence report as files: signed JSON (the source), self-contained HTML, and PDF.

- JSON: the document with an Ed25519 `signature` over its canonical content (sorted keys,
  no spaces, UTF-8), by the current key of the certificates' key ring (keyring.py).
- HTML: one file, nothing fetched (inline CSS, inline SVG charts, no link, script or font
  from elsewhere), printable. It carries the signed JSON in a
  `<script type="application/json">` block, and ends with a second Ed25519 signature over
  every byte before it: an edit anywhere, inside the JSON or outside, a truncated file or
  anything appended fails `bkp report verify`.
- PDF: the same content, made with fpdf2 like the certificates, the signed JSON attached,
  and signed as a PDF over the whole file (pdf_signature.py): an incremental update
  appended after the signature is refused.
"""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import UTC, datetime

from bkp.evidence import certificates as certs
from bkp.evidence.report import FORMAT, VERDICT_ORDER

ATTACHMENT = "report.json"
HTML_DATA_ID = "bkp-report"
HTML_SIGNATURE = b"<!-- bkp-html-signature "
HTML_SIGNATURE_END = b" -->\n"


# ---------------------------------------------------------------- signing

def payload_of(document: dict) -> dict:
    return {k: v for k, v in document.items() if k != "signature"}


def sign_document(document: dict, private_key) -> dict:
    payload = payload_of(document)
    return {**payload, "signature": _signature(certs.canonical(payload), private_key)}


def _signature(data: bytes, private_key) -> dict:
    public_key = private_key.public_key()
    return {"algorithm": "Ed25519", "key_fingerprint": certs.key_fingerprint(public_key),
            "public_key": base64.b64encode(certs.raw_public_key(public_key)).decode(),
            "value": base64.b64encode(private_key.sign(data)).decode()}


def json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- verifying

def kind_of(data: bytes) -> str | None:
    head = data.lstrip()[:64].lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith(b"<!doctype html") or head.startswith(b"<html"):
        return "html"
    if head.startswith(b"{"):
        return "json"
    return None


def verify_report(data: bytes, trusted: list) -> dict:
    """Check a report file (JSON, HTML or PDF) against the trusted keys. `valid` is false
    on any change, and for anything that is not a report bkp signed."""
    kind = kind_of(data)
    problems: list[str] = []
    outer_key = None
    if kind is None:
        return _result(None, None, None, [
            "not a bkp report: neither a signed report JSON nor an HTML or PDF report "
            "(empty, truncated at the start, or another kind of file)"])
    if kind == "pdf":
        problems, outer_key, document = _pdf(data, trusted)
    elif kind == "html":
        problems, outer_key, document = _html(data, trusted)
    else:
        try:
            document = _loads(data)
        except ValueError as exc:
            return _result(kind, None, None, [f"not a readable report JSON (truncated or "
                                              f"edited): {exc}"])
    if document is None:
        return _result(kind, None, None, problems)
    inner, key = _document_problems(document, trusted)
    problems += inner
    if kind == "json" and key is not None and data != json_bytes(document):
        # The signature covers the parsed content; a reader sees the text. A key given
        # twice (json.loads keeps the last) or any reformatting makes them differ.
        problems.append("the file is not byte for byte the JSON bkp wrote for its content "
                        "(reformatted, or a key given twice so that what a reader sees is "
                        "not what was signed)")
    if outer_key is not None and key is not None and outer_key.id != key.id:
        problems.append(f"the {kind.upper()} is signed by key {outer_key.id}, the report "
                        f"inside it by key {key.id}: bkp signs both with one key")
    return _result(kind, document if isinstance(document, dict) else None, key, problems)


def _loads(data: bytes):
    """JSON from bytes; anything unreadable (not UTF-8, not JSON, nested deeper than
    Python's parser goes) is a ValueError with its reason."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply to be a report") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason})") from None


def _result(kind, document, key, problems) -> dict:
    document = document or {}
    tenants = document.get("tenants") if isinstance(document.get("tenants"), list) else []
    return {"valid": not problems, "format": kind,
            "generated": document.get("generated"),
            "organization": document.get("organization"),
            "period": document.get("period"),
            "tenants": [t.get("tenant") for t in tenants if isinstance(t, dict)],
            "key_fingerprint": key.id if key else None,
            "key": key.describe() if key else None, "problems": problems}


def _document_problems(document, trusted: list):
    """The signed JSON: shaped like a report, signed by a trusted key valid when the report
    says it was made."""
    from cryptography.exceptions import InvalidSignature

    from bkp.evidence import keyring

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return [f"not a bkp report (format is not {FORMAT})"], None
    signature = document.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != "Ed25519":
        return ["the report carries no Ed25519 signature"], None
    claimed = signature.get("key_fingerprint")
    key = keyring.find_key(trusted, claimed)
    if key is None:
        return [f"signed by key {claimed}, not by a trusted key ({_trusted_text(trusted)})"], \
            None
    try:
        key.key().verify(base64.b64decode(str(signature.get("value", "")), validate=True),
                         certs.canonical(payload_of(document)))
    except (InvalidSignature, ValueError, TypeError):
        return ["the signature does not match the report's content (changed after signing, "
                "or signed by another key)"], key
    late = key.validity_problem(document.get("generated"), "the report says it was made at")
    return ([late] if late else []), key


def _trusted_text(trusted: list) -> str:
    source = trusted[0].source if trusted else "no key"
    if source == "key ring":
        source = "this installation's key ring"
    return f"{source}: {len(trusted)} key{'s' if len(trusted) != 1 else ''}"


def _html(data: bytes, trusted: list):
    """The signature at the end over every byte before it, then the JSON inside."""
    from cryptography.exceptions import InvalidSignature

    from bkp.evidence import keyring

    at = data.rfind(HTML_SIGNATURE)
    if at < 0 or not data.endswith(HTML_SIGNATURE_END):
        return ["the HTML does not end with bkp's signature (truncated, something appended, "
                "or not a bkp report)"], None, None
    trailer = data[at + len(HTML_SIGNATURE):-len(HTML_SIGNATURE_END)]
    try:
        signature = _loads(trailer)
        claimed = signature["key_fingerprint"]
        value = base64.b64decode(signature["value"], validate=True)
    except (ValueError, KeyError, TypeError):
        return ["the HTML's signature is damaged"], None, None
    if trailer != _trailer(signature):
        return ["the HTML's signature line carries more than bkp's signature (something "
                "was added to it after signing)"], None, None
    key = keyring.find_key(trusted, claimed)
    problems = []
    if key is None:
        problems.append(f"the HTML is signed by key {claimed}, not by a trusted key "
                        f"({_trusted_text(trusted)})")
    else:
        try:
            key.key().verify(value, data[:at])
        except InvalidSignature:
            problems.append("the HTML was changed after it was signed (its bytes no longer "
                            "match its signature)")
    blocks = re.findall(rb'<script type="application/json" id="' + HTML_DATA_ID.encode()
                        + rb'">(.*?)</script>', data[:at], flags=re.S)
    if len(blocks) != 1:
        return [*problems, f"the HTML carries {len(blocks)} signed report blocks, not one"], \
            key, None
    try:
        document = _loads(blocks[0])
    except ValueError as exc:
        return [*problems, f"the report inside the HTML is damaged: {exc}"], key, None
    return problems, key, document


def _pdf(data: bytes, trusted: list):
    from bkp.evidence import keyring, pdf_signature

    check = pdf_signature.check_signature(data)
    problems = list(check.problems)
    key = keyring.find_raw(trusted, check.signer_key) if check.signer_key else None
    if key is None and (check.signer_key or check.signer_algorithm):
        problems.append(f"the PDF is not signed by a trusted key ({_trusted_text(trusted)})")
    elif key is not None and check.signed_at is not None:
        late = key.validity_problem(check.signed_at, "the PDF was signed at")
        problems += [late] if late else []
    try:
        attached = pdf_signature.attachment(data, ATTACHMENT)
    except Exception as exc:  # a damaged or hostile PDF can fail anywhere in the parser
        return [*problems, f"this PDF cannot be read ({type(exc).__name__})"], key, None
    if attached is None:
        return [*problems, f"this PDF carries no signed bkp report (no {ATTACHMENT} "
                           f"attached)"], key, None
    try:
        return problems, key, _loads(attached)
    except ValueError as exc:
        return [*problems, f"the report inside this PDF is damaged: {exc}"], key, None


# ---------------------------------------------------------------- HTML

STATUS_TEXT = {"met": "met", "not_met": "NOT MET", "not_evidenced": "not evidenced"}

CSS = """
:root{--ok:#1b7f3b;--bad:#b3261e;--grey:#8a6d00;--line:#d0d7de;--ink:#1f2328}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
 color:var(--ink);margin:0 auto;max-width:1100px;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;
 border-bottom:2px solid var(--line);padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px}
th,td{border:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
.met{background:#e6f4ea;color:var(--ok);font-weight:600}
.not_met{background:#fce8e6;color:var(--bad);font-weight:700}
.not_evidenced{background:#fff4ce;color:var(--grey);font-weight:600}
.matrix td{text-align:center;white-space:nowrap}.matrix td:first-child{text-align:left}
.meta{color:#57606a}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;
 word-break:break-all}
.tenant{break-before:page}.chart{margin:4px 0 12px}.chart svg{max-width:100%;height:auto}
.small{font-size:12px}
@media print{body{padding:0;max-width:none}.tenant{break-before:page}
 table,svg,.chart{break-inside:avoid}a{color:inherit;text-decoration:none}}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def render_html(document: dict, private_key) -> bytes:
    """The report as one self-contained HTML file, signed over its bytes."""
    body = "\n".join([
        _header(document), _fleet(document), _fleet_sections(document),
        *(_tenant_html(t, (document.get("period") or {}).get("to"))
          for t in document.get("tenants", [])), _controls_legend(document),
        _data_block(document), _verify_note(document)])
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(_title(document))}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n").encode()
    return page + HTML_SIGNATURE + _trailer(_signature(page, private_key)) + \
        HTML_SIGNATURE_END


def _trailer(signature: dict) -> bytes:
    """The HTML's last line, exactly: the comment is not covered by the signature it
    carries, so nothing but these three fields may stand in it (a `-->` in an extra field
    would close the comment and show what follows it)."""
    return json.dumps({k: signature.get(k) for k in ("algorithm", "key_fingerprint",
                                                      "value")},
                      separators=(",", ":")).encode("ascii")


def _title(document: dict) -> str:
    period = document.get("period") or {}
    return (f"Backup evidence report {period.get('from', '')[:10]} to "
            f"{period.get('to', '')[:10]}" + (f", {document['organization']}"
                                               if document.get("organization") else ""))


def _header(document: dict) -> str:
    audit = document.get("audit") or {}
    signature = document.get("signature") or {}
    trail = ("intact" if audit.get("valid") else "BROKEN")
    return (f"<h1>{_e(_title(document))}</h1>\n<p class=\"meta\">Generated "
            f"{_e(document.get('generated'))} by bkp. Audit trail {trail}: "
            f"{_e(audit.get('events'))} events, head <span class=\"mono\">"
            f"{_e(audit.get('head'))}</span> (anchor it: <code>bkp audit verify --anchor "
            f"HEAD</code>). Signed with Ed25519 key <span class=\"mono\">"
            f"{_e(signature.get('key_fingerprint'))}</span>.</p>")


def _fleet(document: dict) -> str:
    ids = [c["id"] for c in document.get("controls", [])]
    head = "".join(f"<th>{_e(i)}</th>" for i in ids)
    rows = []
    for row in document.get("fleet", []):
        cells = "".join(
            f"<td class=\"{_e(row['controls'].get(i))}\">"
            f"{_e(STATUS_TEXT.get(row['controls'].get(i), '-'))}</td>" for i in ids)
        rows.append(f"<tr><td><a href=\"#t-{_e(row['tenant'])}\">{_e(row['tenant'])}</a>"
                    f"</td>{cells}</tr>")
    if not rows:
        rows.append(f"<tr><td colspan=\"{len(ids) + 1}\">no tenant in this report</td></tr>")
    return (f"<h2>Fleet overview</h2>\n<p class=\"small meta\">Every tenant's controls; "
            f"tenants with a control not met first. Not evidenced means the records do not "
            f"show it either way.</p>\n<table class=\"matrix\"><tr><th>tenant</th>{head}"
            f"</tr>\n" + "\n".join(rows) + "</table>")


def _fleet_sections(document: dict) -> str:
    media = document.get("media") or []
    erasures = document.get("erasures") or []
    out = ["<h2>Media and erasure certificates issued in the period</h2>"]
    if media:
        out.append("<table><tr><th>certificate</th><th>record</th><th>serial</th>"
                   "<th>tenant</th><th>kind</th><th>result</th><th>issued</th>"
                   "<th>verification hash (SHA-256)</th><th>certificate SHA-256</th></tr>")
        for m in media:
            out.append(f"<tr><td>{_e(m['certificate_id'])}</td><td>{_e(m['record_id'])}</td>"
                       f"<td>{_e(m.get('serial'))}</td><td>{_e(m.get('tenant'))}</td>"
                       f"<td>{_e(m.get('kind'))}</td><td>{_e(m.get('result'))}</td>"
                       f"<td>{_e(m.get('issued_at'))}</td><td class=\"mono\">"
                       f"{_e(m.get('hash'))}</td><td class=\"mono\">"
                       f"{_e(m.get('certificate_sha256'))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No media certificate was issued in the period.</p>")
    if erasures:
        out.append("<table><tr><th>certificate</th><th>record</th><th>tenant</th>"
                   "<th>result</th><th>issued</th><th>certificate SHA-256</th></tr>")
        for m in erasures:
            out.append(f"<tr><td>{_e(m['certificate_id'])}</td><td>{_e(m['record_id'])}</td>"
                       f"<td>{_e(m.get('tenant'))}</td><td>{_e(m.get('result'))}</td>"
                       f"<td>{_e(m.get('issued_at'))}</td><td class=\"mono\">"
                       f"{_e(m.get('certificate_sha256'))}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No erasure of a tenant's backups was certified in the period.</p>")
    return "\n".join(out)


def _tenant_html(t: dict, period_end: str | None) -> str:
    dest = t["destination"]
    retention = t["retention"]
    rules = ", ".join(f"{k} {v}" for k, v in retention["rules"].items()) or "none"
    facts = [
        ("Purpose", t.get("purpose")), ("Description", t.get("description")),
        ("Classification", t.get("classification")),
        ("Where the data rests", f"{dest['type']}: {dest.get('location')}, country "
                                 f"{dest['country']}" + (f", region {dest['region']}"
                                                         if dest.get("region") else "")
         + (f", provider {dest['provider']}" if dest.get("provider") else "")
         + ("" if dest["off_site"] else " (NOT off-site)")),
        ("Copies", "; ".join(f"{c['type']} {c.get('location')} ({c['country']})"
                             for c in t.get("copies") or []) or "none"),
        ("Encryption", f"at rest: {t['encryption']['at_rest']}; in transit: "
                       f"{t['encryption']['in_transit']}"),
        ("Retention", f"{rules}; legal hold {'yes' if retention['legal_hold'] else 'no'}"
                      + (f"; keep until {retention['keep_until']}"
                         if retention.get("keep_until") else "")),
        ("Policy", f"{t['policy']['fingerprint']}"
                   + ("" if t["policy"]["recorded"] else " (edited since bkp last acted)")),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts if v)
    b = t["backups"]
    last = b.get("last") or {}
    backups = (f"<p>{b['count']} backups in the period: {b['ok']} ok, {b['failed']} failed; "
               f"last {_e(last.get('time') or 'never')} ({_e(last.get('status') or '-')}). "
               f"RPO {_e(b['rpo_hours'])} h met "
               f"{_e('-' if b['rpo_met_pct'] is None else b['rpo_met_pct'])}% of the time"
               + (f" (measured from {_e(b['measured_from'])})" if b.get("measured_from")
                  else "")
               + f"; longest gap {_e(b.get('longest_gap_hours') or '-')} h.</p>")
    return "\n".join([
        f"<section class=\"tenant\" id=\"t-{_e(t['tenant'])}\">",
        f"<h2>Tenant {_e(t['tenant'])}</h2>", f"<table>{rows}</table>",
        "<h3>Controls</h3>", _controls_html(t["controls"]),
        "<h3>Backups</h3>", backups,
        f"<div class=\"chart\">{rpo_chart(t, period_end)}</div>",
        f"<div class=\"chart\">{growth_chart(t)}</div>",
        "<h3>Restore drills</h3>", _drills_html(t),
        f"<div class=\"chart\">{rto_chart(t)}</div>",
        _policy_changes_html(t), _media_html(t), "</section>"])


def _controls_html(controls: list[dict]) -> str:
    ordered = sorted(controls, key=lambda c: VERDICT_ORDER.get(c["status"], 9))
    rows = []
    for c in ordered:
        evidence = "; ".join(_evidence_text(item) for item in c["evidence"]) or "-"
        rows.append(f"<tr><td class=\"{_e(c['status'])}\">{_e(STATUS_TEXT[c['status']])}</td>"
                    f"<td><b>{_e(c['id'])}</b><br><span class=\"small\">{_e(c['title'])}"
                    f"</span></td><td>{_e(c['reason'])}<br><span class=\"small meta\">"
                    f"Promise: {_e(c['promise'])} ISO/IEC 27002:2022 {_e(c['iso27002'])}; "
                    f"BIO {_e(c['bio'])}</span></td><td class=\"small mono\">{_e(evidence)}"
                    f"</td></tr>")
    return ("<table><tr><th>verdict</th><th>control</th><th>why</th><th>evidence</th></tr>"
            + "".join(rows) + "</table>")


def _evidence_text(item: dict) -> str:
    kind, ident = item.get("kind"), item.get("id")
    text = {"run": f"backup run {ident}", "drill": f"drill run {ident}",
            "policy_change": f"audit event #{ident} (destination changed)",
            "audit_head": f"audit head {ident} ({item.get('events')} events)",
            "certificate": f"certificate {ident} ({item.get('serial')})",
            "record": f"record {item.get('record_id')} ({item.get('serial')})",
            "policy": f"policy {item.get('fingerprint')}"}.get(kind, f"{kind} {ident}")
    if item.get("snapshot_id"):
        text += f", snapshot {item['snapshot_id'][:8]}"
    if item.get("time"):
        text += f", {item['time']}"
    return text


def _drills_html(t: dict) -> str:
    drills = t.get("drills") or []
    coverage = t.get("pack_coverage")
    note = (f"<p class=\"small\">Pack coverage of the last 12 months: subsets "
            f"{_e(', '.join(map(str, coverage['read'])))} of {coverage['subsets']} read "
            f"({coverage['pct']}% of the repository's packs).</p>" if coverage else
            "<p class=\"small\">No repository check recorded in the last 12 months.</p>")
    if not drills:
        return "<p>No restore drill in the period.</p>" + note
    rows = []
    for d in drills:
        measured = d["restore_s"] if d["restore_s"] is not None else d["duration_s"]
        rows.append(
            f"<tr><td>{_e(d['time'])}</td><td>{_e(d['run_id'])}</td>"
            f"<td class=\"{'met' if d['status'] == 'passed' else 'not_met'}\">"
            f"{_e(d['status'])}</td><td>{_e((d.get('snapshot_id') or '-')[:8])}</td>"
            f"<td>{_e(d.get('rto_minutes'))} min</td>"
            f"<td>{_e('-' if measured is None else f'{measured / 60:.2f} min')}</td>"
            f"<td class=\"small\">{_e('; '.join(d['checked']))}"
            + (f"<br><b>problems:</b> {_e('; '.join(d['problems']))}" if d["problems"] else "")
            + (f"<br><b>error:</b> {_e(d['error'])}" if d.get("error") else "")
            + "</td></tr>")
    return ("<table><tr><th>time</th><th>run</th><th>verdict</th><th>snapshot</th>"
            "<th>RTO target</th><th>measured</th><th>what was checked</th></tr>"
            + "".join(rows) + "</table>" + note)


def _policy_changes_html(t: dict) -> str:
    changes = t["policy"].get("changes") or []
    if not changes:
        return "<h3>Policy changes</h3><p>No policy change recorded in the period.</p>"
    rows = "".join(f"<tr><td>{_e(c['time'])}</td><td>#{_e(c['audit_seq'])}</td>"
                   f"<td>{_e(', '.join(k for k in c['keys'] if k))}</td>"
                   f"<td>{_e('; '.join(c['weakenings']) or '-')}</td></tr>" for c in changes)
    return ("<h3>Policy changes</h3><table><tr><th>time</th><th>audit event</th>"
            "<th>keys changed</th><th>weakens protection</th></tr>" + rows + "</table>")


def _media_html(t: dict) -> str:
    if not t.get("media"):
        return ""
    rows = "".join(
        f"<tr><td>{_e(m['serial'])}</td><td>{_e(m.get('type'))}</td><td>{_e(m.get('state'))}"
        f"</td><td class=\"small\">{_e('; '.join(_record_text(r) for r in m['records']))}"
        f"</td></tr>" for m in t["media"])
    return ("<h3>Media of this tenant</h3><table><tr><th>serial</th><th>type</th>"
            "<th>state</th><th>records</th></tr>" + rows + "</table>")


def _record_text(r: dict) -> str:
    cert = f", certificate {r['certificate_id']}" if r.get("certificate_id") else \
        ", no certificate"
    return f"{r['kind']} {r['record_id']} {r['result']} {r.get('time') or ''}{cert}"


def _controls_legend(document: dict) -> str:
    rows = "".join(f"<tr><td><b>{_e(c['id'])}</b></td><td>{_e(c['title'])}</td>"
                   f"<td>{_e(c['promise'])}</td><td>{_e(c['iso27002'])}</td>"
                   f"<td>{_e(c['bio'])}</td></tr>" for c in document.get("controls", []))
    return ("<section class=\"tenant\"><h2>The controls</h2><table><tr><th>id</th>"
            "<th>control</th><th>privacy-statement promise</th><th>ISO/IEC 27002:2022</th>"
            "<th>BIO</th></tr>" + rows + "</table></section>")


def _data_block(document: dict) -> str:
    # ASCII JSON with <, > and & escaped: the block cannot end the script element early.
    text = json.dumps(document, ensure_ascii=True, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"<script type=\"application/json\" id=\"{HTML_DATA_ID}\">{text}</script>"


def _verify_note(document: dict) -> str:
    return ("<p class=\"small meta\">This file carries the signed report (JSON) and is "
            "itself signed (Ed25519, over every byte before its last line). Check it with "
            "<code>bkp report verify FILE</code>; any change gives exit 5.</p>")


# ---------------------------------------------------------------- charts (inline SVG)

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 680, 170, 56, 22, 18, 12


def _svg(title: str, inner: str) -> str:
    return (f"<svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" "
            f"aria-label=\"{_e(title)}\"><rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" "
            f"fill=\"#ffffff\" stroke=\"#d0d7de\"/><text x=\"{PAD_L}\" y=\"13\" "
            f"font-size=\"12\" font-family=\"Helvetica, Arial, sans-serif\" "
            f"fill=\"#1f2328\">{_e(title)}</text>{inner}</svg>")


def _axes(y_label_top: str, y_label_bottom: str, x_left: str, x_right: str) -> str:
    x0, y0, x1, y1 = PAD_L, H - PAD_B, W - PAD_R, PAD_T
    font = "font-size=\"10\" font-family=\"Helvetica, Arial, sans-serif\" fill=\"#57606a\""
    return (f"<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#8c959f\"/>"
            f"<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#8c959f\"/>"
            f"<text x=\"{x0 - 4}\" y=\"{y1 + 8}\" text-anchor=\"end\" {font}>"
            f"{_e(y_label_top)}</text><text x=\"{x0 - 4}\" y=\"{y0}\" text-anchor=\"end\" "
            f"{font}>{_e(y_label_bottom)}</text><text x=\"{x0}\" y=\"{H - 6}\" {font}>"
            f"{_e(x_left)}</text><text x=\"{x1}\" y=\"{H - 6}\" text-anchor=\"end\" {font}>"
            f"{_e(x_right)}</text>")


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: round(a + (v - lo) * (b - a) / span, 1)


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rpo_chart(t: dict, period_end: str | None = None) -> str:
    """The age of the last good backup over the period against the RPO line: a sawtooth
    that must stay under the dashed line; failed runs marked red."""
    b = t["backups"]
    start = _ts(b.get("measured_from"))
    series = b.get("series") or []
    title = f"Age of the last good backup (hours) against the RPO of {b['rpo_hours']} h"
    if start is None:
        return _svg(title, _axes("", "0", "", "") + _no_data())
    end = _ts(period_end) or max([_ts(s["time"]) for s in series] + [start])
    goods = [_ts(s["time"]) for s in series if s["status"] == "ok"]
    rpo = float(b["rpo_hours"])
    points, previous = [], None
    for moment in goods:
        if previous is not None:
            points.append((moment, (moment - previous) / 3600))
        points.append((moment, 0.0))
        previous = moment
    if previous is not None:
        points.append((end, (end - previous) / 3600))
    top = max([rpo * 1.5] + [age for _, age in points]) or 1.0
    x = _scale(start, max(end, start + 1), PAD_L, W - PAD_R)
    y = _scale(0, top, H - PAD_B, PAD_T)
    line = " ".join(f"{x(m)},{y(a)}" for m, a in points)
    fails = "".join(f"<circle cx=\"{x(_ts(s['time']))}\" cy=\"{H - PAD_B - 3}\" r=\"3\" "
                    f"fill=\"#b3261e\"/>" for s in series if s["status"] != "ok")
    inner = (_axes(f"{top:.1f}", "0", _short(start), _short(end))
             + f"<line x1=\"{PAD_L}\" y1=\"{y(rpo)}\" x2=\"{W - PAD_R}\" y2=\"{y(rpo)}\" "
               f"stroke=\"#b3261e\" stroke-dasharray=\"5,4\"/>"
             + (f"<polyline points=\"{line}\" fill=\"none\" stroke=\"#0969da\" "
                f"stroke-width=\"1.5\"/>" if points else _no_data()) + fails)
    return _svg(title, inner)


def growth_chart(t: dict) -> str:
    series = [(s["time"], s["repository_bytes"]) for s in t["backups"].get("series") or []
              if s.get("repository_bytes") is not None]
    title = "Repository size after each backup"
    if not series:
        return _svg(title, _axes("", "0", "", "") + _no_data())
    times = [_ts(m) for m, _ in series]
    top = max(v for _, v in series) or 1
    x = _scale(min(times), max(max(times), min(times) + 1), PAD_L, W - PAD_R)
    y = _scale(0, top, H - PAD_B, PAD_T)
    line = " ".join(f"{x(m)},{y(v)}" for m, (_, v) in zip(times, series, strict=True))
    dots = "".join(f"<circle cx=\"{x(m)}\" cy=\"{y(v)}\" r=\"2\" fill=\"#0969da\"/>"
                   for m, (_, v) in zip(times, series, strict=True))
    return _svg(title, _axes(_size(top), "0", _short(min(times)), _short(max(times)))
                + f"<polyline points=\"{line}\" fill=\"none\" stroke=\"#0969da\" "
                  f"stroke-width=\"1.5\"/>" + dots)


def rto_chart(t: dict) -> str:
    drills = [d for d in t.get("drills") or []
              if (d["restore_s"] if d["restore_s"] is not None else d["duration_s"])
              is not None]
    title = "Drill restore time (minutes) against the RTO"
    if not drills:
        return _svg(title, _axes("", "0", "", "") + _no_data())
    minutes = [(d["restore_s"] if d["restore_s"] is not None else d["duration_s"]) / 60
               for d in drills]
    targets = [d["rto_minutes"] or 0 for d in drills]
    top = max(minutes + targets) * 1.15 or 1.0
    y = _scale(0, top, H - PAD_B, PAD_T)
    slot = (W - PAD_L - PAD_R) / len(drills)
    bars, marks = [], []
    for i, (d, value, target) in enumerate(zip(drills, minutes, targets, strict=True)):
        left = PAD_L + i * slot + slot * 0.2
        width = max(slot * 0.6, 1)
        colour = "#1b7f3b" if d["status"] == "passed" else "#b3261e"
        bars.append(f"<rect x=\"{left:.1f}\" y=\"{y(value)}\" width=\"{width:.1f}\" "
                    f"height=\"{max(H - PAD_B - y(value), 0.5):.1f}\" fill=\"{colour}\"/>")
        marks.append(f"<line x1=\"{left - 2:.1f}\" y1=\"{y(target)}\" "
                     f"x2=\"{left + width + 2:.1f}\" y2=\"{y(target)}\" stroke=\"#b3261e\" "
                     f"stroke-dasharray=\"4,3\"/>")
    return _svg(title, _axes(f"{top:.1f}", "0", drills[0]["time"][:10],
                             drills[-1]["time"][:10]) + "".join(bars) + "".join(marks))


def _no_data() -> str:
    return (f"<text x=\"{W / 2}\" y=\"{H / 2}\" text-anchor=\"middle\" font-size=\"12\" "
            f"font-family=\"Helvetica, Arial, sans-serif\" fill=\"#8a6d00\">no data in the "
            f"period</text>")


def _short(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.0f} PiB"


# ---------------------------------------------------------------- PDF

def render_pdf(document: dict) -> bytes:
    """The same content on A4 pages with fpdf2 (the library of the certificates), the
    signed JSON attached; signed as a PDF afterwards (pdf_signature.sign_pdf)."""
    from fpdf import FPDF

    generated = datetime.fromisoformat(document["generated"].replace("Z", "+00:00"))
    pdf = FPDF(format="A4")
    pdf.set_creation_date(generated)
    pdf.set_title(certs._latin(_title(document)))
    pdf.set_creator("bkp")
    pdf.set_auto_page_break(True, margin=12)
    pdf.set_margins(12, 12, 12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(0, 7, certs._latin(_title(document)), new_x="LMARGIN", new_y="NEXT")
    audit = document.get("audit") or {}
    _pdf_text(pdf, f"Generated {document.get('generated')} by bkp. Audit trail "
                   f"{'intact' if audit.get('valid') else 'BROKEN'}: {audit.get('events')} "
                   f"events, head {audit.get('head')}. This PDF is signed (PAdES, Ed25519) "
                   f"and carries the signed report as an attachment: bkp report verify FILE.",
              size=8)
    _pdf_heading(pdf, "Fleet overview (failures first)")
    ids = [c["id"] for c in document.get("controls", [])]
    _pdf_matrix(pdf, ids, document.get("fleet", []))
    _pdf_heading(pdf, "Media and erasure certificates issued in the period")
    for m in document.get("media") or []:
        _pdf_text(pdf, f"certificate {m['certificate_id']} record {m['record_id']} serial "
                       f"{m.get('serial')} tenant {m.get('tenant') or '-'} {m.get('kind')} "
                       f"{m.get('result')} issued {m.get('issued_at')}; hash {m.get('hash')}; "
                       f"certificate SHA-256 {m.get('certificate_sha256')}", size=7)
    for m in document.get("erasures") or []:
        _pdf_text(pdf, f"erasure certificate {m['certificate_id']} record {m['record_id']} "
                       f"tenant {m.get('tenant')} {m.get('result')} issued "
                       f"{m.get('issued_at')}; certificate SHA-256 "
                       f"{m.get('certificate_sha256')}", size=7)
    if not document.get("media") and not document.get("erasures"):
        _pdf_text(pdf, "No media or erasure certificate was issued in the period.")
    period_end = (document.get("period") or {}).get("to")
    for tenant in document.get("tenants", []):
        _pdf_tenant(pdf, tenant, period_end)
    _pdf_heading(pdf, "The controls")
    for c in document.get("controls", []):
        _pdf_text(pdf, f"{c['id']}: {c['title']}. Promise: {c['promise']} ISO/IEC "
                       f"27002:2022 {c['iso27002']}; BIO {c['bio']}", size=7.5)
    signature = document.get("signature") or {}
    _pdf_text(pdf, f"Report signed with Ed25519 key {signature.get('key_fingerprint')}; "
                   f"signature {signature.get('value')}", size=6, font="Courier")
    pdf.embed_file(bytes=json_bytes(document), basename=ATTACHMENT,
                   desc="signed evidence report (verify with: bkp report verify FILE)",
                   modification_date=generated, creation_date=generated,
                   mime_type="application/json")
    return bytes(pdf.output())


def _pdf_heading(pdf, text: str, size: float = 11) -> None:
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", size)
    pdf.set_fill_color(230, 230, 230)
    pdf.multi_cell(0, size * 0.55, certs._latin(text), new_x="LMARGIN", new_y="NEXT",
                   fill=True)
    pdf.ln(1)


def _pdf_text(pdf, text: str, size: float = 8.5, font: str = "Helvetica",
              style: str = "") -> None:
    pdf.set_font(font, style, size)
    pdf.multi_cell(0, size * 0.48, certs._latin(str(text)), new_x="LMARGIN", new_y="NEXT")


PDF_COLOURS = {"met": (27, 127, 59), "not_met": (179, 38, 30), "not_evidenced": (138, 109, 0)}


def _pdf_matrix(pdf, ids: list[str], rows: list[dict]) -> None:
    first = 38
    cell = (pdf.w - pdf.l_margin - pdf.r_margin - first) / max(len(ids), 1)
    pdf.set_font("Helvetica", "B", 6.5)
    pdf.cell(first, 5, "tenant", border=1)
    for i in ids:
        pdf.cell(cell, 5, i, border=1, align="C")
    pdf.ln(5)
    for row in rows:
        pdf.set_font("Helvetica", "", 7)
        pdf.set_text_color(0, 0, 0)
        pdf.cell(first, 5, certs._latin(row["tenant"]), border=1)
        for i in ids:
            status = row["controls"].get(i)
            pdf.set_text_color(*PDF_COLOURS.get(status, (0, 0, 0)))
            pdf.set_font("Helvetica", "B" if status == "not_met" else "", 7)
            pdf.cell(cell, 5, STATUS_TEXT.get(status, "-"), border=1, align="C")
        pdf.ln(5)
    pdf.set_text_color(0, 0, 0)


def _pdf_tenant(pdf, t: dict, period_end: str | None) -> None:
    pdf.add_page()
    _pdf_heading(pdf, f"Tenant {t['tenant']}", size=13)
    dest, retention = t["destination"], t["retention"]
    rules = ", ".join(f"{k} {v}" for k, v in retention["rules"].items()) or "none"
    for label, value in (
            ("Purpose", t.get("purpose")), ("Classification", t.get("classification")),
            ("Where the data rests", f"{dest['type']}: {dest.get('location')}, country "
                                     f"{dest['country']}"
             + ("" if dest["off_site"] else " (NOT off-site)")),
            ("Copies", "; ".join(f"{c['type']} {c.get('location')}" for c in t["copies"])
             or "none"),
            ("Encryption", f"at rest: {t['encryption']['at_rest']}; in transit: "
                           f"{t['encryption']['in_transit']}"),
            ("Retention", f"{rules}; legal hold {'yes' if retention['legal_hold'] else 'no'}"
             + (f"; keep until {retention['keep_until']}" if retention.get("keep_until")
                else "")),
            ("Policy", t["policy"]["fingerprint"])):
        _pdf_text(pdf, f"{label}: {value}")
    _pdf_heading(pdf, "Controls", size=10)
    for c in sorted(t["controls"], key=lambda c: VERDICT_ORDER.get(c["status"], 9)):
        pdf.set_text_color(*PDF_COLOURS.get(c["status"], (0, 0, 0)))
        _pdf_text(pdf, f"{STATUS_TEXT[c['status']].upper()}  {c['id']}", size=8.5,
                  style="B")
        pdf.set_text_color(0, 0, 0)
        _pdf_text(pdf, f"{c['reason']}. Promise: {c['promise']} (ISO/IEC 27002:2022 "
                       f"{c['iso27002']}; BIO {c['bio']})", size=7.5)
        evidence = "; ".join(_evidence_text(item) for item in c["evidence"])
        if evidence:
            _pdf_text(pdf, f"Evidence: {evidence}", size=6.5, font="Courier")
    b = t["backups"]
    last = b.get("last") or {}
    _pdf_heading(pdf, "Backups", size=10)
    _pdf_text(pdf, f"{b['count']} backups in the period: {b['ok']} ok, {b['failed']} failed; "
                   f"last {last.get('time') or 'never'} ({last.get('status') or '-'}). RPO "
                   f"{b['rpo_hours']} h met {'-' if b['rpo_met_pct'] is None else b['rpo_met_pct']}"
                   f"% of the time (from {b.get('measured_from') or '-'}); longest gap "
                   f"{b.get('longest_gap_hours') or '-'} h.")
    _pdf_chart(pdf, rpo_chart(t, period_end))
    _pdf_chart(pdf, growth_chart(t))
    _pdf_heading(pdf, "Restore drills", size=10)
    for d in t.get("drills") or []:
        measured = d["restore_s"] if d["restore_s"] is not None else d["duration_s"]
        _pdf_text(pdf, f"{d['time']} drill run {d['run_id']}: {d['status']}, snapshot "
                       f"{(d.get('snapshot_id') or '-')[:8]}, RTO {d.get('rto_minutes')} min, "
                       f"measured {'-' if measured is None else f'{measured / 60:.2f}'} min. "
                       f"Checked: {'; '.join(d['checked'])}"
                  + (f". Problems: {'; '.join(d['problems'])}" if d["problems"] else ""),
                  size=7.5)
    if not t.get("drills"):
        _pdf_text(pdf, "No restore drill in the period.")
    coverage = t.get("pack_coverage")
    if coverage:
        _pdf_text(pdf, f"Pack coverage of the last 12 months: subsets "
                       f"{', '.join(map(str, coverage['read']))} of {coverage['subsets']} "
                       f"({coverage['pct']}%).", size=7.5)
    _pdf_chart(pdf, rto_chart(t))
    for change in t["policy"].get("changes") or []:
        _pdf_text(pdf, f"Policy change {change['time']} (audit event #{change['audit_seq']}): "
                       f"{', '.join(k for k in change['keys'] if k)}"
                  + (f"; weakens: {'; '.join(change['weakenings'])}"
                     if change["weakenings"] else ""), size=7.5)


def _pdf_chart(pdf, svg: str) -> None:
    """The HTML's chart, drawn by fpdf2's own SVG renderer."""
    import io

    data = ("<svg xmlns=\"http://www.w3.org/2000/svg\"" + svg[len("<svg"):]).encode("utf-8")
    if pdf.get_y() + 48 > pdf.h - 12:
        pdf.add_page()
    pdf.image(io.BytesIO(data), w=pdf.w - pdf.l_margin - pdf.r_margin - 40)
    pdf.ln(1)
