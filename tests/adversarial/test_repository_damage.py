"""Deliberately broken repositories: every damaged part is found and called damage (exit 5),
never "could not run" (1) and never "passed", whether or not bkp's restic cache still holds
a good copy of what was damaged on the destination."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def backed_up(bkp_env):
    bkp_env.local_tenant("broken", drill={"sample": 0, "rto_minutes": 60})
    source = bkp_env.root / "data" / "broken"
    (source / "big.bin").write_bytes(os.urandom(2 << 20))
    for i in range(10):
        (source / "notes" / f"n{i}.txt").parent.mkdir(exist_ok=True)
        (source / "notes" / f"n{i}.txt").write_text(f"note {i}\n" * (i + 1))
    bkp_env.bkp_json("init", "broken")
    bkp_env.bkp_json("backup", "broken")
    return bkp_env


def repository(env) -> Path:
    return Path(env.tenants["broken"]["destination"]["path"])


def flip_middle_byte(path: Path) -> None:
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def pack_holding(env, blob_type: str) -> Path:
    """The pack file that holds blobs of `blob_type` (tree or data), from the index."""
    repo = repository(env)
    index_id = next((repo / "index").iterdir()).name
    done = env.restic("broken", "--no-cache", "cat", "index", index_id)
    assert done.returncode == 0, done.stderr
    for pack in json.loads(done.stdout)["packs"]:
        if {blob["type"] for blob in pack["blobs"]} == {blob_type}:
            return repo / "data" / pack["id"][:2] / pack["id"]
    raise AssertionError(f"no pack of only {blob_type} blobs")


def only_file(folder: Path) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    assert len(files) == 1, files
    return files[0]


DAMAGE = {
    "data pack": lambda env: flip_middle_byte(pack_holding(env, "data")),
    "tree pack": lambda env: flip_middle_byte(pack_holding(env, "tree")),
    "deleted data pack": lambda env: pack_holding(env, "data").unlink(),
    "index": lambda env: flip_middle_byte(only_file(repository(env) / "index")),
    "config": lambda env: flip_middle_byte(repository(env) / "config"),
    "key": lambda env: flip_middle_byte(only_file(repository(env) / "keys")),
    "snapshot": lambda env: flip_middle_byte(only_file(repository(env) / "snapshots")),
    "deleted snapshot": lambda env: only_file(repository(env) / "snapshots").unlink(),
}


@pytest.mark.parametrize("cache", ["cold cache", "warm cache"])
@pytest.mark.parametrize("part", list(DAMAGE))
def test_every_damaged_part_fails_the_drill_with_exit_5(backed_up, part, cache):
    env = backed_up
    if cache == "cold cache":  # a new bkp host, or a cache that was cleared
        shutil.rmtree(env.home / "cache", ignore_errors=True)
    DAMAGE[part](env)
    done = env.bkp("drill", "broken", "--json")
    assert done.returncode == 5, (part, done.stdout, done.stderr)
    drill = json.loads(done.stdout)["drills"][0]
    assert drill["status"] == "failed" and drill["result"] == "failed", drill
    assert drill["problems"], drill
    assert "Traceback" not in done.stderr


def test_a_daily_drill_schedule_passes_on_a_good_repository(bkp_env):
    # restic accepts at most 256 read-data groups; 365 drills a year must not ask for more.
    bkp_env.local_tenant("daily", schedule={"backup": "0 2 * * *", "drill": "0 6 * * *"})
    bkp_env.bkp_json("init", "daily")
    bkp_env.bkp_json("backup", "daily")
    report, _ = bkp_env.bkp_json("drill", "daily")
    assert report["drills"][0]["status"] == "passed", report
    assert report["drills"][0]["subset_read"] == "1/256"
