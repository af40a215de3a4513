"""Certificates: Appendix G content, Ed25519 signatures, tamper detection, text and PDF."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import stat

import pypdf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkp.evidence import certificates as certs
from bkp.media.destroy import evidence_hash, evidence_listing

RECORD = {
    "id": 7, "serial": "WD-WCC4N1234567", "device": "/dev/sdb", "device_kind": "block",
    "device_serial": "WD-WCC4N1234567", "device_model": "WDC WD40EFRX", "method": "random",
    "passes": '["random"]', "verify_mode": "sample", "size": 4000787030016,
    "operator": "Jeroen de Vries", "witness": "Anne Bakker", "organization": "Hosting B.V.",
    "classification": "sensitive",
    "backup": json.dumps({"backed_up": True, "where": "sftp destination in NL",
                          "snapshot_id": "1a2b3c4d", "time": "2025-01-01T02:00:00Z"}),
    "started_at": "2025-01-02T09:00:00.000000Z", "ended_at": "2025-01-02T17:00:00.000000Z",
    "duration_s": 28800.0, "throughput_bps": 138916216.0, "bytes_written": 4000787030016,
    "result": "erased", "hash": "ab" * 32, "bytes_verified": 400083353600,
    "sample_plan": json.dumps({"seed": "00" * 16, "subsections": 1000}),
    "mismatches": 0, "io_errors": 0, "destination_after": "reuse", "notes": "rack B3",
    "hardware_command": None, "error": None,
}
MEDIUM = {"serial": "WD-WCC4N1234567", "type": "hdd", "vendor": "WDC", "model": "WD40EFRX",
          "capacity": 4000787030016, "asset_tag": "HB-0042", "tenant": "kliniek-noord",
          "host": "db3.example.nl"}
EVENT = {"seq": 12, "hash": "cd" * 32, "action": "sanitize"}


def payload():
    return certs.sanitization_payload(certificate_id=3, issued_at="2025-01-02T17:00:01Z",
                                      record=RECORD, medium=MEDIUM, audit_event=EVENT,
                                      tool_version="0.1.0")


def test_payload_carries_the_appendix_g_fields():
    p = payload()
    assert p["person_performing"] == {"name": "Jeroen de Vries", "organization": "Hosting B.V."}
    assert p["media"]["serial"] == "WD-WCC4N1234567" and p["media"]["type"] == "hdd"
    assert p["media"]["vendor"] == "WDC" and p["media"]["model"] == "WD40EFRX"
    assert p["media"]["asset_tag"] == "HB-0042" and p["media"]["source_host"] == "db3.example.nl"
    assert p["media"]["serial_note"] == "device reports serial WD-WCC4N1234567"
    assert p["data"]["classification"] == "sensitive" and p["data"]["backup"]["backed_up"]
    san = p["sanitization"]
    assert san["category"] == "Clear" and san["method"] == "random"
    assert san["tool"] == "bkp" and san["tool_version"] == "0.1.0"
    assert san["started_at"] and san["ended_at"] and san["duration_s"] == 28800.0
    assert san["throughput_bytes_per_s"] and san["result"] == "erased"
    assert p["verification"]["mode"] == "sample" and p["verification"]["hash"] == "ab" * 32
    assert p["verification"]["io_errors"] == 0
    assert p["destination_after"] == "reuse" and p["validation"]["witness"] == "Anne Bakker"
    assert p["notes"] == "rack B3" and p["audit"]["seq"] == 12


def test_no_serial_is_stated():
    record = {**RECORD, "device_serial": None, "device_kind": "block"}
    p = certs.sanitization_payload(certificate_id=1, issued_at="2025-01-01T00:00:00Z",
                                   record=record, medium=MEDIUM, audit_event=EVENT,
                                   tool_version="0.1.0")
    assert p["media"]["serial_note"].startswith("device reports no serial")
    assert "device reports no serial" in certs.render_text(
        certs.sign(p, Ed25519PrivateKey.generate()))


def test_signature_round_trip_and_tampering():
    key = Ed25519PrivateKey.generate()
    document = certs.sign(payload(), key)
    assert certs.signature_problems(document, key.public_key()) == []
    # survives a trip through its file form
    again = certs.read_document(certs.document_bytes(document))
    assert certs.signature_problems(again, key.public_key()) == []
    for path, value in ((("media", "serial"), "OTHER"), (("verification", "hash"), "00" * 32),
                        (("sanitization", "result"), "erased "),
                        (("validation", "witness"), "Someone Else")):
        forged = copy.deepcopy(document)
        forged["certificate"][path[0]][path[1]] = value
        problems = certs.signature_problems(forged, key.public_key())
        assert problems and "does not match" in problems[0]


def test_a_certificate_re_signed_with_another_key_is_refused():
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = payload()
    forged["verification"]["hash"] = "00" * 32
    document = certs.sign(forged, theirs)  # self-consistent, embedded key and all
    problems = certs.signature_problems(document, ours.public_key())
    assert problems and "not by the trusted key" in problems[0]


def test_signing_key_created_once_private(tmp_path):
    key = certs.signing_key(tmp_path)
    path = tmp_path / certs.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = certs.signing_key(tmp_path)
    assert certs.key_fingerprint(key.public_key()) == certs.key_fingerprint(again.public_key())
    assert "BEGIN PUBLIC KEY" in certs.public_key_pem(again.public_key())


def test_text_rendering_has_the_fields():
    text = certs.render_text(certs.sign(payload(), Ed25519PrivateKey.generate()))
    for needle in ("CERTIFICATE OF SANITIZATION", "WD-WCC4N1234567", "Jeroen de Vries",
                   "Anne Bakker", "ab" * 32, "Clear", "HB-0042", "db3.example.nl",
                   "sensitive", "yes: sftp destination in NL", "Ed25519"):
        assert needle in text, needle


def test_pdf_is_one_page_with_serial_operator_hash_and_the_signed_json():
    document = certs.sign(payload(), Ed25519PrivateKey.generate())
    pdf = certs.render_pdf(document)
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    for needle in ("Certificate of Sanitization", "WD-WCC4N1234567", "Jeroen de Vries",
                   "ab" * 32, "Anne Bakker"):
        assert needle in text, needle
    attached = json.loads(reader.attachments[certs.PDF_ATTACHMENT][0])
    assert attached == document
    assert certs.read_document(pdf) == document


def test_pdf_stays_on_one_page_with_long_notes_and_non_latin_names():
    record = {**RECORD, "notes": "Long note. " * 120, "operator": "Łukasz Żółć"}
    p = certs.sanitization_payload(certificate_id=1, issued_at="2025-01-01T00:00:00Z",
                                   record=record, medium=MEDIUM, audit_event=EVENT,
                                   tool_version="0.1.0")
    pdf = certs.render_pdf(certs.sign(p, Ed25519PrivateKey.generate()))
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    assert "Lukasz" in reader.pages[0].extract_text()
    assert certs.read_document(pdf)["certificate"]["person_performing"]["name"] == "Łukasz Żółć"


def test_not_a_certificate():
    with pytest.raises(ValueError):
        certs.read_document(b"%PDF-1.4 nothing here")
    with pytest.raises(ValueError):
        certs.read_document(b"\xff\xfe")
    key = Ed25519PrivateKey.generate()
    assert certs.signature_problems({"format": "other"}, key.public_key())


def test_evidence_hash_per_cli_contract():
    one = [("photo.jpg", hashlib.sha256(b"jpeg").hexdigest())]
    assert evidence_hash(one) == one[0][1]
    two = [("z-cert.pdf", "11" * 32), ("a-photo.jpg", "22" * 32)]
    listing = f"{'22' * 32}  a-photo.jpg\n{'11' * 32}  z-cert.pdf\n"
    assert evidence_listing(two) == listing
    assert evidence_hash(two) == hashlib.sha256(listing.encode()).hexdigest()
