"""Restore and restore drills against real restic repositories, good and deliberately broken."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def backed_up(bkp_env):
    """A local tenant with a few files of varied size, initialised and backed up once."""
    bkp_env.local_tenant("drilled", drill={"sample": 0, "rto_minutes": 60})
    source = bkp_env.root / "data" / "drilled"
    (source / "big.bin").write_bytes(os.urandom(3 << 20))
    for i in range(20):
        (source / "notes" / f"n{i}.txt").parent.mkdir(exist_ok=True)
        (source / "notes" / f"n{i}.txt").write_text(f"note {i}\n" * (i + 1))
    bkp_env.bkp_json("init", "drilled")
    bkp_env.bkp_json("backup", "drilled")
    return bkp_env


def repo(env) -> Path:
    return Path(env.tenants["drilled"]["destination"]["path"])


def scratch_is_empty(env) -> bool:
    scratch = env.home / "scratch"
    return not scratch.exists() or not any(scratch.iterdir())


def test_drill_passes_on_a_good_backup_and_leaves_evidence(backed_up):
    env = backed_up
    report, _ = env.bkp_json("drill", "drilled")
    d = report["drills"][0]
    assert d["status"] == "passed", d
    assert d["problems"] == [] and d["files_checked"] == 23
    assert d["bytes_restored"] > 3 << 20
    assert d["sample_checked"] == 23 and d["sample_skipped"] == 0  # sample 0 = every file
    assert d["subset_read"] == "1/12"  # "0 6 1 * *": twelve drills a year
    text = Path(d["report"]).read_text()
    assert "PASSED" in text and d["snapshot_id"] in text and "1/12" in text
    assert scratch_is_empty(env)
    again, _ = env.bkp_json("drill", "drilled")
    assert again["drills"][0]["subset_read"] == "2/12"  # the subsets rotate
    status, _ = env.bkp_json("status", "drilled")
    assert status["tenants"][0]["last_drill"]["status"] == "passed"
    events = env.bkp_json("audit", "log", "--tenant", "drilled")[0]["events"]
    assert [e["action"] for e in events][-2:] == ["drill", "drill"]


def flip_bytes(path: Path, offset: int = 200) -> None:
    path.chmod(0o600)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def largest_pack(env) -> Path:
    return max((p for p in (repo(env) / "data").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def test_corrupted_pack_fails_the_drill_with_exit_5(backed_up):
    env = backed_up
    flip_bytes(largest_pack(env))
    done = env.bkp("drill", "drilled", "--json")
    assert done.returncode == 5, done.stdout + done.stderr
    d = json.loads(done.stdout)["drills"][0]
    assert d["status"] == "failed" and d["problems"]
    assert scratch_is_empty(env)
    assert "FAILED" in Path(d["report"]).read_text()


def test_deleted_pack_fails_the_drill(backed_up):
    env = backed_up
    largest_pack(env).unlink()
    done = env.bkp("drill", "drilled", "--json")
    assert done.returncode == 5, done.stdout + done.stderr
    d = json.loads(done.stdout)["drills"][0]
    assert d["status"] == "failed" and d["problems"]
    assert scratch_is_empty(env)


def test_damaged_index_fails_the_drill(backed_up):
    env = backed_up
    for index in (repo(env) / "index").iterdir():
        flip_bytes(index, offset=40)
    done = env.bkp("drill", "drilled", "--json")
    assert done.returncode == 5, done.stdout + done.stderr
    assert json.loads(done.stdout)["drills"][0]["status"] == "failed"


def test_wrong_password_is_an_error_with_a_clear_message(backed_up):
    env = backed_up
    (env.secrets / "drilled.key").write_text("not the password\n")
    done = env.bkp("drill", "drilled", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    d = json.loads(done.stdout)["drills"][0]
    assert d["status"] == "failed" and d["result"] == "error"
    assert "wrong repository password" in d["error"]
    assert scratch_is_empty(env)


def test_source_changed_after_the_snapshot_does_not_fail_the_drill(backed_up):
    env = backed_up
    changed = env.root / "data" / "drilled" / "notes" / "n3.txt"
    changed.write_text("edited after the backup\n")
    (env.root / "data" / "drilled" / "notes" / "n4.txt").unlink()
    report, _ = env.bkp_json("drill", "drilled")
    d = report["drills"][0]
    assert d["status"] == "passed", d
    assert d["sample_skipped"] == 2 and d["sample_checked"] == 21


def test_unchanged_source_that_differs_is_corruption(backed_up):
    env = backed_up
    # same size and mtime as in the snapshot, different bytes: the drill must not be fooled
    victim = env.root / "data" / "drilled" / "big.bin"
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    done = env.bkp("drill", "drilled", "--json")
    assert done.returncode == 5
    problems = json.loads(done.stdout)["drills"][0]["problems"]
    assert [p["kind"] for p in problems] == ["content"] and problems[0]["path"].endswith("big.bin")


def test_drill_of_a_tenant_without_backup_cannot_run(bkp_env):
    bkp_env.local_tenant("empty")
    bkp_env.bkp_json("init", "empty")
    done = bkp_env.bkp("drill", "empty", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["drills"][0]["result"] == "error"


def test_restore_refuses_non_empty_target_and_restores_into_empty(backed_up):
    env = backed_up
    target = env.root / "restore-here"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    refused = env.bkp("restore", "drilled", "--target", str(target))
    assert refused.returncode == 4 and "not empty" in refused.stderr
    assert [p.name for p in target.iterdir()] == ["keep.txt"]

    empty = env.root / "empty-target"
    result, _ = env.bkp_json("restore", "drilled", "--target", str(empty))
    source = env.root / "data" / "drilled"
    restored = empty / str(source).lstrip("/")
    assert (restored / "big.bin").read_bytes() == (source / "big.bin").read_bytes()
    assert result["files"] == 23 and result["target"] == str(empty)

    only = env.root / "partial"
    part, _ = env.bkp_json("restore", "drilled", "--target", str(only),
                           "--include", str(source / "notes" / "n1.txt"))
    assert part["files"] == 1
    assert not (only / str(source).lstrip("/") / "big.bin").exists()
    events = env.bkp_json("audit", "log", "--tenant", "drilled")[0]["events"]
    restores = [e for e in events if e["action"] == "restore"]
    assert [e["outcome"] for e in restores] == ["refused", "ok", "ok"]
    assert restores[1]["details"]["target"] == str(empty)
    assert restores[1]["operator"] == "test-operator"


def test_run_calls_the_drill_when_due_and_status_shows_it(bkp_env):
    bkp_env.local_tenant("scheduled")
    bkp_env.bkp_json("init", "scheduled")
    night, _ = bkp_env.bkp_json("run")
    assert [r["tenant"] for r in night["runs"]] == ["scheduled"]
    assert [d["status"] for d in night["drills"]] == ["passed"]
    again, _ = bkp_env.bkp_json("run")
    assert again["runs"] == [] and again["drills"] == []
    status, _ = bkp_env.bkp_json("status", "scheduled")
    row = status["tenants"][0]
    assert row["last_drill"]["status"] == "passed" and row["drill_ok"] is True
    assert row["drill_due"] > row["last_drill"]["time"]
    due, _ = bkp_env.bkp_json("drill", "--due")
    assert due["drills"] == []


def test_interrupted_drill_leaves_no_scratch_and_an_honest_record(bkp_env):
    import signal
    import subprocess
    import sys
    import time

    bkp_env.local_tenant("cut-short")
    with open(bkp_env.root / "data" / "cut-short" / "big.bin", "wb") as fh:
        for _ in range(300):
            fh.write(os.urandom(1 << 20))
    bkp_env.bkp_json("init", "cut-short")
    bkp_env.bkp_json("backup", "cut-short")
    proc = subprocess.Popen([sys.executable, "-m", "bkp", "drill", "cut-short", "--json"],
                            env=bkp_env.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    scratch = bkp_env.home / "scratch"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scratch.exists() and any(p.is_file() for p in scratch.rglob("*")):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the drill never started restoring")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert scratch_is_empty(bkp_env)
    status, _ = bkp_env.bkp_json("status", "cut-short")
    assert status["tenants"][0]["last_drill"]["status"] == "interrupted"


def test_restore_rejects_bad_snapshot_ids_and_includes_that_match_nothing(backed_up):
    env = backed_up
    bad = env.bkp("restore", "drilled", "--target", str(env.root / "x"), "--snapshot",
                  "--help", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["exit_code"] == 2
    nothing = env.bkp("restore", "drilled", "--target", str(env.root / "y"), "--include",
                      "/no/such/path")
    assert nothing.returncode == 2 and "matches nothing" in nothing.stderr
    unknown = env.bkp("restore", "drilled", "--target", str(env.root / "z"), "--snapshot",
                      "deadbeef")
    assert unknown.returncode == 1 and "no snapshot found" in unknown.stderr
