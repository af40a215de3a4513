"""Device facts and hardware-erase commands: parsers and argv builders as pure functions,
plus read-only facts of this machine (its root disk is never written)."""

from __future__ import annotations

import json
import os

import pytest

from bkp.errors import SafetyError
from bkp.media import devices

HDPARM_FROZEN = """
/dev/sda:

ATA device, with non-removable media
\tModel Number:       Samsung SSD 860 EVO 500GB
\tSerial Number:      S3Z2NB0K123456A
Commands/features:
\tEnabled\tSupported:
\t   *\tSMART feature set
\t   *\tSANITIZE feature set
\t   *\tCRYPTO_SCRAMBLE_EXT command
\t   *\tBLOCK_ERASE_EXT command
Security: \n\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\t\tfrozen
\tnot\texpired: security count
\t\tsupported: enhanced erase
\t2min for SECURITY ERASE UNIT. 8min for ENHANCED SECURITY ERASE UNIT.
Logical Unit WWN Device Identifier: 5002538e40a1b2c3
"""

HDPARM_READY = """
/dev/sdb:
ATA device, with non-removable media
Security:
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\tnot\tfrozen
\tnot\texpired: security count
\tnot\tsupported: enhanced erase
\t312min for SECURITY ERASE UNIT.
Checksum: correct
"""


def test_hdparm_identify_frozen_ssd():
    security = devices.parse_hdparm_identify(HDPARM_FROZEN)
    assert security.supported and security.frozen and security.enhanced
    assert not security.enabled and not security.locked
    assert security.sanitize_block_erase and security.sanitize_crypto_scramble
    assert security.erase_minutes == 2


def test_hdparm_identify_ready_hdd_without_enhanced_erase_or_sanitize():
    security = devices.parse_hdparm_identify(HDPARM_READY)
    assert security.supported and not security.frozen and not security.enhanced
    assert not security.sanitize and not security.sanitize_block_erase
    assert security.erase_minutes == 312


def test_hdparm_identify_of_a_non_ata_device():
    security = devices.parse_hdparm_identify("")
    assert not security.supported and not security.sanitize


def test_ata_argv():
    assert devices.hdparm_identify_argv("/dev/sdb") == ["hdparm", "-I", "/dev/sdb"]
    assert devices.ata_set_password_argv("/dev/sdb") == [
        "hdparm", "--user-master", "u", "--security-set-pass", "bkp-erase", "/dev/sdb"]
    assert devices.ata_secure_erase_argv("/dev/sdb", enhanced=True) == [
        "hdparm", "--user-master", "u", "--security-erase-enhanced", "bkp-erase", "/dev/sdb"]
    assert devices.ata_secure_erase_argv("/dev/sdb", enhanced=False)[3] == "--security-erase"
    assert devices.ata_sanitize_argv("/dev/sdb", crypto=True) == [
        "hdparm", "--yes-i-know-what-i-am-doing", "--sanitize-crypto-scramble", "/dev/sdb"]
    assert devices.ata_sanitize_argv("/dev/sdb", crypto=False)[2] == "--sanitize-block-erase"
    assert devices.ata_sanitize_status_argv("/dev/sdb") == [
        "hdparm", "--sanitize-status", "/dev/sdb"]


def test_nvme_id_ctrl_capabilities():
    caps = devices.parse_nvme_id_ctrl(json.dumps({"oacs": 0x17, "fna": 0x4, "sanicap": 0x3}))
    assert caps.format and caps.crypto_erase and caps.sanitize_crypto and caps.sanitize_block
    assert not caps.sanitize_overwrite
    bare = devices.parse_nvme_id_ctrl(json.dumps({"oacs": 0x0, "fna": 0, "sanicap": 0}))
    assert not (bare.format or bare.crypto_erase or bare.sanitize_block)


def test_nvme_argv():
    assert devices.nvme_controller("/dev/nvme1n1") == "/dev/nvme1"
    with pytest.raises(ValueError):
        devices.nvme_controller("/dev/sda")
    assert devices.nvme_id_ctrl_argv("/dev/nvme0") == [
        "nvme", "id-ctrl", "/dev/nvme0", "--output-format=json"]
    assert devices.nvme_format_argv("/dev/nvme0n1", crypto=True) == [
        "nvme", "format", "/dev/nvme0n1", "--ses=2", "--force"]
    assert devices.nvme_format_argv("/dev/nvme0n1", crypto=False)[3] == "--ses=1"
    assert devices.nvme_sanitize_argv("/dev/nvme0", crypto=True) == [
        "nvme", "sanitize", "/dev/nvme0", "--sanact=4"]
    assert devices.nvme_sanitize_argv("/dev/nvme0", crypto=False)[3] == "--sanact=2"
    assert devices.nvme_sanitize_log_argv("/dev/nvme0") == [
        "nvme", "sanitize-log", "/dev/nvme0", "--output-format=json"]


def test_sanitize_status_parsers():
    assert devices.parse_nvme_sanitize_log(
        json.dumps({"nvme0": {"sprog": 65535, "sstat": 0x101}})) == (65535, 1)
    assert devices.parse_nvme_sanitize_log(json.dumps({"sprog": 1200, "sstat": 2})) == (1200, 2)
    assert devices.parse_ata_sanitize_status(
        "Sanitize status:\n    State:    SD2 Sanitize operation In Process\n") == "in progress"
    assert devices.parse_ata_sanitize_status(
        "    State:    SD0 Sanitize Idle\n    Last Sanitize Operation Completed Without "
        "Error\n") == "completed"
    assert devices.parse_ata_sanitize_status("Sanitize operation failed") == "failed"


