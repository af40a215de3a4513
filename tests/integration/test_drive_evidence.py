"""No silent no-ops: a hardware erase is certified only when the drive shows it happened.

The drive's own erase cannot run on a loop device, so the loop device is presented as an
ATA (or NVMe) disk and a stand-in `hdparm` (or `nvme`) on PATH answers for the drive: it
reports success like a real one, and erases as much as the test tells it to (nothing, in
the failure that matters: a tool or drive that says "done" and erased nothing). Everything
else is real: the loop device, the markers bkp writes and reads, the runner, the record,
the certificate.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from bkp import catalog as cat
from bkp.media import devices
from bkp.media.sanitize import SanitizeRequest, dry_run, sanitize
from tests.integration.test_sanitize import (
    MIB,
    LoopDevices,
    make_context,
    register,
    sha256_of,
)

pytestmark = pytest.mark.integration


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

FAKE_HDPARM = r'''
import os, sys
state = os.environ["FAKE_DRIVE_STATE"]
args = sys.argv[1:]
device = args[-1] if args else ""
def read(name, default=""):
    try:
        return open(os.path.join(state, name)).read().strip()
    except FileNotFoundError:
        return default
def write(name, value):
    open(os.path.join(state, name), "w").write(value)
open(os.path.join(state, "calls"), "a").write(" ".join(args) + "\n")
if args == ["-V"]:
    print("hdparm v9.65-fake"); sys.exit(0)
if "--dco-identify" in args:
    print("DCO Revision: 0x0002\nThe following features can be selectively disabled via DCO:")
    print(f"\tReal max sectors: {read('real')}"); sys.exit(0)
if "-N" in args:
    value = args[args.index("-N") + 1]
    if value.startswith("p"):
        write("visible", value[1:]); write("native", value[1:]); sys.exit(0)
    visible, native = read("visible"), read("native")
    hpa = "enabled" if visible != native else "disabled"
    print(f"\n{device}:\n max sectors   = {visible}/{native}, HPA is {hpa}"); sys.exit(0)
if "-I" in args:
    print(f"\n{device}:\n\nATA device, with non-removable media\n\tModel Number:       FAKE\n"
          "Security:\n\tMaster password revision code = 65534\n\t\tsupported\n"
          f"\t{'' if read('password') else 'not'}\tenabled\n\tnot\tlocked\n\tnot\tfrozen\n"
          "\tnot\texpired: security count\n"
          "\t2min for SECURITY ERASE UNIT.\n"
          "Logical Unit WWN Device Identifier: 5000000000000000")
    sys.exit(0)
if "--security-set-pass" in args:
    write("password", "set"); sys.exit(0)
if "--security-erase" in args:
    erase = read("erase", "nothing")
    if erase != "nothing":
        size = os.path.getsize(device) if os.path.isfile(device) else int(
            open(f"/sys/class/block/{os.path.basename(device)}/size").read()) * 512
        fd = os.open(device, os.O_WRONLY)
        block = 1 << 20
        for offset in range(0, size, block):
            chunk = min(block, size - offset)
            os.pwrite(fd, bytes(chunk) if erase == "zeros" else os.urandom(chunk), offset)
        os.fsync(fd); os.close(fd)
    if read("keep_password") != "yes":
        write("password", "")
    sys.exit(0)
print(f"fake hdparm: unexpected {args}", file=sys.stderr); sys.exit(2)
'''

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
    print(json.dumps({"oacs": 2, "fna": int(read("fna", "0")), "sanicap": 2, "nn": 4}))
    sys.exit(0)
if args[:1] == ["list-ns"]:
    ids = [int(n) for n in read("namespaces", "1").split(",")]
    print(json.dumps({"nsid_list": [{"nsid": n} for n in ids]})); sys.exit(0)
if args[:1] == ["sanitize"]:
    open(os.path.join(state, "sanitized"), "w").write("yes")
    action = next(a.split("=")[1] for a in args if a.startswith("--sanact="))
    open(os.path.join(state, "last_sanact"), "w").write(action)
    if read("erase") == "zeros":
        device = read("device")
        size = int(open(f"/sys/class/block/{os.path.basename(device)}/size").read()) * 512
        fd = os.open(device, os.O_WRONLY)
        for offset in range(0, size, 1 << 20):
            os.pwrite(fd, bytes(min(1 << 20, size - offset)), offset)
        os.fsync(fd); os.close(fd)
    sys.exit(0)
if args[:1] == ["sanitize-log"]:
    done = read("sanitized") == "yes"
    action = int(read("log_action", read("last_sanact", "0")))
    print(json.dumps({"nvme0": {"sprog": 65535, "sstat": 1 if done else 0,
                                "scdw10": action}})); sys.exit(0)
if args[:1] == ["format"]:
    sys.exit(0)
print(f"fake nvme: unexpected {args}", file=sys.stderr); sys.exit(2)
'''


class FakeDrive:
    """The stand-in tools and the drive state they answer from."""

    def __init__(self, root: Path, monkeypatch, transport: str):
        self.state = root / "drive-state"
        self.state.mkdir()
        bin_dir = root / "fake-bin"
        bin_dir.mkdir()
        for name, source in (("hdparm", FAKE_HDPARM), ("nvme", FAKE_NVME)):
            tool = bin_dir / name
            tool.write_text(f"#!{sys.executable}\n{source}")
            tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_DRIVE_STATE", str(self.state))
        real_transport = devices.transport_of
        monkeypatch.setattr(devices, "transport_of", lambda name, sysdir: transport
                            if name.startswith("loop") else real_transport(name, sysdir))
        if transport == "nvme":
            monkeypatch.setattr(devices, "nvme_controller", lambda path: "/dev/nvme-fake0")
            monkeypatch.setattr(devices, "nvme_namespace_id", lambda path: 1)

    def set(self, **values) -> None:
        for name, value in values.items():
            (self.state / name).write_text(str(value))

    def calls(self) -> list[str]:
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []


def ata_disk(tmp_path, monkeypatch, loops, size=16 * MIB):
    fake = FakeDrive(tmp_path, monkeypatch, "ata")
    device, backing = loops.new(size)
    sectors = size // 512
    fake.set(visible=sectors, native=sectors, real=sectors)
    return fake, device, backing


def request(device, serial, **fields) -> SanitizeRequest:
    return SanitizeRequest(device=str(device), serial=serial, confirmed=True, **fields)


def certificate_of(outcome) -> dict:
    return json.loads(Path(outcome.data["certificate"]["json"]).read_text())["certificate"]


def test_an_ata_erase_that_did_nothing_is_exit_5_and_no_certificate_of_erasure(
        ctx, tmp_path, monkeypatch, loops):
    fake, device, _ = ata_disk(tmp_path, monkeypatch, loops)
    fake.set(erase="nothing")  # reports success, erases nothing
    register(ctx, "LIAR-0001")
    outcome = sanitize(ctx, request(device, "LIAR-0001", method="ata-secure-erase"))

    assert outcome.exit_code == 5, outcome.data
    assert outcome.data["result"] == "failed"
    assert "markers written before the erase are still on the medium" in outcome.data["error"]
    assert any("--security-erase" in c for c in fake.calls())  # the erase was really asked
    assert cat.get_medium(ctx.catalog, "LIAR-0001")["state"] == "failed"
    cert = certificate_of(outcome)
    assert cert["sanitization"]["result"] == "failed"
    assert cert["verification_result"] == "failed"
    assert cert["drive"]["markers"]["gone"] == 0 and cert["drive"]["markers"]["count"] == 64
    from bkp.evidence.certificates import render_text, title_of
    assert "not a certificate of erasure" in title_of(cert)
    text = render_text(json.loads(Path(outcome.data["certificate"]["json"]).read_text()))
    assert "Certificate of Sanitization" not in text.splitlines()[0].title()


def test_an_ata_erase_that_erases_is_certified_with_the_drives_evidence(
        ctx, tmp_path, monkeypatch, loops):
    fake, device, _ = ata_disk(tmp_path, monkeypatch, loops)
    fake.set(erase="zeros")
    register(ctx, "ATA-0001")
    outcome = sanitize(ctx, request(device, "ATA-0001", method="ata-secure-erase"))

    assert outcome.exit_code == 0, outcome.data
    assert sha256_of(device) == outcome.data["verification"]["hash"]
    cert = certificate_of(outcome)
    drive = cert["drive"]
    assert drive["markers"] == {**drive["markers"], "count": 64, "gone": 64,
                                "promise_kept": True}
    assert "0x00 or all 0xFF" in drive["markers"]["promise"]
    assert drive["status_before"]["security_enabled"] is False
    assert drive["status_after"]["security_enabled"] is False
    assert drive["hidden_area"]["checked"] and not drive["hidden_area"]["hidden"]
    assert cert["technique"] == "overwrite" and cert["method_category"] == "Purge"
    assert cert["tool"]["drive_tool"] == "hdparm v9.65-fake"


def test_content_other_than_the_command_promises_fails(ctx, tmp_path, monkeypatch, loops):
    fake, device, _ = ata_disk(tmp_path, monkeypatch, loops)
    fake.set(erase="random")  # the markers are gone, but a normal erase writes 0x00/0xFF
    register(ctx, "ATA-0002")
    outcome = sanitize(ctx, request(device, "ATA-0002", method="ata-secure-erase"))
    assert outcome.exit_code == 5
    assert "the command promises every block all 0x00 or all 0xFF" in outcome.data["error"]


def test_an_erase_that_leaves_its_password_set_did_not_complete(ctx, tmp_path, monkeypatch,
                                                               loops):
    fake, device, _ = ata_disk(tmp_path, monkeypatch, loops)
    fake.set(erase="zeros", keep_password="yes")
    register(ctx, "ATA-0003")
    outcome = sanitize(ctx, request(device, "ATA-0003", method="ata-secure-erase"))
    assert outcome.exit_code == 5
    assert "still has the erase password set" in outcome.data["error"]


def test_a_hidden_area_is_refused_untouched_unless_removed(ctx, tmp_path, monkeypatch,
                                                          loops):
    fake, device, _ = ata_disk(tmp_path, monkeypatch, loops)
    sectors = 16 * MIB // 512
    fake.set(visible=sectors - 2048, native=sectors, erase="zeros")
    register(ctx, "HPA-0001")
    before = sha256_of(device)
    for method in ("zero", "ata-secure-erase"):
        checked = dry_run(ctx, request(device, "HPA-0001", method=method))
        assert checked.exit_code == 4 and "hides part of itself" in checked.data["error"]
        with pytest.raises(Exception) as refused:
            sanitize(ctx, request(device, "HPA-0001", method=method))
        assert getattr(refused.value, "exit_code", None) == 4
        assert "--remove-hpa" in str(refused.value)
    assert sha256_of(device) == before
    assert not any("--security" in c or " p" in c for c in fake.calls())

    outcome = sanitize(ctx, request(device, "HPA-0001", method="zero", remove_hpa=True))
    assert outcome.exit_code == 0, outcome.data
    assert f"--yes-i-know-what-i-am-doing -N p{sectors} {device}" in fake.calls()
    drive = certificate_of(outcome)["drive"]
    assert drive["hidden_area"]["reported_bytes"] == (sectors - 2048) * 512
    assert drive["hidden_area"]["native_bytes"] == sectors * 512 and drive["hidden_area"]["hpa"]
    assert drive["hidden_area_after"]["hidden"] is False
    assert drive["hidden_area_removed"] == [f"hdparm --yes-i-know-what-i-am-doing -N "
                                            f"p{sectors} {device}"]


def test_an_nvme_sanitize_that_did_nothing_is_exit_5(ctx, tmp_path, monkeypatch, loops):
    fake = FakeDrive(tmp_path, monkeypatch, "nvme")
    device, _ = loops.new(16 * MIB)
    register(ctx, "NVME-0001")
    outcome = sanitize(ctx, request(device, "NVME-0001", method="nvme-sanitize"))
    assert outcome.exit_code == 5, outcome.data
    assert "still on the medium" in outcome.data["error"]
    assert "sanitize /dev/nvme-fake0 --sanact=2" in fake.calls()
    assert any(c.startswith("sanitize-log") for c in fake.calls())  # polled to its end
    drive = certificate_of(outcome)["drive"]
    assert drive["status_after"]["sanitize_status"] == "completed"
    assert drive["namespaces"]["covered"] is True


def test_an_nvme_sanitize_that_erases_is_certified_and_a_stale_log_is_not(
        ctx, tmp_path, monkeypatch, loops):
    fake = FakeDrive(tmp_path, monkeypatch, "nvme")
    device, _ = loops.new(16 * MIB)
    fake.set(erase="zeros", device=device)
    register(ctx, "NVME-0003")
    outcome = sanitize(ctx, request(device, "NVME-0003", method="nvme-sanitize"))
    assert outcome.exit_code == 0, outcome.data
    drive = certificate_of(outcome)["drive"]
    assert drive["markers"]["gone"] == 64
    assert drive["status_after"]["sanitize_action"] == drive["sanitize_action_requested"] == 2
    assert certificate_of(outcome)["technique"] == "block erase"

    # the log still describes an earlier crypto erase: not evidence of this one
    (fake.state / "sanitized").unlink()
    fake.set(log_action=4)
    register(ctx, "NVME-0004")
    stale = sanitize(ctx, request(device, "NVME-0004", method="nvme-sanitize"))
    assert stale.exit_code == 5
    assert "a stale log, not this erase" in stale.data["error"]


def test_an_nvme_format_with_other_namespaces_is_refused(ctx, tmp_path, monkeypatch, loops):
    fake = FakeDrive(tmp_path, monkeypatch, "nvme")
    fake.set(namespaces="1,2")
    device, _ = loops.new(16 * MIB)
    before = sha256_of(device)
    register(ctx, "NVME-0002")
    with pytest.raises(Exception) as refused:
        sanitize(ctx, request(device, "NVME-0002", method="nvme-format"))
    assert getattr(refused.value, "exit_code", None) == 4
    assert "other namespaces (2)" in str(refused.value)
    assert sha256_of(device) == before
    assert not any(c.startswith("format") for c in fake.calls())
    # a controller that formats every namespace at once covers them
    fake.set(fna=1)
    checked = dry_run(ctx, request(device, "NVME-0002", method="nvme-format"))
    assert checked.exit_code == 0, checked.data
