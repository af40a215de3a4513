"""Block-device facts: size, serial, mounts, holders, swap, loop backings, hardware erase.

Everything here reads the kernel's own view (sysfs, /proc/self/mountinfo, /proc/swaps) and
compares devices by number, not by name, so /dev/root, /dev/disk/by-id/... and
/dev/mapper/... aliases cannot hide a mount. Processes (lsblk, hdparm, nvme) are started
through runner.run only. Nothing here writes to a device.

The hardware erase commands are argv builders (pure) and output parsers (pure); the
sanitize action runs them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bkp import runner
from bkp.errors import SafetyError

SYS_BLOCK = Path("/sys/class/block")
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var")
# The ATA security password lives only for the seconds between set-pass and erase, which
# clears it; a fixed, documented value lets an operator unlock a drive whose erase was cut
# off (runbooks/decommission-media.md). It protects nothing, so it is not a secret.
ATA_ERASE_PASSWORD = "bkp-erase"

DevNum = tuple[int, int]


@dataclass(frozen=True)
class DeviceFacts:
    """What a device (or an image file) is, as the kernel reports it."""

    path: str  # resolved: /dev/sdb, /dev/loop3, /srv/disk.img
    kind: str  # block | image
    size: int
    name: str | None = None  # kernel name: sdb, loop3, nvme0n1
    devnum: DevNum | None = None
    logical_block: int = 512
    serial: str | None = None  # as the device reports it; None when it reports none
    model: str | None = None
    vendor: str | None = None
    transport: str | None = None  # ata | nvme | usb | loop | virtio | scsi | image
    partition_of: str | None = None
    read_only: bool = False
    image_identity: tuple[int, int] | None = None  # (st_dev, st_ino) of an image file

    @property
    def serial_note(self) -> str:
        if self.serial:
            return f"device reports serial {self.serial}"
        what = "image file" if self.kind == "image" else "device"
        return f"{what} reports no serial"


# ---------------------------------------------------------------- inspecting

def inspect(path: str) -> DeviceFacts:
    """Facts about a block device or an image file; SafetyError for anything else."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise SafetyError(f"{path} does not exist; check the device name (lsblk)") from None
    if stat.S_ISREG(st.st_mode):
        return DeviceFacts(real, "image", st.st_size, transport="image",
                           read_only=not os.access(real, os.W_OK),
                           image_identity=(st.st_dev, st.st_ino))
    if not stat.S_ISBLK(st.st_mode):
        raise SafetyError(f"{path} is neither a block device nor an image file")
    devnum = (os.major(st.st_rdev), os.minor(st.st_rdev))
    sysdir = sysfs_dir(devnum)
    name = sysdir.name
    partition_of = sysdir.parent.name if (sysdir / "partition").exists() else None
    disk = sysdir.parent if partition_of else sysdir
    return DeviceFacts(
        real, "block", int(_read(sysdir / "size") or 0) * 512, name=name, devnum=devnum,
        logical_block=int(_read(disk / "queue" / "logical_block_size") or 512),
        serial=None if partition_of else reported_serial(name, real),
        model=_read(disk / "device" / "model"), vendor=_read(disk / "device" / "vendor"),
        transport=transport_of(name, disk), partition_of=partition_of,
        read_only=_read(sysdir / "ro") == "1")


def sysfs_dir(devnum: DevNum) -> Path:
    return Path(os.path.realpath(f"/sys/dev/block/{devnum[0]}:{devnum[1]}"))


def transport_of(name: str, sysdir: Path) -> str | None:
    if name.startswith("loop"):
        return "loop"
    if re.fullmatch(r"nvme\d+n\d+", name):
        return "nvme"
    where = os.path.realpath(sysdir)
    for marker, transport in (("/usb", "usb"), ("/ata", "ata"), ("/virtio", "virtio")):
        if marker in where:
            return transport
    return "scsi" if "/host" in where else None