def test_mountinfo_gives_device_numbers_and_unescapes_paths():
    text = ("36 35 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            "37 36 7:3 / /mnt/with\\040space rw - ext4 /dev/loop3 rw\n")
    mounts = devices.mountinfo(text)
    assert mounts[0] == devices.Mount((8, 1), "/", "/dev/sda1")
    assert mounts[1].point == "/mnt/with space" and mounts[1].devnum == (7, 3)


def test_scsi_unit_serial_number_page():
    serial = b"      WD-WCC4N1234567"
    assert devices.parse_vpd_pg80(b"\x00\x80" + len(serial).to_bytes(2, "big") + serial) \
        == "WD-WCC4N1234567"
    assert devices.parse_vpd_pg80(b"\x00\x83\x00\x04abcd") is None
    assert devices.parse_vpd_pg80(b"\x00\x80\x00\x00") is None


def test_serials_compare_without_padding_or_case():
    assert devices.same_serial(" S3Z2NB0K123456A ", "s3z2nb0k123456a")
    assert not devices.same_serial("A1", "A2")
    assert not devices.same_serial(None, "A1")


def test_image_file_facts(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8192))
    facts = devices.inspect(str(path))
    assert facts.kind == "image" and facts.size == 8192 and facts.serial is None
    assert facts.serial_note == "image file reports no serial"
    assert devices.usage_problems(facts) == []


def test_what_is_neither_device_nor_file_is_refused(tmp_path):
    with pytest.raises(SafetyError, match="neither a block device nor an image file"):
        devices.inspect("/dev/null")
    with pytest.raises(SafetyError, match="does not exist"):
        devices.inspect(str(tmp_path / "missing"))


def root_device() -> str:
    """The block device that holds this machine's / (read only: never written)."""
    root = next(m for m in devices.mountinfo() if m.point == "/")
    sysdir = devices.sysfs_dir(root.devnum)
    disk = sysdir.parent if (sysdir / "partition").exists() else sysdir
    path = f"/dev/{disk.name}"
    if not os.path.exists(path):
        pytest.fail(f"the root device {path} has no device node")
    return path


def test_the_disk_backing_root_is_reported_in_use():
    facts = devices.inspect(root_device())
    problems = devices.usage_problems(facts)
    assert any("running system's / filesystem" in p for p in problems), problems
    assert any("is mounted at /" in p for p in problems)


# ---------------------------------------------------------------- hardware erase plans

def fake_runner(monkeypatch, outputs: dict):
    """runner.run answering from `outputs` by program name: no process is started."""
    from bkp import runner

    calls = []

    def run(argv, **kwargs):
        calls.append(list(argv))
        out = outputs.get(argv[0], "")
        return runner.Completed(list(argv), 0, out, "", 0.01)

    monkeypatch.setattr(runner, "run", run)
    return calls


SATA_DISK = devices.DeviceFacts("/dev/sdb", "block", 4000787030016, name="sdb",
                                serial="WD-WCC4N1234567", transport="ata")
NVME_DISK = devices.DeviceFacts("/dev/nvme0n1", "block", 1024209543168, name="nvme0n1",
                                serial="S4EWNX0R123456", transport="nvme")


def test_ata_secure_erase_plan(monkeypatch):
    from bkp.media.sanitize import hardware_plan

    fake_runner(monkeypatch, {"hdparm": HDPARM_READY})
    commands, poll = hardware_plan(SATA_DISK, "ata-secure-erase")
    assert commands == [devices.ata_set_password_argv("/dev/sdb"),
                        devices.ata_secure_erase_argv("/dev/sdb", enhanced=False)]
    assert poll is None


def test_frozen_drive_is_refused_with_what_to_do(monkeypatch):
    from bkp.media.sanitize import hardware_plan

    fake_runner(monkeypatch, {"hdparm": HDPARM_FROZEN})
    with pytest.raises(SafetyError, match=r"frozen.*rtcwake"):
        hardware_plan(SATA_DISK, "ata-secure-erase")
    commands, poll = hardware_plan(SATA_DISK, "ata-sanitize")  # sanitize is not frozen
    assert commands == [devices.ata_sanitize_argv("/dev/sdb", crypto=True)]
    assert poll == devices.ata_sanitize_status_argv("/dev/sdb")


def test_drive_without_sanitize_is_refused(monkeypatch):
    from bkp.media.sanitize import hardware_plan

    fake_runner(monkeypatch, {"hdparm": HDPARM_READY})
    with pytest.raises(SafetyError, match="SANITIZE feature set"):
        hardware_plan(SATA_DISK, "ata-sanitize")


def test_nvme_plans(monkeypatch):
    from bkp.media.sanitize import hardware_plan

    calls = fake_runner(monkeypatch, {"nvme": json.dumps({"oacs": 0x17, "fna": 0x4,
                                                          "sanicap": 0x2})})
    assert hardware_plan(NVME_DISK, "nvme-format") == (
        [devices.nvme_format_argv("/dev/nvme0n1", crypto=True)], None)
    assert hardware_plan(NVME_DISK, "nvme-sanitize") == (
        [devices.nvme_sanitize_argv("/dev/nvme0", crypto=False)],
        devices.nvme_sanitize_log_argv("/dev/nvme0"))
    assert calls[0] == devices.nvme_id_ctrl_argv("/dev/nvme0")
    fake_runner(monkeypatch, {"nvme": json.dumps({"oacs": 0, "fna": 0, "sanicap": 0})})
    with pytest.raises(SafetyError, match="does not support Format NVM"):
        hardware_plan(NVME_DISK, "nvme-format")
    with pytest.raises(SafetyError, match="it is an NVMe device, not an ATA disk"):
        hardware_plan(NVME_DISK, "ata-secure-erase")
    with pytest.raises(SafetyError, match="not an NVMe namespace"):
        hardware_plan(SATA_DISK, "nvme-sanitize")
