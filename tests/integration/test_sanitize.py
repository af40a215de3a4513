"""Sanitization on real disk-image files and real loop devices (we are root on these
machines). Every loop device made here is detached by its fixture; the machine's own disks
are only ever read (the refusals), with the writing functions booby-trapped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from bkp import catalog as cat
from bkp.catalog import Catalog
from bkp.context import Context, recover_dead_work
from bkp.errors import SafetyError
from bkp.evidence.audit import verify_chain
from bkp.media import devices, wipe
from bkp.media.register import register_medium
from bkp.media.sanitize import SanitizeRequest, sanitize
from bkp.settings import Settings
from tests.conftest import require_tool

pytestmark = pytest.mark.integration

MIB = 1 << 20


# ---------------------------------------------------------------- fixtures

def make_context(tmp_path: Path) -> Context:
    settings = Settings(policies=tmp_path / "policies", home=tmp_path / "home",
                        operator="bench-operator", os_user="root")
    return Context(settings, Catalog(settings.catalog_path))


@pytest.fixture
def ctx(tmp_path) -> Context:
    context = make_context(tmp_path)
    yield context
    context.catalog.close()


def image_file(path: Path, size: int) -> Path:
    """An image full of 'customer data' (random bytes), so a wipe has something to remove."""
    with open(path, "wb") as fh:
        remaining = size
        while remaining:
            step = min(remaining, 4 * MIB)
            fh.write(os.urandom(step))
            remaining -= step
    return path


def sha256_of(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True)


class LoopDevices:
    """Loop devices over image files in tmp_path; everything is undone at teardown, in
    reverse: swap off, unmount, detach."""

    def __init__(self, tmp_path: Path):
        require_tool("losetup")
        self.tmp_path = tmp_path
        self.undo: list[list[str]] = []

    def attach(self, backing: Path | str) -> str:
        device = run("losetup", "--find", "--show", str(backing)).stdout.strip()
        self.undo.append(["losetup", "--detach", device])
        return device

    def new(self, size: int = 32 * MIB, name: str = "disk.img") -> tuple[str, Path]:
        backing = image_file(self.tmp_path / name, size)
        return self.attach(backing), backing

    def mount_ext4(self, device: str) -> Path:
        require_tool("mkfs.ext4")
        run("mkfs.ext4", "-q", "-F", device)
        point = self.tmp_path / f"mnt-{Path(device).name}"
        point.mkdir()
        run("mount", device, str(point))
        self.undo.append(["umount", str(point)])
        return point

    def swap_on(self, device: str) -> None:
        run("mkswap", "-f", device)
        run("swapon", device)
        self.undo.append(["swapoff", device])

    def cleanup(self) -> None:
        for argv in reversed(self.undo):
            subprocess.run(argv, capture_output=True)
        self.undo.clear()


@pytest.fixture
def loops(tmp_path):
    devices_made = LoopDevices(tmp_path)
    yield devices_made
    devices_made.cleanup()


def register(ctx: Context, serial: str, **fields) -> dict:
    return register_medium(ctx, serial, fields.pop("type_", "hdd"), **fields)


def request(device, serial, **fields) -> SanitizeRequest:
    return SanitizeRequest(device=str(device), serial=serial, confirmed=True, **fields)


def record_of(ctx: Context, record_id: int) -> dict:
    return cat.get_sanitization(ctx.catalog, record_id)


def events(ctx: Context, action: str) -> list[dict]:
    return [dict(e, details=json.loads(e["details"])) for e in
            ctx.catalog.audit_events(action=action)]


def expected_content(record: dict, size: int) -> bytes:
    last = json.loads(record["passes"])[-1]
    buf = bytearray(size)
    wipe.pattern_named(last, bytes.fromhex(record["stream_seed"])).fill(memoryview(buf), 0)
    return bytes(buf)


def sampled_hash(path, record: dict) -> str:
    plan = json.loads(record["sample_plan"])
    ranges = wipe.sample_plan(record["size"], bytes.fromhex(plan["seed"]))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for offset, length in ranges:
            fh.seek(offset)
            digest.update(fh.read(length))
    return digest.hexdigest()


@contextlib.contextmanager
def writes_forbidden(monkeypatch):
    """For tests that point bkp at a real disk of this machine: any attempt to open it for
    writing fails the test before a byte could be written."""

    def forbidden(*args, **kwargs):
        raise AssertionError("bkp tried to open a real disk for writing")

    monkeypatch.setattr(wipe, "open_handles", forbidden)
    monkeypatch.setattr(wipe, "write_pass", forbidden)
    yield


def root_device() -> str:
    root = next(m for m in devices.mountinfo() if m.point == "/")
    sysdir = devices.sysfs_dir(root.devnum)
    disk = sysdir.parent if (sysdir / "partition").exists() else sysdir
    return f"/dev/{disk.name}"


# ---------------------------------------------------------------- every method, both modes

@pytest.mark.parametrize("verify", ["full", "sample"])
@pytest.mark.parametrize("method", ["zero", "random", "dod3"])
def test_every_method_and_verification_mode_on_an_image_file(ctx, tmp_path, method, verify):
    disk = image_file(tmp_path / "disk.img", 24 * MIB + 4096)
    register(ctx, "IMG-0001", tenant="kliniek-noord", host="db3", classification="normal")
    outcome = sanitize(ctx, request(disk, "IMG-0001", method=method, verify=verify,
                                    witness="Anne"))
    assert outcome.exit_code == 0, outcome.data
    data = outcome.data
    assert data["result"] == "erased" and data["bytes"] == 24 * MIB + 4096
    record = record_of(ctx, data["record_id"])
    assert json.loads(record["passes"]) == {"zero": ["zero"], "random": ["random"],
                                            "dod3": ["zero", "ones", "random"]}[method]
    assert data["bytes_written"] == record["size"] * len(json.loads(record["passes"]))
    # the medium now holds exactly the last pass's pattern
    assert disk.read_bytes() == expected_content(record, record["size"])
    if verify == "full":
        assert data["verification"]["hash"] == sha256_of(disk)
        assert data["verification"]["bytes_read"] == record["size"]
    else:
        assert data["verification"]["hash"] == sampled_hash(disk, record)
        assert data["verification"]["bytes_read"] >= 0.10 * record["size"]
        assert json.loads(record["sample_plan"])["subsections"] >= 1000
    assert data["serial_check"] == "image file reports no serial"
    assert cat.get_medium(ctx.catalog, "IMG-0001")["state"] == "sanitized"
    assert [e["outcome"] for e in events(ctx, "sanitize")] == ["started", "erased"]
    assert events(ctx, "certificate.issue")[0]["details"]["record_id"] == data["record_id"]
    assert Path(data["certificate"]["pdf"]).is_file()
    assert verify_chain(ctx.catalog.audit_events()).valid


# ---------------------------------------------------------------- loop devices

def test_loop_device_full_hash_equals_sha256sum_of_the_device(ctx, loops):
    device, _ = loops.new(48 * MIB)
    register(ctx, "LOOP-0001")
    outcome = sanitize(ctx, request(device, "LOOP-0001", method="random"))
    assert outcome.exit_code == 0, outcome.data
    sha256sum = run("sha256sum", device).stdout.split()[0]
    assert outcome.data["verification"]["hash"] == sha256sum
    assert outcome.data["serial_check"] == "device reports no serial"
    cert = json.loads(Path(outcome.data["certificate"]["json"]).read_text())
    assert cert["certificate"]["media"]["serial_reported_by_device"] is None
    assert "device reports no serial" in cert["certificate"]["media"]["serial_note"]
    assert cert["certificate"]["verification"]["hash"] == sha256sum


def test_loop_device_sample_verification(ctx, loops):
    device, _ = loops.new(64 * MIB)
    register(ctx, "LOOP-0002")
    outcome = sanitize(ctx, request(device, "LOOP-0002", method="zero", verify="sample"))
    assert outcome.exit_code == 0, outcome.data
    record = record_of(ctx, outcome.data["record_id"])
    assert outcome.data["verification"]["hash"] == sampled_hash(device, record)


def test_mounted_ext4_on_a_loop_device_is_refused_and_untouched(ctx, loops):
    device, backing = loops.new(32 * MIB)
    mountpoint = loops.mount_ext4(device)
    (mountpoint / "patient.txt").write_text("BSN 123456782\n")
    os.sync()
    before = sha256_of(backing)
    register(ctx, "LOOP-MOUNTED")
    with pytest.raises(SafetyError, match="is mounted at"):
        sanitize(ctx, request(device, "LOOP-MOUNTED"))
    assert sha256_of(backing) == before
    assert (mountpoint / "patient.txt").read_text() == "BSN 123456782\n"
    assert ctx.catalog.db["sanitizations"].count == 0  # nothing was even started
    assert events(ctx, "sanitize")[-1]["outcome"] == "refused"
    assert cat.get_medium(ctx.catalog, "LOOP-MOUNTED")["state"] == "registered"


def test_swap_on_a_loop_device_is_refused(ctx, loops):
    device, backing = loops.new(16 * MIB)
    loops.swap_on(device)
    before = sha256_of(backing)
    register(ctx, "LOOP-SWAP")
    with pytest.raises(SafetyError, match="in use as swap"):
        sanitize(ctx, request(device, "LOOP-SWAP"))
    assert sha256_of(backing) == before


def test_a_device_backing_another_loop_device_is_refused(ctx, loops):
    device, _ = loops.new(16 * MIB)
    stacked = loops.attach(device)
    register(ctx, "LOOP-STACKED")
    with pytest.raises(SafetyError, match=f"attached to {stacked}"):
        sanitize(ctx, request(device, "LOOP-STACKED"))


def test_an_image_attached_to_a_loop_device_is_refused(ctx, loops):
    device, backing = loops.new(16 * MIB)
    before = sha256_of(backing)
    register(ctx, "IMG-ATTACHED")
    with pytest.raises(SafetyError, match=f"attached to {device}"):
        sanitize(ctx, request(backing, "IMG-ATTACHED"))
    assert sha256_of(backing) == before


@pytest.mark.parametrize("method", ["ata-secure-erase", "ata-sanitize", "nvme-format",
                                    "nvme-sanitize"])
def test_hardware_methods_are_refused_on_a_loop_device(ctx, loops, method):
    device, backing = loops.new(8 * MIB)
    before = sha256_of(backing)
    register(ctx, "LOOP-HW")
    with pytest.raises(SafetyError) as refused:
        sanitize(ctx, request(device, "LOOP-HW", method=method))
    assert f"{method} is not possible on {device}: it is a loop device" in str(refused.value)
    assert refused.value.exit_code == 4
    assert sha256_of(backing) == before


def test_check_is_repeated_right_before_the_first_write(ctx, loops):
    device, backing = loops.new(32 * MIB)
    run("mkfs.ext4", "-q", "-F", device)
    register(ctx, "LOOP-RACE")
    state = {}

    def confirm_then_someone_mounts_it(plan):
        # all checks passed; while the operator confirmed, somebody mounted the disk
        state["mountpoint"] = mount_existing(loops, device)
        state["before"] = sha256_of(backing)
        return True

    with pytest.raises(SafetyError, match=r"cannot open .* exclusively"):
        sanitize(ctx, SanitizeRequest(device=device, serial="LOOP-RACE"),
                 confirm=confirm_then_someone_mounts_it)
    assert sha256_of(backing) == state["before"]
    assert ctx.catalog.db["sanitizations"].count == 0


def mount_existing(loops: LoopDevices, device: str) -> Path:
    point = loops.tmp_path / "late-mount"
    point.mkdir()
    run("mount", device, str(point))
    loops.undo.append(["umount", str(point)])
    os.sync()
    return point


# ---------------------------------------------------------------- verification catches

@pytest.mark.parametrize("kind", ["image", "loop"])
def test_a_second_writer_between_wipe_and_verification_is_caught(ctx, tmp_path, loops, kind):
    if kind == "loop":
        device, _ = loops.new(24 * MIB)
    else:
        device = str(image_file(tmp_path / "disk.img", 24 * MIB))
    register(ctx, "TAMPERED")
    tampered_at = 17 * MIB + 3 * 4096

    def second_writer(path):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"still here: BSN 123456782", tampered_at + 10)
            os.fsync(fd)
        finally:
            os.close(fd)

    outcome = sanitize(ctx, request(device, "TAMPERED", method="zero"),
                       between_phases=second_writer)
    assert outcome.exit_code == 5
    data = outcome.data
    assert data["result"] == "failed" and data["verification"]["mismatches"] == 1
    assert f"first at byte {tampered_at}" in data["error"]
    assert data["verification"]["hash"] == run("sha256sum", device).stdout.split()[0]
    assert cat.get_medium(ctx.catalog, "TAMPERED")["state"] == "failed"
    cert = json.loads(Path(data["certificate"]["json"]).read_text())["certificate"]
    assert cert["sanitization"]["result"] == "failed"
    assert cert["verification"]["mismatched_blocks"] == 1


# ---------------------------------------------------------------- refusals of the register

def test_unregistered_serial_is_refused(ctx, tmp_path):
    disk = image_file(tmp_path / "disk.img", 4 * MIB)
    before = sha256_of(disk)
    with pytest.raises(SafetyError, match="not in the media register"):
        sanitize(ctx, request(disk, "NOBODY-KNOWS"))
    assert sha256_of(disk) == before


def test_no_confirmation_is_refused(ctx, tmp_path):
    disk = image_file(tmp_path / "disk.img", 4 * MIB)
    before = sha256_of(disk)
    register(ctx, "UNCONFIRMED")
    with pytest.raises(SafetyError, match="not confirmed"):
        sanitize(ctx, SanitizeRequest(device=str(disk), serial="UNCONFIRMED"))
    with pytest.raises(SafetyError, match="not confirmed"):
        sanitize(ctx, SanitizeRequest(device=str(disk), serial="UNCONFIRMED"),
                 confirm=lambda plan: False)
    assert sha256_of(disk) == before


def test_capacity_that_does_not_match_the_register_is_refused(ctx, tmp_path):
    disk = image_file(tmp_path / "disk.img", 4 * MIB)
    register(ctx, "SMALL", capacity=500_107_862_016)
    with pytest.raises(SafetyError, match="registered with 500107862016"):
        sanitize(ctx, request(disk, "SMALL"))


def test_a_destroyed_medium_is_not_sanitized(ctx, tmp_path):
    from bkp.media.destroy import destroy

    disk = image_file(tmp_path / "disk.img", 4 * MIB)
    register(ctx, "GONE")
    destroy(ctx, "GONE", "shred", "Anne", [])
    with pytest.raises(SafetyError, match="is destroyed"):
        sanitize(ctx, request(disk, "GONE"))


def test_bkp_state_is_never_a_target(ctx):
    register(ctx, "CATALOG")
    with pytest.raises(SafetyError, match="inside bkp's own state directory"):
        sanitize(ctx, request(ctx.settings.catalog_path, "CATALOG"))


def test_the_device_backing_root_is_refused(ctx, monkeypatch):
    root = root_device()
    serial = devices.reported_serial(Path(root).name, root) or "ROOT-DISK"
    register(ctx, serial)
    with writes_forbidden(monkeypatch), pytest.raises(SafetyError) as refused:
        sanitize(ctx, request(root, serial))
    assert "running system's / filesystem" in str(refused.value)


def test_a_device_reporting_another_serial_is_refused(ctx, monkeypatch):
    root = root_device()
    reported = devices.reported_serial(Path(root).name, root)
    if not reported:
        pytest.fail(f"{root} reports no serial on this machine; the serial check is covered "
                    f"by test_identity_checks_without_a_device")
    register(ctx, "SOME-OTHER-DISK")
    with writes_forbidden(monkeypatch), pytest.raises(SafetyError) as refused:
        sanitize(ctx, request(root, "SOME-OTHER-DISK"))
    assert f"reports serial {reported}, not SOME-OTHER-DISK" in str(refused.value)


def test_identity_checks_without_a_device():
    from bkp.media.sanitize import _check_identity

    facts = devices.DeviceFacts("/dev/sdz", "block", 1000, name="sdz", serial="ABC123 ")
    _check_identity({"serial": "abc123", "capacity": None}, facts, "abc123")
    with pytest.raises(SafetyError, match="reports serial ABC123"):
        _check_identity({"serial": "XYZ", "capacity": None}, facts, "XYZ")
    # labels round capacities: within 1 % is the same medium
    _check_identity({"serial": "abc123", "capacity": 1005}, facts, "abc123")


# ---------------------------------------------------------------- crashed processes

def test_a_running_record_of_a_dead_process_reads_as_aborted(ctx, tmp_path):
    register(ctx, "CRASHED")
    record_id = cat.open_sanitization(ctx.catalog, {
        "serial": "CRASHED", "device": "/dev/loop9", "device_kind": "block",
        "method": "zero", "verify_mode": "full", "size": 1, "operator": "x"})
    with ctx.catalog.transaction():  # as left behind by a process that no longer exists
        ctx.catalog.db["sanitizations"].update(record_id, {"pid": 2 ** 22 + 7,
                                                           "pid_start": 1})
    notes = recover_dead_work(ctx)
    assert len(notes) == 1 and f"sanitization {record_id} " in notes[0]
    assert record_of(ctx, record_id)["result"] == "aborted"
    assert cat.get_medium(ctx.catalog, "CRASHED")["state"] == "aborted"
    assert events(ctx, "sanitize")[-1]["outcome"] == "aborted"
    assert recover_dead_work(ctx) == []  # closed once


# ---------------------------------------------------------------- the hardware path

def test_a_hardware_erase_is_run_read_back_and_certified_as_purge(ctx, tmp_path,
                                                                  monkeypatch):
    """The drive's own erase cannot run on a loop device; a stand-in command that zeroes
    the image takes its place, so the rest of the path (runner, read-back without a
    pattern, record, certificate) is real."""
    from bkp.media import sanitize as sanitize_action

    disk = image_file(tmp_path / "disk.img", 8 * MIB)
    stand_in = [["dd", "if=/dev/zero", f"of={disk}", "bs=1M", "count=8", "conv=notrunc,fsync",
                 "status=none"]]
    monkeypatch.setattr(sanitize_action, "hardware_plan", lambda facts, method: (stand_in,
                                                                                   None))
    register(ctx, "HW-0001")
    outcome = sanitize(ctx, request(disk, "HW-0001", method="ata-secure-erase"))
    assert outcome.exit_code == 0, outcome.data
    assert disk.read_bytes() == bytes(8 * MIB)
    assert outcome.data["category"] == "Purge"
    assert outcome.data["verification"]["hash"] == sha256_of(disk)
    cert = json.loads(Path(outcome.data["certificate"]["json"]).read_text())["certificate"]
    assert cert["sanitization"]["hardware_command"].startswith("dd if=/dev/zero")
    assert cert["sanitization"]["category"] == "Purge"


def test_a_failing_hardware_erase_is_recorded_failed(ctx, tmp_path, monkeypatch):
    from bkp.media import sanitize as sanitize_action

    disk = image_file(tmp_path / "disk.img", 4 * MIB)
    monkeypatch.setattr(sanitize_action, "hardware_plan",
                        lambda facts, method: ([["false"]], None))
    register(ctx, "HW-0002")
    outcome = sanitize(ctx, request(disk, "HW-0002", method="nvme-format"))
    assert outcome.exit_code == 1
    assert outcome.data["result"] == "failed" and "false failed" in outcome.data["error"]
    assert cat.get_medium(ctx.catalog, "HW-0002")["state"] == "failed"
