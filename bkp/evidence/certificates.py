"""Build, sign, verify and render certificates of sanitization and destruction.

A certificate carries the fields of NIST SP 800-88 Rev. 1 Appendix G ("Sample Certificate
of Sanitization") and of Rev. 2's sample record (each person's name, title, organisation,
location, contact and date; the property number; the pre-sanitization categorisation; the
IEEE 2883 technique; tool and version; verification method and result; the destination
after sanitization; the validation by a second person), plus the verification hash and a
reference to the audit event of the record. Records made before the Rev. 2 fields existed
render and verify as they were signed: a missing field is shown as not recorded. Its
payload is canonical JSON (sorted keys, no spaces, UTF-8) signed with the
installation's current Ed25519 key, named in the signature by its id (keyring.py); auditors
pin the key ring's public keys (`bkp certificate public-key --all`) and check any
certificate with them, without trusting the operator or the machine that printed it.

The PDF is a rendering for people to sign and file, one page. It is signed as a PDF over
the whole file (pdf_signature.py), so what the page shows is covered, and the signed JSON
travels inside it as an attachment: `bkp certificate verify` accepts either file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata

from bkp.catalog import as_json, parse_time

FORMAT = "bkp-certificate/1"
PDF_ATTACHMENT = "certificate.json"

# Method -> (NIST 800-88 category, what it does), shown on every certificate.
METHODS = {
    "zero": ("Clear", "single overwrite with zeros (0x00) of every addressable block"),
    "random": ("Clear", "single overwrite with a seeded pseudorandom stream (AES-256-CTR) "
                        "of every addressable block"),
    "dod3": ("Clear", "three overwrites of every addressable block: 0x00, 0xFF, seeded "
                      "pseudorandom stream (DoD 5220.22-M style)"),
    "ata-secure-erase": ("Purge", "ATA SECURITY ERASE UNIT (hdparm), enhanced mode where "
                                  "supported"),
    "ata-sanitize": ("Purge", "ATA SANITIZE (hdparm): crypto scramble where supported, "
                              "else block erase"),
    "nvme-format": ("Purge", "NVMe Format NVM with Secure Erase Settings (nvme-cli): "
                             "cryptographic erase where supported, else user data erase"),
    "nvme-sanitize": ("Purge", "NVMe Sanitize (nvme-cli): crypto erase where supported, "
                               "else block erase"),
}
DESTRUCTION_METHODS = {
    "shred": "shredding", "disintegrate": "disintegration", "degauss": "degaussing",
    "incinerate": "incineration", "other": "other physical destruction",
}
VERIFICATION_MODES = {
    "full": "full read-back of every addressable byte; the hash is the SHA-256 of the whole "
            "device as read back, equal to `sha256sum DEVICE` right after the wipe",
    "sample": "NIST 800-88 sample read-back: the first and last block and one pseudorandom "
              "range in each of at least 1000 equal subsections, at least 10% of the "
              "medium; the hash is the SHA-256 of the sampled ranges in address order",
    "evidence": "SHA-256 of the evidence of destruction (one file: its SHA-256; several: "
                "the SHA-256 of their sha256sum-style listing sorted by name)",
}


# ---------------------------------------------------------------- keys (the ring: keyring.py)

def public_key_pem(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_keys(text: str) -> list:
    """Every public key in PEM text: PUBLIC KEY blocks and the keys of CERTIFICATE blocks
    (comments between blocks, as `bkp certificate public-key --all` writes, are skipped)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    keys = []
    for kind, block in _pem_blocks(text):
        if kind == "PUBLIC KEY":
            keys.append(serialization.load_pem_public_key(block.encode()))
        elif kind == "CERTIFICATE":
            keys.append(x509.load_pem_x509_certificate(block.encode()).public_key())
    return keys


def _pem_blocks(text: str) -> list[tuple[str, str]]:
    blocks, kind, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("-----BEGIN ") and line.endswith("-----"):
            kind, lines = line[11:-5], [line]
        elif kind is not None:
            lines.append(line)
            if line.startswith("-----END "):
                blocks.append((kind, "\n".join(lines) + "\n"))
                kind = None
    return blocks


def raw_public_key(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public_key) -> str:
    return "SHA256:" + hashlib.sha256(raw_public_key(public_key)).hexdigest()


# ---------------------------------------------------------------- payloads (pure)

