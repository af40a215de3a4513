"""The decommission workflow through the real CLI: media register, sanitize, destroy,
certificates (tampering included), interruption, and the audit trail."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pypdf
import pytest

from tests import contract
from tests.conftest import require_tool

pytestmark = pytest.mark.e2e

MIB = 1 << 20


class Bench:
    """A BKP_HOME and the bkp CLI, as an operator at the bench uses them."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.home.mkdir(mode=0o700)

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BKP_", "RESTIC_"))}
        env.update(BKP_HOME=str(self.home), BKP_POLICIES=str(self.root / "policies"),
                   BKP_OPERATOR="Jeroen de Vries", BKP_ORGANIZATION="Hosting B.V.")
        env.update(extra)
        return env

    def bkp(self, *args: str, **env) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "bkp", *args], capture_output=True,
                              text=True, env=self.env(**env), timeout=300,
                              stdin=subprocess.DEVNULL)
        contract.check(list(args), done.stdout)
        return done

    def bkp_bytes(self, *args: str) -> bytes:
        """stdout as bytes (a PDF), asserting success."""
        done = subprocess.run([sys.executable, "-m", "bkp", *args], capture_output=True,
                              env=self.env(), timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def json(self, *args: str, expect: int = 0) -> dict:
        done = self.bkp(*args, "--json")
        assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
        return json.loads(done.stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "bkp", *args], env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.home / "catalog.db")
        conn.row_factory = sqlite3.Row
        return conn


@pytest.fixture
def bench(tmp_path) -> Bench:
    return Bench(tmp_path)


def image_file(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))
        fh.write(os.urandom(size % MIB))
    return path


