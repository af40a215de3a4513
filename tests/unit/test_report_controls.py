"""The evidence report's judgements, as pure functions over plain records: the verdicts a
year of history gives, which the integration tests cannot wait for."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from bkp.errors import UsageError
from bkp.evidence import report as rep

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def run(id_: int, when: datetime, kind: str = "backup", status: str = "ok", **fields) -> dict:
    return {"id": id_, "kind": kind, "status": status, "_time": when,
            "started_at": when.isoformat(), "snapshot_id": f"{id_:08x}", **fields}


def policy(kind: str = "sftp", legal_hold: bool = False, append_only: bool = False,
           copies=()) -> SimpleNamespace:
    return SimpleNamespace(
        destination=SimpleNamespace(type=kind, path="/mnt/backup/x", append_only=append_only),
        retention=SimpleNamespace(legal_hold=legal_hold, last=3, hourly=0, daily=7, weekly=0,
                                  monthly=0, yearly=0),
        copies=copies, document="{}")


def test_rpo_share_is_time_weighted_and_names_the_longest_gap():
    backups = [run(1, T0), run(2, T0 + 24 * H), run(3, T0 + 60 * H)]
    coverage = rep.rpo_coverage(backups, 26, rep.Period(T0, T0 + 72 * H))
    # covered: 0-26, 24-50, 60-72 -> 62 of 72 hours
    assert coverage["pct"] == pytest.approx(100 * 62 / 72, abs=0.001)
    assert coverage["longest_gap_hours"] == 36.0
    assert coverage["uncovered_hours"] == 10.0


def test_a_failed_run_is_no_recovery_point_and_a_tiny_gap_is_never_rounded_away():
    backups = [run(1, T0), run(2, T0 + 20 * H, status="failed"), run(3, T0 + 26 * H +
                                                                      timedelta(seconds=1))]
    period = rep.Period(T0, T0 + 30 * H)
    coverage = rep.rpo_coverage(backups, 26, period)
    assert coverage["pct"] < 100 and coverage["_uncovered_s"] == pytest.approx(1)
    facts = rep.backup_facts(backups, backups, 26, period)
    assert rep.judge_backup_current(facts, backups, period)["status"] == "not_met"


def test_no_backup_at_all_is_not_evidenced_not_met():
    period = rep.Period(T0, T0 + 30 * H)
    facts = rep.backup_facts([], [], 26, period)
    assert rep.judge_backup_current(facts, [], period)["status"] == "not_evidenced"


def test_restore_tested_needs_a_drill_within_a_year_after_the_last_destination_change():
    end = T0 + 400 * 24 * H
    period = rep.Period(end - rep.YEAR, end)
    old = [run(1, T0, "drill", "passed")]
    verdict = rep.judge_restore_tested(old, [], period)
    assert verdict["status"] == "not_met" and "12 months" in verdict["reason"]
    recent = [*old, run(2, end - 30 * 24 * H, "drill", "passed")]
    assert rep.judge_restore_tested(recent, [], period)["status"] == "met"
    change = [{"time": rep.stamp(end - 10 * 24 * H), "fingerprint": "sha256:x",
               "audit_seq": 41}]
    verdict = rep.judge_restore_tested(recent, change, period)
    assert verdict["status"] == "not_met" and "destination changed" in verdict["reason"]
    failed_last = [*recent, run(3, end - 24 * H, "drill", "failed")]
    assert rep.judge_restore_tested(failed_last, [], period)["status"] == "not_met"
    assert rep.judge_restore_tested([], [], period)["status"] == "not_met"


def test_destination_changes_come_from_the_policy_versions():
    def version(n, destination, day):
        return {"id": n, "fingerprint": f"sha256:{n}", "seen_at": (T0 + day * 24 * H)
                .isoformat(), "document": json.dumps({"destination": destination,
                                                      "rpo_hours": n})}
    versions = [version(1, {"type": "local", "path": "/a"}, 0),
                version(2, {"type": "local", "path": "/a"}, 5),  # rpo changed only
                version(3, {"type": "sftp", "host": "b"}, 9)]
    events = [{"action": "policy.changed", "seq": 77,
               "details": json.dumps({"fingerprint": "sha256:3"})}]
    changes = rep.destination_changes(versions, events)
    assert [(c["fingerprint"], c["audit_seq"]) for c in changes] == [("sha256:3", 77)]


def observed(**values) -> str:
    return json.dumps(values)


def test_offsite_and_encrypted_are_judged_from_what_runs_observed():
    sftp = observed(type="sftp", off_site=True, transport="ssh", host="b1", country="NL",
                    host_key="ssh-ed25519 SHA256:abc", host_key_enforced=True)
    period_runs = [run(1, T0, observations=sftp), run(2, T0 + 24 * H, observations=sftp)]
    assert rep.judge_offsite(policy(), period_runs)["status"] == "met"
    assert rep.judge_encrypted(policy(), period_runs)["status"] == "met"
    # one night rebuilt by `catalog sync`: nothing observed, so not evidenced
    synced = [*period_runs, run(3, T0 + 48 * H, source="repository")]
    verdict = rep.judge_offsite(policy(), synced)
    assert verdict["status"] == "not_evidenced" and "catalog sync" in verdict["reason"]
    assert rep.judge_encrypted(policy(), synced)["status"] == "not_evidenced"
    # the bucket answered that it stands in London: outside the EEA, whatever the policy said
    london = observed(type="s3", off_site=True, transport="https", host="s3.amazonaws.com",
                      bucket="b", bucket_region="eu-west-2", country="NL")
    assert rep.judge_offsite(policy("s3"), [run(4, T0, observations=london)])["status"] \
        == "not_met"
    plain = observed(type="s3", off_site=True, transport="http", host="127.0.0.1",
                     bucket="b", bucket_region="eu-central-1", country="DE")
    assert rep.judge_encrypted(policy("s3"), [run(5, T0, observations=plain)])["status"] \
        == "not_met"
    local = observed(type="local", off_site=False, transport="none", location="/mnt/x")
    assert rep.judge_offsite(policy("local"), [run(6, T0, observations=local)])["status"] \
        == "not_met"
    assert rep.judge_offsite(policy(), [])["status"] == "not_evidenced"


def test_retention_and_copies():
    goods = [run(1, T0, snapshots_kept=3), run(2, T0 + 24 * H, snapshots_kept=None)]
    period = rep.Period(T0, T0 + 48 * H)
    assert rep.judge_retention(policy(), goods, goods, period)["status"] == "not_met"
    assert rep.judge_retention(policy(), goods[:1], goods, period)["status"] == "met"
    assert rep.judge_retention(policy(legal_hold=True), [], [], period)["status"] == "met"
    assert rep.judge_retention(policy(append_only=True), goods, goods, period)["status"] \
        == "not_evidenced"
    assert rep.judge_copies(policy(), goods)["status"] == "not_met"
    with_copy = policy(copies=("fra",))
    assert rep.judge_copies(with_copy, goods)["status"] == "not_evidenced"
    copied = [run(3, T0, copies=json.dumps([{"id": "fra", "status": "ok"}]))]
    assert rep.judge_copies(with_copy, copied)["status"] == "met"
    failed = [run(4, T0, copies=json.dumps([{"id": "fra", "status": "failed"}]))]
    assert rep.judge_copies(with_copy, failed)["status"] == "not_met"


def test_media_leaving_service_need_a_certificate():
    period = rep.Period(T0, T0 + 48 * H)
    record = {"record_id": 9, "kind": "sanitization", "result": "erased",
              "time": rep.stamp(T0 + H), "left_service": True, "certificate_id": None}
    verdict = rep.judge_media([{"serial": "S1", "records": [record]}], period)
    assert verdict["status"] == "not_met" and "S1" in verdict["reason"]
    certified = dict(record, certificate_id=4)
    assert rep.judge_media([{"serial": "S1", "records": [certified]}], period)["status"] \
        == "met"
    assert rep.judge_media([], period)["status"] == "not_evidenced"


def test_the_period_options():
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    period = rep.period_of("2026-01-01", "2026-01-31", now)
    assert rep.stamp(period.start) == "2026-01-01T00:00:00Z"
    assert rep.stamp(period.end) == "2026-01-31T23:59:59Z"
    assert rep.period_of(None, None, now).start == now - rep.YEAR
    with pytest.raises(UsageError):
        rep.period_of("2026-02-01", "2026-01-01", now)
    with pytest.raises(UsageError):
        rep.period_of("last tuesday", None, now)


def test_fleet_overview_puts_failures_first():
    def section(name, *statuses):
        return {"tenant": name, "controls": [{"id": f"c{i}", "status": s}
                                             for i, s in enumerate(statuses)]}
    rows = rep.fleet_overview([section("a", "met", "met"),
                               section("b", "not_met", "met"),
                               section("c", "not_evidenced", "met")])
    assert [r["tenant"] for r in rows] == ["b", "c", "a"]


def test_a_destination_edited_since_bkp_last_acted_needs_a_new_drill():
    """The policy versions are recorded when bkp acts: a destination edited in the policy
    file after the last drill must not let the old destination's drill stand for it."""
    tested = {"type": "local", "path": "/a"}
    versions = [{"id": 1, "fingerprint": "sha256:1", "seen_at": T0.isoformat(),
                 "document": json.dumps({"destination": tested})}]
    now = T0 + 10 * 24 * H
    edited = SimpleNamespace(document=json.dumps({"destination": {"type": "local",
                                                                  "path": "/b"}}))
    pending = rep.unrecorded_destination_change(versions, edited, now)
    assert pending and pending[0]["time"] == rep.stamp(now)
    drills = [run(1, T0 + 24 * H, "drill", "passed")]
    period = rep.Period(now - rep.YEAR, now)
    verdict = rep.judge_restore_tested(drills, pending, period)
    assert verdict["status"] == "not_met" and "destination changed" in verdict["reason"]
    same = SimpleNamespace(document=json.dumps({"destination": tested}))
    assert rep.unrecorded_destination_change(versions, same, now) == []
    assert rep.unrecorded_destination_change([], edited, now) == []