def sanitization_payload(*, certificate_id: int, issued_at: str, record: dict, medium: dict,
                         audit_event: dict, tool_version: str, validation: dict | None = None,
                         clock: dict | None = None) -> dict:
    """The Appendix G fields of a sanitization record."""
    category, description = METHODS[record["method"]]
    return {
        "certificate_id": certificate_id,
        "record_id": record["id"],
        "kind": "sanitization",
        "issued_at": issued_at,
        "person_performing": {"name": record["operator"],
                              "organization": record.get("organization")},
        "media": _media_fields(medium, record),
        "data": {"tenant": medium.get("tenant"),
                 "classification": record.get("classification"),
                 "backup": json.loads(record["backup"]) if record.get("backup") else None},
        "sanitization": {
            "category": category, "method": record["method"], "description": description,
            "passes": json.loads(record.get("passes") or "[]"),
            "tool": "bkp", "tool_version": tool_version,
            "hardware_command": record.get("hardware_command"),
            "started_at": record["started_at"], "ended_at": record["ended_at"],
            "duration_s": record.get("duration_s"),
            "throughput_bytes_per_s": record.get("throughput_bps"),
            "bytes_written": record.get("bytes_written"),
            "result": record["result"],
            "error": record.get("error"),
        },
        "verification": {
            "mode": record["verify_mode"],
            "description": VERIFICATION_MODES[record["verify_mode"]],
            "hash_algorithm": "SHA-256", "hash": record.get("hash"),
            "bytes_read": record.get("bytes_verified"),
            "sample": json.loads(record["sample_plan"]) if record.get("sample_plan") else None,
            "mismatched_blocks": record.get("mismatches"), "io_errors": record.get("io_errors"),
        },
        "destination_after": record.get("destination_after"),
        "validation": {"witness": record.get("witness"), **(validation or {})},
        "clock": clock,
        "notes": record.get("notes"),
        "audit": {"seq": audit_event["seq"], "hash": audit_event["hash"],
                  "action": audit_event["action"]},
        **_rev2_sanitization(record, medium, validation),
    }


STANDARDS = "NIST SP 800-88 Rev. 2; IEEE 2883-2022"
# IEEE 2883-2022 techniques of each method family, when the record did not say.
DESTRUCTION_TECHNIQUES = {"shred": "shred", "disintegrate": "disintegrate",
                          "degauss": "degauss", "incinerate": "incinerate",
                          "other": "other destruct technique"}


def _people(record: dict, validation: dict | None, date: str | None) -> dict:
    """Each person with name, title, organisation, location, contact and date (Rev. 2)."""
    stored = json.loads(record["people"]) if record.get("people") else {}
    stored = stored if isinstance(stored, dict) else {}

    def person(role: str, name: str | None, when: str | None) -> dict | None:
        if not name:
            return None
        details = stored.get(role) or {}
        return {"name": name, "title": details.get("title"),
                "organization": details.get("organization") or record.get("organization"),
                "location": details.get("location"), "contact": details.get("contact"),
                "date": when}

    validator = None
    if validation and validation.get("validator"):
        details = validation.get("person") or {}
        validator = {"name": validation["validator"],
                     "title": validation.get("title") or details.get("title"),
                     "organization": details.get("organization"),
                     "location": details.get("location"), "contact": details.get("contact"),
                     "date": validation.get("time")}
    return {"performer": person("performer", record.get("operator"), date),
            "witness": person("witness", record.get("witness"), date),
            "validator": validator}


def _rev2_sanitization(record: dict, medium: dict, validation: dict | None) -> dict:
    category = METHODS[record["method"]][0]
    result = record.get("result")
    passed = {"erased": "passed", "failed": "failed"}.get(result, result)
    return {
        "standards": STANDARDS,
        "people": _people(record, validation, record.get("ended_at")),
        "property_number": medium.get("asset_tag"),
        "pre_sanitization_categorization": record.get("categorization"),
        "method_category": category,
        "technique": record.get("technique"),
        "tool": {"name": "bkp", "version": record.get("tool_version"),
                 "drive_tool": record.get("tool")},
        "accept_clear": record.get("accept_clear"),
        "verification_result": record.get("verification_result") or passed,
        "drive": json.loads(record["drive_evidence"]) if record.get("drive_evidence")
        else None,
        "post_sanitization_destination": record.get("destination_after"),
        "validated": bool(validation and validation.get("decision") == "approved"),
    }