def sparse_image(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def sha256_of(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sanitized(bench: Bench, serial: str, size: int = 8 * MIB, **register) -> tuple[dict, Path]:
    disk = image_file(bench.root / f"{serial}.img", size)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in register.items()]
    bench.json("media", "register", "--serial", serial, "--type", "hdd", *args)
    data = bench.json("sanitize", str(disk), "--serial", serial, "--yes", "--witness",
                      "Anne Bakker")
    return data, disk


# ---------------------------------------------------------------- the register

def test_register_list_show_and_export(bench):
    medium = bench.json("media", "register", "--serial", "S3Z2NB0K123456A", "--type", "ssd",
                        "--vendor", "Samsung", "--model", "860 EVO", "--capacity",
                        "500107862016", "--asset-tag", "HB-0042", "--tenant", "kliniek-noord",
                        "--host", "db3")["medium"]
    assert medium["serial"] == "S3Z2NB0K123456A" and medium["state"] == "registered"
    bench.json("media", "register", "--serial", "=HYPERLINK(1)", "--type", "usb",
               "--tenant", "other")
    again = bench.bkp("media", "register", "--serial", "S3Z2NB0K123456A", "--type", "ssd")
    assert again.returncode == 1 and "already registered" in again.stderr
    bad_type = bench.bkp("media", "register", "--serial", "X", "--type", "floppy")
    assert bad_type.returncode == 2

    listed = bench.json("media", "list")["media"]
    assert [m["serial"] for m in listed] == ["S3Z2NB0K123456A", "=HYPERLINK(1)"]
    assert all(m["state"] == "registered" for m in listed)
    assert [m["serial"] for m in bench.json("media", "list", "--tenant", "other")["media"]] \
        == ["=HYPERLINK(1)"]
    assert bench.json("media", "list", "--state", "sanitized")["media"] == []

    shown = bench.json("media", "show", "S3Z2NB0K123456A")["medium"]
    assert shown["asset_tag"] == "HB-0042" and shown["history"][0]["state"] == "registered"
    assert bench.bkp("media", "show", "NOPE").returncode == 1

    export = bench.bkp("media", "export")
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    assert rows[0]["serial"] == "S3Z2NB0K123456A" and rows[0]["capacity"] == "500107862016"
    assert rows[1]["serial"] == "'=HYPERLINK(1)"  # no formulas for the auditor's spreadsheet
    out = bench.root / "media.csv"
    assert bench.bkp("media", "export", "--output", str(out)).returncode == 0
    assert out.read_text() == export.stdout
    assert bench.bkp("media", "list", "--csv").stdout == export.stdout
    assert "media.register" in [e["action"] for e in bench.json("audit", "log")["events"]]


# ---------------------------------------------------------------- sanitize and certify

def test_sanitize_an_image_and_verify_its_certificate(bench):
    data, disk = sanitized(bench, "IMG-0001", size=8 * MIB + 512, tenant="kliniek-noord",
                           classification="normal", model="WD40EFRX")
    assert data["result"] == "erased" and data["method"] == "zero"
    assert data["verification"]["mode"] == "full"
    assert data["verification"]["hash"] == sha256_of(disk)  # CLI.md's fixed meaning
    assert data["bytes"] == 8 * MIB + 512 and disk.read_bytes() == bytes(8 * MIB + 512)
    record_id = str(data["record_id"])

    document = bench.json("certificate", record_id)
    payload = document["certificate"]
    assert payload["media"]["serial"] == "IMG-0001"
    assert payload["person_performing"] == {"name": "Jeroen de Vries",
                                            "organization": "Hosting B.V."}
    assert payload["validation"]["witness"] == "Anne Bakker"
    assert payload["verification"]["hash"] == data["verification"]["hash"]
    text = bench.bkp("certificate", record_id).stdout
    assert "CERTIFICATE OF SANITIZATION" in text and data["verification"]["hash"] in text

    pdf = bench.root / "certificate.pdf"
    done = bench.bkp("certificate", record_id, "--format", "pdf", "--output", str(pdf))
    assert done.returncode == 0, done.stderr
    page = pypdf.PdfReader(pdf).pages[0].extract_text()
    for needle in ("IMG-0001", "Jeroen de Vries", data["verification"]["hash"]):
        assert needle in page
    as_json = bench.root / "certificate.json"
    bench.bkp("certificate", record_id, "--format", "json", "--output", str(as_json))

    for path in (as_json, pdf, Path(data["certificate"]["json"]),
                 Path(data["certificate"]["pdf"])):
        report = bench.json("certificate", "verify", str(path))
        assert report["valid"] and report["audit"]["event_found"], (path, report)
        assert report["serial"] == "IMG-0001" and not report["problems"]
    assert bench.bkp("certificate", "verify", str(pdf)).returncode == 0

    key = bench.json("certificate", "public-key")
    assert key["key_fingerprint"] == document["signature"]["key_fingerprint"]
    assert key["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    [key_file] = (bench.home / "keys" / "private").iterdir()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.name == key["key_fingerprint"].removeprefix("SHA256:") + ".key"

    # an auditor elsewhere: only the pinned public key and the PDF, no catalog of their own
    pinned = bench.root / "pinned.pem"
    bench.bkp("certificate", "public-key", "--output", str(pinned))
    auditor_home = bench.root / "auditor"
    offline = bench.bkp("certificate", "verify", str(pdf), "--public-key", str(pinned),
                        "--no-audit", "--json", BKP_HOME=str(auditor_home))
    assert offline.returncode == 0 and json.loads(offline.stdout)["valid"], offline.stderr
    assert not auditor_home.exists()

    actions = [(e["action"], e["outcome"]) for e in bench.json("audit", "log")["events"]]
    assert actions == [("media.register", "registered"), ("sanitize", "started"),
                       ("sanitize", "erased"), ("certificate.key", "created"),
                       ("certificate.issue", "issued")]
    assert bench.json("audit", "verify")["valid"]
    assert bench.json("media", "list", "--state", "sanitized")["media"][0]["serial"] == \
        "IMG-0001"


def test_tampered_certificates_are_detected(bench, tmp_path):
    data, _ = sanitized(bench, "IMG-0002")
    original = Path(data["certificate"]["json"])
    document = json.loads(original.read_text())

    forged = json.loads(json.dumps(document))
    forged["certificate"]["media"]["serial"] = "SOMETHING-ELSE"
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(forged))
    report = bench.json("certificate", "verify", str(changed), expect=5)
    assert not report["valid"] and "does not match" in report["problems"][0]

    pdf_bytes = Path(data["certificate"]["pdf"]).read_bytes()
    digest = document["certificate"]["verification"]["hash"]
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    forged_pdf = tmp_path / "forged.pdf"
    forged_pdf.write_bytes(pdf_bytes.replace(digest.encode(), flipped.encode()))
    assert pdf_bytes != forged_pdf.read_bytes()
    assert bench.json("certificate", "verify", str(forged_pdf), expect=5)["valid"] is False

    # re-signed by another key: self-consistent, but not ours
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bkp.evidence import certificates as certs

    resigned = tmp_path / "resigned.json"
    resigned.write_bytes(certs.document_bytes(certs.sign(forged["certificate"],
                                                         Ed25519PrivateKey.generate())))
    report = bench.json("certificate", "verify", str(resigned), expect=5)
    assert "not by a trusted key" in report["problems"][0]

    # an auditor pinning another key rejects even the genuine certificate
    other_key = tmp_path / "other.pem"
    other_key.write_text(certs.public_key_pem(Ed25519PrivateKey.generate().public_key()))
    bench.json("certificate", "verify", str(original), "--public-key", str(other_key),
               expect=5)
    pinned = tmp_path / "ours.pem"
    bench.bkp("certificate", "public-key", "--output", str(pinned))
    assert bench.json("certificate", "verify", str(original), "--public-key",
                      str(pinned))["valid"]


def test_a_tampered_audit_trail_fails_certificate_verification(bench):
    data, _ = sanitized(bench, "IMG-0003")
    certificate = data["certificate"]["json"]
    with bench.db() as conn:
        conn.execute("update audit_log set operator = 'mallory' where action = 'sanitize' "
                     "and outcome = 'started'")
    report = bench.json("certificate", "verify", certificate, expect=5)
    assert report["audit"]["chain_valid"] is False
    assert any("changed" in p for p in report["problems"])
    # with the trail out of the picture the signature alone still holds
    assert bench.json("certificate", "verify", certificate, "--no-audit")["valid"]


def test_a_certificate_whose_event_was_removed_fails(bench):
    data, _ = sanitized(bench, "IMG-0004")
    with bench.db() as conn:
        conn.execute("delete from audit_log")
    report = bench.json("certificate", "verify", data["certificate"]["json"], expect=5)
    assert report["audit"]["event_found"] is False


# ---------------------------------------------------------------- refusals via the CLI

def test_unattended_without_yes_is_refused_and_untouched(bench):
    disk = image_file(bench.root / "disk.img", 4 * MIB)
    before = sha256_of(disk)
    bench.json("media", "register", "--serial", "IMG-0005", "--type", "hdd")
    done = bench.bkp("sanitize", str(disk), "--serial", "IMG-0005")
    assert done.returncode == 4 and "not confirmed" in done.stderr
    assert sha256_of(disk) == before
    unregistered = bench.bkp("sanitize", str(disk), "--serial", "IMG-9999", "--yes")
    assert unregistered.returncode == 4 and "not in the media register" in unregistered.stderr
    assert sha256_of(disk) == before


def test_mounted_loop_device_is_refused_through_the_cli(bench):
    for tool in ("losetup", "mkfs.ext4", "mount"):
        require_tool(tool)
    backing = sparse_image(bench.root / "loop.img", 32 * MIB)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)],
                            capture_output=True, text=True, check=True).stdout.strip()
    point = bench.root / "mnt"
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True)
        point.mkdir()
        subprocess.run(["mount", device, str(point)], check=True)
        (point / "data.txt").write_text("patient data")
        os.sync()
        before = sha256_of(backing)
        bench.json("media", "register", "--serial", "LOOP-0001", "--type", "hdd")
        done = bench.bkp("sanitize", device, "--serial", "LOOP-0001", "--yes")
        assert done.returncode == 4 and f"mounted at {point}" in done.stderr
        assert sha256_of(backing) == before
        hardware = bench.bkp("sanitize", device, "--serial", "LOOP-0001", "--yes",
                             "--method", "nvme-sanitize")
        assert hardware.returncode == 4
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)
        subprocess.run(["losetup", "--detach", device], capture_output=True)