def reported_serial(name: str, path: str) -> str | None:
    """The serial number the device reports, or None (loop devices, some USB bridges)."""
    if name.startswith(("loop", "zram", "ram")):
        return None
    for candidate in (SYS_BLOCK / name / "device" / "serial", SYS_BLOCK / name / "serial"):
        value = _read(candidate)
        if value:
            return value
    value = vpd_serial(SYS_BLOCK / name / "device" / "vpd_pg80")
    if value:
        return value
    if runner.which("lsblk"):
        done = runner.run(["lsblk", "-dno", "SERIAL", path], timeout=30)
        if done.ok and done.stdout.strip():
            return done.stdout.strip()
    if runner.which("udevadm"):
        done = runner.run(["udevadm", "info", "--query=property", f"--name={path}"],
                          timeout=30)
        found = re.search(r"^ID_SERIAL_SHORT=(.+)$", done.stdout, re.M) if done.ok else None
        if found:
            return found.group(1).strip()
    return None


def vpd_serial(path: Path) -> str | None:
    """The Unit Serial Number VPD page (0x80) of a SCSI/SATA disk, read by the kernel at
    probe time: the serial without udev. Header: qualifier, page code 0x80, length (2)."""
    try:
        page = path.read_bytes()
    except OSError:
        return None
    return parse_vpd_pg80(page)


def parse_vpd_pg80(page: bytes) -> str | None:
    if len(page) < 4 or page[1] != 0x80:
        return None
    length = int.from_bytes(page[2:4], "big")
    serial = page[4:4 + length].decode("ascii", "replace").strip(" \x00")
    return serial or None


def same_serial(a: str | None, b: str | None) -> bool:
    # Tools pad serials with spaces and differ in case (ATA strings are space-padded).
    return bool(a and b) and a.strip().upper() == b.strip().upper()


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip() or None
    except OSError:
        return None


# ---------------------------------------------------------------- in use?

def usage_problems(facts: DeviceFacts, probe_exclusive: bool = True) -> list[str]:
    """Every reason the device must not be written now; empty when it is free.

    `probe_exclusive` False when the caller already holds the device open O_EXCL (the
    re-check right before the first write), which is itself the kernel's proof.
    """
    if facts.kind == "image":
        return _image_problems(facts)
    problems = []
    if facts.partition_of:
        problems.append(f"{facts.path} is a partition of /dev/{facts.partition_of}; sanitize "
                        f"the whole medium /dev/{facts.partition_of}")
    if facts.read_only:
        problems.append(f"{facts.path} is read-only (write-protected)")
    built_on = _built_on(facts.devnum)
    if built_on:
        problems.append(f"{facts.path} is a virtual device built on {', '.join(built_on)} "
                        f"(LVM, dm-crypt, RAID); sanitize the physical media instead")
    family = device_family(facts.devnum)
    problems += _system_problems(facts, family)
    problems += _holder_problems(family)
    problems += _mount_problems(family, mountinfo())
    problems += _swap_problems(family)
    problems += _loop_problems(lambda backing: _devnum_of(backing) in family)
    problems += _opener_problems(_family_paths(family))
    if not problems and probe_exclusive:
        problems += _busy_problem(facts.path)
    return list(dict.fromkeys(problems))


def _built_on(devnum: DevNum) -> list[str]:
    slaves = sysfs_dir(devnum) / "slaves"
    return sorted(f"/dev/{s.name}" for s in slaves.iterdir()) if slaves.is_dir() else []


def device_family(devnum: DevNum) -> set[DevNum]:
    """The device, its partitions and everything built on them (dm, md), recursively."""
    family: set[DevNum] = set()
    todo = [sysfs_dir(devnum)]
    while todo:
        sysdir = todo.pop()
        number = _sys_devnum(sysdir)
        if number is None or number in family:
            continue
        family.add(number)
        todo += [p for p in sysdir.iterdir() if (p / "partition").exists()]
        holders = sysdir / "holders"
        if holders.is_dir():
            todo += [Path(os.path.realpath(h)) for h in holders.iterdir()]
    return family


def _sys_devnum(sysdir: Path) -> DevNum | None:
    text = _read(sysdir / "dev")
    if not text or ":" not in text:
        return None
    major, minor = text.split(":")
    return int(major), int(minor)


