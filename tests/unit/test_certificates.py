"""Certificates: Appendix G content, Ed25519 signatures, tamper detection, text and PDF,
PDF signatures and the key ring."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import stat
from datetime import UTC, datetime, timedelta

import pypdf
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkp.errors import OperationError
from bkp.evidence import certificates as certs
from bkp.evidence import keyring, pdf_signature
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


def test_a_signed_pdf_keeps_its_page_and_attachment_and_checks_out():
    key = Ed25519PrivateKey.generate()
    document = certs.sign(payload(), key)
    pdf = pdf_signature.sign_pdf(certs.render_pdf(document), key, carrier(key), "test")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1
    assert "WD-WCC4N1234567" in reader.pages[0].extract_text()
    assert certs.read_document(pdf) == document
    check = pdf_signature.check_signature(pdf)
    assert check.problems == [] and check.intact and check.whole_file
    assert check.signer_key == certs.raw_public_key(key.public_key())
    assert check.signed_at is not None


def test_pdf_signature_problems_name_what_changed():
    key = Ed25519PrivateKey.generate()
    unsigned = certs.render_pdf(certs.sign(payload(), key))
    pdf = pdf_signature.sign_pdf(unsigned, key, carrier(key), "test")

    assert "no PDF signature" in pdf_signature.check_signature(unsigned).problems[0]
    start = pdf.index(b"stream\n") + 40  # inside the page's content stream
    flipped = bytearray(pdf)
    flipped[start] ^= 0x01
    check = pdf_signature.check_signature(bytes(flipped))
    assert check.intact is False and "changed after it was signed" in check.problems[0]
    appended = pdf_signature.check_signature(pdf + b"\n% added\n")
    assert appended.whole_file is False and "added after" in appended.problems[0]
    check = pdf_signature.check_signature(with_annotation(pdf))
    assert check.intact and check.whole_file is False
    assert "1 incremental update after its signature" in check.problems[0]
    assert "cannot be read" in pdf_signature.check_signature(b"%PDF-1.7 junk").problems[0]


def with_annotation(pdf: bytes) -> bytes:
    """A sticky note added as an incremental update, as any PDF editor would save it."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    page_ref = writer.root["/Pages"].raw_get("/Kids")[0]
    page = page_ref.get_object()
    note = writer.add_object(generic.DictionaryObject({
        generic.NameObject("/Type"): generic.NameObject("/Annot"),
        generic.NameObject("/Subtype"): generic.NameObject("/FreeText"),
        generic.NameObject("/Rect"): generic.ArrayObject(
            [generic.NumberObject(n) for n in (40, 700, 400, 730)]),
        generic.NameObject("/Contents"): generic.TextStringObject("Result: erased"),
        generic.NameObject("/DA"): generic.TextStringObject("/Helv 12 Tf 0 g"),
    }))
    page[generic.NameObject("/Annots")] = generic.ArrayObject([note])
    writer.update_container(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def carrier(key) -> str:
    return pdf_signature.self_signed_certificate(
        key, datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5))


# ---------------------------------------------------------------- the key ring

def test_reading_a_fresh_home_creates_nothing(tmp_path):
    home = tmp_path / "home"
    assert keyring.load_ring(home) == [] and keyring.export_ring(home) is None
    keyring.check_can_sign(home)
    assert not home.exists()


def test_first_signing_makes_one_private_key_and_a_public_ring(tmp_path):
    with keyring.signing_key(tmp_path) as signer:
        first = signer.key
        assert signer.created == first and first.current
    private = keyring.private_path(tmp_path, first)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    ring_text = (tmp_path / keyring.RING_FILE).read_text()
    assert "PRIVATE" not in ring_text and first.certificate_pem in json.loads(ring_text)[
        "keys"][0]["certificate_pem"]
    with keyring.signing_key(tmp_path) as again:
        assert again.created is None and again.key.id == first.id
        assert certs.key_fingerprint(again.private_key.public_key()) == first.id
    assert [k.id for k in keyring.load_ring(tmp_path)] == [first.id]
    with pytest.raises(OperationError, match="rotate` replaces it"):
        keyring.create_key(tmp_path)


def test_rotation_retires_the_key_and_forgets_its_private_half(tmp_path):
    first = keyring.create_key(tmp_path)
    retired, new = keyring.rotate_key(tmp_path)
    assert retired.id == first.id and retired.not_after and not retired.current
    assert new.current and new.id != first.id
    assert not keyring.private_path(tmp_path, first).exists()
    ring = keyring.load_ring(tmp_path)
    assert [(k.id, k.current) for k in ring] == [(first.id, False), (new.id, True)]
    with keyring.signing_key(tmp_path) as signer:
        assert signer.key.id == new.id


def test_a_lost_private_key_is_named_and_rotated_away(tmp_path):
    first = keyring.create_key(tmp_path)
    keyring.private_path(tmp_path, first).unlink()
    for attempt in (lambda: keyring.check_can_sign(tmp_path),
                    lambda: keyring.signing_key(tmp_path).__enter__()):
        with pytest.raises(OperationError, match="escrowed key back"):
            attempt()
    _, new = keyring.rotate_key(tmp_path)
    keyring.check_can_sign(tmp_path)
    assert keyring.current_key(keyring.load_ring(tmp_path)).id == new.id


def test_validity_period():
    key = keyring.RingKey("SHA256:x", "Ed25519", "", "2025-01-01T00:00:00Z",
                          "2025-06-01T00:00:00.500000Z")
    assert key.validity_problem("2025-03-01T00:00:00.000001Z", "issued at") is None
    assert key.validity_problem("2025-06-01T00:00:00.500000Z", "issued at") is None
    assert "before key" in key.validity_problem("2024-12-31T23:59:59.999999Z", "issued at")
    assert "after key" in key.validity_problem("2025-06-01T00:00:00.500001Z", "issued at")
    assert "not a time" in key.validity_problem(42, "issued at")
    pinned = keyring.RingKey("SHA256:x", "Ed25519", "", "")
    assert pinned.validity_problem("1999-01-01T00:00:00Z", "issued at") is None


def test_the_key_of_bkp_before_the_ring_is_read_then_adopted(tmp_path):
    legacy = Ed25519PrivateKey.generate()
    path = tmp_path / keyring.LEGACY_KEY_FILE
    path.parent.mkdir(mode=0o700)
    path.write_bytes(legacy.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    path.chmod(0o600)
    before = sorted(p.name for p in path.parent.iterdir())
    [read] = keyring.load_ring(tmp_path)
    assert read.id == certs.key_fingerprint(legacy.public_key()) and read.current
    exported = keyring.export_ring(tmp_path)  # what the evidence copy takes off-site
    assert "PRIVATE" not in exported
    assert [k.id for k in keyring.parse_ring(exported, "copy")] == [read.id]
    assert sorted(p.name for p in path.parent.iterdir()) == before  # reading wrote nothing
    with keyring.signing_key(tmp_path) as signer:
        assert signer.created is None and signer.key.id == read.id
        assert signer.key.created_at == read.created_at and signer.key.certificate_pem
    assert not path.exists() and keyring.private_path(tmp_path, read).exists()


def test_a_damaged_ring_is_named(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / keyring.RING_FILE).write_text('{"format": "bkp-keyring/1", "keys": [{}]}')
    with pytest.raises(OperationError, match="damaged"):
        keyring.load_ring(tmp_path)


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
