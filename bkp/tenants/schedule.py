"""Cron expressions -> due slots, and the crontab / systemd units that drive `bkp run`.

Pure functions with the clock passed in. A slot is the most recent time a cron expression
fired (local time). It is due while no successful run covers it: a run that ended ok and
started at or after the slot, or that was started for that slot. Missed slots collapse into
the most recent one, so a machine that was off for three nights catches up once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bkp import names
from bkp.cron import croniter
from bkp.errors import PolicyError
from bkp.policy import url_transport_problem


def local_zone() -> tzinfo:
    """The machine's time zone with its DST rules (a fixed offset would be wrong half the year)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        try:
            name = Path("/etc/timezone").read_text().strip()
        except OSError:
            link = os.path.realpath("/etc/localtime")
            name = link.split("/zoneinfo/", 1)[1] if "/zoneinfo/" in link else ""
    try:
        return ZoneInfo(name) if name else datetime.now().astimezone().tzinfo
    except (ZoneInfoNotFoundError, ValueError):
        return datetime.now().astimezone().tzinfo


def _wall_to_utc(naive: datetime, zone: tzinfo) -> datetime:
    # fold=0: a wall time that occurs twice (autumn) is its first occurrence; one that does
    # not occur (spring) takes the offset from before the change, i.e. an hour later.
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)


def previous_slot(expression: str, now: datetime, zone: tzinfo | None = None) -> datetime:
    """The most recent firing time at or before `now`, as an aware UTC datetime.

    Cron fields are wall-clock time, so iteration happens on naive local times and only the
    result is placed in the zone: croniter's own DST arithmetic is not trusted here.
    """
    zone = zone or local_zone()
    wall_now = now.astimezone(zone).replace(tzinfo=None)
    itr = croniter(expression, wall_now + timedelta(seconds=1))
    while True:
        slot = _wall_to_utc(itr.get_prev(datetime), zone)
        if slot <= now:
            return slot


def next_slot(expression: str, now: datetime, zone: tzinfo | None = None) -> datetime:
    zone = zone or local_zone()
    itr = croniter(expression, now.astimezone(zone).replace(tzinfo=None))
    while True:
        slot = _wall_to_utc(itr.get_next(datetime), zone)
        if slot > now:
            return slot


@dataclass(frozen=True)
class Due:
    tenant: str
    kind: str  # backup | drill
    slot: datetime  # UTC
    due: bool
    reason: str


# Statuses that settle a slot. A drill that ran and found problems settles it too: its
# failure is a finding for a person, and repeating it every 15 minutes adds nothing.
COVERING = {"backup": frozenset({"ok"}), "drill": frozenset({"passed", "failed"})}


def slot_covered(slot: datetime, runs: list[dict], covering=COVERING["backup"]) -> bool:
    """Whether one of `runs` (catalog rows of one tenant and kind) covers the slot."""
    slot_text = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
    for run in runs:
        if run.get("status") not in covering:
            continue
        if run.get("slot") == slot_text:
            return True
        started = run.get("started_at")
        if started and _parse(started) >= slot:
            return True
    return False


def plan_due(tenant: str, kind: str, expression: str | None, runs: list[dict],
             now: datetime, zone: tzinfo | None = None) -> Due | None:
    """Whether `kind` is due for `tenant` now; None when the policy schedules no such work."""
    if not expression:
        return None
    slot = previous_slot(expression, now, zone)
    if slot_covered(slot, runs, COVERING.get(kind, COVERING["backup"])):
        return Due(tenant, kind, slot, False, "done for this slot")
    return Due(tenant, kind, slot, True, f"slot {slot_label(slot)} not yet done")


def slot_label(slot: datetime) -> str:
    return slot.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------- rendering
# Every value that lands in a crontab or a unit is a value, never syntax: a newline would
# start another cron entry or unit setting, so a value with a control character is refused
# (exit 3); the rest is quoted for the reader that parses it (cron + /bin/sh, systemd).

# vixie/Debian cron read at most 1000 characters of a command and silently cut the rest.
CRON_MAX_COMMAND = 999
DEFAULT_LOG = Path("/var/log/bkp.log")


