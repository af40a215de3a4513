"""The pure parts of the Kubernetes rendering: names Kubernetes accepts, the spread window."""

from __future__ import annotations

import re

import pytest

from bkp.tenants import kubernetes

DNS = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("tenant", ["ab", "acme-zorg", "a" * 63, "x-" * 31 + "y", "ends-"])
def test_names_fit_kubernetes_and_stay_apart(tenant):
    for task in ("backup", "drill", "maintain"):
        name = kubernetes.cronjob_name(task, tenant)
        assert len(name) <= 52 and DNS.fullmatch(name), name
    assert len(kubernetes.label_value(tenant)) <= 63
    assert DNS.fullmatch(kubernetes.label_value(tenant))
    assert DNS.fullmatch(kubernetes.secret_name(tenant))


def test_two_long_tenants_with_one_prefix_get_two_names():
    one, two = "a" * 50 + "-one", "a" * 50 + "-two"
    assert kubernetes.cronjob_name("backup", one) != kubernetes.cronjob_name("backup", two)
    assert kubernetes.cronjob_name("backup", "acme-zorg") == "bkp-backup-acme-zorg"


@pytest.mark.parametrize("text,expected", [
    ("22:00-05:00", (1320, 300)), ("01:30-04:15", (90, 255)),
    ("22:00", None), ("24:00-01:00", None), ("01:60-02:00", None), ("02:00-02:00", None),
    ("2:00-4:00", None),
])
def test_window(text, expected):
    assert kubernetes.parse_window(text) == expected


def test_spread_moves_only_plain_daily_times_into_the_window():
    window = (22 * 60, 5 * 60)
    minutes = set()
    for index in range(300):
        moved = kubernetes.spread_schedule("0 2 * * *", f"tenant-{index}", window)
        minute, hour, *rest = moved.split()
        assert rest == ["*", "*", "*"]
        at = int(hour) * 60 + int(minute)
        assert at >= 22 * 60 or at < 5 * 60
        minutes.add(at)
        assert kubernetes.spread_schedule("0 2 * * *", f"tenant-{index}", window) == moved
    assert len(minutes) > 150  # spread, not bunched
    for other in ("0 2 * * 1-5", "*/30 * * * *", "0 2 1 * *", "0 2,14 * * *"):
        assert kubernetes.spread_schedule(other, "acme-zorg", window) == other
    assert kubernetes.spread_schedule("0 2 * * *", "acme-zorg", None) == "0 2 * * *"


def test_maintenance_is_on_sunday_by_day():
    _minute, hour, day, month, weekday = kubernetes.maintenance_schedule("acme-zorg").split()
    assert weekday == "0" and 10 <= int(hour) < 16 and (day, month) == ("*", "*")
