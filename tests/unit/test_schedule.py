"""Due computation with fixed clocks: across midnight and both DST changes."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bkp.errors import PolicyError
from bkp.tenants.schedule import (
    Installation,
    next_slot,
    plan_due,
    previous_slot,
    render_cron,
    render_systemd,
    slot_label,
)

AMS = ZoneInfo("Europe/Amsterdam")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_previous_slot_across_midnight():
    # 00:30 local (23:30 UTC the day before in winter): the 02:00 slot is yesterday's
    now = utc("2026-11-22T23:30:00")
    assert previous_slot("0 2 * * *", now, AMS) == utc("2026-11-22T01:00:00")
    assert next_slot("0 2 * * *", now, AMS) == utc("2026-11-23T01:00:00")


def test_slot_exactly_now_counts_as_fired():
    assert previous_slot("0 2 * * *", utc("2026-11-23T01:00:00"), AMS) == utc("2026-11-23T01:00:00")


def test_spring_forward_missing_hour_still_fires_once():
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that night
    before = utc("2026-03-29T00:59:00")  # 01:59 CET
    after = utc("2026-03-29T01:45:00")  # 03:45 CEST
    assert previous_slot("30 2 * * *", before, AMS) == utc("2026-03-28T01:30:00")
    fired = previous_slot("30 2 * * *", after, AMS)
    assert fired.date() == datetime(2026, 3, 29).date()
    assert fired <= after
    # and the next day is normal again (02:30 CEST = 00:30 UTC)
    assert next_slot("30 2 * * *", after, AMS) == utc("2026-03-30T00:30:00")


def test_fall_back_repeated_hour_fires_once():
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice; only the first is a slot
    first = utc("2026-10-25T00:30:00")  # 02:30 CEST
    second = utc("2026-10-25T01:30:00")  # 02:30 CET
    assert previous_slot("30 2 * * *", first, AMS) == first
    assert previous_slot("30 2 * * *", second, AMS) == first
    runs = [{"status": "ok", "started_at": "2026-10-25T00:30:05.000000Z", "slot": None}]
    assert not plan_due("t", "backup", "30 2 * * *", runs, second, AMS).due


def test_slot_due_until_a_successful_run_covers_it():
    now = utc("2026-11-23T03:00:00")
    assert plan_due("t", "backup", "0 2 * * *", [], now, AMS).due
    failed = [{"status": "failed", "started_at": "2026-11-23T01:00:01.000000Z"}]
    assert plan_due("t", "backup", "0 2 * * *", failed, now, AMS).due
    ok = [{"status": "ok", "started_at": "2026-11-23T01:00:01.000000Z"}]
    assert not plan_due("t", "backup", "0 2 * * *", ok, now, AMS).due


def test_missed_slots_are_caught_up_once():
    # off for three nights: one run covers the most recent slot, nothing else is owed
    now = utc("2026-11-23T09:00:00")
    due = plan_due("t", "backup", "0 2 * * *", [
        {"status": "ok", "started_at": "2026-11-19T01:00:10.000000Z"}], now, AMS)
    assert due.due and slot_label(due.slot) == "2026-11-23T01:00:00Z"
    caught_up = [{"status": "ok", "started_at": "2026-11-23T09:00:05.000000Z"}]
    assert not plan_due("t", "backup", "0 2 * * *", caught_up, now, AMS).due


def test_run_before_the_slot_does_not_cover_it():
    now = utc("2026-11-23T03:00:00")
    early = [{"status": "ok", "started_at": "2026-11-23T00:59:00.000000Z"}]
    assert plan_due("t", "backup", "0 2 * * *", early, now, AMS).due


def test_failed_drill_settles_its_slot_but_error_does_not():
    now = utc("2026-11-23T09:00:00")
    for status, due in (("failed", False), ("passed", False), ("error", True),
                        ("interrupted", True)):
        runs = [{"status": status, "started_at": "2026-11-23T08:00:00.000000Z"}]
        assert plan_due("t", "drill", "0 6 * * *", runs, now, AMS).due is due, status


def test_no_schedule_means_nothing_due():
    assert plan_due("t", "drill", None, [], utc("2026-11-23T09:00:00"), AMS) is None


def test_rendered_units_carry_paths_and_hardening(tmp_path):
    inst = Installation(tmp_path / "venv/bin/bkp", tmp_path / "policies", tmp_path / "home")
    cron = render_cron(inst)
    line = next(ln for ln in cron.splitlines() if not ln.startswith("#"))
    assert line.startswith("*/15 * * * * root ")
    assert f"BKP_HOME='{tmp_path / 'home'}'" in line
    assert f"'{tmp_path / 'venv/bin/bkp'}' run >>'/var/log/bkp.log' 2>&1" in line
    units = render_systemd(inst)
    for setting in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                    f'ReadWritePaths="{tmp_path / "home"}"', "OnCalendar=*:0/15",
                    "Persistent=true", f'ExecStart="{tmp_path / "venv/bin/bkp"}" run',
                    f'Environment="BKP_HOME={tmp_path / "home"}"'):
        assert setting in units


# ---------------------------------------------------------------- hostile values in the units
# The rendered crontab and units are read back the way cron, /bin/sh and systemd read them:
# every value must come back unchanged, and nothing may start another line or setting.

HOSTILE = "a dir/with 'quotes' \"double\" 100% $HOME `x` \\ back;slash & $(id) *"


def cron_entries(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def cron_command(entry: str) -> str:
    """The command of a /etc/cron.d entry as cron hands it to /bin/sh: after the five time
    fields and the user; an unescaped % ends the command (the rest is stdin), \\% is %.
    (vixie/Debian cron do_command.c)"""
    fields = entry.split(None, 6)
    assert len(fields) == 7, entry
    command, out, escaped = fields[6], [], False
    for char in command:
        if escaped:
            if char == "%":
                out[-1] = "%"
            else:
                out.append(char)
            escaped = False
            continue
        if char == "%":
            break
        escaped = char == "\\"
        out.append(char)
    return "".join(out)


def recording_bkp(directory: Path) -> Path:
    """A stand-in for the bkp executable that records its argv and bkp's environment."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "bkp"
    exe.write_text(f"#!{sys.executable}\n"
                   "import json, os, sys\n"
                   "keys = [k for k in os.environ if k.startswith('BKP_')]\n"
                   "with open(os.environ['RECORD'], 'w') as fh:\n"
                   "    json.dump({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in "
                   "keys}}, fh)\n")
    exe.chmod(0o755)
    return exe


