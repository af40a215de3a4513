"""Issue certificates for sanitization and destruction records, and verify them.

A certificate points at the audit event that closed its record (sequence number and hash),
and its own issue is an audit event that records the SHA-256 of the files written. So
verifying checks independent things: the Ed25519 signature over its content by the key of
the key ring named in it, valid at the issue time; for a PDF, the PDF signature over the
whole file by a key of the ring; that the event it names is still in an intact audit chain
with the same record and hash; and that a PDF is byte for byte the one issued.

The PDF of a certificate is signed once, when it is issued, and `bkp certificate RECORD_ID
--format pdf` serves that file (checked against its recorded SHA-256): a PDF rendered again
would have another signing time and hash, and could not be told from a re-signed forgery.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from bkp import __version__, clock
from bkp import catalog as cat
from bkp.context import Context
from bkp.errors import OperationError, VerificationError
from bkp.evidence import certificates as certs
from bkp.evidence import keyring, pdf_signature

RECORD_ACTIONS = {"sanitization": "sanitize", "destruction": "destroy"}
KEY_ACTION = "certificate.key"
ISSUE_ACTION = "certificate.issue"
VALIDATE_ACTION = "validate"


def ensure_can_certify(ctx: Context) -> None:
    """Before work that ends in a certificate: a key ring whose current key lost its
    private half cannot sign, and a disk wiped then is a disk without a certificate."""
    keyring.check_can_sign(ctx.settings.home)


def issue_certificate(ctx: Context, record_id: int) -> dict:
    """Sign the record's certificate, keep it in the catalog and as files under $BKP_HOME
    (the PDF signed as a PDF), record the issue with the files' SHA-256 in the audit
    trail; returns where it is."""
    record, medium, kind = _record(ctx, record_id)
    event = _closing_event(ctx, record_id, kind, record)
    if event is None:
        raise OperationError(f"record {record_id} has no closing audit event; it cannot be "
                             f"certified")
    if kind == "erasure":
        build, validation = _erasure_builder(ctx, record), None
    else:
        build = (certs.sanitization_payload if kind == "sanitization"
                 else certs.destruction_payload)
        validation = validation_of(ctx.catalog, record_id)
    # The ring stays locked until the files are written: a rotation cannot retire the key
    # between the issue time it signs and the PDF signature.
    with keyring.signing_key(ctx.settings.home) as signer:
        if signer.created is not None:
            _audit_key(ctx, "created", signer.created, reason="first certificate")

        def sign(certificate_id: int) -> dict:
            payload = build(certificate_id=certificate_id, issued_at=cat.utc_now(),
                            record=record, medium=medium, audit_event=event,
                            tool_version=__version__, validation=validation,
                            clock=clock.state().as_json())
            document = certs.sign(payload, signer.private_key)
            signature = document["signature"]
            return {"record_id": record_id, "issued_at": payload["issued_at"],
                    "payload": certs.canonical(payload).decode("utf-8"),
                    "signature": signature["value"],
                    "key_fingerprint": signature["key_fingerprint"],
                    "public_key": signature["public_key"], "audit_seq": event["seq"],
                    "audit_hash": event["hash"]}

        row = cat.add_certificate(ctx.catalog, sign)
        document = _document_of(row)
        files = _write_files(ctx, document, signer)
    payload, signature = document["certificate"], document["signature"]
    certificate_id = row["id"]
    ctx.audit(ISSUE_ACTION, "issued", medium.get("tenant"),
              certificate_id=certificate_id, record_id=record_id, serial=medium.get("serial"),
              key_fingerprint=signature["key_fingerprint"],
              payload_sha256=hashlib.sha256(certs.canonical(payload)).hexdigest(),
              json_sha256=files["json_sha256"], pdf_sha256=files["pdf_sha256"])
    return {"id": certificate_id, "json": str(files["json"]), "pdf": str(files["pdf"]),
            "key_fingerprint": signature["key_fingerprint"],
            "pdf_sha256": files["pdf_sha256"]}


def validation_of(catalog, record_id: int) -> dict | None:
    """The record's approved validation, as the certificate states it."""
    from bkp.evidence.approvals import approved

    row = approved(catalog, "validation", str(record_id))
    if row is None:
        return None
    details = json.loads(row["details"] or "{}")
    signature = row.get("signature")
    return {"validator": row["approved_by"], "title": details.get("title"),
            "decision": details.get("decision"), "comment": details.get("comment"),
            "time": row["approved_at"], "person": details.get("person"),
            "approval": {"key_fingerprint": row["key_fingerprint"],
                         "signature_sha256": hashlib.sha256(signature.encode()).hexdigest(),
                         "signature": signature} if signature else None}