@dataclass(frozen=True)
class Installation:
    bkp: Path  # the bkp executable
    policies: Path
    home: Path
    every_minutes: int = 15
    writable: tuple[Path, ...] = ()  # besides home: local destinations, the metrics folder
    environment: tuple[tuple[str, str], ...] = ()  # monitoring settings for `bkp run`
    log: Path = DEFAULT_LOG  # where cron appends bkp's output
    environment_file: Path | None = None  # systemd EnvironmentFile= (e.g. password_env)


def _values(inst: Installation) -> list[tuple[str, str]]:
    """(what, value) of everything the rendered schedule carries, for the one check."""
    return [("the bkp executable", str(inst.bkp)), ("BKP_POLICIES", str(inst.policies)),
            ("BKP_HOME", str(inst.home)), ("the log file", str(inst.log)),
            *((key, value) for key, value in inst.environment),
            *(("a writable path", str(path)) for path in inst.writable),
            *((("the environment file", str(inst.environment_file)),)
              if inst.environment_file else ())]


def check_installation(inst: Installation) -> None:
    """PolicyError (exit 3) for a value no crontab or unit can carry as it is."""
    for what, value in _values(inst):
        char = names.control_character(value)
        if char is not None:
            raise PolicyError(
                f"{what} {names.shown(value)} contains a control character "
                f"({names.shown(char)}): it cannot be written into a crontab or systemd unit "
                f"without starting another line. Use a path or URL without it")
    for key, value in inst.environment:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise PolicyError(f"{names.shown(key)} is not an environment variable name")
        if key == "BKP_HEALTHCHECK_URL":
            problem = url_transport_problem(value, "a ping")
            if problem:
                raise PolicyError(f"BKP_HEALTHCHECK_URL {value}: {problem}")


def _environment(inst: Installation) -> list[tuple[str, str]]:
    return [("BKP_POLICIES", str(inst.policies)), ("BKP_HOME", str(inst.home)),
            *inst.environment]


# ---- cron: the command goes to /bin/sh after cron has turned each % into a newline

def cron_word(value: str) -> str:
    """One /bin/sh word, single-quoted, with each % written \\% for cron.

    Each \\% stands outside the single quotes, right after a closing quote, so a value's
    own backslash can never pair with it: cron gives sh a plain %, sh a literal %."""
    return "\\%".join(_sh_single_quoted(part) for part in value.split("%"))


def _sh_single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def render_cron(inst: Installation) -> str:
    check_installation(inst)
    env = " ".join(f"{key}={cron_word(value)}" for key, value in _environment(inst))
    command = f"{env} {cron_word(str(inst.bkp))} run >>{cron_word(str(inst.log))} 2>&1"
    if len(command) > CRON_MAX_COMMAND:
        raise PolicyError(f"the cron command would be {len(command)} characters, too long: "
                          f"cron reads at most {CRON_MAX_COMMAND + 1} and silently cuts the "
                          "rest. Use shorter paths, or --format systemd")
    return "\n".join([
        "# bkp: every backup and drill that is due, checked every "
        f"{inst.every_minutes} minutes. Install: bkp schedule > /etc/cron.d/bkp",
        "# A run that finds another still working exits at once; nothing queues up.",
        f"*/{inst.every_minutes} * * * * root {command}",
        "",
    ])


# ---- systemd: words are split and unquoted like a shell's (quotes, \\ escapes) and % starts
# a specifier. ExecStart= expands $VAR only in the arguments ("run"), never in the path of
# the program, which systemd takes as written.

