"""Hostile policy values through the real CLI and real restic: a value is carried as a value
(tags, selectors, schedule) or refused with one sentence and exit 3, never obeyed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bkp import restic
from bkp.tenants.schedule import cron_word
from tests.unit.test_restic_argv import restic_splits
from tests.unit.test_schedule import cron_command

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

HOSTILE_PURPOSE = "zorg,tenant=other, 100% = classification=normal "


def no_traceback(done) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


def plain_snapshots(env, tenant: str) -> list[dict]:
    """`restic snapshots --json` as an operator runs it: no bkp in between."""
    done = env.restic(tenant, "snapshots", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def plain_backup(env, tenant: str, *tag_flags: str) -> None:
    """A snapshot written with plain restic and the given --tag flags (each split by restic
    on commas, as bkp's tags used to be)."""
    args = [arg for flag in tag_flags for arg in ("--tag", flag)]
    done = env.restic(tenant, "backup", "--host", "elsewhere", *args,
                      str(env.root / "data" / tenant))
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ restic's own tag rules

def test_restic_stores_tags_as_the_unit_tests_model_them(bkp_env):
    """restic 0.14: each --tag is split on ',', trimmed, empties dropped, order kept. The
    hypothesis tests rely on this model (restic_splits); here real restic confirms it."""
    bkp_env.local_tenant("model")
    bkp_env.bkp_json("init", "model")
    flags = ["tenant=model", "purpose=a, b,,c ", " x=%2C ", "=", "é€=1"]
    plain_backup(bkp_env, "model", *flags)
    [snapshot] = plain_snapshots(bkp_env, "model")
    assert snapshot["tags"] == restic_splits(flags)


def test_a_tag_flag_with_a_comma_selects_both_tags_and_two_flags_either(bkp_env):
    bkp_env.local_tenant("select")
    bkp_env.bkp_json("init", "select")
    plain_backup(bkp_env, "select", "tenant=aa", "x=1")
    plain_backup(bkp_env, "select", "tenant=bb")

    def count(*selectors: str) -> int:
        args = [arg for s in selectors for arg in ("--tag", s)]
        done = bkp_env.restic("select", "snapshots", "--json", *args)
        return len(json.loads(done.stdout))

    assert count("tenant=aa,x=1") == 1  # AND within one flag
    assert count("tenant=aa,tenant=bb") == 0
    assert count("tenant=aa", "tenant=bb") == 2  # OR between flags
    # bkp's selector is one flag with one tag: exactly the tenant, in both tag schemes
    assert restic.snapshots_argv(restic.Repository(url="r"), "aa")[-2:] == ["--tag",
                                                                           "tenant=aa"]


# ------------------------------------------------------------------ a purpose with a comma

@pytest.fixture
def hostile_tenant(bkp_env):
    bkp_env.local_tenant("acme", purpose=HOSTILE_PURPOSE, retention={"last": 2})
    bkp_env.local_tenant("other", purpose="gewoon", classification="normal")
    bkp_env.bkp_json("init", "acme", "other")
    return bkp_env


def test_a_comma_in_the_purpose_adds_no_tag_to_the_snapshot(hostile_tenant):
    env = hostile_tenant
    env.bkp_json("backup", "acme")
    [snapshot] = plain_snapshots(env, "acme")
    tags = snapshot["tags"]
    assert [t for t in tags if t.startswith("tenant=")] == ["tenant=acme"]
    assert [t for t in tags if t.startswith("classification=")] == [
        "classification=sensitive"]
    assert restic.parse_tags(tags) == {"tenant": "acme", "purpose": HOSTILE_PURPOSE,
                                       "classification": "sensitive", "kind": "files"}
    # and restic's own selector for the injected tenant finds nothing
    done = env.restic("acme", "snapshots", "--json", "--tag", "tenant=other")
    assert json.loads(done.stdout) == []


def test_snapshots_and_retention_select_exactly_the_tenant(hostile_tenant):
    env = hostile_tenant
    env.bkp_json("backup", "other")
    # A snapshot of tenant other whose purpose names acme, tagged exactly as bkp tags it,
    # has ended up in acme's repository before acme's backups and their retention run.
    intruder = restic.format_tags({"tenant": "other", "purpose": "x,tenant=acme",
                                   "classification": "normal"})
    plain_backup(env, "acme", *intruder)
    for _ in range(3):
        env.bkp_json("backup", "acme")  # each applies retention: keep the last 2
    stored = plain_snapshots(env, "acme")
    owners = sorted(restic.parse_tags(s["tags"])["tenant"] for s in stored)
    assert owners == ["acme", "acme", "other"]  # retention never counted other's as acme's
    listed, _ = env.bkp_json("snapshots", "acme")
    assert [(s["tenant"], s["purpose"]) for s in listed["snapshots"]] == [
        ("acme", HOSTILE_PURPOSE)] * 2
    others, _ = env.bkp_json("snapshots", "other")
    assert [(s["tenant"], s["purpose"]) for s in others["snapshots"]] == [("other", "gewoon")]
    # An old-format snapshot of other with an injected tenant=acme tag matches restic's
    # selector for acme, but its tags name other: bkp does not list it as acme's.
    plain_backup(env, "acme", "tenant=other", "purpose=x,tenant=acme", "classification=normal")
    listed, _ = env.bkp_json("snapshots", "acme")
    assert {s["tenant"] for s in listed["snapshots"]} == {"acme"}
    assert len(listed["snapshots"]) == 2


def test_old_format_snapshots_are_still_listed_as_written(hostile_tenant):
    env = hostile_tenant
    # what bkp wrote before the tag scheme: the purpose split by restic at its commas
    plain_backup(env, "acme", "tenant=acme", "purpose=zorg,tenant=other",
                 "classification=sensitive")
    listed, _ = env.bkp_json("snapshots", "acme")
    [snapshot] = listed["snapshots"]
    assert (snapshot["tenant"], snapshot["purpose"], snapshot["classification"]) == (
        "acme", "zorg,tenant=other", "sensitive")
    assert env.bkp_json("snapshots", "other")[0]["snapshots"] == []


# ------------------------------------------------------------------ refused policies

def validate(env, *files: Path):
    done = env.bkp("policy", "validate", "--json", *map(str, files))
    no_traceback(done)
    return done.returncode, json.loads(done.stdout)["policies"]


def errors_of(policies: list[dict], tenant: str) -> list[dict]:
    [found] = [p for p in policies if p["tenant"] == tenant]
    return found["errors"]


def test_a_0610_password_file_is_refused_by_validate_as_by_init(bkp_env):
    bkp_env.local_tenant("mode")
    (bkp_env.secrets / "mode.key").chmod(0o610)
    code, policies = validate(bkp_env)
    [error] = errors_of(policies, "mode")
    init = bkp_env.bkp("init", "mode")
    assert (code, init.returncode) == (3, 3)
    assert error["message"] in init.stdout + init.stderr  # one rule, one message


def test_a_tenant_with_a_trailing_newline_is_refused(bkp_env):
    path = bkp_env.local_tenant("acme")
    doc = yaml.safe_load(path.read_text())
    doc["tenant"] = "acme\n"
    hostile = bkp_env.policies / "acme\n.yaml"
    hostile.write_text(yaml.safe_dump(doc))
    path.unlink()
    code, policies = validate(bkp_env)
    assert code == 3
    assert [e["path"] for e in errors_of(policies, "acme\n")] == ["tenant"]
    done = bkp_env.bkp("backup", "acme\n")
    assert done.returncode == 2 and "not a tenant id" in done.stderr
    assert not (bkp_env.home / "locks").exists() or not any(
        "\n" in p.name for p in (bkp_env.home / "locks").iterdir())


def test_one_repository_spelled_two_ways_is_shared(bkp_env, sshd):
    first = bkp_env.sftp_tenant("first", sshd)
    second = bkp_env.sftp_tenant("second", sshd)
    doc = yaml.safe_load(second.read_text())
    path = yaml.safe_load(first.read_text())["destination"]["path"]
    doc["destination"].update(host="LOCALHOST." if sshd.host == "localhost" else sshd.host,
                              path=path.replace("/first", "//./x/../first/"))
    second.write_text(yaml.safe_dump(doc))
    code, policies = validate(bkp_env)
    assert code == 3
    for tenant in ("first", "second"):
        assert any("never share a repository" in e["message"]
                   for e in errors_of(policies, tenant))


def test_a_local_repository_inside_any_tenants_source_is_refused(bkp_env):
    victim = bkp_env.local_tenant("victim")
    source = yaml.safe_load(victim.read_text())["sources"][0]
    bkp_env.write_policy("thief", {"type": "local", "country": "NL",
                                   "path": os.path.join(source, "stash")})
    bkp_env.write_policy("selfish", {"type": "local", "country": "NL",
                                     "path": str(bkp_env.root / "data" / "selfish" / "backup")})
    code, policies = validate(bkp_env)
    assert code == 3
    assert errors_of(policies, "victim") == []
    assert any("victim" in e["message"] for e in errors_of(policies, "thief"))
    assert any("copy the repository into itself" in e["message"]
               for e in errors_of(policies, "selfish"))
    init = bkp_env.bkp("init", "thief")
    assert init.returncode == 3
    no_traceback(init)


def test_a_plain_http_healthcheck_to_a_remote_host_is_refused(bkp_env):
    bkp_env.local_tenant("pinger", monitoring={"healthcheck_url": "http://hc.example.eu/x"})
    code, policies = validate(bkp_env)
    assert code == 3
    [error] = errors_of(policies, "pinger")
    assert error["path"] == "monitoring.healthcheck_url" and "plain http" in error["message"]


@pytest.mark.parametrize("home", ["/var/lib/bkp\n*/1 * * * * root touch /tmp/owned",
                                  "/var/lib/bkp\rx"])
def test_a_home_that_would_inject_a_crontab_line_is_refused(bkp_env, home):
    for fmt in ("cron", "systemd"):
        done = bkp_env.bkp("schedule", "--format", fmt, BKP_HOME=home)
        assert done.returncode == 3, done.stdout
        assert done.stdout == "" and "control character" in done.stderr
        no_traceback(done)


def test_a_home_with_spaces_and_percent_is_carried_exactly(bkp_env):
    home = str(bkp_env.root / "state 100% 'x'")
    cron = bkp_env.bkp("schedule", BKP_HOME=home)
    assert cron.returncode == 0, cron.stderr
    [entry] = [ln for ln in cron.stdout.splitlines() if ln and not ln.startswith("#")]
    command = cron_command(entry)  # as cron hands it to /bin/sh
    exe = (Path(sys.executable).parent / "bkp").absolute()
    tail = f" {cron_word(str(exe))} run >>{cron_word('/var/log/bkp.log')} 2>&1"
    assert command.endswith(tail), command
    # the same assignments, with `env` instead of bkp: what bkp would have been given
    done = subprocess.run(["/bin/sh", "-c", command[:-len(tail)] + " env"],
                          capture_output=True, text=True, timeout=60, env={})
    assert f"BKP_HOME={home}" in done.stdout.splitlines()
    assert f"BKP_POLICIES={bkp_env.policies}" in done.stdout.splitlines()