def _rev2_destruction(record: dict, medium: dict, validation: dict | None) -> dict:
    return {
        "standards": STANDARDS,
        "people": _people(record, validation, record.get("destroyed_on")
                          or record.get("performed_at")),
        "property_number": medium.get("asset_tag"),
        "pre_sanitization_categorization": None,
        "method_category": "Destruct",
        "technique": record.get("technique")
        or DESTRUCTION_TECHNIQUES.get(record["method"]),
        "tool": {"name": "bkp", "version": None, "drive_tool": None},
        "destruction": {"service": record.get("service"), "location": record.get("location"),
                        "service_certificate": record.get("service_certificate"),
                        "destroyed_on": record.get("destroyed_on")},
        "verification_result": "evidence recorded",
        "post_sanitization_destination": "destroyed",
        "validated": bool(validation and validation.get("decision") == "approved"),
    }


def destruction_payload(*, certificate_id: int, issued_at: str, record: dict, medium: dict,
                        audit_event: dict, tool_version: str, validation: dict | None = None,
                        clock: dict | None = None) -> dict:
    return {
        "certificate_id": certificate_id,
        "record_id": record["id"],
        "kind": "destruction",
        "issued_at": issued_at,
        "person_performing": {"name": record["operator"],
                              "organization": record.get("organization")},
        "media": _media_fields(medium, None),
        "data": {"tenant": medium.get("tenant"), "classification": None, "backup": None},
        "sanitization": {
            "category": "Destroy", "method": record["method"],
            "description": DESTRUCTION_METHODS[record["method"]],
            "tool": "bkp", "tool_version": tool_version,
            "started_at": record["performed_at"], "ended_at": record["performed_at"],
            "result": "destroyed",
        },
        "verification": {
            "mode": "evidence", "description": VERIFICATION_MODES["evidence"],
            "hash_algorithm": "SHA-256", "hash": record["hash"],
            "evidence": json.loads(record.get("evidence") or "[]"),
        },
        "destination_after": "destroyed",
        "validation": {"witness": record["witness"], **(validation or {})},
        "clock": clock,
        "notes": record.get("notes"),
        "audit": {"seq": audit_event["seq"], "hash": audit_event["hash"],
                  "action": audit_event["action"]},
        **_rev2_destruction(record, medium, validation),
    }


ERASURE_VERIFICATIONS = {
    "offboard": "the location lists no object (every version), and restic can no longer open "
                "the repository with the tenant's password; the hash is the SHA-256 of what "
                "was erased at each place (canonical JSON), also in the closing audit event",
    "erase": "the erased snapshots are no longer listed at any place, after prune left no "
             "unused data; the hash is the SHA-256 of what was erased at each place "
             "(canonical JSON), also in the closing audit event",
}
ERASURE_REQUESTS = {"offboard": "offboarding: every backup of the tenant erased",
                    "erase": "erasure request: the named snapshots erased"}


def erasure_hash(destinations: list[dict]) -> str:
    """The verification hash of an erasure: SHA-256 of its per-place results."""
    return hashlib.sha256(as_json(destinations).encode("utf-8")).hexdigest()


def erasure_payload(*, certificate_id: int, issued_at: str, record: dict, audit_event: dict,
                    tool_version: str, approval: dict | None = None,
                    clock: dict | None = None, organization: str | None = None) -> dict:
    """An erasure record (bkp offboard, bkp erase): what was erased at every place, how,
    how it was verified, who did it and who approved it, and what is deliberately kept."""
    destinations = json.loads(record.get("destinations") or "[]")
    kept = json.loads(record.get("kept") or "{}")
    return {
        "certificate_id": certificate_id,
        "record_id": record["id"],
        "kind": "erasure",
        "issued_at": issued_at,
        "tenant": record["tenant"],  # as the evidence report reads any certificate
        "result": record["status"],
        "person_performing": {"name": record["operator"], "organization": organization,
                              "os_user": record.get("os_user")},
        "erasure": {
            "request": record["kind"], "description": ERASURE_REQUESTS[record["kind"]],
            "tenant": record["tenant"], "reason": record.get("reason"),
            "snapshots_requested": json.loads(record["snapshots"])
            if record.get("snapshots") else None,
            "method": record.get("method"), "tool": "bkp", "tool_version": tool_version,
            "requested_at": record.get("requested_at"),
            "started_at": record.get("started_at"), "ended_at": record.get("ended_at"),
            "attempts": record.get("attempts"), "result": record["status"],
        },
        "destinations": destinations,
        "host": kept.get("host"),
        "verification": {
            "mode": "erasure", "description": ERASURE_VERIFICATIONS[record["kind"]],
            "hash_algorithm": "SHA-256", "hash": erasure_hash(destinations),
        },
        "kept": kept.get("kept") or [],
        "validation": {"witness": record.get("witness"), "approval": approval},
        "clock": clock,
        "notes": None,
        "audit": {"seq": audit_event["seq"], "hash": audit_event["hash"],
                  "action": audit_event["action"]},
    }