# ---------------------------------------------------------------- destruction

def test_destroy_with_evidence(bench, tmp_path):
    bench.json("media", "register", "--serial", "WD-DESTROYED", "--type", "hdd",
               "--tenant", "kliniek-noord")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(os.urandom(5000))
    receipt = tmp_path / "service-certificate.pdf"
    receipt.write_bytes(b"%PDF-1.4 destruction service certificate")
    data = bench.json("destroy", "--serial", "WD-DESTROYED", "--method", "shred",
                      "--witness", "Anne Bakker", "--evidence", str(receipt), "--evidence",
                      str(photo))
    listing = subprocess.run(["sha256sum", "photo.jpg", "service-certificate.pdf"],
                             cwd=tmp_path, capture_output=True, check=True).stdout
    assert data["verification"] == {
        "mode": "evidence", "hash": hashlib.sha256(listing).hexdigest(),
        "evidence": [{"name": "photo.jpg", "sha256": sha256_of(photo)},
                     {"name": "service-certificate.pdf", "sha256": sha256_of(receipt)}]}
    assert (bench.home / "evidence" / str(data["record_id"]) / "photo.jpg").read_bytes() == \
        photo.read_bytes()
    report = bench.json("certificate", "verify", data["certificate"]["pdf"])
    assert report["valid"] and report["kind"] == "destruction"
    payload = bench.json("certificate", str(data["record_id"]))["certificate"]
    assert payload["sanitization"]["category"] == "Destroy"
    assert payload["destination_after"] == "destroyed"
    assert bench.json("media", "show", "WD-DESTROYED")["medium"]["state"] == "destroyed"

    single = bench.json("media", "register", "--serial", "ONE-PHOTO", "--type", "usb")
    assert single["medium"]["state"] == "registered"
    one = bench.json("destroy", "--serial", "ONE-PHOTO", "--method", "disintegrate",
                     "--witness", "Anne Bakker", "--evidence", str(photo))
    assert one["verification"]["hash"] == sha256_of(photo)

    again = bench.bkp("destroy", "--serial", "WD-DESTROYED", "--method", "shred",
                      "--witness", "Anne Bakker")
    assert again.returncode == 4 and "already recorded destroyed" in again.stderr
    disk = image_file(tmp_path / "disk.img", MIB)
    after = bench.bkp("sanitize", str(disk), "--serial", "WD-DESTROYED", "--yes")
    assert after.returncode == 4
    assert bench.bkp("destroy", "--serial", "X", "--method", "shred").returncode == 2


