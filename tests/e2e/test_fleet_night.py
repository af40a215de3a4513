"""A simulated cluster night: many small tenants, each backed up by an independent process
with its own empty BKP_HOME and only its own policy (exactly what a pod gets), each leaving a
signed result in a shared inbox; the central gatherer ingests everything once (run twice),
the audit chain verifies, `bkp status` is right for every tenant, a result lost on its way
still shows as a backup, and a tampered or forged result is rejected (exit 5).

BKP_FLEET_TENANTS sets the number of tenants (the issue's 200; 12 by default, to keep the
suite's time modest on a shared machine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

TENANTS = int(os.environ.get("BKP_FLEET_TENANTS", "12"))
PARALLEL = 4
DRILLED = 3  # tenants whose drill also runs in a pod this night


def pod(env, tenant: str, command: str, root: Path) -> subprocess.CompletedProcess:
    """One job in a pod: an empty BKP_HOME, the tenant's policy alone, its result key."""
    home = root / f"{command}-{tenant}" / "home"
    policies = root / f"{command}-{tenant}" / "policies"
    home.mkdir(parents=True, mode=0o700)
    policies.mkdir(mode=0o700)
    shutil.copy(env.policies / f"{tenant}.yaml", policies)
    return subprocess.run(
        [sys.executable, "-m", "bkp", command, tenant], capture_output=True, text=True,
        timeout=600, env=env.env(BKP_HOME=str(home), BKP_POLICIES=str(policies),
                                 BKP_CONFIG=str(env.root / "bkp.yaml"),
                                 BKP_SNAPSHOT_HOST=tenant, BKP_OPERATOR="scheduler",
                                 BKP_RESULT_KEY=str(env.root / "keys" /
                                                    f"{tenant}.result.key")))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    from tests.conftest import new_bkp_env

    env = new_bkp_env(tmp_path_factory.mktemp("fleet"))
    tenants = [f"t{index:03d}-zorg" for index in range(TENANTS)]
    for tenant in tenants:
        env.local_tenant(tenant)
    (env.root / "bkp.yaml").write_text(yaml.safe_dump({"results": {
        "inbox": {"type": "local", "country": "NL", "path": str(env.root / "inbox")},
        "keys": str(env.root / "keys")}}))
    central = {"BKP_CONFIG": str(env.root / "bkp.yaml")}
    env.bkp_json("init", "--all", **central)
    env.bkp_json("catalog", "result-keys", "--all", **central)
    pods = env.root / "pods"
    jobs = [(t, "backup") for t in tenants] + [(t, "drill") for t in tenants[:DRILLED]]
    with ThreadPoolExecutor(PARALLEL) as pool:
        backups = list(pool.map(lambda job: pod(env, job[0], "backup", pods),
                                [j for j in jobs if j[1] == "backup"]))
    with ThreadPoolExecutor(PARALLEL) as pool:  # the drills find the night's snapshots
        drills = list(pool.map(lambda job: pod(env, job[0], "drill", pods),
                               [j for j in jobs if j[1] == "drill"]))
    return env, tenants, central, backups, drills


def every_pod_succeeded_and_left_one_result(night):
    env, tenants, _, backups, drills = night
    assert all(done.returncode == 0 for done in backups + drills), \
        [done.stderr for done in backups + drills if done.returncode][:2]
    names = sorted(p.name for p in (env.root / "inbox").iterdir() if p.is_file())
    assert len(names) == len(tenants) + DRILLED
    # and each backup pod's own record of its tenant's snapshots, beside the results
    kept = sorted(p.name for p in (env.root / "inbox" / "kept").iterdir())
    assert kept == sorted(f"{tenant}.json" for tenant in tenants)
    for done in backups:
        assert "left in the inbox" in done.stderr