def subject_of(payload: dict) -> str:
    """What a certificate is about, in a few words: a medium, or a tenant's backups."""
    if payload.get("kind") == "erasure":
        return f"tenant {(payload.get('erasure') or {}).get('tenant')}"
    return f"medium {(payload.get('media') or {}).get('serial')}"


def _media_fields(medium: dict, record: dict | None) -> dict:
    fields = {
        "type": medium["type"], "vendor": medium.get("vendor"), "model": medium.get("model"),
        "serial": medium["serial"], "asset_tag": medium.get("asset_tag"),
        "capacity_bytes": medium.get("capacity"), "source_host": medium.get("host"),
    }
    if record is not None:
        reported = record.get("device_serial")
        fields.update(
            device=record.get("device"), device_kind=record.get("device_kind"),
            device_model=record.get("device_model"), device_size_bytes=record.get("size"),
            serial_reported_by_device=reported,
            serial_note=("device reports serial " + reported) if reported else
            ("image file reports no serial" if record.get("device_kind") == "image"
             else "device reports no serial; identified by the operator and the register"))
    return fields


# ---------------------------------------------------------------- signing

def canonical(payload: dict) -> bytes:
    return as_json(payload).encode("utf-8")


def sign(payload: dict, private_key) -> dict:
    """The certificate document: the payload and its detached Ed25519 signature."""
    public_key = private_key.public_key()
    return {
        "format": FORMAT,
        "certificate": payload,
        "signature": {
            "algorithm": "Ed25519",
            "key_fingerprint": key_fingerprint(public_key),
            "public_key": base64.b64encode(raw_public_key(public_key)).decode(),
            "value": base64.b64encode(private_key.sign(canonical(payload))).decode(),
        },
    }