def validation_event(catalog, record_id: int) -> dict | None:
    """The audit event that recorded the validation of a record (the latest one)."""
    for event in reversed(catalog.audit_events(action=VALIDATE_ACTION)):
        if _details(event).get("record_id") == record_id:
            return event
    return None


def _validation_check(ctx: Context, payload: dict) -> tuple[dict, list[str]]:
    """What the certificate says about its validation, held against the audit trail: a
    validation that no event records (written in by someone holding the signing key, or
    edited) makes the certificate invalid."""
    validation = payload.get("validation") if isinstance(payload.get("validation"),
                                                         dict) else {}
    record_id = payload.get("record_id")
    latest = cat.latest_certificate(ctx.catalog, record_id) \
        if isinstance(record_id, int) and ctx.catalog is not None else None
    report = {"state": _validation_state(validation), "validator": validation.get("validator"),
              "decision": validation.get("decision"), "checked": False,
              "latest_certificate_id": latest["id"] if latest else None}
    if not validation.get("validator"):
        return _rejected_since(ctx, record_id, report)
    event = validation_event(ctx.catalog, record_id) if isinstance(record_id, int) else None
    approval = validation.get("approval") or {}
    report["checked"] = True
    if event is None and approval:
        event = _approval_event(ctx.catalog, record_id)  # validated before bkp recorded both
    if event is None:
        return report, [f"the certificate says {validation.get('validator')} validated "
                        f"record {record_id}, but the audit trail records no validation of it"]
    details = _details(event)
    if event["action"] == "approve":
        details = {"validator": details.get("approved_by"),
                   "signature_sha256": details.get("signature_sha256")}
    expected = {"validator": validation.get("validator"), "title": validation.get("title"),
                "comment": validation.get("comment")}
    if approval:
        expected["signature_sha256"] = approval.get("signature_sha256")
    # events written before a detail was recorded say nothing about it; the validator and
    # the signature are in every one
    problems = [f"the validation on the certificate says {key} {value!r}, audit event "
                f"#{event['seq']} records {details.get(key)!r}"
                for key, value in expected.items()
                if (key in details or key in ("validator", "signature_sha256"))
                and details.get(key) != value]
    if event["action"] == VALIDATE_ACTION and event["outcome"] != validation.get("decision"):
        problems.append(f"the validation on the certificate says {validation.get('decision')}"
                        f", audit event #{event['seq']} records {event['outcome']}")
    report["event_seq"] = event["seq"]
    return report, problems


def _rejected_since(ctx: Context, record_id, report: dict) -> tuple[dict, list[str]]:
    """A certificate issued before its record was validated says "not validated"; once the
    trail holds a rejection, that certificate of a result a second person refused no
    longer stands (a later certificate states the rejection)."""
    event = validation_event(ctx.catalog, record_id) if isinstance(record_id, int) else None
    if event is None or event["outcome"] != "rejected":
        return report, []
    details = _details(event)
    report.update(state="rejected", validator=details.get("validator"), decision="rejected",
                  checked=True, event_seq=event["seq"])
    return report, [f"record {record_id} was rejected by {details.get('validator')} at "
                    f"{event['time'][:19]}Z (audit event #{event['seq']}) after this "
                    f"certificate was issued: it no longer stands; certificate "
                    f"{report['latest_certificate_id']} states the rejection"]


