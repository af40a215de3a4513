"""Certificates through the real CLI: PDFs signed as PDFs (any change of the file is exit 5
with a sentence), the key ring (rotation, validity, lost keys), and reads that create
nothing."""

from __future__ import annotations

import io
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pypdf
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pypdf.generic import DecodedStreamObject, NameObject

from bkp.evidence import certificates as certs
from bkp.evidence import pdf_signature
from tests.e2e.test_media_cli import MIB, Bench, image_file, sanitized, sha256_of
from tests.unit.test_certificates import with_annotation

pytestmark = pytest.mark.e2e


@pytest.fixture
def bench(tmp_path) -> Bench:
    return Bench(tmp_path)


def verify(bench: Bench, path: Path, *args: str, expect: int) -> dict:
    return bench.json("certificate", "verify", str(path), *args, expect=expect)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def page_text(data: bytes) -> str:
    return pypdf.PdfReader(io.BytesIO(data)).pages[0].extract_text()


# ---------------------------------------------------------------- PDFs signed as PDFs

def test_a_fresh_pdf_verifies_and_its_hash_is_in_the_trail(bench):
    data, _ = sanitized(bench, "PDF-0001")
    issued = Path(data["certificate"]["pdf"])
    reader = pypdf.PdfReader(issued)
    assert len(reader.pages) == 1
    for needle in ("PDF-0001", "Jeroen de Vries", "Anne Bakker", data["verification"]["hash"]):
        assert needle in reader.pages[0].extract_text(), needle

    report = verify(bench, issued, expect=0)
    assert report["valid"] and report["problems"] == []
    assert report["pdf"]["signed"] and report["pdf"]["intact"] and report["pdf"]["whole_file"]
    assert report["pdf"]["key_fingerprint"] == report["key_fingerprint"]
    assert report["key"]["current"] and report["key"]["source"] == "key ring"
    assert report["file"]["as_issued"] and report["audit"]["event_found"]

    issue = next(e for e in bench.json("audit", "log")["events"]
                 if e["action"] == "certificate.issue")
    assert issue["details"]["pdf_sha256"] == sha256_of(issued) == data["certificate"][
        "pdf_sha256"]
    assert issue["details"]["json_sha256"] == sha256_of(data["certificate"]["json"])

    # `certificate RECORD_ID --format pdf` serves the very file issued, to a file or stdout
    served = bench.root / "served.pdf"
    record = str(data["record_id"])
    assert bench.bkp("certificate", record, "--format", "pdf", "-o", str(served)).returncode == 0
    assert served.read_bytes() == issued.read_bytes()
    assert verify(bench, served, expect=0)["file"]["as_issued"]
    piped = bench.bkp_bytes("certificate", record, "--format", "pdf")
    assert piped == issued.read_bytes()

    # JSON certificates keep working, issued or rendered again
    assert verify(bench, Path(data["certificate"]["json"]), expect=0)["pdf"] is None
    rendered = bench.root / "again.json"
    bench.bkp("certificate", record, "--format", "json", "-o", str(rendered))
    assert verify(bench, rendered, expect=0)["valid"]
    human = bench.bkp("certificate", "verify", str(issued))
    assert human.returncode == 0 and "PDF signature intact over the whole file" in human.stdout