def _underlying(devnum: DevNum) -> set[DevNum]:
    """A device and everything it is built from: slaves of dm/md, the disk of a partition."""
    found: set[DevNum] = set()
    todo = [sysfs_dir(devnum)]
    while todo:
        sysdir = todo.pop()
        number = _sys_devnum(sysdir)
        if number is None or number in found:
            continue
        found.add(number)
        if (sysdir / "partition").exists():
            todo.append(sysdir.parent)
        slaves = sysdir / "slaves"
        if slaves.is_dir():
            todo += [Path(os.path.realpath(s)) for s in slaves.iterdir()]
    return found


def _system_problems(facts: DeviceFacts, family: set[DevNum]) -> list[str]:
    problems = []
    for mount in mountinfo():
        if mount.point not in SYSTEM_MOUNTS:
            continue
        numbers = {mount.devnum} | set(_source_devnums(mount.source))
        carriers = set().union(*(_underlying(n) for n in numbers if _is_block(n)))
        if carriers & family:
            problems.append(f"{facts.path} holds the running system's {mount.point} "
                            f"filesystem; it can never be sanitized from this system")
    return problems


def _holder_problems(family: set[DevNum]) -> list[str]:
    problems = []
    for number in sorted(family):
        sysdir = sysfs_dir(number)
        holders = sysdir / "holders"
        for holder in sorted(holders.iterdir()) if holders.is_dir() else ():
            label = _read(holder / "dm" / "name") or holder.name
            problems.append(f"/dev/{sysdir.name} is held by {label} (LVM, dm-crypt, RAID or "
                            f"multipath); stop and remove {label} first")
    return problems


@dataclass(frozen=True)
class Mount:
    devnum: DevNum
    point: str
    source: str


def mountinfo(text: str | None = None) -> list[Mount]:
    """/proc/self/mountinfo parsed: the kernel's device number of each mount."""
    if text is None:
        text = Path("/proc/self/mountinfo").read_text()
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields:
            continue
        major, minor = fields[2].split(":")
        source = fields[fields.index("-") + 2]
        mounts.append(Mount((int(major), int(minor)), _unescape(fields[4]), _unescape(source)))
    return mounts


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _source_devnums(source: str) -> list[DevNum]:
    number = _devnum_of(source) if source.startswith("/") else None
    return [number] if number else []


def _devnum_of(path: str) -> DevNum | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _is_block(devnum: DevNum) -> bool:
    return Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}").exists()


def _mount_problems(family: set[DevNum], mounts: Iterable[Mount]) -> list[str]:
    problems = []
    for mount in mounts:
        # btrfs and some others report an anonymous device number; the source still names it
        if mount.devnum in family or set(_source_devnums(mount.source)) & family:
            problems.append(f"{mount.source} is mounted at {mount.point}; unmount it first")
    return problems


def _swap_problems(family: set[DevNum]) -> list[str]:
    return [f"{name} is in use as swap; swapoff {name} first" for name in swap_files()
            if _devnum_of(name) in family]


def swap_files() -> list[str]:
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return []
    return [_unescape(line.split()[0]) for line in lines if line.strip()]


def loop_backings() -> dict[str, str]:
    """/dev/loopN -> the file or device behind it, for every attached loop device."""
    backings = {}
    for loop in sorted(SYS_BLOCK.glob("loop*")):
        backing = _read(loop / "loop" / "backing_file")
        if backing:
            backings[f"/dev/{loop.name}"] = backing.removesuffix(" (deleted)")
    return backings


def _loop_problems(is_ours) -> list[str]:
    return [f"{backing} is attached to {loop}; detach it first (losetup -d {loop})"
            for loop, backing in loop_backings().items() if is_ours(backing)]


def _family_paths(family: set[DevNum]) -> set[str]:
    return {f"/dev/{sysfs_dir(number).name}" for number in family}