def _approval_event(catalog, record_id: int) -> dict | None:
    for event in reversed(catalog.audit_events(action="approve")):
        details = _details(event)
        if details.get("kind") == "validation" and details.get("subject") == str(record_id) \
                and event["outcome"] == "approved":
            return event
    return None


def _approval_check(ctx: Context, payload: dict) -> tuple[dict, list[str]]:
    """An erasure's second person is its approver: the approval the certificate states
    must be the one the audit trail recorded (same request, person and key)."""
    validation = payload.get("validation") if isinstance(payload.get("validation"),
                                                         dict) else {}
    approval = validation.get("approval") if isinstance(validation.get("approval"),
                                                         dict) else {}
    if not approval.get("approved_by"):
        return {"state": "not_approved", "validator": None, "checked": False}, []
    report = {"state": "approved", "validator": approval["approved_by"], "checked": True}
    for event in reversed(ctx.catalog.audit_events(action="approve")):
        details = _details(event)
        if event["outcome"] == "approved" and \
                details.get("approval_id") == approval.get("approval_id"):
            said = {"approved_by": details.get("approved_by"),
                    "key_fingerprint": details.get("key_fingerprint")}
            return report, [f"the approval on the certificate says {key} "
                            f"{approval.get(key)!r}, audit event #{event['seq']} recorded "
                            f"{value!r}" for key, value in said.items()
                            if approval.get(key) != value]
    return report, [f"the certificate says {approval['approved_by']} approved the erasure, "
                    f"but the audit trail records no such approval"]


def _validation_state(validation: dict) -> str:
    if not validation.get("validator"):
        return "not_validated"
    return "validated" if validation.get("decision") == "approved" else "rejected"


def create_signing_key(ctx: Context) -> keyring.RingKey:
    """`bkp certificate key create`."""
    key = keyring.create_key(ctx.settings.home)
    _audit_key(ctx, "created", key, reason="bkp certificate key create")
    return key


def rotate_signing_key(ctx: Context) -> tuple[keyring.RingKey, keyring.RingKey]:
    """`bkp certificate key rotate`: the current key retired, a new one signs from now."""
    retired, new = keyring.rotate_key(ctx.settings.home)
    ctx.audit(KEY_ACTION, "rotated", None, key_id=new.id, algorithm=new.algorithm,
              created_at=new.created_at, retired_key_id=retired.id,
              retired_at=retired.not_after)
    return retired, new


def _audit_key(ctx: Context, outcome: str, key: keyring.RingKey, reason: str) -> None:
    ctx.audit(KEY_ACTION, outcome, None, key_id=key.id, algorithm=key.algorithm,
              created_at=key.created_at, reason=reason)


def _erasure_builder(ctx: Context, record: dict):
    """An erasure's payload: its approval (the second person's signature) on it."""
    from bkp.installation import load

    approval = _erasure_approval(ctx.catalog, record)
    try:
        organization = load(ctx.settings.config).organization
    except Exception:  # bkp.yaml was read before the erasure; a certificate still issues
        organization = None

    def build(*, validation=None, medium=None, **fields) -> dict:
        return certs.erasure_payload(approval=approval, organization=organization, **fields)

    return build


def _erasure_approval(catalog, record: dict) -> dict | None:
    from bkp.evidence.approvals import approved

    row = approved(catalog, record["kind"], str(record["id"]))
    if row is None or not row.get("signature"):
        return None
    return {"approved_by": row["approved_by"], "approved_at": row["approved_at"],
            "approved_os_user": row.get("approved_os_user"),
            "key_fingerprint": row["key_fingerprint"],
            "signature_sha256": hashlib.sha256(row["signature"].encode()).hexdigest(),
            "signature": row["signature"], "approval_id": row["id"]}


def _record(ctx: Context, record_id: int) -> tuple[dict, dict, str]:
    header = cat.get_record(ctx.catalog, record_id)
    if header is None:
        raise OperationError(f"there is no sanitization, destruction or erasure record "
                             f"{record_id}; see `bkp media show SERIAL` or `bkp status`")
    kind = header["kind"]
    if kind == "erasure":
        record = cat.get_erasure(ctx.catalog, record_id)
        return record, {"tenant": record["tenant"], "serial": None}, kind
    record = (cat.get_sanitization if kind == "sanitization"
              else cat.get_destruction)(ctx.catalog, record_id)
    return record, cat.get_medium(ctx.catalog, header["serial"]), kind


