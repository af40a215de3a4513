"""Attacks on the NIST SP 800-88 Rev. 2 media workflow (issue 15): a drive or tool that lies
about its erase, a validator who is the performer under another spelling, certificates held
up after the validation said no, and the batch and register an auditor is handed.

The drive's own erase cannot run on a loop device, so the loop device is presented as an
NVMe namespace and a stand-in `nvme` on PATH answers for the drive (as in
tests/integration/test_drive_evidence.py); everything else is real: the loop device, the
markers, the runner, the record, the certificate, and the CLI as a subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from bkp import catalog as cat
from bkp.media import devices
from bkp.media import sanitize as sanitize_module
from bkp.media.sanitize import SanitizeRequest, sanitize
from tests.e2e.test_media_cli import Bench
from tests.integration.test_sanitize import MIB, LoopDevices, make_context, register

pytestmark = pytest.mark.integration

BLOCK = 4096
PATIENT_BLOCK = (b"BSN 123456782 medical record of a patient; " * 100)[:BLOCK]

# A drive whose firmware erases only what was written since it was last powered up (its
# write journal), or a tool that does the same: it knows the medium's old content and
# zeros every block that no longer holds it. That is exactly bkp's markers, and nothing of
# the tenant's data. The sanitize log then says completed, for the action asked.
FAKE_NVME = r'''
import json, os, sys
state = os.environ["FAKE_DRIVE_STATE"]
args = sys.argv[1:]
open(os.path.join(state, "calls"), "a").write(" ".join(args) + "\n")
def read(name, default=""):
    try:
        return open(os.path.join(state, name)).read().strip()
    except FileNotFoundError:
        return default
if args[:1] == ["version"]:
    print("nvme version 2.3-fake"); sys.exit(0)
if args[:1] == ["id-ctrl"]:
    print(json.dumps({"oacs": 2, "fna": 0, "sanicap": 2, "nn": 1})); sys.exit(0)
if args[:1] == ["list-ns"]:
    print(json.dumps({"nsid_list": [{"nsid": 1}]})); sys.exit(0)
if args[:1] == ["sanitize"]:
    open(os.path.join(state, "sanitized"), "w").write("yes")
    if read("erase") == "journal":
        old = bytes.fromhex(read("old_block"))
        fd = os.open(read("device"), os.O_RDWR)
        size = os.lseek(fd, 0, os.SEEK_END)
        for offset in range(0, size, 4096):
            if os.pread(fd, 4096, offset) != old:
                os.pwrite(fd, bytes(4096), offset)
        os.fsync(fd); os.close(fd)
    sys.exit(0)
if args[:1] == ["sanitize-log"]:
    log = read("log")
    if log == "garbage":
        sys.stdout.buffer.write(b"\xff\xfe sanitize log: \x00\x9c<<not json>>\n"); sys.exit(0)
    if log == "never":
        print(json.dumps({"nvme0": {"sprog": 0, "sstat": 0, "scdw10": 0}})); sys.exit(0)
    done = read("sanitized") == "yes"
    print(json.dumps({"nvme0": {"sprog": 65535, "sstat": 1 if done else 0, "scdw10": 2}}))
    sys.exit(0)
print(f"fake nvme: unexpected {args}", file=sys.stderr); sys.exit(2)
'''


@pytest.fixture
def ctx(tmp_path):
    context = make_context(tmp_path)
    yield context
    context.catalog.close()


@pytest.fixture
def loops(tmp_path):
    made = LoopDevices(tmp_path)
    yield made
    made.cleanup()


class LyingDrive:
    def __init__(self, root: Path, monkeypatch):
        self.state = root / "drive-state"
        self.state.mkdir()
        bin_dir = root / "fake-bin"
        bin_dir.mkdir()
        tool = bin_dir / "nvme"
        tool.write_text(f"#!{sys.executable}\n{FAKE_NVME}")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_DRIVE_STATE", str(self.state))
        real_transport = devices.transport_of
        monkeypatch.setattr(devices, "transport_of", lambda name, sysdir: "nvme"
                            if name.startswith("loop") else real_transport(name, sysdir))
        monkeypatch.setattr(devices, "nvme_controller", lambda path: "/dev/nvme-fake0")
        monkeypatch.setattr(devices, "nvme_namespace_id", lambda path: 1)

    def set(self, **values) -> None:
        for name, value in values.items():
            (self.state / name).write_text(str(value))

    def calls(self, verb: str) -> list[str]:
        path = self.state / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [c for c in lines if c.split(" ", 1)[0] == verb]


def patient_disk(loops, tmp_path, size=16 * MIB) -> str:
    backing = tmp_path / "patients.img"
    backing.write_bytes(PATIENT_BLOCK * (size // BLOCK))
    return loops.attach(backing)


def nvme_request(device, serial) -> SanitizeRequest:
    return SanitizeRequest(device=str(device), serial=serial, confirmed=True,
                           method="nvme-sanitize")


def read_device(device: str) -> bytes:
    with open(device, "rb") as fh:
        return fh.read()


# ---------------------------------------------------------------- drives that lie

def test_a_drive_that_erases_only_the_markers_is_not_certified(ctx, tmp_path, monkeypatch,
                                                               loops):
    """Every marker gone, the log says completed for the action asked, and every block of
    the patients' data still there: that is no erasure."""
    drive = LyingDrive(tmp_path, monkeypatch)
    device = patient_disk(loops, tmp_path)
    drive.set(erase="journal", old_block=PATIENT_BLOCK.hex(), device=device)
    register(ctx, "JOURNAL-0001")

    outcome = sanitize(ctx, nvme_request(device, "JOURNAL-0001"))

    assert read_device(device).count(PATIENT_BLOCK) > 3000  # the data is still there
    assert outcome.exit_code == 5, outcome.data
    assert outcome.data["result"] == "failed"
    assert "still hold what they held before the erase" in outcome.data["error"]
    assert cat.get_medium(ctx.catalog, "JOURNAL-0001")["state"] == "failed"


