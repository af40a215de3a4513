"""Copies without processes: which snapshots a copy gets, what its retention forgets, and
how one restic process reaches two repositories without sharing a transport setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from bkp import restic
from bkp.restic import Repository, pair_repository, transport_conflicts
from bkp.secrets import SecretEnv
from bkp.tenants.copies import after_copy, forget_plan, plan_copy, should_hold


def snap(id_: str, day: int, kind: str = "files", **more) -> dict:
    return {"id": id_ * 8, "time": f"2026-11-{day:02d}T02:00:00+00:00", "kind": kind,
            **more}


def copied(of: dict, id_: str) -> dict:
    return {**of, "id": id_ * 8, "original": of["id"]}


def test_every_snapshot_the_copy_lacks_is_planned_oldest_first():
    primary = [snap("c", 3), snap("a", 1), snap("b", 2)]
    present = [copied(primary[1], "x")]
    assert [s["id"] for s in plan_copy(primary, present, {"last": 5})] == ["b" * 8, "c" * 8]
    assert plan_copy(primary, [copied(s, s["id"][0].upper()) for s in primary],
                     {"last": 5}) == []


def test_what_the_copys_rules_would_forget_is_not_copied():
    # An append-only primary keeps everything until maintenance; copying its old snapshots
    # only to forget them again would repeat every night.
    primary = [snap(c, day) for day, c in enumerate("abcde", start=1)]
    present = [copied(primary[3], "p")]
    planned = plan_copy(primary, present, {"last": 2})
    assert [s["id"][0] for s in planned] == ["e"]
    assert len(plan_copy(primary, present, None)) == 4  # a legal hold keeps everything


def test_an_inventory_follows_its_dump_into_the_copy():
    dump = snap("d", 2, "database", database="app", database_type="postgresql")
    inventory = snap("i", 2, "inventory", database="app", database_type="postgresql",
                     dump="d" * 8)
    planned = plan_copy([snap("f", 2), dump, inventory], [], {"last": 1})
    assert {s["id"][0] for s in planned} == {"f", "d", "i"}
    # In the copy the dump has another id; its inventory still names the original.
    present = [copied(dump, "D"), copied(inventory, "I"), copied(snap("f", 2), "F")]
    dropped, files = forget_plan([*present, copied(snap("g", 3), "G")], {"last": 1})
    assert set(dropped) == {"F" * 8} and files == 1


def test_forget_plan_drops_only_the_copys_own_snapshots():
    present = [copied(snap("a", 1), "A"), copied(snap("b", 2), "B")]
    dropped, files = forget_plan([*present, copied(snap("c", 3), "C")], {"last": 2})
    assert dropped == ["A" * 8] and files == 2


def test_the_copy_is_asked_for_all_it_should_hold_and_records_what_arrived():
    primary = [snap("a", 1), snap("b", 2), snap("c", 3)]
    present = [copied(primary[0], "A"), copied(primary[1], "B")]
    # restic skips what the copy holds; one lost from it comes back.
    assert [s["id"][0] for s in should_hold(primary, present, {"last": 2})] == ["b", "c"]
    assert len(should_hold(primary, present, None)) == 3
    held = after_copy(present, primary, {"b" * 8: "X" * 8, "c" * 8: "C" * 8})
    assert sorted((h["id"][0], h["original"][0]) for h in held) == [
        ("A", "a"), ("C", "c"), ("X", "b")]
    assert all(h["time"] for h in held)


def sftp_repo(host: str) -> Repository:
    return Repository(url=f"sftp:bkp-t:/srv/{host}",
                      options=(f"sftp.command=ssh -F /h/{host} bkp-t -s sftp",),
                      env=SecretEnv({"RESTIC_PASSWORD_FILE": "/k"}))


def s3_repo(key: str, region: str) -> Repository:
    return Repository(url="s3:https://s3.example.eu/b", options=(f"s3.region={region}",),
                      env=SecretEnv({"RESTIC_PASSWORD_FILE": "/k", "AWS_ACCESS_KEY_ID": key,
                                     "AWS_SECRET_ACCESS_KEY": f"secret-{key}"},
                                    (f"secret-{key}",)))


def test_two_sftp_servers_or_two_s3_services_clash_in_one_process():
    assert transport_conflicts(sftp_repo("a"), sftp_repo("b")) == ["sftp.command"]
    assert transport_conflicts(s3_repo("K1", "eu-central-1"), s3_repo("K2", "nl-ams")) == [
        "s3.region", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert transport_conflicts(sftp_repo("a"), s3_repo("K", "eu-central-1")) == []
    with pytest.raises(ValueError, match=r"sftp\.command"):
        pair_repository(sftp_repo("a"), sftp_repo("b"))


def test_a_pair_names_the_source_only_in_restic_from_variables():
    source = Repository(url="", env=SecretEnv(
        {"RESTIC_REPOSITORY": "rest:https://u:pw-0815-long@h/t/", "RESTIC_PASSWORD": "tenant"},
        ("pw-0815-long", "tenant")), cacert=Path("/ca/source.pem"))
    target = s3_repo("K", "eu-central-1")
    pair = pair_repository(source, target)
    env = pair.env.env
    assert env["RESTIC_FROM_REPOSITORY"] == "rest:https://u:pw-0815-long@h/t/"
    assert env["RESTIC_FROM_PASSWORD"] == "tenant"
    assert env["RESTIC_PASSWORD_FILE"] == "/k" and "RESTIC_REPOSITORY" not in env
    assert {"pw-0815-long", "tenant", "secret-K"} <= set(pair.env.secrets)
    argv = restic.copy_argv(pair, ["a" * 8])
    assert argv[:3] == ["restic", "--repo", "s3:https://s3.example.eu/b"]
    assert argv[argv.index("--cacert") + 1] == "/ca/source.pem"
    assert argv[-3:] == ["copy", "--", "a" * 8]
    assert not any("pw-0815" in a or "secret-K" in a or a == "tenant" for a in argv)
    init = restic.init_copy_argv(pair)
    assert init[-2:] == ["init", "--copy-chunker-params"]
    local = pair_repository(Repository(url="/mnt/a", env=SecretEnv(
        {"RESTIC_PASSWORD_COMMAND": "pass x"})), target)
    assert local.env.env["RESTIC_FROM_REPOSITORY"] == "/mnt/a"
    assert local.env.env["RESTIC_FROM_PASSWORD_COMMAND"] == "pass x"


def test_copy_output_maps_each_source_snapshot_to_its_copy():
    stdout = ("\nsnapshot caee3dc3 of [/tmp/d] at 2026-11-24 22:15:18 +0000 UTC)\n"
              "  copy started, this may take a while...\n"
              "snapshot ceb5d409 saved\n"
              "snapshot 11112222 of [/tmp/d] at 2026-11-25 02:00:00 +0000 UTC)\n"
              "skipping snapshot 11112222, was already copied to snapshot 33334444\n"
              "snapshot 55556666 of [/tmp/e] at 2026-11-25 02:00:00 +0000 UTC)\n"
              "  copy started, this may take a while...\n"
              "snapshot 77778888 saved\n")
    assert restic.parse_copy_output(stdout) == {"caee3dc3": "ceb5d409",
                                                "55556666": "77778888"}