def hostile_installation(tmp_path: Path) -> Installation:
    base = tmp_path / HOSTILE
    return Installation(recording_bkp(base / "venv" / "bin"), base / "policies", base / "home",
                        writable=(base / "home", base / "local repo 50%"),
                        environment=(("BKP_HEALTHCHECK_URL", "https://hc.example/p/a%20b?x=1&y=$Z"),
                                     ("BKP_PROMETHEUS_TEXTFILE", str(base / "m.prom"))),
                        log=base / "bkp.log")


def test_cron_entry_runs_bkp_with_every_value_unchanged(tmp_path):
    inst = hostile_installation(tmp_path)
    [entry] = cron_entries(render_cron(inst))
    record = tmp_path / "record.json"
    env = {"PATH": os.environ["PATH"], "RECORD": str(record)}
    subprocess.run(["/bin/sh", "-c", cron_command(entry)], env=env, check=True, timeout=60)
    got = json.loads(record.read_text())
    assert got["argv"] == ["run"]
    assert got["env"] == {"BKP_POLICIES": str(inst.policies), "BKP_HOME": str(inst.home),
                          **dict(inst.environment)}
    assert inst.log.exists()  # the redirection went to the log, not somewhere else


@pytest.mark.parametrize("field", ["home", "policies", "bkp", "log"])
@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\x1b", "\u2028", "\x85"])
def test_a_value_that_would_break_a_line_is_refused(tmp_path, field, bad):
    inst = Installation(tmp_path / "bkp", tmp_path / "policies", tmp_path / "home",
                        log=tmp_path / "bkp.log")
    inst = replace(inst, **{field: Path(f"/srv/x{bad}* * * * * root rm -rf /")})
    for render in (render_cron, render_systemd):
        with pytest.raises(PolicyError, match="control character") as raised:
            render(inst)
        assert raised.value.exit_code == 3