def test_a_sanitize_log_of_garbage_ends_in_one_clear_failure(ctx, tmp_path, monkeypatch,
                                                             loops):
    drive = LyingDrive(tmp_path, monkeypatch)
    device = patient_disk(loops, tmp_path)
    drive.set(log="garbage", device=device)
    monkeypatch.setattr(sanitize_module, "POLL_INTERVAL_S", 0)
    register(ctx, "GARBAGE-0001")

    outcome = sanitize(ctx, nvme_request(device, "GARBAGE-0001"))  # no JSONDecodeError

    assert outcome.exit_code == 1, outcome.data
    assert outcome.data["result"] == "failed" and outcome.data["certificate"] is None
    assert "sanitize log" in outcome.data["error"]
    assert len(drive.calls("sanitize-log")) <= 10


def test_a_sanitize_the_drive_never_starts_does_not_keep_bkp_polling(ctx, tmp_path,
                                                                     monkeypatch, loops):
    """The command said success, and the log keeps saying "never sanitized": the drive
    ignored it. Polling ends after a few answers, not after a day."""
    drive = LyingDrive(tmp_path, monkeypatch)
    device = patient_disk(loops, tmp_path)
    drive.set(log="never", device=device)
    monkeypatch.setattr(sanitize_module, "POLL_INTERVAL_S", 0)
    monkeypatch.setattr(sanitize_module, "HARDWARE_TIMEOUT_S", 60)  # the old bound, shortened
    register(ctx, "IGNORED-0001")

    outcome = sanitize(ctx, nvme_request(device, "IGNORED-0001"))

    assert outcome.exit_code == 1, outcome.data
    assert outcome.data["result"] == "failed" and outcome.data["certificate"] is None
    assert "never started" in outcome.data["error"]
    assert len(drive.calls("sanitize-log")) <= 10


# ---------------------------------------------------------------- validation