def test_any_change_of_the_pdf_is_exit_5_with_a_sentence(bench, tmp_path):
    data, _ = sanitized(bench, "PDF-0002")
    issued = Path(data["certificate"]["pdf"])
    original = issued.read_bytes()
    reader = pypdf.PdfReader(io.BytesIO(original))
    content_ref = reader.pages[0].raw_get("/Contents")

    # one byte of the page's content stream
    start = original.index(f"\n{content_ref.idnum} 0 obj".encode())
    flipped = bytearray(original)
    flipped[original.index(b"stream", start) + 20] ^= 0x01
    report = verify(bench, write(tmp_path / "flipped.pdf", bytes(flipped)), expect=5)
    assert "the PDF was changed after it was signed" in report["problems"][0]
    assert report["pdf"]["intact"] is False
    assert any("is not the PDF issued as certificate" in p for p in report["problems"])

    # a text on the page edited with pypdf and saved
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(original)))
    _replace_page_text(writer, b"Anne Bakker", b"Mallory Fox")
    edited = _written(writer)
    assert "Mallory Fox" in page_text(edited) and "Anne Bakker" not in page_text(edited)
    report = verify(bench, write(tmp_path / "edited.pdf", edited), expect=5)
    assert "the PDF was changed after it was signed" in report["problems"][0]

    # the same edit saved as an incremental update (how editors keep signatures "intact")
    writer = pypdf.PdfWriter(io.BytesIO(original), incremental=True)
    _replace_page_text(writer, b"Anne Bakker", b"Mallory Fox")
    appended = _written(writer)
    assert appended.startswith(original) and "Mallory Fox" in page_text(appended)
    report = verify(bench, write(tmp_path / "appended.pdf", appended), expect=5)
    assert "incremental update after its signature" in report["problems"][0]
    assert report["pdf"]["intact"] and report["pdf"]["whole_file"] is False

    # an annotation added with pyHanko's incremental writer: the signed bytes are intact
    annotated = with_annotation(original)
    assert "/Annots" in pypdf.PdfReader(io.BytesIO(annotated)).pages[0]
    human = bench.bkp("certificate", "verify", str(write(tmp_path / "note.pdf", annotated)))
    assert human.returncode == 5 and "INVALID" in human.stdout
    assert "1 incremental update after its signature" in human.stdout
    assert "Traceback" not in human.stderr

    # not a PDF bkp can read at all
    report = verify(bench, write(tmp_path / "cut.pdf", original[: len(original) // 2]),
                    expect=5)
    assert report["valid"] is False and report["problems"]

    assert issued.read_bytes() == original
    assert verify(bench, issued, expect=0)["valid"]


def test_a_pdf_signed_by_another_key_is_refused(bench, tmp_path):
    data, _ = sanitized(bench, "PDF-0003")
    document = json.loads(Path(data["certificate"]["json"]).read_text())
    mallory = Ed25519PrivateKey.generate()
    carrier = pdf_signature.self_signed_certificate(
        mallory, datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))

    # the genuine signed JSON inside, the page re-signed by a key of Mallory's own
    resigned = pdf_signature.sign_pdf(certs.render_pdf(document), mallory, carrier, "forged")
    report = verify(bench, write(tmp_path / "resigned.pdf", resigned), expect=5)
    assert report["pdf"]["intact"] and report["pdf"]["key_fingerprint"] is None
    assert any(f"signed by {certs.key_fingerprint(mallory.public_key())}, not by a trusted "
               f"key (this installation's key ring" in p for p in report["problems"])

    # and wholly Mallory's: changed content, JSON and PDF signed by her key
    forged = json.loads(json.dumps(document))
    forged["certificate"]["sanitization"]["result"] = "erased"
    forged["certificate"]["media"]["serial"] = "SOMETHING-ELSE"
    forged = certs.sign(forged["certificate"], mallory)
    pdf = pdf_signature.sign_pdf(certs.render_pdf(forged), mallory, carrier, "forged")
    report = verify(bench, write(tmp_path / "forged.pdf", pdf), expect=5)
    assert any("not by a trusted key" in p for p in report["problems"])


def test_the_served_pdf_must_be_the_issued_one(bench):
    data, _ = sanitized(bench, "PDF-0004")
    issued = Path(data["certificate"]["pdf"])
    record = str(data["record_id"])
    out = bench.root / "out.pdf"
    issued.write_bytes(issued.read_bytes() + b"\n% changed\n")
    changed = bench.bkp("certificate", record, "--format", "pdf", "-o", str(out))
    assert changed.returncode == 5 and "was changed after it was issued" in changed.stderr
    assert not out.exists()
    issued.unlink()
    missing = bench.bkp("certificate", record, "--format", "pdf", "-o", str(out))
    assert missing.returncode == 1 and "is missing" in missing.stderr
    assert "Traceback" not in changed.stderr + missing.stderr


def test_hostile_files_are_invalid_with_sentences_not_tracebacks(bench, tmp_path):
    bench.json("certificate", "key", "create")
    signature = {"algorithm": "Ed25519", "key_fingerprint": ["x"], "value": 7}
    for name, content in (
            ("types.json", json.dumps({"format": "bkp-certificate/1", "signature": signature,
                                       "certificate": {"media": "x", "verification": [1],
                                                       "issued_at": 5}}).encode()),
            ("list.json", b"[1, 2]"), ("binary.json", b"\xff\xfe\x00"),
            ("broken.pdf", b"%PDF-1.7\n1 0 obj<<>>endobj trailer<</Root 1 0 R>>\n%%EOF"),
            ("empty.pdf", b"%PDF-")):
        done = bench.bkp("certificate", "verify", str(write(tmp_path / name, content)))
        assert done.returncode == 5, (name, done.stdout, done.stderr)
        assert "INVALID" in done.stdout and "Traceback" not in done.stderr, name


# ---------------------------------------------------------------- the key ring

def test_reads_on_a_fresh_home_create_nothing(bench, tmp_path):
    (tmp_path / "issuer").mkdir()
    elsewhere = Bench(tmp_path / "issuer")
    data, _ = sanitized(elsewhere, "RING-0001")
    certificate = Path(data["certificate"]["json"])
    assert files_under(bench.home) == []
    for args in (("certificate", "public-key"), ("certificate", "public-key", "--all"),
                 ("certificate", "public-key", "--json"),
                 ("certificate", "verify", str(certificate)),
                 ("certificate", "verify", str(certificate), "--no-audit", "--json")):
        done = bench.bkp(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        if "--json" in args:
            message = json.loads(done.stdout)["error"]
        else:
            assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
            message = done.stderr
        assert "there is no certificate signing key" in message
    assert files_under(bench.home) == []


def test_rotation_keeps_old_certificates_valid_and_signs_new_ones_with_the_new_key(
        bench, tmp_path):
    first = bench.json("certificate", "key", "create")["key"]
    assert first["current"] and first["certificate_pem"].startswith("-----BEGIN CERTIFICATE")
    again = bench.bkp("certificate", "key", "create")
    assert again.returncode == 1 and "key rotate" in again.stderr
    before, _ = sanitized(bench, "RING-0002")
    assert before["certificate"]["key_fingerprint"] == first["id"]

    rotated = bench.json("certificate", "key", "rotate")
    assert rotated["retired"]["id"] == first["id"] and rotated["retired"]["not_after"]
    second = rotated["key"]
    assert second["current"] and second["id"] != first["id"]

    for path in (before["certificate"]["json"], before["certificate"]["pdf"]):
        report = verify(bench, Path(path), expect=0)
        assert report["key"]["id"] == first["id"] and report["key"]["current"] is False
        assert report["key"]["not_after"] == rotated["retired"]["not_after"]
    human = bench.bkp("certificate", "verify", before["certificate"]["pdf"])
    assert f"retired {rotated['retired']['not_after']}" in human.stdout

    after, _ = sanitized(bench, "RING-0003")
    assert after["certificate"]["key_fingerprint"] == second["id"]
    report = verify(bench, Path(after["certificate"]["pdf"]), expect=0)
    assert report["key"]["id"] == report["pdf"]["key_fingerprint"] == second["id"]

    listed = bench.json("certificate", "public-key", "--all")["keys"]
    assert [(k["id"], k["current"]) for k in listed] == [(first["id"], False),
                                                        (second["id"], True)]
    assert bench.json("certificate", "public-key")["key_fingerprint"] == second["id"]
    keys = bench.home / "keys"
    assert [p.name for p in (keys / "private").iterdir()] == [
        second["id"].removeprefix("SHA256:") + ".key"]
    assert "PRIVATE" not in (keys / "keyring.json").read_text()
    events = [(e["action"], e["outcome"]) for e in bench.json("audit", "log")["events"]
              if e["action"] == "certificate.key"]
    assert events == [("certificate.key", "created"), ("certificate.key", "rotated")]

    # an auditor with the pinned keys (PEM of --all, or a copy of the ring), no catalog
    pinned = tmp_path / "keys.pem"
    bench.bkp("certificate", "public-key", "--all", "--output", str(pinned))
    ring_copy = tmp_path / "keyring.json"
    shutil.copy(keys / "keyring.json", ring_copy)
    auditor = tmp_path / "auditor"
    for key_file in (pinned, ring_copy):
        for path in (before["certificate"]["pdf"], after["certificate"]["json"]):
            done = bench.bkp("certificate", "verify", path, "--public-key", str(key_file),
                             "--no-audit", "--json", BKP_HOME=str(auditor))
            assert done.returncode == 0 and json.loads(done.stdout)["valid"], done.stdout
    assert not auditor.exists()
    # an old certificate's page signed again with the new key: both keys trusted, but bkp
    # never signs a PDF and the certificate in it with two keys
    new_private = serialization.load_pem_private_key(
        (keys / "private" / (second["id"].removeprefix("SHA256:") + ".key")).read_bytes(),
        password=None)
    document = json.loads(Path(before["certificate"]["json"]).read_text())
    mixed = pdf_signature.sign_pdf(certs.render_pdf(document), new_private,
                                   second["certificate_pem"], "again")
    report = verify(bench, write(tmp_path / "mixed.pdf", mixed), expect=5)
    assert any("bkp signs both with one key" in p for p in report["problems"])

    only_new = tmp_path / "new.pem"
    bench.bkp("certificate", "public-key", "--output", str(only_new))
    verify(bench, Path(before["certificate"]["json"]), "--public-key", str(only_new),
           "--no-audit", expect=5)


def test_a_certificate_outside_its_keys_validity_is_invalid(bench, tmp_path):
    first = bench.json("certificate", "key", "create")["key"]
    kept = (bench.home / "keys" / "private" /
            (first["id"].removeprefix("SHA256:") + ".key")).read_bytes()
    data, _ = sanitized(bench, "RING-0004")
    rotated = bench.json("certificate", "key", "rotate")
    old_key = serialization.load_pem_private_key(kept, password=None)
    document = json.loads(Path(data["certificate"]["json"]).read_text())

    # whoever kept the retired private key signs "new" certificates with it
    late = dict(document["certificate"], issued_at=datetime.now(UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"))
    report = verify(bench, write(tmp_path / "late.json",
                                 certs.document_bytes(certs.sign(late, old_key))), expect=5)
    assert any(f"after key {first['id']} was retired ({rotated['retired']['not_after']})"
               in p for p in report["problems"]), report["problems"]
    early = dict(document["certificate"], issued_at="2001-01-01T00:00:00.000000Z")
    report = verify(bench, write(tmp_path / "early.json",
                                 certs.document_bytes(certs.sign(early, old_key))), expect=5)
    assert any("before key" in p for p in report["problems"])

    # the genuine certificate's page signed again with the retired key, today. A PDF
    # signing time has whole seconds: wait (at most a second) until "now" can no longer
    # fall inside the second the key was retired in.
    retired_at = datetime.fromisoformat(rotated["retired"]["not_after"])
    while datetime.now(UTC) < retired_at.replace(microsecond=0) + timedelta(seconds=1):
        time.sleep(0.02)
    carrier = next(k for k in bench.json("certificate", "public-key", "--all")["keys"]
                   if k["id"] == first["id"])["certificate_pem"]
    pdf = pdf_signature.sign_pdf(certs.render_pdf(document), old_key, carrier, "late")
    report = verify(bench, write(tmp_path / "late.pdf", pdf), expect=5)
    assert any(p.startswith("the PDF was signed at") and "was retired" in p
               for p in report["problems"])
    assert verify(bench, Path(data["certificate"]["pdf"]), expect=0)["valid"]


def test_a_lost_private_key_stops_wipes_before_they_start_and_is_rotated_away(bench):
    data, _ = sanitized(bench, "RING-0005")
    [private] = (bench.home / "keys" / "private").iterdir()
    private.unlink()

    disk = image_file(bench.root / "next.img", 2 * MIB)
    content = disk.read_bytes()
    bench.json("media", "register", "--serial", "RING-0006", "--type", "hdd")
    refused = bench.bkp("sanitize", str(disk), "--serial", "RING-0006", "--yes")
    assert refused.returncode == 1 and "escrowed key back" in refused.stderr
    assert disk.read_bytes() == content  # nothing was wiped that could not be certified
    assert bench.bkp("certificate", "public-key").returncode == 0  # the public half stays

    bench.json("certificate", "key", "rotate")
    done = bench.json("sanitize", str(disk), "--serial", "RING-0006", "--yes")
    assert done["certificate"]["key_fingerprint"] != data["certificate"]["key_fingerprint"]
    assert verify(bench, Path(data["certificate"]["pdf"]), expect=0)["valid"]
    assert verify(bench, Path(done["certificate"]["pdf"]), expect=0)["valid"]


# ---------------------------------------------------------------- helpers

def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _replace_page_text(writer: pypdf.PdfWriter, old: bytes, new: bytes) -> None:
    page = writer.pages[0]
    content = page.get_contents().get_data()
    assert old in content, "the page's text is not where the test looks for it"
    stream = DecodedStreamObject()
    stream.set_data(content.replace(old, new))
    page[NameObject("/Contents")] = writer._add_object(stream)


def _written(writer: pypdf.PdfWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
