"""Due computation with fixed clocks: across midnight and both DST changes."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

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
    assert f"BKP_HOME={tmp_path / 'home'}" in line and f"{tmp_path / 'venv/bin/bkp'} run" in line
    units = render_systemd(inst)
    for setting in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes",
                    f"ReadWritePaths={tmp_path / 'home'}", "OnCalendar=*:0/15",
                    "Persistent=true", f"ExecStart={tmp_path / 'venv/bin/bkp'} run"):
        assert setting in units
