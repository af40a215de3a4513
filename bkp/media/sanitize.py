"""Sanitize a medium: refuse anything unsafe, overwrite (or erase in hardware), read back,
record, certify.

The order is the safety argument: every check runs before anything is written; the
operator confirms; the device is then opened exclusively (the kernel now refuses mounts and
holders) and checked again against the first inspection; only then is the record opened
and the first byte written. A refusal raises SafetyError (exit 4) having written nothing.

Ctrl-C or SIGTERM closes the record as `aborted`; a killed process leaves a `running`
record that the next bkp command closes as `aborted` (pid + process start time).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bkp import __version__, runner
from bkp import catalog as cat
from bkp.context import Context, Outcome, human_bytes
from bkp.errors import OperationError, SafetyError, UsageError
from bkp.evidence.certificates import METHODS
from bkp.evidence.certify import ensure_can_certify, issue_certificate
from bkp.media import devices, markers, wipe
from bkp.media.register import check_serial
from bkp.vocabulary import DESTINATIONS_AFTER, VERIFY_MODES

SOFTWARE_METHODS = {"zero": ("zero",), "random": ("random",), "dod3": ("zero", "ones", "random")}
HARDWARE_METHODS = ("ata-secure-erase", "ata-sanitize", "nvme-format", "nvme-sanitize")
# IEEE 2883-2022 technique of each method as planned; a hardware plan names what the drive
# was actually told to do (crypto erase or block erase) when it knows.
TECHNIQUES = {"zero": "overwrite", "random": "overwrite", "dod3": "overwrite",
              "ata-secure-erase": "overwrite", "ata-sanitize": "block erase",
              "nvme-format": "user data erase", "nvme-sanitize": "block erase"}
HARDWARE_TIMEOUT_S = 24 * 3600  # a large HDD's enhanced erase takes many hours
POLL_INTERVAL_S = 10
STALLED_POLLS = 6  # polls in a row that show no sanitize under way: the drive ignored it


@dataclass
class SanitizeRequest:
    device: str
    serial: str
    method: str = "zero"
    verify: str = "full"
    witness: str | None = None
    organization: str | None = None
    destination_after: str = "reuse"
    classification: str | None = None
    backed_up: bool | None = None
    backup_note: str | None = None
    notes: str | None = None
    confirmed: bool = False  # --yes
    accept_clear: str | None = None  # why a Clear method is accepted for a sensitive medium
    remove_hpa: bool = False  # remove a hidden area (HPA/DCO) before the erase, recorded
    performer: dict | None = None  # NIST SP 800-88 Rev. 2 details of the people (bkp.yaml)
    witness_details: dict | None = None


@dataclass
class Preflight:
    medium: dict
    facts: devices.DeviceFacts
    hardware: list[list[str]] | None = None  # argv of the hardware erase, in order
    hardware_poll: list[str] | None = None
    classification: str | None = None
    backup: dict | None = None
    technique: str | None = None  # IEEE 2883: overwrite, block erase, crypto erase
    drive: dict = field(default_factory=dict)  # what the drive said and showed (markers.py)
    remove_hidden: list[list[str]] | None = None  # argv that removes an HPA/DCO
    tool: str | None = None  # the outside tool and its version (hdparm, nvme-cli)


Confirm = Callable[[Preflight], bool]
Hook = Callable[[str], None]  # called with the device path between write and read-back


# ---------------------------------------------------------------- checks

def preflight(ctx: Context, request: SanitizeRequest) -> Preflight:
    """Every safety check; SafetyError (recorded in the audit trail) on the first refusal."""
    request.serial = check_serial(request.serial)  # a serial that is none is a usage error
    try:
        return _preflight(ctx, request)
    except SafetyError as exc:
        ctx.audit("sanitize", "refused", None, serial=request.serial, device=request.device,
                  method=request.method, reason=str(exc))
        raise


def _preflight(ctx: Context, request: SanitizeRequest) -> Preflight:
    if request.method not in METHODS:
        raise SafetyError(f"unknown method {request.method}; one of {', '.join(METHODS)}")
    medium = cat.get_medium(ctx.catalog, request.serial.strip())
    if medium is None:
        raise SafetyError(f"serial {request.serial} is not in the media register; register "
                          f"the medium first (bkp media register --serial {request.serial} "
                          f"--type ...) so that its sanitization can be recorded")
    if medium["state"] in ("destroyed", "sanitizing"):
        raise SafetyError(f"medium {medium['serial']} is {medium['state']} (since "
                          f"{medium['state_since']}); nothing to sanitize")
    classification, backup = data_context(ctx, medium, request)
    check_classification_rules(medium, request, classification, backup)
    facts = devices.inspect(request.device)
    _check_identity(medium, facts, request.serial)
    _check_not_ours(ctx, facts)
    problems = devices.usage_problems(facts)
    if problems:
        raise SafetyError(f"{facts.path} is in use; nothing was written:\n  "
                          + "\n  ".join(problems))
    if facts.size == 0:
        raise SafetyError(f"{facts.path} has a size of 0 bytes; wrong device?")
    plan = Preflight(medium, facts, classification=classification, backup=backup,
                     technique=TECHNIQUES.get(request.method))
    _check_hidden_area(plan, request)
    if request.method in HARDWARE_METHODS:
        plan.hardware, plan.hardware_poll = hardware_plan(facts, request.method)
        plan.technique = technique_of(plan.hardware, request.method)
        plan.tool = tool_version(plan.hardware)
        if request.method.startswith("nvme-") and facts.transport == "nvme":
            plan.drive["namespaces"] = _check_namespaces(facts, request.method)
    return plan


def _check_hidden_area(plan: Preflight, request: SanitizeRequest) -> None:
    """An ATA drive may hide sectors from the system (HPA, DCO): neither an overwrite nor
    every drive's erase reaches them. Refused until removed, or removed with --remove-hpa
    (recorded with the real and the reported sizes)."""
    facts = plan.facts
    if facts.kind != "block" or facts.transport != "ata":
        return
    area = devices.hidden_area(facts.path)
    plan.drive["hidden_area"] = area.as_json()
    if not area.hidden:
        return
    if not request.remove_hpa:
        raise SafetyError(
            f"{facts.path} hides part of itself from the system ({area.as_json()['summary']})"
            f": an erase would leave the hidden sectors as they are; remove the hidden area "
            f"(hdparm -N p{area.native_sectors} {facts.path}, hdparm --dco-restore) or give "
            f"--remove-hpa, which removes it and records both sizes")
    plan.remove_hidden = []
    if area.dco:
        plan.remove_hidden.append(devices.hdparm_dco_restore_argv(facts.path))
    if area.hpa or area.dco:
        plan.remove_hidden.append(devices.hdparm_remove_hpa_argv(
            facts.path, max(area.native_sectors or 0, area.real_sectors or 0)))


def _check_namespaces(facts: devices.DeviceFacts, method: str) -> dict:
    """An NVMe drive may carry other namespaces: a format of one leaves the others' data,
    unless the controller formats all of them at once; a sanitize covers every namespace,
    which must then be free too."""
    controller = devices.nvme_controller(facts.path)
    listed = runner.run(devices.nvme_list_ns_argv(controller), timeout=60)
    if not listed.ok:
        raise _unsupported(facts, method, f"nvme list-ns failed, so other namespaces cannot "
                                          f"be ruled out: {listed.stderr_tail[-300:]}")
    namespaces = devices.parse_nvme_list_ns(listed.stdout)
    own = devices.nvme_namespace_id(facts.path)
    others = [n for n in namespaces if n != own]
    info = {"active": namespaces, "erased": own, "others": others, "covered": not others}
    if not others:
        return info
    if method == "nvme-format":
        done = runner.run(devices.nvme_id_ctrl_argv(controller), timeout=60)
        caps = devices.parse_nvme_id_ctrl(done.stdout) if done.ok else None
        if not (caps and caps.format_all_namespaces):
            raise SafetyError(
                f"{controller} has other namespaces ({', '.join(map(str, others))}) that a "
                f"format of {facts.path} leaves as they are: sanitize the whole drive with "
                f"--method nvme-sanitize, or delete the other namespaces first")
    problems = []
    for nsid in others:
        path = f"{controller}n{nsid}"
        if os.path.exists(path):
            problems += devices.usage_problems(devices.inspect(path))
    if problems:
        raise SafetyError(f"the erase covers every namespace of {controller}, and another "
                          f"one is in use; nothing was written:\n  " + "\n  ".join(problems))
    return {**info, "covered": True,
            "note": "the erase acts on every namespace of the controller"}


def technique_of(hardware: list[list[str]], method: str) -> str:
    """The IEEE 2883 technique the drive was told to use, from the commands themselves."""
    words = {word for argv in hardware for word in argv}
    for word, technique in (("--sanact=4", "crypto erase"), ("--ses=2", "crypto erase"),
                            ("--sanitize-crypto-scramble", "crypto erase"),
                            ("--sanact=2", "block erase"),
                            ("--sanitize-block-erase", "block erase"),
                            ("--sanact=3", "overwrite"), ("--sanitize-overwrite", "overwrite"),
                            ("--ses=1", "user data erase (vendor-defined: overwrite or "
                                        "block erase)"),
                            ("--security-erase-enhanced", "overwrite (enhanced, vendor "
                                                          "pattern)"),
                            ("--security-erase", "overwrite")):
        if word in words:
            return technique
    return TECHNIQUES.get(method, "unknown")


def tool_version(hardware: list[list[str]]) -> str | None:
    """The outside tool that told the drive to erase, with its version."""
    if not hardware:
        return None
    tool = hardware[0][0]
    argv = {"hdparm": [tool, "-V"], "nvme": [tool, "version"]}.get(os.path.basename(tool))
    if argv is None or runner.which(tool) is None:
        return tool
    done = runner.run(argv, timeout=30)
    text = (done.stdout or "").strip().splitlines()
    return text[0].strip() if done.ok and text else tool


# A Clear method leaves data recoverable by laboratory means (NIST SP 800-88): for a
# sensitive medium only where it stays in the company's hands or is destroyed next.
CLEAR_ALLOWED_AFTER = ("destroy", "storage")


def check_classification_rules(medium: dict, request: SanitizeRequest,
                               classification: str | None, backup: dict | None) -> None:
    """Refuse (4) what the classification of the data does not allow; pure."""
    if classification is None and medium.get("tenant"):
        # a bench without the tenant's policy must not read as "not sensitive"
        raise SafetyError(
            f"the classification of tenant {medium['tenant']}'s data on medium "
            f"{medium['serial']} is unknown (its policy cannot be read here): give "
            f"--classification normal or sensitive, as its policy says")
    if classification != "sensitive":
        return
    category = METHODS[request.method][0]
    if category == "Clear" and request.destination_after not in CLEAR_ALLOWED_AFTER \
            and not request.accept_clear:
        raise SafetyError(
            f"medium {medium['serial']} held sensitive data: {request.method} is a NIST "
            f"Clear method, which does not protect it against laboratory recovery once it "
            f"leaves for {request.destination_after}; use a Purge method (ata-sanitize, "
            f"ata-secure-erase, nvme-sanitize, nvme-format), --destination storage or "
            f"destroy, or --accept-clear REASON to record why Clear is acceptable here")
    if backup and backup.get("backed_up") and request.backed_up is None:
        return  # the catalog's own record of a good backup
    if request.backed_up is True and request.backup_note:
        return  # said, and where: recorded on the certificate
    if request.backed_up is False and request.backup_note:
        return
    why = (backup or {}).get("note") or "nothing records a backup of its data"
    raise SafetyError(
        f"medium {medium['serial']} held sensitive data that is not known to be backed up "
        f"({why}); back the tenant up first, give --backed-up with --backup-note saying "
        f"where it was backed up, or --not-backed-up with --backup-note saying why losing "
        f"this data is acceptable")


def _check_identity(medium: dict, facts: devices.DeviceFacts, serial: str) -> None:
    if facts.serial and not devices.same_serial(facts.serial, serial):
        raise SafetyError(f"{facts.path} reports serial {facts.serial}, not {serial}: this is "
                          f"not the medium you named; check the label and `lsblk -do "
                          f"NAME,SERIAL`")
    capacity = medium.get("capacity")
    # Labels state capacity in rounded decimal units; within 1 % is the same medium.
    if capacity and abs(facts.size - capacity) > capacity * 0.01:
        raise SafetyError(f"{facts.path} holds {facts.size} bytes but medium "
                          f"{medium['serial']} is registered with {capacity}; wrong device?")


def _check_not_ours(ctx: Context, facts: devices.DeviceFacts) -> None:
    home = os.path.realpath(ctx.settings.home)
    if facts.kind == "image" and (facts.path + "/").startswith(home + "/"):
        raise SafetyError(f"{facts.path} is inside bkp's own state directory {home}")


def hardware_plan(facts: devices.DeviceFacts, method: str
                  ) -> tuple[list[list[str]], list[str] | None]:
    """The commands of a hardware erase, or SafetyError when the device cannot do it."""
    if method.startswith("ata-"):
        return _ata_plan(facts, method)
    return _nvme_plan(facts, method)


def _unsupported(facts: devices.DeviceFacts, method: str, why: str) -> SafetyError:
    return SafetyError(f"{method} is not possible on {facts.path}: {why}; use --method zero, "
                       f"random or dod3 (overwrite), or see runbooks/decommission-media.md")


def _ata_plan(facts, method):
    if facts.kind == "image" or facts.transport in ("loop", "nvme", "virtio"):
        raise _unsupported(facts, method, f"it is {_what(facts)}, not an ATA disk")
    done = runner.run(devices.hdparm_identify_argv(facts.path), timeout=60)
    security = devices.parse_hdparm_identify(done.stdout if done.ok else "")
    if method == "ata-sanitize":
        if not security.sanitize_block_erase and not security.sanitize_crypto_scramble:
            raise _unsupported(facts, method, "the drive does not report the SANITIZE "
                                              "feature set (hdparm -I)")
        return ([devices.ata_sanitize_argv(facts.path, security.sanitize_crypto_scramble)],
                devices.ata_sanitize_status_argv(facts.path))
    if not security.supported:
        raise _unsupported(facts, method, "the drive does not report the ATA security "
                                          "feature set (hdparm -I)")
    if security.frozen:
        raise _unsupported(facts, method, "the drive's security is frozen by the BIOS; "
                                          "suspend and resume the machine (rtcwake -m mem -s "
                                          "5) or re-plug the drive, then try again")
    if security.locked or security.enabled:
        raise _unsupported(facts, method, "the drive already has a security password; "
                                          "unlock and disable it first (hdparm "
                                          "--security-disable)")
    return ([devices.ata_set_password_argv(facts.path),
             devices.ata_secure_erase_argv(facts.path, security.enhanced)], None)


def _nvme_plan(facts, method):
    if facts.transport != "nvme":
        raise _unsupported(facts, method, f"it is {_what(facts)}, not an NVMe namespace")
    controller = devices.nvme_controller(facts.path)
    done = runner.run(devices.nvme_id_ctrl_argv(controller), timeout=60)
    if not done.ok:
        raise _unsupported(facts, method, f"nvme id-ctrl failed: {done.stderr_tail[-300:]}")
    caps = devices.parse_nvme_id_ctrl(done.stdout)
    if method == "nvme-format":
        if not caps.format:
            raise _unsupported(facts, method, "the controller does not support Format NVM")
        return [devices.nvme_format_argv(facts.path, caps.crypto_erase)], None
    if not (caps.sanitize_crypto or caps.sanitize_block):
        raise _unsupported(facts, method, "the controller supports no sanitize action")
    return ([devices.nvme_sanitize_argv(controller, caps.sanitize_crypto)],
            devices.nvme_sanitize_log_argv(controller))


def _what(facts: devices.DeviceFacts) -> str:
    if facts.kind == "image":
        return "an image file"
    return {"loop": "a loop device", "virtio": "a virtual disk",
            "nvme": "an NVMe device"}.get(facts.transport or "", "a block device")


# ---------------------------------------------------------------- the wipe

def dry_run(ctx: Context, request: SanitizeRequest) -> Outcome:
    """Every safety check of a sanitization, and what would be done; nothing is written, not
    even an audit event (exit 4 with the reason when it would be refused)."""
    _validate_request(request)
    try:
        plan = _preflight(ctx, request)
    except SafetyError as exc:
        return Outcome(request.serial, exc.exit_code, {
            "dry_run": True, "serial": request.serial, "device": request.device,
            "method": request.method, "would": "refuse", "error": str(exc)})
    facts = plan.facts
    return Outcome(plan.medium.get("tenant") or "", 0, {
        "dry_run": True, "serial": plan.medium["serial"], "device": facts.path,
        "device_kind": facts.kind, "bytes": facts.size, "serial_check": facts.serial_note,
        "method": request.method, "category": METHODS[request.method][0],
        "passes": list(SOFTWARE_METHODS.get(request.method, ())),
        "hardware_commands": [" ".join(argv) for argv in plan.hardware or []],
        "verify": request.verify, "destination_after": request.destination_after,
        "technique": plan.technique, "classification": plan.classification,
        "drive": plan.drive or None,
        "would": "sanitize", "error": None,
        "checks": ["registered serial", "device identity and capacity",
                   "not bkp's own state", "not mounted, swapped, held or open elsewhere",
                   "not the disk of the running system",
                   "classification rules (Clear, backup)",
                   *(["no hidden area (HPA/DCO)"] if "hidden_area" in plan.drive else []),
                   *(["other NVMe namespaces covered"] if "namespaces" in plan.drive
                     else [])]})


def sanitize(ctx: Context, request: SanitizeRequest, confirm: Confirm | None = None,
             between_phases: Hook | None = None) -> Outcome:
    """Check, confirm, wipe, verify, record and certify one medium."""
    _validate_request(request)
    ensure_can_certify(ctx)  # before anything is written, not after the wipe
    plan = preflight(ctx, request)
    if not request.confirmed and not (confirm and confirm(plan)):
        _refuse(ctx, request, "not confirmed: type the serial when asked, or give --yes for "
                              "unattended use")
    handles = _open_and_recheck(ctx, request, plan)
    try:
        return _run(ctx, request, plan, handles, between_phases)
    finally:
        handles.close()


def _validate_request(request: SanitizeRequest) -> None:
    if request.classification is not None:
        request.classification = request.classification.strip().lower()
        if request.classification not in ("normal", "sensitive"):
            raise UsageError("--classification must be normal or sensitive")
    if request.verify not in VERIFY_MODES:
        raise UsageError(f"--verify must be one of {', '.join(VERIFY_MODES)}")
    if request.destination_after not in DESTINATIONS_AFTER:
        raise UsageError(f"--destination must be one of {', '.join(DESTINATIONS_AFTER)}")


def _refuse(ctx: Context, request: SanitizeRequest, reason: str):
    ctx.audit("sanitize", "refused", None, serial=request.serial, device=request.device,
              method=request.method, reason=reason)
    raise SafetyError(reason)


def _open_and_recheck(ctx: Context, request: SanitizeRequest, plan: Preflight):
    """Open exclusively, then check again: the confirmation may have taken minutes."""
    facts = plan.facts
    try:
        handles = wipe.open_handles(facts.path, facts.size, facts.kind == "block")
    except OSError as exc:
        _refuse(ctx, request, f"cannot open {facts.path} exclusively ({exc.strerror}); it is "
                              f"in use")
    try:
        again = devices.inspect(request.device)
        changed = [field for field in ("path", "kind", "devnum", "size", "serial",
                                       "image_identity")
                   if getattr(again, field) != getattr(facts, field)]
        problems = devices.usage_problems(again, probe_exclusive=False)
        if changed:
            problems.insert(0, f"the device changed since it was checked ({', '.join(changed)})")
        if problems:
            _refuse(ctx, request, f"{facts.path} failed the check right before writing; "
                                  f"nothing was written:\n  " + "\n  ".join(problems))
    except BaseException:
        handles.close()
        raise
    return handles


def _warm_up_certificate_modules() -> None:
    """Import the PDF and signature libraries while the device is busy: the certificate is
    then ready the moment the read-back ends (they take half a second to import)."""

    def load():
        with contextlib.suppress(Exception):
            import fpdf  # noqa: F401
            import pyhanko.sign.signers  # noqa: F401
            from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: F401

    threading.Thread(target=load, name="bkp-warm-up", daemon=True).start()


def _run(ctx: Context, request: SanitizeRequest, plan: Preflight, handles: wipe.Handles,
         between_phases: Hook | None) -> Outcome:
    _warm_up_certificate_modules()
    record_id = _open_record(ctx, request, plan)
    started = time.monotonic()
    state = {"bytes_written": 0, "io_errors": 0, "drive": dict(plan.drive)}
    tenant = plan.medium.get("tenant") or ""
    try:
        hardware_command = _erase(ctx, request, plan, handles, state, record_id)
        if between_phases:
            between_phases(handles.path)
        readback = _verify(ctx, request, plan, handles, record_id)
    except KeyboardInterrupt:
        row = _close(ctx, record_id, "aborted", state, started,
                     error="interrupted (Ctrl-C or SIGTERM) before the wipe finished")
        return Outcome(tenant, 130, _result_json(row, None))
    except (OSError, OperationError) as exc:
        row = _close(ctx, record_id, "failed", state, started, error=str(exc))
        return Outcome(tenant, 1, _result_json(row, None))
    except Exception as exc:  # a bug must still leave the record failed, never running
        _close(ctx, record_id, "failed", state, started, error=f"internal error: {exc!r}")
        raise
    row, certificate = _finish(ctx, record_id, state, started, readback, hardware_command)
    return Outcome(tenant, 0 if row["result"] == "erased" else 5,
                   _result_json(row, certificate))


def _open_record(ctx: Context, request: SanitizeRequest, plan: Preflight) -> int:
    facts, medium = plan.facts, plan.medium
    classification, backup = plan.classification, plan.backup
    record = {
        "serial": medium["serial"], "device": facts.path, "device_kind": facts.kind,
        "device_serial": facts.serial, "device_model": facts.model, "method": request.method,
        "category": METHODS[request.method][0],
        "passes": json.dumps(list(SOFTWARE_METHODS.get(request.method, ()))),
        "verify_mode": request.verify, "size": facts.size, "operator": ctx.settings.operator,
        "witness": request.witness, "organization": request.organization,
        "tool_version": __version__, "destination_after": request.destination_after,
        "classification": classification, "backup": json.dumps(backup) if backup else None,
        "notes": request.notes, "stream_seed": os.urandom(32).hex(),
        "accept_clear": request.accept_clear if METHODS[request.method][0] == "Clear"
        else None,
        "technique": plan.technique, "categorization": categorization(classification),
        "tool": plan.tool,
        "drive_evidence": json.dumps(plan.drive, sort_keys=True) if plan.drive else None,
        "people": json.dumps({"performer": request.performer,
                              "witness": request.witness_details}),
        "sample_seed": os.urandom(16).hex() if request.verify == "sample" else None,
    }
    record_id = cat.open_sanitization(ctx.catalog, record)
    ctx.audit("sanitize", "started", medium.get("tenant"), record_id=record_id,
              serial=medium["serial"], device=facts.path, device_kind=facts.kind,
              serial_check=facts.serial_note, method=request.method, verify=request.verify,
              size=facts.size, witness=request.witness)
    return record_id


def _erase(ctx, request, plan, handles, state, record_id) -> str | None:
    if plan.remove_hidden:
        _remove_hidden_area(ctx, plan, state)
    if plan.hardware:
        return _hardware_erase(ctx, plan, state, handles)
    record = cat.get_sanitization(ctx.catalog, record_id)
    passes = SOFTWARE_METHODS[request.method]
    for number, name in enumerate(passes, 1):
        pattern = wipe.pattern_named(name, bytes.fromhex(record["stream_seed"]))
        label = f"pass {number}/{len(passes)} ({name})"
        report = wipe.write_pass(handles, pattern, _progress(ctx, plan, label), label)
        state["bytes_written"] += report.bytes_written
        state["io_errors"] += report.io_errors
    return None


def _remove_hidden_area(ctx: Context, plan: Preflight, state: dict) -> None:
    """--remove-hpa: the hidden sectors become addressable, checked and recorded."""
    for argv in plan.remove_hidden:
        done = runner.run(argv, timeout=120)
        if not done.ok:
            raise OperationError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                                 f"{done.stderr_tail[-300:]}")
    after = devices.hidden_area(plan.facts.path)
    state["drive"]["hidden_area_after"] = after.as_json()
    state["drive"]["hidden_area_removed"] = [" ".join(argv) for argv in plan.remove_hidden]
    if after.hidden:
        raise OperationError(f"the hidden area of {plan.facts.path} is still there after "
                             f"removing it ({after.as_json()['summary']})")
    real = (after.visible_sectors or 0) * 512
    if real and devices.inspect(plan.facts.path).size != real:
        raise OperationError(f"the hidden area of {plan.facts.path} was removed, but the "
                             f"kernel still sees the old size; re-plug the drive (or echo 1 "
                             f"> /sys/block/{plan.facts.name}/device/rescan) and run bkp "
                             f"sanitize again")


def drive_status(facts: devices.DeviceFacts, hardware: list[list[str]]) -> dict | None:
    """The drive's own account of its erase state: ATA security and sanitize state, the
    NVMe sanitize log. Recorded before and after the erase."""
    tool = os.path.basename(hardware[0][0]) if hardware else None
    if tool == "hdparm":
        done = runner.run(devices.hdparm_identify_argv(facts.path), timeout=60)
        security = devices.parse_hdparm_identify(done.stdout if done.ok else "")
        status = {"security_supported": security.supported,
                  "security_enabled": security.enabled, "security_locked": security.locked,
                  "security_frozen": security.frozen}
        if any("--sanitize" in word for argv in hardware for word in argv):
            sanitize = runner.run(devices.ata_sanitize_status_argv(facts.path), timeout=60)
            status["sanitize"] = devices.parse_ata_sanitize_status(
                sanitize.stdout + sanitize.stderr_tail)
        return status
    if tool == "nvme" and facts.transport == "nvme":
        done = runner.run(devices.nvme_sanitize_log_argv(devices.nvme_controller(facts.path)),
                          timeout=60)
        if not done.ok:
            return {"sanitize_log": "unavailable"}
        try:
            progress, status = devices.parse_nvme_sanitize_log(done.stdout)
        except (ValueError, AttributeError, TypeError):
            return {"sanitize_log": "unreadable"}
        return {"sanitize_status": {0: "never sanitized", 1: "completed", 2: "in progress",
                                    3: "failed"}.get(status, f"status {status}"),
                "sanitize_progress": progress,
                "sanitize_action": devices.parse_nvme_sanitize_action(done.stdout)}
    return None


def _hardware_erase(ctx: Context, plan: Preflight, state: dict,
                    handles: wipe.Handles | None = None) -> str:
    drive = state["drive"]
    drive["status_before"] = drive_status(plan.facts, plan.hardware)
    asked = [int(word.split("=", 1)[1]) for argv in plan.hardware for word in argv
             if word.startswith("--sanact=")]
    if asked:
        drive["sanitize_action_requested"] = asked[0]
    marker_plan, data = markers.plan(plan.facts.size), None
    if handles is not None:
        data = markers.sample_data(handles, plan.facts.size, marker_plan)
        markers.write(handles, marker_plan)
    for argv in plan.hardware:
        if ctx.progress:
            ctx.progress(f"{plan.medium['serial']}: running {argv[0]} {argv[1]} ... (the "
                         f"drive erases itself; this can take hours)")
        done = runner.run(argv, timeout=HARDWARE_TIMEOUT_S)
        if not done.ok:
            raise OperationError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                                 f"{done.stderr_tail[-500:]}")
    if plan.hardware_poll:
        _wait_for_sanitize(ctx, plan)
    _forget_cached_blocks(plan.facts)
    drive["status_after"] = drive_status(plan.facts, plan.hardware)
    if handles is not None:
        drive["markers"] = markers.check(handles, marker_plan,
                                         markers.promise_of(plan.hardware), data)
    state["bytes_written"] = plan.facts.size  # the drive erased every block itself
    return " && ".join(" ".join(argv) for argv in plan.hardware)


def _forget_cached_blocks(facts: devices.DeviceFacts) -> None:
    """The drive erased underneath the kernel: what the page cache holds of the device is
    what was there before, and must not be read back as the result (BLKFLSBUF)."""
    if facts.kind != "block":
        return
    import fcntl

    with contextlib.suppress(OSError):
        fd = os.open(facts.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, 0x1261)  # BLKFLSBUF
        finally:
            os.close(fd)


def _drive_problems(drive: dict) -> list[str]:
    """What the drive's own evidence says against the erase: markers still there, content
    other than promised, a security password left set (the erase never completed)."""
    problems = []
    found = markers.problem(drive["markers"]) if drive.get("markers") else None
    if found:
        problems.append(found)
    after = drive.get("status_after") or {}
    if after.get("security_enabled"):
        problems.append("the drive still has the erase password set: it did not complete "
                        "the SECURITY ERASE UNIT")
    if after.get("sanitize") == "failed" or after.get("sanitize_status") == "failed":
        problems.append("the drive reports its sanitize operation failed")
    if drive.get("sanitize_action_requested") and after.get("sanitize_action") is not None \
            and after["sanitize_action"] != drive["sanitize_action_requested"]:
        problems.append(f"the drive's sanitize log describes another sanitize (action "
                        f"{after['sanitize_action']}) than the one bkp started (action "
                        f"{drive['sanitize_action_requested']}): a stale log, not this erase")
    if drive.get("sanitize_action_requested") and after.get("sanitize_status") not in (
            None, "completed"):
        problems.append(f"the drive's sanitize log says {after['sanitize_status']} after "
                        f"the sanitize, not completed")
    return problems


def _wait_for_sanitize(ctx: Context, plan: Preflight) -> None:
    """Poll the drive until its sanitize completes. A drive whose log never shows the
    sanitize under way (it ignored the command, or the log cannot be read) ends the wait
    after a few answers, not after a day."""
    deadline = time.monotonic() + HARDWARE_TIMEOUT_S
    idle = 0
    while time.monotonic() < deadline:
        done = runner.run(plan.hardware_poll, timeout=60)
        status, said = _sanitize_status(plan.hardware_poll, done)
        if status == "completed":
            return
        if status == "failed":
            raise OperationError(f"the drive reports its sanitize operation failed: "
                                 f"{done.stdout[-300:]}")
        idle = 0 if status == "in progress" else idle + 1
        if idle >= STALLED_POLLS:
            raise OperationError(f"the drive's sanitize log {said} in {idle} answers in a "
                                 f"row after the sanitize command: the sanitize never "
                                 f"started or cannot be followed, so it is not certified")
        time.sleep(POLL_INTERVAL_S)
    raise OperationError("the drive did not finish its sanitize operation in time")


def _sanitize_status(argv: list[str], done) -> tuple[str, str]:
    """(completed | in progress | failed | unknown, what the drive said) of one poll."""
    if not done.ok:
        return "unknown", f"is unavailable ({argv[0]} exit {done.returncode})"
    if os.path.basename(argv[0]) == "nvme":
        try:
            _, code = devices.parse_nvme_sanitize_log(done.stdout or "{}")
        except (ValueError, AttributeError, TypeError):
            return "unknown", "cannot be read"
        status = {1: "completed", 2: "in progress", 3: "failed"}.get(code, "unknown")
        return status, "says never sanitized" if code == 0 else f"says status {code}"
    status = devices.parse_ata_sanitize_status(done.stdout + done.stderr_tail)
    return status, "says nothing of a sanitize under way"


def _verify(ctx, request, plan, handles, record_id) -> wipe.ReadBack:
    record = cat.get_sanitization(ctx.catalog, record_id)
    size = plan.facts.size
    if request.verify == "full":
        ranges = wipe.full_plan(size)
    else:
        ranges = wipe.sample_plan(size, bytes.fromhex(record["sample_seed"]))
        sample = {"seed": record["sample_seed"], "subsections": wipe.SAMPLE_SUBSECTIONS,
                  "fraction": wipe.SAMPLE_FRACTION, "block": wipe.ALIGN,
                  "ranges": len(ranges), "bytes": wipe.planned_bytes(ranges)}
        cat.note_sample_plan(ctx.catalog, record_id, json.dumps(sample))
    expected = None
    if not plan.hardware:
        last = SOFTWARE_METHODS[request.method][-1]
        expected = wipe.pattern_named(last, bytes.fromhex(record["stream_seed"]))
    return wipe.read_back(handles, ranges, expected, request.verify,
                          _progress(ctx, plan, f"verify ({request.verify})"))


def _finish(ctx, record_id, state, started, readback: wipe.ReadBack,
            hardware_command: str | None) -> tuple[dict, dict]:
    """Close the record as erased or failed (verification) and certify it either way: a
    failed sanitization is evidence too."""
    errors = state["io_errors"] + readback.io_errors
    drive_problems = _drive_problems(state["drive"])
    clean = readback.clean and state["io_errors"] == 0 and not drive_problems
    problems = [] if readback.clean and state["io_errors"] == 0 else \
        [_verification_problem(readback, state["io_errors"])]
    problems += [f"verification failed: {p}" for p in drive_problems]
    row = _close(ctx, record_id, "erased" if clean else "failed", state, started,
                 readback=readback, io_errors=errors, error="; ".join(problems) or None,
                 hardware_command=hardware_command)
    return row, issue_certificate(ctx, record_id)


def _verification_problem(readback: wipe.ReadBack, write_errors: int) -> str:
    parts = []
    if readback.mismatched_blocks:
        parts.append(f"{readback.mismatched_blocks} blocks of 4 KiB do not hold what was "
                     f"written (first at byte {readback.first_mismatch})")
    if readback.io_errors or write_errors:
        parts.append(f"{readback.io_errors + write_errors} I/O errors")
    if readback.bytes_read < readback.bytes_planned and not readback.io_errors:
        parts.append(f"only {readback.bytes_read} of {readback.bytes_planned} bytes could be "
                     f"read back")
    return "verification failed: " + "; ".join(parts)


def _close(ctx, record_id, result, state, started, readback: wipe.ReadBack | None = None,
           io_errors: int | None = None, error: str | None = None,
           hardware_command: str | None = None) -> dict:
    elapsed = max(time.monotonic() - started, 1e-6)
    record = cat.get_sanitization(ctx.catalog, record_id)
    fields = {"bytes_written": state["bytes_written"],
              "io_errors": state["io_errors"] if io_errors is None else io_errors,
              "throughput_bps": round(record["size"] / elapsed, 1) if readback else None,
              "error": error, "hardware_command": hardware_command,
              "drive_evidence": json.dumps(state["drive"], sort_keys=True)
              if state.get("drive") else record.get("drive_evidence"),
              "verification_result": {"erased": "passed", "failed": "failed"}.get(
                  result, f"not verified ({result})")}
    if readback is not None:
        fields.update(hash=readback.hash, bytes_verified=readback.bytes_read,
                      mismatches=readback.mismatched_blocks)
    medium_state = {"erased": "sanitized"}.get(result, result)
    with ctx.catalog.transaction():  # the record and its event, or neither
        row = cat.close_sanitization(ctx.catalog, record_id, result, medium_state, **fields)
        if row is None:  # another bkp process closed it as abandoned meanwhile: keep that
            raise OperationError(f"sanitization {record_id} was closed by another bkp "
                                 f"process")
        ctx.audit("sanitize", result, _tenant_of(ctx, row["serial"]), record_id=record_id,
                  serial=row["serial"], device=row["device"], method=row["method"],
                  verify=row["verify_mode"], hash=row["hash"], bytes=row["size"],
                  bytes_written=row["bytes_written"], bytes_verified=row["bytes_verified"],
                  mismatches=row["mismatches"], io_errors=row["io_errors"], error=error)
    return row


def _tenant_of(ctx: Context, serial: str) -> str | None:
    medium = cat.get_medium(ctx.catalog, serial)
    return medium.get("tenant") if medium else None


def _result_json(row: dict, certificate: dict | None) -> dict:
    return {
        "record_id": row["id"], "serial": row["serial"], "device": row["device"],
        "method": row["method"], "category": row["category"], "result": row["result"],
        "technique": row.get("technique"), "accept_clear": row.get("accept_clear"),
        "drive": json.loads(row["drive_evidence"]) if row.get("drive_evidence") else None,
        "bytes": row["size"], "bytes_written": row["bytes_written"],
        "verification": {"mode": row["verify_mode"], "hash": row["hash"],
                         "bytes_read": row["bytes_verified"], "mismatches": row["mismatches"],
                         "io_errors": row["io_errors"]},
        "serial_check": serial_check(row),
        "started_at": row["started_at"], "ended_at": row["ended_at"],
        "duration_s": row["duration_s"], "throughput_bps": row["throughput_bps"],
        "error": row["error"], "certificate": certificate,
    }


def serial_check(row: dict) -> str:
    if row["device_serial"]:
        return f"device reports serial {row['device_serial']}"
    if row["device_kind"] == "image":
        return "image file reports no serial"
    return "device reports no serial"


def _progress(ctx: Context, plan: Preflight, label: str) -> wipe.Progress | None:
    if ctx.progress is None:
        return None
    started = time.monotonic()
    serial = plan.medium["serial"]

    def report(phase: str, done: int, total: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate else 0
        ctx.progress(f"{serial}: {label}: {human_bytes(done)} of {human_bytes(total)} "
                     f"({100 * done / max(total, 1):.0f}%), {rate / 1e6:.0f} MB/s, "
                     f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    return report


# ---------------------------------------------------------------- context of the data

def categorization(classification: str | None) -> str | None:
    """The pre-sanitization confidentiality categorisation of NIST SP 800-88 Rev. 2's
    sample record (FIPS 199 levels), from the data's classification."""
    return {"sensitive": "High (special categories of personal data: medical, BSN)",
            "normal": "Moderate (personal data)"}.get(classification or "")