def _opener_problems(paths: set[str]) -> list[str]:
    """Other processes that hold the device or image open (a dd, a VM, a backup)."""
    problems = []
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in paths:
                command = _read(proc / "comm") or "?"
                problems.append(f"{target} is open in process {proc.name} ({command}); stop it "
                                f"first")
                break
    return problems


def _busy_problem(path: str) -> list[str]:
    """The kernel's own answer: an exclusive open fails while anything claims the device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return [f"the kernel reports {path} busy (mounted, swap, or claimed by a holder)"]
        raise
    os.close(fd)
    return []


def _image_problems(facts: DeviceFacts) -> list[str]:
    problems = []
    if facts.read_only:
        problems.append(f"{facts.path} is not writable")

    def is_ours(backing: str) -> bool:
        if os.path.realpath(backing) == facts.path:
            return True
        with contextlib.suppress(OSError):
            st = os.stat(backing)
            return (st.st_dev, st.st_ino) == facts.image_identity
        return False

    problems += _loop_problems(is_ours)
    problems += [f"{name} is in use as swap; swapoff {name} first" for name in swap_files()
                 if is_ours(name)]
    problems += _opener_problems({facts.path})
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------- hardware erase

@dataclass(frozen=True)
class AtaSecurity:
    supported: bool = False
    enabled: bool = False
    locked: bool = False
    frozen: bool = False
    enhanced: bool = False
    sanitize: bool = False
    sanitize_block_erase: bool = False
    sanitize_crypto_scramble: bool = False
    erase_minutes: int | None = None


def parse_hdparm_identify(text: str) -> AtaSecurity:
    """The Security and Sanitize parts of `hdparm -I`; a `not` before a word negates it."""
    security = _section(text, "Security:")

    def flag(word: str) -> bool:
        match = re.search(rf"^\s*(not\s+)?{word}\s*$", security, re.M | re.I)
        return bool(match) and not match.group(1)

    minutes = re.search(r"(\d+)min for (?:ENHANCED )?SECURITY ERASE UNIT", security)
    sanitize = re.search(r"SANITIZE feature set", text) is not None
    return AtaSecurity(
        supported=flag("supported"), enabled=flag("enabled"), locked=flag("locked"),
        frozen=flag("frozen"), enhanced=bool(re.search(r"^\s*supported: enhanced erase",
                                                      security, re.M)),
        sanitize=sanitize,
        sanitize_block_erase=sanitize and "BLOCK_ERASE_EXT" in text,
        sanitize_crypto_scramble=sanitize and "CRYPTO_SCRAMBLE_EXT" in text,
        erase_minutes=int(minutes.group(1)) if minutes else None)


def _section(text: str, header: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == header:
            body = []
            for following in lines[i + 1:]:
                if following and not following[0].isspace():
                    break
                body.append(following)
            return "\n".join(body)
    return ""


@dataclass(frozen=True)
class NvmeCapabilities:
    format: bool = False
    crypto_erase: bool = False
    sanitize_crypto: bool = False
    sanitize_block: bool = False
    sanitize_overwrite: bool = False
    format_all_namespaces: bool = False  # FNA bit 0: a format covers every namespace
    namespaces: int | None = None  # NN: the most namespaces the controller supports


def parse_nvme_id_ctrl(text: str) -> NvmeCapabilities:
    """`nvme id-ctrl -o json`: OACS bit 1 = Format NVM, FNA bit 2 = cryptographic erase,
    SANICAP bits 0-2 = crypto erase, block erase, overwrite (NVMe base spec, Identify)."""
    data = json.loads(text)
    oacs, fna, sanicap = (int(data.get(k, 0)) for k in ("oacs", "fna", "sanicap"))
    return NvmeCapabilities(format=bool(oacs & 0x2), crypto_erase=bool(fna & 0x4),
                            sanitize_crypto=bool(sanicap & 0x1),
                            sanitize_block=bool(sanicap & 0x2),
                            sanitize_overwrite=bool(sanicap & 0x4),
                            format_all_namespaces=bool(fna & 0x1),
                            namespaces=int(data["nn"]) if "nn" in data else None)


def nvme_controller(namespace_path: str) -> str:
    """/dev/nvme0n1 -> /dev/nvme0: sanitize and id-ctrl address the controller."""
    match = re.fullmatch(r"(/dev/nvme\d+)n\d+", namespace_path)
    if not match:
        raise ValueError(f"{namespace_path} is not an NVMe namespace")
    return match.group(1)


def hdparm_identify_argv(device: str) -> list[str]:
    return ["hdparm", "-I", device]


def ata_set_password_argv(device: str, password: str = ATA_ERASE_PASSWORD) -> list[str]:
    return ["hdparm", "--user-master", "u", "--security-set-pass", password, device]


def ata_secure_erase_argv(device: str, enhanced: bool,
                          password: str = ATA_ERASE_PASSWORD) -> list[str]:
    option = "--security-erase-enhanced" if enhanced else "--security-erase"
    return ["hdparm", "--user-master", "u", option, password, device]


def ata_sanitize_argv(device: str, crypto: bool) -> list[str]:
    action = "--sanitize-crypto-scramble" if crypto else "--sanitize-block-erase"
    return ["hdparm", "--yes-i-know-what-i-am-doing", action, device]


def ata_sanitize_status_argv(device: str) -> list[str]:
    return ["hdparm", "--sanitize-status", device]


def nvme_id_ctrl_argv(controller: str) -> list[str]:
    return ["nvme", "id-ctrl", controller, "--output-format=json"]


def nvme_format_argv(namespace: str, crypto: bool) -> list[str]:
    # SES 1: user data erase; 2: cryptographic erase. --force skips nvme-cli's prompt.
    return ["nvme", "format", namespace, f"--ses={2 if crypto else 1}", "--force"]


def nvme_sanitize_argv(controller: str, crypto: bool) -> list[str]:
    # SANACT 2: block erase; 4: crypto erase.
    return ["nvme", "sanitize", controller, f"--sanact={4 if crypto else 2}"]


def nvme_sanitize_log_argv(controller: str) -> list[str]:
    return ["nvme", "sanitize-log", controller, "--output-format=json"]


def parse_nvme_sanitize_log(text: str) -> tuple[int, int]:
    """(progress out of 65535, status): status 1 = completed, 2 = in progress, 3 = failed."""
    data = json.loads(text)
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())),
                                                                 dict):
        data = next(iter(data.values()))  # nvme-cli 2.x keys the log by device name
    return int(data.get("sprog", 0)), int(data.get("sstat", 0)) & 0x7


def parse_nvme_sanitize_action(text: str) -> int | None:
    """The action of the sanitize the log describes (SCDW10 bits 2:0: 2 block erase, 3
    overwrite, 4 crypto erase), where nvme-cli shows it; None otherwise."""
    data = json.loads(text)
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())),
                                                                 dict):
        data = next(iter(data.values()))
    for key in ("scdw10", "cdw10_info", "SCDW10"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, int):
            return value & 0x7
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return int(value, 0) & 0x7
    return None


def parse_ata_sanitize_status(text: str) -> str:
    """'in progress', 'completed', 'failed' or 'unknown' from `hdparm --sanitize-status`."""
    lowered = text.lower()
    if "in process" in lowered or "in progress" in lowered:
        return "in progress"
    if "fail" in lowered:
        return "failed"
    if "completed without error" in lowered:
        return "completed"
    return "unknown"


# ---------------------------------------------------------------- hidden areas, namespaces

@dataclass(frozen=True)
class HiddenArea:
    """ATA Host Protected Area and Device Configuration Overlay: sectors a drive hides
    from the operating system, which an overwrite (and some drives' erase) never reaches."""

    visible_sectors: int | None = None  # what the drive reports now (hdparm -N, first)
    native_sectors: int | None = None  # its native max address (hdparm -N, second)
    real_sectors: int | None = None  # before any DCO (hdparm --dco-identify)
    checked: bool = False
    note: str | None = None

    @property
    def hidden(self) -> bool:
        real = max(self.native_sectors or 0, self.real_sectors or 0)
        return bool(self.visible_sectors) and real > self.visible_sectors

    @property
    def hpa(self) -> bool:
        return bool(self.visible_sectors and self.native_sectors
                    and self.native_sectors > self.visible_sectors)

    @property
    def dco(self) -> bool:
        return bool(self.real_sectors and self.native_sectors
                    and self.real_sectors > self.native_sectors)

    def as_json(self) -> dict:
        sizes = {k: None if v is None else v * 512 for k, v in (
            ("reported_bytes", self.visible_sectors), ("native_bytes", self.native_sectors),
            ("real_bytes", self.real_sectors))}
        summary = (self.note or "not checked") if not self.checked else (
            f"HPA {'present' if self.hpa else 'none'}, DCO {'present' if self.dco else 'none'}"
            f"; reported {self.visible_sectors} sectors, native {self.native_sectors}, "
            f"real {self.real_sectors if self.real_sectors else 'unknown'}")
        return {"checked": self.checked, "hidden": self.hidden, "hpa": self.hpa,
                "dco": self.dco, "reported_sectors": self.visible_sectors,
                "native_sectors": self.native_sectors, "real_sectors": self.real_sectors,
                **sizes, "summary": summary}


def hdparm_hpa_argv(device: str) -> list[str]:
    return ["hdparm", "-N", device]


def hdparm_dco_argv(device: str) -> list[str]:
    return ["hdparm", "--dco-identify", device]


def hdparm_remove_hpa_argv(device: str, native_sectors: int) -> list[str]:
    # p: permanent, so the area stays removed over a power cycle
    return ["hdparm", "--yes-i-know-what-i-am-doing", "-N", f"p{native_sectors}", device]


def hdparm_dco_restore_argv(device: str) -> list[str]:
    return ["hdparm", "--yes-i-know-what-i-am-doing", "--dco-restore", device]


def parse_hdparm_hpa(text: str) -> tuple[int | None, int | None]:
    """(visible, native) from ` max sectors   = 976771055/976773168, HPA is enabled`."""
    found = re.search(r"max sectors\s*=\s*(\d+)\s*/\s*(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (None, None)


def parse_hdparm_dco(text: str) -> int | None:
    """The real max sectors from `hdparm --dco-identify` ("Real max sectors: N")."""
    found = re.search(r"Real max sectors:\s*(\d+)", text, re.I)
    return int(found.group(1)) if found else None


def hidden_area(device: str) -> HiddenArea:
    """The drive's HPA and DCO state; unchecked (with a note) when hdparm cannot tell."""
    if runner.which("hdparm") is None:
        return HiddenArea(note="not checked: hdparm is not installed")
    done = runner.run(hdparm_hpa_argv(device), timeout=60)
    visible, native = parse_hdparm_hpa(done.stdout) if done.ok else (None, None)
    if visible is None:
        return HiddenArea(note=f"not checked: hdparm -N gave no answer "
                               f"({(done.stderr_tail or done.stdout)[-200:].strip()})")
    dco = runner.run(hdparm_dco_argv(device), timeout=60)
    return HiddenArea(visible, native, parse_hdparm_dco(dco.stdout) if dco.ok else None,
                      checked=True)


def nvme_list_ns_argv(controller: str) -> list[str]:
    return ["nvme", "list-ns", controller, "--output-format=json"]


def parse_nvme_list_ns(text: str) -> list[int]:
    """The active namespace ids from `nvme list-ns -o json` (nvme-cli 1.x and 2.x), or its
    text form (`[   0]:0x1`)."""
    try:
        data = json.loads(text)
    except ValueError:
        return sorted({int(m, 16) for m in re.findall(r"\]:\s*0x([0-9a-f]+)", text, re.I)})
    found: set[int] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key.lower() == "nsid" and isinstance(item, int):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return sorted(n for n in found if n > 0)


def nvme_namespace_id(namespace_path: str) -> int | None:
    match = re.fullmatch(r"/dev/nvme\d+n(\d+)", namespace_path)
    return int(match.group(1)) if match else None
