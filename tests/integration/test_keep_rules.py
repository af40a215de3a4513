"""bkp's reading of restic's keep rules equals what restic's own forget keeps: the nightly
backup skips forget only when restic would forget nothing."""

from __future__ import annotations

import json
import os
import random
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from bkp import restic

pytestmark = pytest.mark.integration

RULE_SETS = [{"last": 3}, {"daily": 7}, {"last": 2, "daily": 3, "weekly": 2},
             {"hourly": 5, "monthly": 2}, {"weekly": 3, "yearly": 2}, {"last": 1, "yearly": 5},
             {"daily": 2, "weekly": 4, "monthly": 6}]


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A repository with snapshots at chosen times: hours, days, weeks and years apart,
    in two time zones (buckets are read in the zone a time was written in)."""
    base = tmp_path_factory.mktemp("keep")
    env = {**os.environ, "RESTIC_PASSWORD": "keep rules"}
    repo = str(base / "repo")
    subprocess.run(["restic", "-r", repo, "init", "-q"], check=True, env=env)
    data = base / "data"
    data.mkdir()
    (data / "f").write_text("x")
    rng = random.Random(7)
    start = datetime(2025, 12, 28, 22, 30, tzinfo=UTC)
    moments, moment = [], start
    for _ in range(16):
        # at least 3 hours apart, so that no two instants tie once the zones shift them
        moment += timedelta(hours=rng.choice([3, 5, 20, 26, 70, 24 * 9, 24 * 40]))
        moments.append(moment)
    for number, moment in enumerate(moments):
        zone = "Europe/Amsterdam" if number % 2 else "UTC"  # restic writes local times
        subprocess.run(["restic", "-r", repo, "backup", "-q", "--time",
                        moment.strftime("%Y-%m-%d %H:%M:%S"), str(data)], check=True,
                       env={**env, "TZ": zone}, capture_output=True)
    done = subprocess.run(["restic", "-r", repo, "snapshots", "--json"], check=True, env=env,
                          capture_output=True, text=True)
    snapshots = [{"id": s["id"], "time": s["time"]} for s in json.loads(done.stdout)]
    return repo, env, snapshots


@pytest.mark.parametrize("rules", RULE_SETS)
def test_kept_by_rules_equals_restic_forget(repository, rules):
    repo, env, snapshots = repository
    argv = ["restic", "-r", repo, "forget", "--dry-run", "--json", "--group-by", ""]
    for rule, count in rules.items():
        argv += [f"--keep-{rule}", str(count)]
    done = subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
    theirs = {s["id"] for g in json.loads(done.stdout) for s in g.get("keep") or []}
    assert restic.kept_by_rules(snapshots, rules) == theirs


def test_the_snapshot_files_name_exactly_the_snapshots_restic_lists(repository):
    """A pod without a catalog believes its own record of the snapshots only when the names
    of the repository's snapshot files (read without restic) are exactly its snapshots:
    those names are restic's ids, in full or as the short ids backup reports."""
    from bkp.destinations import snapshot_names
    from bkp.tenants.retention import same_snapshots

    repo, _, snapshots = repository
    listed = snapshot_names(os.listdir(os.path.join(repo, "snapshots")))
    assert listed == {s["id"] for s in snapshots}
    short = [{"id": s["id"][:8], "time": s["time"]} for s in snapshots]
    assert same_snapshots(listed, short)
    assert same_snapshots(listed, snapshots)
    assert not same_snapshots(listed, short[1:])  # one the record does not know
    assert not same_snapshots(listed, [*short, {"id": "0" * 8, "time": short[0]["time"]}])
    assert not same_snapshots(listed, [*short[1:], short[2]])  # one twice, one missing