def data_context(ctx: Context, medium: dict, request: SanitizeRequest
                 ) -> tuple[str | None, dict | None]:
    """The data's classification and whether (and where) it was backed up, for the
    certificate: from the options, else from the tenant's policy and last good backup.
    Sensitive wins: the medium's registration, the policy or the option may say so, and
    no option makes sensitive data normal."""
    tenant = medium.get("tenant")
    policy = _policy_of(ctx, tenant) if tenant and ctx.settings.policies.is_dir() else None
    said = [request.classification, medium.get("classification"),
            policy.classification if policy else None]
    classification = "sensitive" if "sensitive" in said else next(
        (c for c in said if c), None)
    if request.backed_up is not None or request.backup_note:
        return classification, {"backed_up": request.backed_up is not False,
                                "note": request.backup_note}
    if not tenant:
        return classification, None
    last = ctx.catalog.last_run(tenant, "backup", status="ok")
    if last is None:
        return classification, {"backed_up": False,
                                "note": f"no successful backup of tenant {tenant} recorded"}
    where = (f"{policy.destination.type} destination in {policy.destination.country}"
             if policy else None)
    return classification, {"backed_up": True, "where": where,
                            "snapshot_id": last.get("snapshot_id"),
                            "time": last.get("ended_at") or last.get("started_at")}


def _policy_of(ctx: Context, tenant: str):
    from bkp.errors import PolicyError
    from bkp.policy import load_policy

    try:
        return load_policy(ctx.settings.policies, tenant)
    except (PolicyError, OSError):
        return None  # the bench may have no policies; the certificate then says less