# ---------------------------------------------------------------- interruption

def wait_for_running(bench: Bench, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bkp exited early: {proc.communicate()}")
        if (bench.home / "catalog.db").exists():
            with bench.db() as conn:
                tables = {r[0] for r in conn.execute(
                    "select name from sqlite_master where type = 'table'")}
                if "sanitizations" in tables and conn.execute(
                        "select count(*) from sanitizations where result = 'running'"
                ).fetchone()[0]:
                    time.sleep(0.3)  # well into the first pass
                    return
        time.sleep(0.02)
    pytest.fail("the sanitization never started")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_wipe_is_recorded_aborted(bench, sig):
    disk = sparse_image(bench.root / "big.img", 2048 * MIB)
    bench.json("media", "register", "--serial", "BIG-0001", "--type", "hdd")
    proc = bench.popen("sanitize", str(disk), "--serial", "BIG-0001", "--yes", "--method",
                       "dod3", "--json")
    wait_for_running(bench, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    data = json.loads(out)
    assert data["result"] == "aborted" and data["certificate"] is None
    assert "interrupted" in data["error"]
    assert bench.json("media", "show", "BIG-0001")["medium"]["state"] == "aborted"
    outcomes = [e["outcome"] for e in bench.json("audit", "log")["events"]
                if e["action"] == "sanitize"]
    assert outcomes == ["started", "aborted"]
    missing = bench.bkp("certificate", str(data["record_id"]))
    assert missing.returncode == 1 and "no certificate" in missing.stderr


def test_a_killed_wipe_reads_as_aborted_afterwards(bench):
    disk = sparse_image(bench.root / "big.img", 2048 * MIB)
    bench.json("media", "register", "--serial", "BIG-0002", "--type", "hdd")
    proc = bench.popen("sanitize", str(disk), "--serial", "BIG-0002", "--yes", "--method",
                       "dod3")
    wait_for_running(bench, proc)
    proc.kill()
    proc.communicate(timeout=60)
    # A read shows the dead wipe as aborted at once, and writes nothing...
    listing = bench.bkp("media", "list", "--json")
    assert json.loads(listing.stdout)["media"][0]["state"] == "aborted"
    with bench.db() as conn:
        row = conn.execute("select result, error from sanitizations").fetchone()
    assert row["result"] == "running"
    # ...and the next command that acts records it, with its audit event.
    acting = bench.bkp("media", "register", "--serial", "OTHER-1", "--type", "usb")
    assert acting.returncode == 0 and "never finished" in acting.stderr
    with bench.db() as conn:
        row = conn.execute("select result, error from sanitizations").fetchone()
    assert row["result"] == "aborted" and "stopped before the wipe finished" in row["error"]
    assert bench.json("audit", "verify")["valid"]


# ---------------------------------------------------------------- interactive confirmation

def confirm_on_a_terminal(bench: Bench, disk: Path, serial: str, typed: str):
    """Run sanitize with a terminal on stdin, as an operator at the bench does."""
    import pty

    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bkp", "sanitize", str(disk),
                                 "--serial", serial, "--json"], env=bench.env(),
                                stdin=terminal, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.write(controller, typed.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    return proc.returncode, out, err


def test_the_operator_confirms_by_typing_the_serial(bench):
    disk = image_file(bench.root / "disk.img", 4 * MIB)
    before = sha256_of(disk)
    bench.json("media", "register", "--serial", "TYPED-0001", "--type", "ssd")
    code, _, err = confirm_on_a_terminal(bench, disk, "TYPED-0001", "TYPED-0002")
    assert code == 4 and "not confirmed" in err and "About to ERASE" in err
    assert sha256_of(disk) == before
    code, out, err = confirm_on_a_terminal(bench, disk, "TYPED-0001", "typed-0001")
    assert code == 0, err
    assert json.loads(out)["result"] == "erased" and disk.read_bytes() == bytes(4 * MIB)