def systemd_word(value: str) -> str:
    """One double-quoted word for Environment=, ExecStart= or ReadWritePaths=."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _normalised(path: Path) -> str:
    """systemd refuses a path with `..` in it and simplifies the rest."""
    return "/" + os.path.normpath("/" + str(path)).lstrip("/")


# `bkp maintain --all` (retention on append-only destinations) runs where the credential
# that may delete lives, usually another host than the nightly one: its own job, weekly.
MAINTENANCE_CRON = "30 4 * * 0"
MAINTENANCE_CALENDAR = "Sun *-*-* 04:30:00"


def render_maintenance_cron(inst: Installation) -> str:
    check_installation(inst)
    env = " ".join(f"{key}={cron_word(value)}" for key, value in _environment(inst))
    command = (f"{env} {cron_word(str(inst.bkp))} maintain --all "
               f">>{cron_word(str(inst.log))} 2>&1")
    if len(command) > CRON_MAX_COMMAND:
        raise PolicyError(f"the cron command would be {len(command)} characters, too long: "
                          f"cron reads at most {CRON_MAX_COMMAND + 1} and silently cuts the "
                          "rest. Use shorter paths, or --format systemd")
    return "\n".join([
        "# bkp maintenance: retention (forget + prune) on the append-only destinations, with",
        "# the credential that may delete; only on the maintenance host. Weekly.",
        "# Install: bkp schedule --maintenance > /etc/cron.d/bkp-maintain",
        f"{MAINTENANCE_CRON} root {command}",
        "",
    ])


def render_maintenance_systemd(inst: Installation) -> str:
    return render_systemd(inst, unit="bkp-maintain", args="maintain --all",
                          description="bkp: retention on append-only destinations",
                          calendar=MAINTENANCE_CALENDAR,
                          timer_description="Weekly bkp maintenance of append-only "
                                            "destinations")


def render_systemd(inst: Installation, unit: str = "bkp", args: str = "run",
                   description: str = "bkp: due backups and restore drills",
                   calendar: str | None = None,
                   timer_description: str = "Check for due bkp backups and drills") -> str:
    check_installation(inst)
    home = _normalised(inst.home)
    writable = [systemd_word(home)] + [
        systemd_word(f"-{path}") for path in dict.fromkeys(_normalised(p) for p in inst.writable)
        if path != home]
    service = "\n".join([
        f"# /etc/systemd/system/{unit}.service",
        "[Unit]",
        f"Description={description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        *[f"Environment={systemd_word(f'{key}={value}')}" for key, value in _environment(inst)],
        *([f"EnvironmentFile={systemd_word(str(inst.environment_file))}"]
          if inst.environment_file else []),
        f"ExecStart={systemd_word(str(inst.bkp))} {args}",
        "Nice=10",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
        "ProtectSystem=strict",
        # "-": a local destination not mounted right now must not stop the whole unit.
        "ReadWritePaths=" + " ".join(writable),
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "NoNewPrivileges=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "UMask=0077",
        # Root only to read every tenant's files and to restore drills with their owners:
        # no other privilege is kept.
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_DAC_OVERRIDE CAP_CHOWN CAP_FOWNER",
        "ProtectProc=invisible",
        "ProtectHostname=yes",
        "ProtectClock=yes",
        "ProtectKernelLogs=yes",
        "RestrictNamespaces=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",  # keeps @chown: drills restore owners
        "SystemCallErrorNumber=EPERM",
        "PrivateMounts=yes",
        "",
    ])
    timer = "\n".join([
        f"# /etc/systemd/system/{unit}.timer",
        "[Unit]",
        f"Description={timer_description}",
        "",
        "[Timer]",
        f"OnCalendar={calendar or f'*:0/{inst.every_minutes}'}",
        "Persistent=true",
        "RandomizedDelaySec=60",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
        f"# enable with: systemctl daemon-reload && systemctl enable --now {unit}.timer",
        "",
    ])
    return service + "\n" + timer


def write_schedule(text: str, fmt: str, output: Path, unit: str = "bkp") -> list[Path]:
    """Write the rendered schedule with mode 0600 (it may hold a ping URL): the cron file
    itself, or UNIT.service and UNIT.timer in a directory for systemd."""
    if fmt == "cron":
        files = [(output, text)]
    else:
        header = f"# /etc/systemd/system/{unit}.timer\n"
        service, timer = text.split("\n" + header, 1)
        output.mkdir(parents=True, exist_ok=True)
        files = [(output / f"{unit}.service", service),
                 (output / f"{unit}.timer", header + timer)]
    for path, content in files:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        os.chmod(path, 0o600)
    return [path for path, _ in files]