def _closing_event(ctx: Context, record_id: int, kind: str,
                   record: dict | None = None) -> dict | None:
    """The audit event that recorded the record's outcome (the last one naming it); for an
    erasure, the attempt that erased it."""
    action = record["kind"] if kind == "erasure" else RECORD_ACTIONS[kind]
    for event in reversed(ctx.catalog.audit_events(action=action)):
        details = json.loads(event["details"] or "{}")
        if details.get("record_id") != record_id:
            continue
        if kind == "erasure" and event["outcome"] == "erased":
            return event
        if kind != "erasure" and event["outcome"] not in ("started", "refused"):
            return event
    return None


def _file_paths(ctx: Context, payload: dict) -> tuple[Path, Path]:
    directory = ctx.settings.home / "certificates"
    stem = f"certificate-{payload['certificate_id']}-record-{payload['record_id']}"
    return directory / f"{stem}.json", directory / f"{stem}.pdf"


def _write_files(ctx: Context, document: dict, signer: keyring.Signer) -> dict:
    payload = document["certificate"]
    json_path, pdf_path = _file_paths(ctx, payload)
    json_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    reason = (f"{certs.title_of(payload)} {payload['certificate_id']} of record "
              f"{payload['record_id']}, {certs.subject_of(payload)}")
    pdf = pdf_signature.sign_pdf(certs.render_pdf(document), signer.private_key,
                                 signer.key.certificate_pem, reason=_latin_reason(reason))
    json_bytes = certs.document_bytes(document)
    _write_atomically(json_path, json_bytes)
    _write_atomically(pdf_path, pdf)
    return {"json": json_path, "pdf": pdf_path,
            "json_sha256": hashlib.sha256(json_bytes).hexdigest(),
            "pdf_sha256": hashlib.sha256(pdf).hexdigest()}