@pytest.fixture
def bench(tmp_path) -> Bench:
    return Bench(tmp_path)


def wiped(bench: Bench, serial: str, *register: str, **options: str) -> dict:
    disk = bench.root / f"{serial}.img"
    disk.write_bytes(os.urandom(2 * MIB))
    bench.json("media", "register", "--serial", serial, "--type", "hdd", *register)
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return bench.json("sanitize", str(disk), "--serial", serial, "--yes", "--no-progress",
                      *extra)


@pytest.mark.parametrize("lookalike", ["J\u0435roen de Vries",  # Cyrillic e
                                       "\u0408eroen de Vries",  # Cyrillic Je
                                       "Jeroen de Vri\u0435s",
                                       "JEROEN DE VRIE\u0405"])  # Cyrillic Dze
def test_a_lookalike_of_the_performers_name_cannot_validate(bench, lookalike):
    """"a name that reads as the performer's is the performer": letters of another script
    that look the same read the same on a certificate."""
    record = wiped(bench, "LOOK-0001")["record_id"]
    done = bench.bkp("certificate", "validate", str(record), "--validator", lookalike,
                     "--title", "Security officer", "--approve")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "cannot validate" in done.stderr and "Traceback" not in done.stderr
    assert bench.json("media", "list")["media"][0]["validation"] == "awaiting"
    # a different person still may
    assert bench.json("certificate", "validate", str(record), "--validator", "Anne Bakker",
                      "--title", "Security officer", "--approve")["status"] == "validated"


def test_the_certificate_of_a_rejected_erasure_no_longer_verifies(bench):
    """After the validator rejected the erasure, the certificate issued before stays a
    signed file with "Result: erased" on it; verify must not call it VALID and "not
    validated" while the audit trail holds the rejection."""
    record = wiped(bench, "REJ-0001")["record_id"]
    before = sorted((bench.home / "certificates").glob(f"certificate-*-record-{record}.*"))
    assert len(before) == 2  # its JSON and PDF
    bench.json("certificate", "validate", str(record), "--validator", "Anne Bakker",
               "--title", "Security officer", "--reject", "--comment", "re-read mismatch")
    for path in before:
        done = bench.bkp("certificate", "verify", str(path), "--json")
        report = json.loads(done.stdout)
        assert done.returncode == 5, (path.name, report)
        assert report["validation"]["state"] == "rejected"
        assert any("rejected" in p for p in report["problems"])
    latest = [p for p in (bench.home / "certificates").glob(f"*-record-{record}.*")
              if p not in before]
    for path in latest:  # the one stating the rejection is a true statement
        report = json.loads(bench.bkp("certificate", "verify", str(path), "--json").stdout)
        assert report["valid"] and report["validation"]["state"] == "rejected"


# ---------------------------------------------------------------- the batch summary

def test_an_intact_batch_summary_verifies_and_an_edited_one_is_exit_5(bench, tmp_path):
    """`certificate batch` signs its sheet; `certificate verify` said INVALID (5) of every
    batch summary, the intact one too: a false verdict. Now the intact sheet is 0 and any
    change to it is 5."""
    from bkp.evidence.batch import render_pdf

    for serial in ("BATCH-0001", "BATCH-0002"):
        wiped(bench, serial)
    sheet = tmp_path / "batch.pdf"
    done = bench.bkp("certificate", "batch", "--since", "2000-01-01", "--output", str(sheet))
    assert done.returncode == 0, done.stderr
    good = bench.bkp("certificate", "verify", str(sheet), "--json")
    assert good.returncode == 0, good.stdout
    assert json.loads(good.stdout)["batch"]["count"] == 2

    data = sheet.read_bytes()
    listing = json.loads(bench.bkp("certificate", "batch", "--since", "2000-01-01",
                                   "--json").stdout)
    listing["media"][0]["hash"] = "0" * 64
    forgeries = {
        "byte flipped": data.replace(b"BATCH-0001", b"BATCH-0009", 1),
        "incremental update": data + b"\n% an annotation added later\n",
        "unsigned re-render": render_pdf(listing, "Hosting B.V."),
    }
    for name, forged in forgeries.items():
        path = tmp_path / f"{name.replace(' ', '-')}.pdf"
        path.write_bytes(forged)
        done = bench.bkp("certificate", "verify", str(path))
        assert done.returncode == 5, (name, done.stdout, done.stderr)
        assert "INVALID" in done.stdout and "Traceback" not in done.stderr