def test_environment_values_with_newlines_are_refused(tmp_path):
    inst = Installation(tmp_path / "bkp", tmp_path / "policies", tmp_path / "home",
                        environment=(("BKP_HEALTHCHECK_URL", "https://x/\nEnvironment=A=b"),))
    for render in (render_cron, render_systemd):
        with pytest.raises(PolicyError, match="BKP_HEALTHCHECK_URL"):
            render(inst)


def test_a_cron_entry_cron_would_cut_short_is_refused(tmp_path):
    inst = Installation(tmp_path / "bkp", tmp_path / ("p" * 1000), tmp_path / "home")
    with pytest.raises(PolicyError, match="too long"):
        render_cron(inst)


def test_a_plain_http_healthcheck_to_a_remote_host_is_refused_in_the_units(tmp_path):
    inst = Installation(tmp_path / "bkp", tmp_path / "policies", tmp_path / "home",
                        environment=(("BKP_HEALTHCHECK_URL", "http://hc.example/p"),))
    with pytest.raises(PolicyError, match="plain http"):
        render_cron(inst)


# systemd: extract_first_word() with EXTRACT_UNQUOTE (and EXTRACT_CUNESCAPE for Environment=
# and ExecStart=; our quoting only ever writes \\ and \" which both read alike), after or
# before specifier expansion (%% -> %).

def systemd_words(value: str) -> list[str]:
    words, word, quote, i, in_word = [], [], None, 0, False
    while i < len(value):
        char = value[i]
        if char == "\\":
            i += 1
            assert i < len(value), value
            word.append(value[i])
            in_word = True
        elif quote:
            if char == quote:
                quote = None
            else:
                word.append(char)
        elif char in "\"'":
            quote, in_word = char, True
        elif char in " \t":
            if in_word:
                words.append("".join(word))
            word, in_word = [], False
        else:
            word.append(char)
            in_word = True
        i += 1
    assert quote is None, value
    if in_word:
        words.append("".join(word))
    return words


def systemd_specifiers(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        if word[i] == "%":
            assert word[i + 1:i + 2] == "%", f"unescaped specifier in {word!r}"
            i += 1
        out.append(word[i])
        i += 1
    return "".join(out)


def unit_settings(text: str, unit: str) -> dict[str, list[str]]:
    section = text.split(f"# /etc/systemd/system/{unit}\n", 1)[1].split("# /etc/", 1)[0]
    settings: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            assert not value.endswith("\\"), line  # would continue on the next line
            settings.setdefault(key, []).append(value)
    return settings


def parsed_unit(inst: Installation) -> dict:
    settings = unit_settings(render_systemd(inst), "bkp.service")
    environment = dict(systemd_specifiers(w).split("=", 1)
                       for value in settings["Environment"] for w in systemd_words(value))
    [exec_start] = settings["ExecStart"]
    [writable] = settings["ReadWritePaths"]
    return {"env": environment,
            "exec": systemd_words(systemd_specifiers(exec_start)),
            "writable": [systemd_specifiers(w) for w in systemd_words(writable)]}


def test_systemd_unit_reads_back_every_value_unchanged(tmp_path):
    inst = hostile_installation(tmp_path)
    unit = parsed_unit(inst)
    assert unit["env"] == {"BKP_POLICIES": str(inst.policies), "BKP_HOME": str(inst.home),
                           **dict(inst.environment)}
    assert unit["exec"] == [str(inst.bkp), "run"]
    assert unit["writable"] == [str(inst.home), f"-{inst.writable[1]}"]


def test_systemd_accepts_the_units_and_finds_bkp_at_a_path_with_spaces(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install.sh --dev"
    base = tmp_path / "my venv 100%"
    inst = Installation(recording_bkp(base / "bin"), base / "policies", base / "home",
                        writable=(base / "home", base / "local repo"))
    units = render_systemd(inst)
    service = units.split("# /etc/systemd/system/bkp.timer\n")[0]
    (tmp_path / "bkp.service").write_text(service)
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "bkp.service")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "bkp.service" not in done.stderr, done.stderr


def test_readwritepaths_are_normalised_for_systemd(tmp_path):
    inst = Installation(tmp_path / "bkp", tmp_path / "policies", Path("/var/lib/./x/../bkp/"),
                        writable=(Path("//mnt//backup/a/"),))
    assert parsed_unit(inst)["writable"] == ["/var/lib/bkp", "-/mnt/backup/a"]
