"""Per-tenant cost in a pod that does not grow with the fleet: a job with an empty BKP_HOME
(no catalog) skips restic's forget when nothing would be forgotten, knowing the snapshots
from its own last signed record in the results inbox, cross-checked against the names of the
repository's snapshot files (no key derivation). Whatever does not agree (no record, a
snapshot the record does not know, a record signed with another key) runs restic as before,
and what is kept is always what restic's own forget keeps."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e


def restic_shim(folder: Path) -> Path:
    """restic itself, with every argument list written down first."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "argv.log"
    shim = folder / "restic"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {shutil.which("restic")}'
                    f' "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return log


def subcommands(log: Path) -> list[str]:
    words = {"backup", "forget", "snapshots", "version", "unlock", "prune"}
    return [next((w for w in line.split() if w in words), "?")
            for line in log.read_text().splitlines()] if log.exists() else []


class Pods:
    """Jobs of one tenant as pods run them: each with a new, empty BKP_HOME."""

    def __init__(self, env, tenant: str):
        self.env, self.tenant, self.count = env, tenant, 0

    def backup(self, *, expect: int = 0) -> tuple[dict, list[str]]:
        self.count += 1
        base = self.env.root / "pods" / f"{self.count}"
        home, policies = base / "home", base / "policies"
        home.mkdir(parents=True, mode=0o700)
        policies.mkdir(mode=0o700)
        shutil.copy(self.env.policies / f"{self.tenant}.yaml", policies)
        log = restic_shim(base / "shim")
        done = subprocess.run(
            [sys.executable, "-m", "bkp", "backup", self.tenant, "--json"],
            capture_output=True, text=True, timeout=600,
            env=self.env.env(BKP_HOME=str(home), BKP_POLICIES=str(policies),
                             BKP_CONFIG=str(self.env.root / "bkp.yaml"),
                             BKP_SNAPSHOT_HOST=self.tenant, BKP_OPERATOR="scheduler",
                             BKP_RESULT_KEY=str(self.env.root / "keys" /
                                                f"{self.tenant}.result.key"),
                             PATH=f"{base / 'shim'}{os.pathsep}{os.environ['PATH']}"))
        assert done.returncode == expect, (done.stdout, done.stderr)
        return json.loads(done.stdout)["runs"][0], subcommands(log)


@pytest.fixture
def pods(bkp_env):
    bkp_env.local_tenant("kliniek-west", retention={"last": 3})
    (bkp_env.root / "bkp.yaml").write_text(yaml.safe_dump({"results": {
        "inbox": {"type": "local", "country": "NL", "path": str(bkp_env.root / "inbox")},
        "keys": str(bkp_env.root / "keys")}}))
    central = {"BKP_CONFIG": str(bkp_env.root / "bkp.yaml")}
    bkp_env.bkp_json("init", "kliniek-west", **central)
    bkp_env.bkp_json("catalog", "result-keys", "--all", **central)
    return Pods(bkp_env, "kliniek-west")


def kept_by_restic(env, tenant: str, last: int) -> set[str]:
    done = env.restic(tenant, "forget", "--dry-run", "--json", "--group-by", "",
                      "--keep-last", str(last))
    assert done.returncode == 0, done.stderr
    return {s["id"][:8] for g in json.loads(done.stdout) for s in g.get("keep") or []}


def test_an_unchanged_night_in_a_fresh_pod_runs_no_forget(pods):
    first, calls = pods.backup()
    assert "forget" in calls  # nothing known yet: restic decides
    second, calls = pods.backup()
    assert calls.count("backup") == 1
    assert "forget" not in calls and "snapshots" not in calls, calls
    assert second["snapshots_kept"] == 2
    third, calls = pods.backup()
    assert "forget" not in calls and "snapshots" not in calls, calls
    assert third["snapshots_kept"] == 3
    # The fourth night drops the first snapshot: restic forgets it, as its rules say.
    fourth, calls = pods.backup()
    assert "forget" in calls
    assert fourth["snapshots_kept"] == 3
    assert kept_by_restic(pods.env, pods.tenant, 3) == {
        s["id"][:8] for s in json.loads(pods.env.restic(
            pods.tenant, "snapshots", "--json").stdout)}
    assert first["snapshot_id"][:8] not in kept_by_restic(pods.env, pods.tenant, 3)