def test_a_batch_beginning_in_the_future_says_so(bench):
    wiped(bench, "FUT-0001")
    done = bench.bkp("certificate", "batch", "--since", "2999-01-01", "--output", "x.pdf")
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- classification rules

def test_a_bare_backed_up_claim_does_not_clear_sensitive_data(bench):
    """Nothing records a backup of the medium's data; `--backed-up` alone is a word typed
    at the bench and would print "backed up: yes" on the certificate. Where it was backed
    up must be said (--backup-note), as --not-backed-up must say why."""
    disk = bench.root / "BARE-0001.img"
    disk.write_bytes(os.urandom(2 * MIB))
    before = disk.read_bytes()
    bench.json("media", "register", "--serial", "BARE-0001", "--type", "hdd",
               "--classification", "sensitive")
    done = bench.bkp("sanitize", str(disk), "--serial", "BARE-0001", "--yes", "--no-progress",
                     "--destination", "storage", "--backed-up")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "--backup-note" in done.stderr
    assert disk.read_bytes() == before  # a refusal touches nothing
    said = bench.json("sanitize", str(disk), "--serial", "BARE-0001", "--yes",
                      "--no-progress", "--destination", "storage", "--backed-up",
                      "--backup-note", "restic snapshot 4f2a1c9e at the second site")
    assert said["result"] == "erased"


# ---------------------------------------------------------------- hostile values

def test_the_export_is_one_row_per_medium_and_no_cell_is_a_formula(bench):
    hostile = {"serial": "=cmd|' -C calc'!A0", "asset_tag": "@SUM(1+1)*cmd|' /C calc'!A0",
               "host": "+1-1,db3", "vendor": '-2+3 "quoted", comma', "model": "..,x =1"}
    bench.json("media", "register", "--serial", hostile["serial"], "--type", "hdd",
               "--asset-tag", hostile["asset_tag"], "--host", hostile["host"],
               "--vendor", hostile["vendor"], "--model", hostile["model"])
    newline = bench.bkp("media", "register", "--serial", "NL-0001", "--type", "hdd",
                        "--asset-tag", "HB-1\n=cmd|x")
    assert newline.returncode == 2 and "Traceback" not in newline.stderr
    wiped(bench, "PLAIN-0001")
    rows = list(csv.DictReader(io.StringIO(bench.bkp("media", "export").stdout)))
    assert len(rows) == 2
    cells = [value for row in rows for value in row.values() if value]
    assert not [c for c in cells if c.lstrip()[:1] in "=+-@|%"], cells
    row = next(r for r in rows if r["serial"].endswith(hostile["serial"]))
    assert row["host"] == "'" + hostile["host"] and row["model"] == hostile["model"]


@pytest.mark.parametrize("day, code", [("2999-01-01", 2), ("yesterday", 2), ("2024-02-30", 2),
                                       ("2024-01-01\n", 0), ("1999-12-31", 0)])
def test_destroyed_on_is_a_past_day(bench, tmp_path, day, code):
    bench.json("media", "register", "--serial", "SHRED-0001", "--type", "hdd")
    done = bench.bkp("destroy", "--serial", "SHRED-0001", "--method", "shred", "--witness",
                     "Anne Bakker", "--service", "Shred, B.V. =cmd|x", "--location",
                     "../../etc", "--service-certificate", "SC-1,2", "--destroyed-on", day)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    state = bench.json("media", "show", "SHRED-0001")["medium"]["state"]
    assert state == ("destroyed" if code == 0 else "registered")