def _latin_reason(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader (or `evidence backup`) sees the whole file or none: its hash is evidence."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)


def certificate_document(ctx: Context, record_id: int) -> dict:
    """The latest signed certificate of a record, as issued."""
    return _document_of(_latest_row(ctx, record_id))


def _latest_row(ctx: Context, record_id: int) -> dict:
    row = cat.latest_certificate(ctx.catalog, record_id)
    if row is None:
        header = cat.get_record(ctx.catalog, record_id)
        if header is None:
            raise OperationError(f"there is no sanitization, destruction or erasure record "
                                 f"{record_id}")
        if header["kind"] == "erasure":
            raise OperationError(f"erasure record {record_id} has no certificate: it is "
                                 f"certified once everything is erased (`bkp status "
                                 f"{header['tenant']}`; run the same command again)")
        raise OperationError(f"record {record_id} has no certificate (an aborted "
                             f"sanitization is never certified); see `bkp media show "
                             f"{header['serial']}`")
    return row


def certificate_pdf(ctx: Context, record_id: int) -> tuple[bytes, str | None]:
    """The signed PDF issued for the record's latest certificate, checked against the
    SHA-256 its issue recorded; and a note when there is something to know about it."""
    row = _latest_row(ctx, record_id)
    _, path = _file_paths(ctx, json.loads(row["payload"]))
    issued = _issue_event(ctx, row["id"])
    recorded = _details(issued).get("pdf_sha256") if issued else None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise OperationError(f"the PDF issued as certificate {row['id']} is missing ({path});"
                             f" bring it back with `bkp evidence recover`, or use --format "
                             f"json (the signed certificate is in the catalog)") from None
    except OSError as exc:
        raise OperationError(f"cannot read {path}: {exc.strerror}") from None
    if recorded is None:
        return data, (f"certificate {row['id']} was issued before bkp signed PDFs and "
                      f"recorded their SHA-256: this PDF carries no PDF signature; "
                      f"--format json gives the certificate that verifies")
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise VerificationError(
            f"the PDF issued as certificate {row['id']} ({path}) was changed after it was "
            f"issued: its SHA-256 is {actual}, audit event #{issued['seq']} recorded "
            f"{recorded}; bring it back with `bkp evidence recover`, or use --format json")
    return data, None


def _document_of(row: dict) -> dict:
    """The certificate document as signed, from its catalog row."""
    return {
        "format": certs.FORMAT,
        "certificate": json.loads(row["payload"]),
        "signature": {"algorithm": "Ed25519", "key_fingerprint": row["key_fingerprint"],
                      "public_key": row["public_key"], "value": row["signature"]},
    }


# ---------------------------------------------------------------- verifying

def trusted_keys(home: Path, public_key_file: Path | None = None) -> list[keyring.RingKey]:
    """The keys a certificate may be signed by: those of --public-key FILE (PEM public keys
    or certificates, or a copy of keyring.json), else the installation's key ring. Reads
    only; with neither, one sentence and exit 1 (nothing is created)."""
    if public_key_file is None:
        ring = keyring.load_ring(home)
        if not ring:
            raise OperationError(f"{keyring.no_key_message(home)}; to check a certificate "
                                 f"from elsewhere give its issuer's public key with "
                                 f"--public-key FILE")
        return ring
    source = f"--public-key {public_key_file}"
    try:
        text = public_key_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OperationError(f"cannot read the public key {public_key_file}: {exc}") from None
    if text.lstrip().startswith("{"):
        return keyring.parse_ring(text, str(public_key_file), source=source)
    try:
        keys = certs.load_public_keys(text)
    except ValueError as exc:
        raise OperationError(f"cannot read the public key {public_key_file}: {exc}") from None
    if not keys:
        raise OperationError(f"{public_key_file} holds no public key (PEM) and is no key "
                             f"ring")
    return [_pinned(key, source) for key in keys]


def _pinned(public_key, source: str) -> keyring.RingKey:
    """A bare public key: trusted, but with no validity period to check against."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(public_key, Ed25519PublicKey):
        raise OperationError(f"{source} holds a key that is not Ed25519; bkp signs with "
                             f"Ed25519")
    return keyring.RingKey(certs.key_fingerprint(public_key), keyring.ALGORITHM,
                           base64.b64encode(certs.raw_public_key(public_key)).decode(),
                           created_at="", source=source)


def verify_certificate(ctx: Context, data: bytes, trusted: list[keyring.RingKey],
                       check_audit: bool = True) -> dict:
    """Check a certificate file (JSON or our PDF) against the trusted keys and, unless told
    not to, the audit trail. `valid` is false on any change of the file."""
    problems: list[str] = []
    pdf = None
    if certs.is_pdf(data):
        pdf, pdf_problems = _pdf_check(data, trusted)
        problems += pdf_problems
    try:
        document = certs.read_document(data)
    except ValueError as exc:
        listing = _batch_listing(data) if pdf is not None else None
        if listing is not None:
            return _batch_report(ctx, listing, pdf, problems, check_audit)
        return _report([*problems, str(exc)], {}, None, None, pdf, None, {"checked": False})
    json_problems, key = _document_problems(document, trusted)
    problems += json_problems
    if pdf and key and pdf["key_fingerprint"] and pdf["key_fingerprint"] != key.id:
        problems.append(f"the PDF is signed by key {pdf['key_fingerprint']}, the certificate "
                        f"inside it by key {key.id}: bkp signs both with one key")
    payload = document.get("certificate") if isinstance(document, dict) else None
    payload = payload if isinstance(payload, dict) else {}
    audit, file = {"checked": False}, None
    validation = {"state": _validation_state(payload.get("validation")
                                             if isinstance(payload.get("validation"), dict)
                                             else {}), "checked": False}
    if check_audit:
        file, file_problems = _file_check(ctx, payload, data, pdf is not None)
        if not problems:
            audit = _audit_check(ctx, payload)
            problems += audit.pop("problems")
            check = _approval_check if payload.get("kind") == "erasure" else \
                _validation_check
            validation, validation_problems = check(ctx, payload)
            problems += validation_problems
        problems += file_problems
    claimed = (document.get("signature") or {}).get("key_fingerprint") \
        if isinstance(document, dict) and isinstance(document.get("signature"), dict) else None
    return {**_report(problems, payload, key, claimed, pdf, file, audit),
            "validation": validation}


def _batch_listing(data: bytes) -> dict | None:
    """The listing a decommission batch summary carries (`certificate batch`), or None."""
    from bkp.evidence import batch
    from bkp.evidence.pdf_signature import attachment

    try:
        listing = json.loads(attachment(data, batch.ATTACHMENT) or b"null")
    except Exception:  # a damaged or hostile PDF can fail anywhere in the parser
        return None
    if not isinstance(listing, dict) or listing.get("format") != batch.FORMAT:
        return None
    return listing


def _batch_report(ctx: Context, listing: dict, pdf: dict, problems: list[str],
                  check_audit: bool) -> dict:
    """A batch summary: its PDF signature over the whole file by a trusted key, and each
    line against the catalog's record and certificate. The sheet proves only that each
    medium was on it; each line's own certificate is the proof of the medium."""
    lines = listing.get("media") if isinstance(listing.get("media"), list) else []
    if check_audit and not problems:
        for line in lines:
            problems += _batch_line_problems(ctx, line)
    if not lines:
        problems.append("the batch summary lists no medium")
    return {**_report(problems, {"kind": "batch"}, None, pdf.get("key_fingerprint"), pdf,
                      None, {"checked": bool(check_audit)}),
            "batch": {"period": listing.get("period"), "count": len(lines),
                      "not_validated": listing.get("not_validated")}}


def _batch_line_problems(ctx: Context, line) -> list[str]:
    if not isinstance(line, dict) or not isinstance(line.get("record_id"), int):
        return [f"a line of the batch names no record: {line!r:.80}"]
    record_id = line["record_id"]
    header = cat.get_record(ctx.catalog, record_id)
    if header is None:
        return [f"the batch lists record {record_id}, which the catalog does not hold"]
    record = (cat.get_sanitization if header["kind"] == "sanitization"
              else cat.get_destruction)(ctx.catalog, record_id)
    certificate_id = line.get("certificate_id")
    issued = _issue_event(ctx, certificate_id) if isinstance(certificate_id, int) else None
    problems = [f"the batch says record {record_id} has {key} {line.get(key)!r}, the catalog "
                f"{value!r}" for key, value in (("serial", header["serial"]),
                                                 ("kind", header["kind"]),
                                                 ("hash", record["hash"]))
                if line.get(key) != value]
    if certificate_id is not None and (issued is None or _details(issued).get(
            "record_id") != record_id):
        problems.append(f"the batch names certificate {certificate_id} for record "
                        f"{record_id}, which the audit trail did not issue for it")
    return problems


def _report(problems, payload, key, claimed, pdf, file, audit) -> dict:
    def section(name: str) -> dict:  # a forged file may put anything anywhere
        value = payload.get(name)
        return value if isinstance(value, dict) else {}

    return {
        "valid": not problems, "certificate_id": payload.get("certificate_id"),
        "record_id": payload.get("record_id"), "kind": payload.get("kind"),
        "serial": section("media").get("serial"),
        "tenant": section("erasure").get("tenant") or section("data").get("tenant"),
        "result": section("sanitization").get("result") or section("erasure").get("result"),
        "hash": section("verification").get("hash"),
        "key_fingerprint": key.id if key else claimed,
        "key": _key_json(key), "pdf": pdf, "file": file,
        "audit": audit, "problems": problems, "validation": {"checked": False},
    }


def _key_json(key: keyring.RingKey | None) -> dict | None:
    if key is None:
        return None
    return {"id": key.id, "algorithm": key.algorithm, "created_at": key.created_at or None,
            "not_after": key.not_after, "current": key.current if key.created_at else None,
            "source": key.source, "description": key.describe()}


def _document_problems(document, trusted: list[keyring.RingKey]):
    """The signed JSON: signed by the trusted key it names, within that key's validity."""
    problems = certs.structure_problems(document)
    if problems:
        return problems, None
    claimed = document["signature"].get("key_fingerprint")
    key = keyring.find_key(trusted, claimed)
    if key is None:
        return [f"signed by key {claimed}, not by a trusted key ({_trusted_text(trusted)})"], \
            None
    problems = certs.signature_problems(document, key.key())
    if not problems:
        late = key.validity_problem(document["certificate"].get("issued_at"),
                                    "the certificate says it was issued at")
        problems += [late] if late else []
    return problems, key


def _pdf_check(data: bytes, trusted: list[keyring.RingKey]) -> tuple[dict, list[str]]:
    """The PDF signature: intact, over the whole file, by a trusted key valid then."""
    check = pdf_signature.check_signature(data)
    problems = list(check.problems)
    key = keyring.find_raw(trusted, check.signer_key) if check.signer_key else None
    if key is None and (check.signer_key or check.signer_algorithm):
        signer = (certs.key_fingerprint(_ed25519(check.signer_key)) if check.signer_key
                  else f"a {check.signer_algorithm} key")
        problems.append(f"the PDF is signed by {signer}, not by a trusted key "
                        f"({_trusted_text(trusted)})")
    elif key is not None and check.signed_at is None and key.created_at:
        problems.append("the PDF signature states no signing time, so the validity of its "
                        "key cannot be checked (bkp always states it)")
    elif key is not None:
        late = key.validity_problem(check.signed_at, "the PDF was signed at")
        problems += [late] if late else []
    return {**check.as_json(), "key_fingerprint": key.id if key else None}, problems


def _ed25519(raw: bytes):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _trusted_text(trusted: list[keyring.RingKey]) -> str:
    source = trusted[0].source if trusted else "no key"
    if source == "key ring":
        source = "this installation's key ring"
    return f"{source}: {len(trusted)} key{'s' if len(trusted) != 1 else ''}"


def _file_check(ctx: Context, payload: dict, data: bytes, is_pdf: bool) -> tuple[dict, list]:
    """The file against the SHA-256 its issue recorded in the audit trail. A PDF must be the
    very file issued; a JSON certificate may be reformatted (its signature covers the
    content, not the layout), so for JSON a difference is reported, not failed."""
    digest = hashlib.sha256(data).hexdigest()
    certificate_id = payload.get("certificate_id")
    if not isinstance(certificate_id, int) or isinstance(certificate_id, bool):
        # not a certificate of ours at all: the signature check already says so
        return {"sha256": digest, "issued_sha256": None, "as_issued": None,
                "issue_event_seq": None}, []
    event = _issue_event(ctx, certificate_id)
    if event is None:
        return ({"sha256": digest, "issued_sha256": None, "as_issued": None,
                 "issue_event_seq": None},
                [f"the audit trail has no {ISSUE_ACTION} event for certificate "
                 f"{certificate_id}"])
    recorded = _details(event).get("pdf_sha256" if is_pdf else "json_sha256")
    as_issued = None if recorded is None else recorded == digest
    file = {"sha256": digest, "issued_sha256": recorded, "as_issued": as_issued,
            "issue_event_seq": event["seq"]}
    if is_pdf and as_issued is False:
        return file, [f"the file is not the PDF issued as certificate {certificate_id}: its "
                      f"SHA-256 is {digest}, audit event #{event['seq']} recorded "
                      f"{recorded} when it was issued"]
    return file, []


def _issue_event(ctx: Context, certificate_id: int) -> dict | None:
    for event in reversed(ctx.catalog.audit_events(action=ISSUE_ACTION)):
        if _details(event).get("certificate_id") == certificate_id:
            return event
    return None


def _details(event: dict) -> dict:
    try:
        details = json.loads(event.get("details") or "{}")
    except ValueError:
        return {}
    return details if isinstance(details, dict) else {}


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