def structure_problems(document) -> list[str]:
    """Why `document` is not shaped like a signed bkp certificate; empty when it is."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return [f"not a bkp certificate (format is not {FORMAT})"]
    payload, signature = document.get("certificate"), document.get("signature")
    if not isinstance(payload, dict) or not isinstance(signature, dict):
        return ["the certificate or its signature is missing"]
    if signature.get("algorithm") != "Ed25519":
        return [f"unsupported signature algorithm {signature.get('algorithm')!r}"]
    return []


def signature_problems(document: dict, trusted_key) -> list[str]:
    """Why `document` is not a certificate signed by `trusted_key`; empty when it is.

    Only the trusted key counts: a key embedded in the document is a hint, never proof,
    since anyone can sign an altered payload with a key of their own.
    """
    from cryptography.exceptions import InvalidSignature

    problems = structure_problems(document)
    if problems:
        return problems
    payload, signature = document["certificate"], document["signature"]
    trusted = key_fingerprint(trusted_key)
    if signature.get("key_fingerprint") != trusted:
        return [f"signed by key {signature.get('key_fingerprint')}, not by the trusted key "
                f"{trusted}"]
    try:
        trusted_key.verify(base64.b64decode(signature.get("value", ""), validate=True),
                           canonical(payload))
    except (InvalidSignature, ValueError, TypeError):
        return ["the signature does not match the certificate's content (changed after "
                "signing, or signed by another key)"]
    return []


# ---------------------------------------------------------------- files

def document_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def is_pdf(data: bytes) -> bool:
    return data.lstrip()[:5] == b"%PDF-"


def read_document(data: bytes) -> dict:
    """The certificate document from a JSON file or from the attachment of our PDF."""
    if is_pdf(data):
        return _document_in_pdf(data)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"neither a PDF nor JSON: {exc}") from None


def _document_in_pdf(data: bytes) -> dict:
    from bkp.evidence.pdf_signature import attachment

    try:
        attached = attachment(data, PDF_ATTACHMENT)
    except Exception as exc:  # a damaged or hostile PDF can fail anywhere in the parser
        raise ValueError(f"this PDF cannot be read ({type(exc).__name__}: {exc})") from None
    if attached is None:
        raise ValueError(f"this PDF carries no signed bkp certificate (no {PDF_ATTACHMENT} "
                         f"attached)")
    try:
        return json.loads(attached.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the certificate inside this PDF is damaged: {exc}") from None


def embedded_json(document: dict) -> bytes:
    return json.dumps(document, ensure_ascii=True).encode("ascii")


# ---------------------------------------------------------------- rendering

def _standards_line(payload: dict) -> str:
    if payload.get("kind") == "erasure":
        return "Erasure of backups (GDPR art. 17, ISO 27002 8.10)"
    if payload.get("standards"):
        return "NIST SP 800-88 Rev. 2 and IEEE 2883-2022 (Rev. 1, Appendix G fields)"
    return "NIST SP 800-88 Rev. 1, Appendix G"  # a record made before the Rev. 2 fields


def title_of(payload: dict) -> str:
    if payload["kind"] == "erasure":
        return "Certificate of Erasure"
    if payload["kind"] == "destruction":
        return "Certificate of Destruction"
    if payload["sanitization"].get("result") != "erased":
        # evidence of a failure, never to be filed as a certificate of erasure
        return "Record of a FAILED Sanitization - not a certificate of erasure"
    return "Certificate of Sanitization"


def rows(payload: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The certificate as sections of (label, value), shared by text and PDF."""
    if payload["kind"] == "erasure":
        return erasure_rows(payload)
    media, san, ver = payload["media"], payload["sanitization"], payload["verification"]
    data = payload.get("data") or {}
    backup = data.get("backup")
    people = payload.get("people") or {}
    tool = payload.get("tool") or {}
    destruction = payload.get("destruction") or {}
    sections = [
        ("Person performing sanitization", [
            ("Name", payload["person_performing"]["name"]),
            ("Organization", payload["person_performing"].get("organization")),
            *_person_rows(people.get("performer"), skip=("name", "organization")),
        ]),
        ("Media information", [
            ("Media type", media["type"]),
            ("Manufacturer", media.get("vendor")),
            ("Model", media.get("model") or media.get("device_model")),
            ("Serial number", media["serial"]),
            ("Serial check", media.get("serial_note")),
            ("Property number (asset tag)", payload.get("property_number")
             or media.get("asset_tag")),
            ("Capacity (bytes)", _number(media.get("capacity_bytes")
                                         or media.get("device_size_bytes"))),
            ("Source host", media.get("source_host")),
            ("Device", media.get("device")),
            ("Tenant", data.get("tenant")),
            ("Data classification", data.get("classification")),
            ("Pre-sanitization categorization", payload.get("pre_sanitization_categorization")),
            ("Data backed up", _backup_text(backup)),
        ]),
        ("Sanitization details", [
            ("Method type (NIST 800-88)", san["category"]),
            ("Technique (IEEE 2883)", payload.get("technique")),
            ("Method", f"{san['method']}: {san['description']}"),
            ("Tool", f"{san['tool']} {san['tool_version']}"),
            ("Drive tool", tool.get("drive_tool")),
            ("Hardware command", san.get("hardware_command")),
            ("Clear accepted because", payload.get("accept_clear")),
            ("Destruction service", destruction.get("service")),
            ("Place of destruction", destruction.get("location")),
            ("Service's certificate no.", destruction.get("service_certificate")),
            ("Date of destruction", destruction.get("destroyed_on")),
            ("Started", san.get("started_at")),
            ("Ended", san.get("ended_at")),
            ("Duration", _duration(san.get("duration_s"))),
            ("Throughput", _rate(san.get("throughput_bytes_per_s"))),
            ("Bytes written", _number(san.get("bytes_written"))),
            ("Result", san["result"]),
            ("Error", san.get("error")),
            ("Destination after", payload.get("post_sanitization_destination")
             or payload.get("destination_after")),
        ]),
        ("Verification", [
            ("Verification method", f"{ver['mode']}: {ver['description']}"),
            ("Verification result", payload.get("verification_result")),
            ("Bytes read back", _number(ver.get("bytes_read"))),
            ("Mismatched 4 KiB blocks", _number(ver.get("mismatched_blocks"))),
            ("I/O errors", _number(ver.get("io_errors"))),
            *_drive_rows(payload.get("drive")),
            ("Evidence", ", ".join(f"{e['name']} ({e['sha256'][:16]}...)"
                                   for e in ver.get("evidence") or []) or None),
            ("Verification hash (SHA-256)", ver.get("hash")),
        ]),
        ("Witness", _person_rows(people.get("witness"))
         or [("Name", payload["validation"].get("witness"))]),
        ("Validation", [
            ("State", _validation_state(payload)),
            *_validation_rows(payload["validation"]),
            *_person_rows(people.get("validator"), skip=("name", "title", "date")),
            ("Clock", _clock_text(payload.get("clock"))),
            ("Notes", payload.get("notes")),
            ("Standards", payload.get("standards")),
            ("Record", f"{payload['kind']} record {payload['record_id']}, certificate "
                       f"{payload['certificate_id']}, issued {payload['issued_at']}"),
            ("Audit event", f"#{payload['audit']['seq']} {payload['audit']['hash']}"),
        ]),
    ]
    return [(title, [(k, v) for k, v in items if v not in (None, "")])
            for title, items in sections]