def the_gatherer_ingests_everything_once_and_status_is_right(night):
    env, tenants, central, _, _ = night
    # One result lost on its way: the repository still has the snapshot.
    lost = sorted((env.root / "inbox").glob(f"*-{tenants[-1]}-backup-*.json"))[0]
    kept_aside = env.root / "lost-result.json"
    lost.rename(kept_aside)
    first, _ = env.bkp_json("catalog", "sync", "--all", **central)
    assert first["results"]["ingested"] == len(tenants) - 1 + DRILLED
    assert first["results"]["rejected"] == []
    again, _ = env.bkp_json("catalog", "sync", "--all", **central)
    assert again["results"]["ingested"] == 0
    assert again["results"]["already_ingested"] == len(tenants) - 1 + DRILLED
    assert all(row["added"] == 0 for row in again["tenants"])

    status, _ = env.bkp_json("status", **central)
    rows = {row["tenant"]: row for row in status["tenants"]}
    assert set(rows) == set(tenants)
    snapshots = {row["tenant"]: row for row in first["tenants"]}
    for tenant in tenants:
        row = rows[tenant]
        assert row["last_backup"]["status"] == "ok", row
        assert row["rpo_ok"] is True
        assert row["last_backup"]["snapshot_id"][:8] == snapshots[tenant]["latest"]["id"][:8]
    for tenant in tenants[:DRILLED]:
        assert rows[tenant]["last_drill"]["status"] == "passed", rows[tenant]
    # The lost result's backup came from the repository's snapshot list, once.
    assert snapshots[tenants[-1]]["added"] == 1
    runs = [r for r in first["tenants"] if r["tenant"] != tenants[-1]]
    assert all(r["added"] == 0 for r in runs)  # the others were known from their results

    verified, _ = env.bkp_json("audit", "verify", **central)
    assert verified["valid"] is True, verified["problems"]
    log, _ = env.bkp_json("audit", "log", **central)
    ingested = [e for e in log["events"] if e["action"] == "result.ingested"]
    assert len(ingested) == len(tenants) - 1 + DRILLED
    pods_backups = [e for e in log["events"] if e["action"] == "backup"
                    and "result" in (e["details"] or {})]
    assert len(pods_backups) == len(tenants) - 1


def a_tampered_or_forged_result_is_rejected_and_changes_nothing(night):
    env, tenants, central, _, _ = night
    inbox = env.root / "inbox"
    genuine = sorted(inbox.glob(f"*-{tenants[0]}-backup-*.json"))[0]
    signed = json.loads(genuine.read_text())
    signed["document"]["id"] = "f" * 32
    signed["document"]["runs"][0]["snapshot_id"] = "deadbeef" * 8
    tampered = inbox / genuine.name.replace(genuine.name[-17:-5], "f" * 12)
    tampered.write_text(json.dumps(signed))
    forged = dict(signed, signature=None)
    (inbox / genuine.name.replace(genuine.name[-17:-5], "e" * 12)).write_text(
        json.dumps(forged))
    before, _ = env.bkp_json("status", **central)
    done, _ = env.bkp_json("catalog", "sync", "--all", expect=5, **central)
    reasons = {item["object"]: item["reason"] for item in done["results"]["rejected"]}
    assert reasons[tampered.name].startswith("the signature is not")
    assert any(reason.startswith("unsigned") for reason in reasons.values())
    after, _ = env.bkp_json("status", **central)
    pick = lambda doc: {r["tenant"]: r["last_backup"] for r in doc["tenants"]}  # noqa: E731
    assert pick(after) == pick(before)
    verified, _ = env.bkp_json("audit", "verify", **central)
    assert verified["valid"] is True
    log, _ = env.bkp_json("audit", "log", **central)
    assert len([e for e in log["events"] if e["action"] == "result.rejected"]) == 2
    # Seen once: reported again, never recorded twice.
    again, _ = env.bkp_json("catalog", "sync", "--all", expect=5, **central)
    assert {item["new"] for item in again["results"]["rejected"]} == {False}
    log, _ = env.bkp_json("audit", "log", **central)
    assert len([e for e in log["events"] if e["action"] == "result.rejected"]) == 2


def test_a_cluster_night_gathered_once_and_forgeries_rejected(night):
    """One test in steps: each step depends on the one before (ingested once, then the
    forgeries), and xdist would otherwise run the steps on different workers, each with
    its own night."""
    every_pod_succeeded_and_left_one_result(night)
    the_gatherer_ingests_everything_once_and_status_is_right(night)
    a_tampered_or_forged_result_is_rejected_and_changes_nothing(night)
