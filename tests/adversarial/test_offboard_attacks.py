"""Attacks on `bkp offboard` and `bkp erase`: erasing what must not be erased, approvals
that approve something else, false verdicts. Each test shows a hole that was open; every
refusal is proven to have touched nothing with plain `restic snapshots`."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import BkpEnv

pytestmark = pytest.mark.integration


def snapshot_ids(env: BkpEnv, tenant: str) -> list[str]:
    done = env.restic(tenant, "snapshots", "--json")
    assert done.returncode == 0, done.stderr
    return [s["id"] for s in json.loads(done.stdout)]


def backed_up(env: BkpEnv, tenant: str, nights: int = 2) -> list[str]:
    env.bkp_json("init", tenant)
    for night in range(nights):
        (env.root / "data" / tenant / f"night-{night}.txt").write_bytes(os.urandom(2_000))
        env.bkp_json("backup", tenant)
    return snapshot_ids(env, tenant)


# ---------------------------------------------------------------- snapshot ids

def test_an_empty_snapshot_id_erases_nothing(bkp_env):
    """"" is a prefix of every id: it named no snapshot, yet one of them was erased."""
    bkp_env.local_tenant("empty-zorg")
    ids = backed_up(bkp_env, "empty-zorg", nights=2)
    done = bkp_env.bkp("erase", "empty-zorg", "--snapshot", "", "--yes")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert snapshot_ids(bkp_env, "empty-zorg") == ids


def test_a_prefix_of_several_snapshots_erases_none_of_them(bkp_env):
    """A short id shared by two snapshots: restic calls it ambiguous; bkp erased whichever
    came last."""
    bkp_env.local_tenant("twin-zorg", retention={"last": 50})
    ids = backed_up(bkp_env, "twin-zorg", nights=2)
    source = bkp_env.root / "data" / "twin-zorg"
    shared = None
    while shared is None:  # at most 17 snapshots: 16 hex digits (pigeonhole)
        firsts = [i[0] for i in ids]
        shared = next((c for c in firsts if firsts.count(c) > 1), None)
        if shared is None:
            (source / "more.txt").write_bytes(os.urandom(100))
            bkp_env.bkp_json("backup", "twin-zorg")
            ids = snapshot_ids(bkp_env, "twin-zorg")
    done = bkp_env.bkp("erase", "twin-zorg", "--snapshot", shared, "--yes")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert snapshot_ids(bkp_env, "twin-zorg") == ids