def _person_rows(person: dict | None, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    if not person:
        return []
    labels = (("name", "Name"), ("title", "Title"), ("organization", "Organization"),
              ("location", "Location"), ("contact", "Contact"), ("date", "Date"))
    return [(label, person.get(key)) for key, label in labels if key not in skip]


def _validation_state(payload: dict) -> str:
    """What the certificate says about validation, always: a reader must never take an
    unvalidated record for a validated one."""
    validation = payload.get("validation") or {}
    if validation.get("validator"):
        decision = validation.get("decision")
        if decision == "approved":
            return f"validated by {validation['validator']}"
        return f"REJECTED by {validation['validator']}: NOT VALIDATED"
    return (f"NOT VALIDATED: waits for a second person's validation (bkp certificate "
            f"validate {payload['record_id']})")


def _drive_rows(drive: dict | None) -> list[tuple[str, str]]:
    """What the drive said and showed (hardware erases): markers, status, hidden areas."""
    if not drive:
        return []
    markers = drive.get("markers") or {}
    hidden = drive.get("hidden_area") or {}
    out = []
    if markers:
        out.append(("Markers", f"{markers.get('gone')} of {markers.get('count')} random "
                               f"markers gone after the erase"
                               + (f"; {markers['promise']}" if markers.get("promise") else "")
                               + (f"; {markers['data_sampled'] - markers['data_unchanged']} of "
                                  f"{markers['data_sampled']} sampled data blocks changed"
                                  if markers.get("data_sampled") else "")))
    for label, key in (("Drive status before", "status_before"),
                       ("Drive status after", "status_after"),
                       ("Namespaces", "namespaces")):
        if drive.get(key):
            out.append((label, drive[key] if isinstance(drive[key], str)
                        else json.dumps(drive[key], sort_keys=True)))
    if hidden:
        out.append(("Hidden area (HPA/DCO)", hidden.get("summary")
                    or json.dumps(hidden, sort_keys=True)))
    return out


def erasure_rows(payload: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    erasure, ver = payload["erasure"], payload["verification"]
    validation = payload.get("validation") or {}
    approval = validation.get("approval") or {}
    person = payload["person_performing"]
    sections = [
        ("Erasure request", [
            ("Request", erasure["description"]),
            ("Tenant", erasure["tenant"]),
            ("Reason", erasure.get("reason")),
            ("Snapshots requested", ", ".join(erasure.get("snapshots_requested") or [])),
            ("Requested", erasure.get("requested_at")),
            ("Performed by", f"{person['name']}" + (f" (OS user {person['os_user']})"
                                                    if person.get("os_user") else "")),
            ("Organization", person.get("organization")),
        ]),
        ("Erasure", [
            ("Method", erasure.get("method")),
            ("Tool", f"{erasure['tool']} {erasure['tool_version']}"),
            ("Started", erasure.get("started_at")),
            ("Ended", erasure.get("ended_at")),
            ("Attempts", _number(erasure.get("attempts"))),
            ("Result", erasure["result"]),
        ]),
    ]
    for place in payload.get("destinations") or []:
        sections.append((f"Erased at {place['id']} ({place['type']})", [
            ("Location", place.get("location")),
            ("Snapshots erased", _number(place.get("snapshots"))),
            ("Keys removed", _number(place.get("keys_removed"))),
            ("Objects removed", _number(place.get("objects_removed"))),
            ("Bytes removed", _number(place.get("bytes_removed"))),
            ("Objects left", _number((place.get("verification") or {}).get(
                "listed_objects"))),
            ("Repository opens", _yes_no((place.get("verification") or {}).get(
                "repository_opens"))),
            ("Result", place.get("status")),
        ]))
    host = payload.get("host") or {}
    sections += [
        ("On the bkp host", [
            ("Removed", ", ".join(host.get("removed") or []) or "nothing was there"),
        ]),
        ("Verification", [
            ("Verification method", ver["description"]),
            ("Verification hash (SHA-256)", ver.get("hash")),
        ]),
        ("Deliberately kept", [(item["what"], item["why"])
                               for item in payload.get("kept") or []]),
        ("Validation", [
            ("Witness", validation.get("witness")),
            ("Approved by", f"{approval['approved_by']} at {approval['approved_at']}, "
                            f"ssh-keygen -Y sign -n bkp by key {approval['key_fingerprint']} "
                            f"(signature SHA-256 {approval['signature_sha256'][:16]}...)"
             if approval.get("approved_by") else None),
            ("Clock", _clock_text(payload.get("clock"))),
            ("Record", f"erasure record {payload['record_id']}, certificate "
                       f"{payload['certificate_id']}, issued {payload['issued_at']}"),
            ("Audit event", f"#{payload['audit']['seq']} {payload['audit']['hash']}"),
        ]),
    ]
    return [(title, [(k, v) for k, v in items if v not in (None, "")])
            for title, items in sections]


def _yes_no(value) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _validation_rows(validation: dict) -> list[tuple[str, str | None]]:
    """The validator's decision (NIST SP 800-88 Rev. 2), and the approval signature that
    proves the validator made it."""
    if not validation.get("validator"):
        return []
    approval = validation.get("approval") or {}
    return [
        ("Validator", f"{validation['validator']}"
                      + (f", {validation['title']}" if validation.get("title") else "")),
        ("Decision", f"{validation.get('decision')} at {validation.get('time')}"),
        ("Comment", validation.get("comment")),
        ("Validator's signature", f"ssh-keygen -Y sign -n bkp by key "
                                  f"{approval['key_fingerprint']} (signature SHA-256 "
                                  f"{approval['signature_sha256'][:16]}...)"
         if approval.get("key_fingerprint") else None),
    ]


def _clock_text(clock: dict | None) -> str | None:
    if not clock:
        return None
    if clock.get("synchronized") is None:
        return f"synchronisation unknown ({clock.get('detail')})"
    return ("synchronised" if clock["synchronized"] else "NOT synchronised") + \
        (f", max error {clock['max_error_ms']:g} ms" if clock.get("max_error_ms") is not None
         else "")


def _backup_text(backup) -> str | None:
    if not backup:
        return None
    if not backup.get("backed_up"):
        return "no " + (f"({backup['note']})" if backup.get("note") else "")
    parts = [backup.get("where"), backup.get("snapshot_id") and f"snapshot "
             f"{backup['snapshot_id']}", backup.get("time"), backup.get("note")]
    return "yes: " + ", ".join(p for p in parts if p)


def _number(value) -> str | None:
    return None if value is None else f"{value:,}".replace(",", " ")


def _duration(seconds) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:06.3f}"


def _rate(bps) -> str | None:
    return None if not bps else f"{bps / 1e6:.1f} MB/s"


def render_text(document: dict) -> str:
    payload = document["certificate"]
    out = [title_of(payload).upper(), _standards_line(payload), ""]
    for title, items in rows(payload):
        out.append(title)
        out += [f"  {label + ':':<30} {value}" for label, value in items]
        out.append("")
    signature = document["signature"]
    out += ["Signature", f"  {'Algorithm:':<30} {signature['algorithm']}",
            f"  {'Key:':<30} {signature['key_fingerprint']}",
            f"  {'Value:':<30} {signature['value']}",
            "  Check it with: bkp certificate verify FILE", ""]
    return "\n".join(out)


PDF_LONG_VALUE = 400  # characters of one field on paper; the attachment keeps it all


def render_pdf(document: dict) -> bytes:
    """One A4 page to sign and file, the signed JSON attached.

    Long content is shrunk, then shortened, until it fits one page: a certificate that
    spills onto a second, unsigned page invites swapping that page.
    """
    for scale, limit in ((1.0, None), (0.9, None), (0.8, None), (0.8, PDF_LONG_VALUE),
                         (0.7, PDF_LONG_VALUE // 2)):
        pdf, fits = _draw_pdf(document, scale, limit)
        if fits:
            break
    return bytes(pdf.output())


def _draw_pdf(document: dict, scale: float, limit: int | None):
    from fpdf import FPDF

    payload = document["certificate"]
    issued = parse_time(payload["issued_at"])
    pdf = FPDF(format="A4")
    pdf.set_creation_date(issued)
    pdf.set_title(_latin(f"{title_of(payload)} {subject_of(payload)}"))
    pdf.set_author(_latin(payload["person_performing"]["name"] or ""))
    pdf.set_creator("bkp")
    pdf.set_auto_page_break(False)
    pdf.set_margins(15, 12, 15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 8, title_of(payload), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 8)
    pdf.cell(0, 4, f"Per {_standards_line(payload)}. This PDF is signed (PAdES, Ed25519) "
                   "and carries the signed record as an attachment.", new_x="LMARGIN",
             new_y="NEXT")
    pdf.ln(2)
    for title, items in rows(payload):
        _pdf_section(pdf, title, items, scale, limit)
    _pdf_signatures(pdf, payload)
    _pdf_footer(pdf, document)
    fits = pdf.get_y() <= pdf.h - 8
    pdf.embed_file(bytes=embedded_json(document), basename=PDF_ATTACHMENT,
                   desc="signed certificate (verify with: bkp certificate verify FILE)",
                   modification_date=issued, creation_date=issued, mime_type="application/json")
    return pdf, fits


def _pdf_section(pdf, title: str, items, scale: float, limit: int | None) -> None:
    pdf.set_font("Helvetica", "B", 9 * scale)
    pdf.set_fill_color(230, 230, 230)
    pdf.cell(0, 5 * scale, title, new_x="LMARGIN", new_y="NEXT", fill=True)
    for label, value in items:
        text = str(value)
        if limit and len(text) > limit:
            text = text[:limit] + " [...] (in full in the attached certificate)"
        pdf.set_font("Helvetica", "", 7.5 * scale)
        pdf.cell(48, 3.9 * scale, _latin(label))
        mono = label.startswith(("Verification hash", "Audit event"))
        pdf.set_font("Courier" if mono else "Helvetica", "B" if mono else "", 7.5 * scale)
        pdf.multi_cell(0, 3.9 * scale, _latin(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)


def _pdf_signatures(pdf, payload: dict) -> None:
    pdf.ln(3)
    pdf.set_font("Helvetica", "", 8)
    y = pdf.get_y() + 10
    validation = payload["validation"]
    approver = (validation.get("approval") or {}).get("approved_by")
    last = (("Approved by", approver) if payload["kind"] == "erasure" else
            ("Validated by", validation.get("validator") or "NOT VALIDATED"))
    for x, who, name in ((15, "Performed by", payload["person_performing"]["name"]),
                         (77, "Witness", validation.get("witness")),
                         (139, *last)):
        pdf.line(x, y, x + 56, y)
        pdf.set_xy(x, y + 1)
        pdf.cell(56, 4, _latin(f"{who}: {name or '-'}"))
    pdf.set_y(y + 7)


def _pdf_footer(pdf, document: dict) -> None:
    signature = document["signature"]
    pdf.set_font("Courier", "", 6)
    pdf.multi_cell(0, 2.8, f"Ed25519 key {signature['key_fingerprint']}\n"
                           f"signature {signature['value']}\n"
                           f"verify: bkp certificate verify THIS.pdf (pin the keys with "
                           f"bkp certificate public-key --all)", new_x="LMARGIN",
                   new_y="NEXT")


# Letters that have no decomposition into a Latin-1 letter plus accents.
_LATIN_FALLBACK = str.maketrans({"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "ı": "i",
                                 "Œ": "OE", "œ": "oe", "Ŋ": "N", "ŋ": "n", "Ħ": "H",
                                 "ħ": "h", "‘": "'", "’": "'", "“": '"', "”": '"',
                                 "–": "-", "—": "-", "…": "..."})


def _latin(text: str) -> str:
    """The core PDF fonts are Latin-1 (portable, no font files needed); other letters are
    shown without their accents. The signed JSON keeps them exactly."""
    try:
        text.encode("latin-1")
        return text
    except UnicodeEncodeError:
        pass
    out = []
    for char in text.translate(_LATIN_FALLBACK):
        try:
            out.append(char.encode("latin-1") and char)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", char).encode("latin-1", "ignore").decode(
                "latin-1")
            out.append(base or "?")
    return "".join(out)