def test_a_snapshot_the_record_does_not_know_makes_restic_decide(pods):
    pods.backup()
    # Someone backs up the tenant outside the pods (the bkp host, by hand): the pod's
    # record no longer describes the repository.
    pods.env.bkp_json("backup", pods.tenant, BKP_CONFIG=str(pods.env.root / "bkp.yaml"))
    pods.env.bkp_json("backup", pods.tenant, BKP_CONFIG=str(pods.env.root / "bkp.yaml"))
    run, calls = pods.backup()
    assert "forget" in calls or "snapshots" in calls, calls
    # Four snapshots, `last: 3`: restic forgot the oldest, and the run says three.
    assert run["snapshots_kept"] == 3
    listed = json.loads(pods.env.restic(pods.tenant, "snapshots", "--json").stdout)
    assert len(listed) == 3


def test_a_record_changed_after_signing_is_not_believed(pods):
    pods.backup()
    record = pods.env.root / "inbox" / "kept" / f"{pods.tenant}.json"
    signed = json.loads(record.read_text())
    assert signed["document"]["tenant"] == pods.tenant
    # Every snapshot it names is still there, so only the signature can tell.
    signed["document"]["written_at"] = "2020-01-01T00:00:00.000000Z"
    record.write_text(json.dumps(signed))
    _, calls = pods.backup()
    assert "forget" in calls or "snapshots" in calls, calls


def test_the_gatherer_can_ingest_without_opening_a_repository(pods):
    pods.backup()
    env = pods.env
    log = restic_shim(env.root / "central-shim")
    central = {"BKP_CONFIG": str(env.root / "bkp.yaml"),
               "PATH": f"{env.root / 'central-shim'}{os.pathsep}{os.environ['PATH']}"}
    ingest, _ = env.bkp_json("catalog", "sync", "--all", "--no-snapshots", **central)
    assert ingest["results"]["ingested"] == 1
    assert ingest["tenants"] == []
    assert not log.exists()  # not one restic process: no key derivation per tenant
    status, _ = env.bkp_json("status", pods.tenant, **central)
    assert status["tenants"][0]["last_backup"]["status"] == "ok"
    listed, _ = env.bkp_json("catalog", "sync", "--all", "--jobs", "4", **central)
    assert listed["results"]["ingested"] == 0
    assert [row["tenant"] for row in listed["tenants"]] == [pods.tenant]
    assert listed["tenants"][0]["added"] == 0 and listed["tenants"][0]["snapshots"] == 1
    assert "snapshots" in subcommands(log)


def test_a_pods_copies_reach_the_central_status(bkp_env, pods):
    """A tenant with a copy at another site, backed up by a pod: the central catalog learns
    what the pod copied (the copy's row rides in the signed result), so `bkp status` shows
    the copy up to date instead of never copied."""
    from tests.integration.test_copies import add_copies, local_copy

    add_copies(bkp_env, "kliniek-west", local_copy(bkp_env, "kliniek-west", id="b"))
    central = {"BKP_CONFIG": str(bkp_env.root / "bkp.yaml")}
    bkp_env.bkp_json("init", "kliniek-west", **central)
    run, _ = pods.backup()
    assert [c["status"] for c in run["copies"]] == ["ok"], run
    bkp_env.bkp_json("catalog", "sync", "--all", "--no-snapshots", **central)
    [tenant] = bkp_env.bkp_json("status", **central)[0]["tenants"]
    [copy] = tenant["copies"]
    assert copy["id"] == "b" and copy["last_copied"], copy
    assert copy["last_copied"]["snapshot_id"] == run["copies"][0]["snapshot_id"], copy
