"""Issue certificates for sanitization and destruction records, and verify them.

A certificate points at the audit event that closed its record (sequence number and hash),
so verifying it checks two independent things: the Ed25519 signature over its content, and
that the event it names is still in an intact audit chain with the same record and hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bkp import __version__
from bkp import catalog as cat
from bkp.context import Context
from bkp.errors import OperationError
from bkp.evidence import certificates as certs

RECORD_ACTIONS = {"sanitization": "sanitize", "destruction": "destroy"}


def issue_certificate(ctx: Context, record_id: int) -> dict:
    """Sign the record's certificate, keep it in the catalog and as files under $BKP_HOME,
    record the issue in the audit trail; returns where it is."""
    record, medium, kind = _record(ctx, record_id)
    event = _closing_event(ctx, record_id, kind)
    if event is None:
        raise OperationError(f"record {record_id} has no closing audit event; it cannot be "
                             f"certified")
    build = (certs.sanitization_payload if kind == "sanitization"
             else certs.destruction_payload)
    key = certs.signing_key(ctx.settings.home)

    def sign(certificate_id: int) -> dict:
        payload = build(certificate_id=certificate_id, issued_at=cat.utc_now(), record=record,
                        medium=medium, audit_event=event, tool_version=__version__)
        document = certs.sign(payload, key)
        signature = document["signature"]
        return {"record_id": record_id, "issued_at": payload["issued_at"],
                "payload": certs.canonical(payload).decode("utf-8"),
                "signature": signature["value"],
                "key_fingerprint": signature["key_fingerprint"],
                "public_key": signature["public_key"], "audit_seq": event["seq"],
                "audit_hash": event["hash"]}

    row = cat.add_certificate(ctx.catalog, sign)
    document = _document_of(row)
    payload, signature = document["certificate"], document["signature"]
    certificate_id = row["id"]
    files = _write_files(ctx, document)
    ctx.audit("certificate.issue", "issued", medium.get("tenant"),
              certificate_id=certificate_id, record_id=record_id, serial=medium["serial"],
              key_fingerprint=signature["key_fingerprint"],
              payload_sha256=hashlib.sha256(certs.canonical(payload)).hexdigest())
    return {"id": certificate_id, "json": str(files[0]), "pdf": str(files[1]),
            "key_fingerprint": signature["key_fingerprint"]}


def _record(ctx: Context, record_id: int) -> tuple[dict, dict, str]:
    header = cat.get_record(ctx.catalog, record_id)
    if header is None:
        raise OperationError(f"there is no sanitization or destruction record {record_id}; "
                             f"see `bkp media show SERIAL`")
    kind = header["kind"]
    record = (cat.get_sanitization if kind == "sanitization"
              else cat.get_destruction)(ctx.catalog, record_id)
    return record, cat.get_medium(ctx.catalog, header["serial"]), kind


def _closing_event(ctx: Context, record_id: int, kind: str) -> dict | None:
    """The audit event that recorded the record's outcome (the last one naming it)."""
    action = RECORD_ACTIONS[kind]
    for event in reversed(ctx.catalog.audit_events(action=action)):
        details = json.loads(event["details"] or "{}")
        if details.get("record_id") == record_id and event["outcome"] not in ("started",
                                                                              "refused"):
            return event
    return None


def _write_files(ctx: Context, document: dict) -> tuple[Path, Path]:
    payload = document["certificate"]
    directory = ctx.settings.home / "certificates"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stem = f"certificate-{payload['certificate_id']}-record-{payload['record_id']}"
    json_path, pdf_path = directory / f"{stem}.json", directory / f"{stem}.pdf"
    json_path.write_bytes(certs.document_bytes(document))
    pdf_path.write_bytes(certs.render_pdf(document))
    return json_path, pdf_path


def certificate_document(ctx: Context, record_id: int) -> dict:
    """The latest signed certificate of a record, as issued."""
    row = cat.latest_certificate(ctx.catalog, record_id)
    if row is None:
        header = cat.get_record(ctx.catalog, record_id)
        if header is None:
            raise OperationError(f"there is no sanitization or destruction record "
                                 f"{record_id}")
        raise OperationError(f"record {record_id} has no certificate (an aborted "
                             f"sanitization is never certified); see `bkp media show "
                             f"{header['serial']}`")
    return _document_of(row)


def _document_of(row: dict) -> dict:
    """The certificate document as signed, from its catalog row."""
    return {
        "format": certs.FORMAT,
        "certificate": json.loads(row["payload"]),
        "signature": {"algorithm": "Ed25519", "key_fingerprint": row["key_fingerprint"],
                      "public_key": row["public_key"], "value": row["signature"]},
    }


def verify_certificate(ctx: Context, data: bytes, public_key_file: Path | None = None,
                       check_audit: bool = True) -> dict:
    """Check a certificate file (JSON or our PDF): signature by the trusted key, and its
    record's event in an intact audit chain. `valid` is false on any change."""
    try:
        document = certs.read_document(data)
    except ValueError as exc:
        return {"valid": False, "problems": [str(exc)]}
    trusted = _trusted_key(ctx, public_key_file)
    problems = certs.signature_problems(document, trusted)
    payload = document.get("certificate") if isinstance(document, dict) else None
    payload = payload if isinstance(payload, dict) else {}
    audit = {"checked": False}
    if check_audit and not problems:
        audit = _audit_check(ctx, payload)
        problems += audit.pop("problems")
    verification = payload.get("verification") or {}
    return {
        "valid": not problems, "certificate_id": payload.get("certificate_id"),
        "record_id": payload.get("record_id"), "kind": payload.get("kind"),
        "serial": (payload.get("media") or {}).get("serial"),
        "result": (payload.get("sanitization") or {}).get("result"),
        "hash": verification.get("hash"), "key_fingerprint": certs.key_fingerprint(trusted),
        "audit": audit, "problems": problems,
    }


def _trusted_key(ctx: Context, public_key_file: Path | None):
    if public_key_file is not None:
        try:
            return certs.load_public_key(public_key_file)
        except (OSError, ValueError) as exc:
            raise OperationError(f"cannot read the public key {public_key_file}: {exc}") \
                from None
    if not (ctx.settings.home / certs.KEY_FILE).exists():
        raise OperationError(f"no signing key in {ctx.settings.home}; give the issuer's "
                             f"public key with --public-key FILE")
    return certs.public_key_of(ctx.settings.home)


def _audit_check(ctx: Context, payload: dict) -> dict:
    from bkp.evidence.audit import verify_chain

    reference = payload.get("audit") or {}
    chain = verify_chain(ctx.catalog.audit_events())
    problems = [f"audit trail: {p}" for p in chain.problems]
    event = cat.audit_event(ctx.catalog, reference.get("seq") or 0)
    found = event is not None and event["hash"] == reference.get("hash")
    if not found:
        problems.append(f"the audit event #{reference.get('seq')} this certificate refers to "
                        f"is not in the audit trail of {ctx.settings.catalog_path}")
    else:
        problems += _event_mismatches(event, payload)
    return {"checked": True, "chain_valid": chain.valid, "events": chain.events,
            "event_found": found, "event_seq": reference.get("seq"), "problems": problems}


def _event_mismatches(event: dict, payload: dict) -> list[str]:
    details = json.loads(event["details"] or "{}")
    expected = {"record_id": payload.get("record_id"),
                "serial": (payload.get("media") or {}).get("serial"),
                "hash": (payload.get("verification") or {}).get("hash")}
    return [f"audit event #{event['seq']} records {key} {details.get(key)!r}, the "
            f"certificate says {value!r}" for key, value in expected.items()
            if details.get(key) != value]
