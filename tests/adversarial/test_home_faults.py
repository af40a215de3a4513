"""A broken, full, read-only or lost BKP_HOME and catalog: one sentence and the right exit
code, never a traceback, never a verdict the evidence does not support; and checks that
only read never write a row, even right after a killed run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers import big_file, popen_bkp, restic_running_for, wait_until

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "8m"):
    """A tmpfs of its own at `path` (we are root): to fill up or to make read-only."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(path: Path) -> None:
    with open(path / "filler", "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
            os.fsync(fh.fileno())


def one_clear_line(done: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    message = next(line for line in done.stderr.splitlines() if line.startswith("bkp:"))
    for word in words:
        assert word in message, (word, done.stderr)


def dump_tables(catalog: Path) -> dict:
    """Every row of every table, read through SQLite (a WAL file can hide writes from a
    byte comparison of catalog.db alone)."""
    conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = "
                                             "'table' order by name")]
        return {t: conn.execute(f'select * from "{t}" order by rowid').fetchall()
                for t in tables}
    finally:
        conn.close()


# ---------------------------------------------------------------- checks write nothing

def test_read_only_commands_write_nothing_even_right_after_a_killed_run(bkp_env):
    env = bkp_env
    env.local_tenant("killed")
    big_file(env.root / "data" / "killed" / "big.bin", 300)
    env.bkp_json("init", "killed")
    repo = env.tenants["killed"]["destination"]["path"]
    victim = popen_bkp(env, "backup", "killed")
    wait_until(lambda: restic_running_for(repo), what="restic to start")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    wait_until(lambda: not restic_running_for(repo), timeout=30, what="restic to die")
    catalog = env.home / "catalog.db"
    before = dump_tables(catalog)
    assert any(row for row in before["runs"] if "running" in row)  # the dead run is open
    reads = [("status",), ("status", "--json"), ("snapshots", "killed"),
             ("policy", "validate"), ("policy", "schema"), ("schedule",),
             ("schedule", "--format", "systemd"), ("audit", "log"), ("audit", "verify"),
             ("audit", "head"), ("media", "list"), ("media", "export")]
    for args in reads:
        done = env.bkp(*args)
        assert "Traceback" not in done.stderr, (args, done.stderr)
    assert dump_tables(catalog) == before
    status, _ = env.bkp_json("status", "killed")
    assert status["tenants"][0]["last_backup"]["status"] == "interrupted"  # shown, not written


def test_status_on_a_fresh_home_creates_nothing(bkp_env):
    bkp_env.local_tenant("fresh")
    done = bkp_env.bkp("status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenants"][0]["state"] == "never"
    assert not (bkp_env.home / "catalog.db").exists()
    assert list(bkp_env.home.iterdir()) == []


# ---------------------------------------------------------------- a broken catalog

def test_a_catalog_that_is_not_a_database(bkp_env):
    bkp_env.local_tenant("garbage")
    (bkp_env.home / "catalog.db").write_bytes(b"this is not SQLite\n" * 100)
    backup = bkp_env.bkp("backup", "garbage")
    assert backup.returncode == 1
    one_clear_line(backup, "not a bkp catalog")
    status = bkp_env.bkp("status")
    assert status.returncode == 1
    one_clear_line(status, "not a bkp catalog")
    verify = bkp_env.bkp("audit", "verify", "--json")
    assert verify.returncode == 5 and not json.loads(verify.stdout)["valid"]


def test_a_catalog_that_is_a_directory(bkp_env):
    bkp_env.local_tenant("dir")
    (bkp_env.home / "catalog.db").mkdir()
    backup = bkp_env.bkp("backup", "dir")
    assert backup.returncode == 1
    one_clear_line(backup, "not a file")
    assert bkp_env.bkp("audit", "verify").returncode == 5


def test_a_dropped_audit_table_is_damage_not_an_intact_trail(bkp_env):
    bkp_env.local_tenant("dropped")
    bkp_env.bkp_json("init", "dropped")
    conn = sqlite3.connect(bkp_env.home / "catalog.db")
    conn.execute("drop table audit_log")
    conn.commit()
    conn.close()
    verify = bkp_env.bkp("audit", "verify", "--json")
    assert verify.returncode == 5
    report = json.loads(verify.stdout)
    assert not report["valid"] and "audit_log" in report["problems"][0]
    backup = bkp_env.bkp("backup", "dropped")
    assert backup.returncode == 1
    one_clear_line(backup, "audit_log")


def test_a_catalog_from_a_newer_bkp_is_refused(bkp_env):
    bkp_env.local_tenant("newer")
    bkp_env.bkp_json("init", "newer")
    conn = sqlite3.connect(bkp_env.home / "catalog.db")
    conn.execute("insert into _sqlite_migrations (migration_set, name, applied_at) values "
                 "('bkp', '9999_from_the_future', '2030-01-01')")
    conn.commit()
    conn.close()
    for args in (("backup", "newer"), ("status",)):
        done = bkp_env.bkp(*args)
        assert done.returncode == 1
        one_clear_line(done, "newer bkp", "9999_from_the_future")


def test_a_lost_catalog_is_not_silently_replaced(bkp_env):
    bkp_env.local_tenant("lost")
    bkp_env.bkp_json("init", "lost")
    bkp_env.bkp_json("backup", "lost")
    (bkp_env.home / "catalog.db").unlink()
    for leftover in bkp_env.home.glob("catalog.db-*"):
        leftover.unlink()
    backup = bkp_env.bkp("backup", "lost")
    assert backup.returncode == 1
    one_clear_line(backup, "missing", "bkp catalog init")
    assert not (bkp_env.home / "catalog.db").exists()
    verify = bkp_env.bkp("audit", "verify", "--json")
    assert verify.returncode == 5 and "no catalog" in json.loads(verify.stdout)["problems"][0]
    status = bkp_env.bkp("status", "--json")
    assert status.returncode == 0 and "lost" in status.stderr
    bkp_env.bkp_json("catalog", "init", "--reason", "disk replaced, no evidence copy")
    bkp_env.bkp_json("backup", "lost")
    log, _ = bkp_env.bkp_json("audit", "log")
    assert [e["action"] for e in log["events"]] == ["catalog.init", "policy.recorded",
                                                    "backup"]
    refused = bkp_env.bkp("catalog", "init", "--reason", "again")
    assert refused.returncode == 4


# ---------------------------------------------------------------- a broken BKP_HOME

def test_a_home_that_cannot_be_created(bkp_env):
    bkp_env.local_tenant("nohome")
    blocker = bkp_env.root / "a-file"
    blocker.write_text("in the way\n")
    done = bkp_env.bkp("backup", "nohome", BKP_HOME=str(blocker / "home"))
    assert done.returncode == 1
    one_clear_line(done, "cannot create BKP_HOME")


def test_a_read_only_home(bkp_env):
    bkp_env.local_tenant("rohome")
    with small_filesystem(bkp_env.root / "rohome") as home:
        done = bkp_env.bkp("init", "rohome", BKP_HOME=str(home))
        assert done.returncode == 0, done.stderr
        remount_read_only(home)
        backup = bkp_env.bkp("backup", "rohome", BKP_HOME=str(home))
        assert backup.returncode == 1
        one_clear_line(backup, "read-only")
        status = bkp_env.bkp("status", "--json", BKP_HOME=str(home))
        assert status.returncode == 0, status.stderr  # reading still works


def test_a_full_home_fails_the_run_where_monitoring_looks(bkp_env, ping_server):
    base, pings = ping_server
    bkp_env.local_tenant("fullhome")
    metrics = bkp_env.root / "metrics" / "bkp.prom"
    with small_filesystem(bkp_env.root / "fullhome") as home:
        assert bkp_env.bkp("init", "fullhome", BKP_HOME=str(home)).returncode == 0
        fill(home)
        done = bkp_env.bkp("run", "--healthcheck-url", f"{base}/ping/all",
                           "--prometheus-textfile", str(metrics), BKP_HOME=str(home))
    assert done.returncode == 1
    one_clear_line(done, "full")
    assert [path for path, _ in pings] == ["/ping/all/fail"]
    assert "bkp_run_last_ok 0" in metrics.read_text()


def test_a_disk_that_fills_during_the_night_never_reads_as_ok(bkp_env, ping_server):
    """BKP_HOME and the backup disk on one small filesystem: room to start, not to finish.
    Whether or not the catalog can still take the record, monitoring sees the failure."""
    base, pings = ping_server
    metrics = bkp_env.root / "metrics" / "bkp.prom"
    with small_filesystem(bkp_env.root / "small", size="24m") as disk:
        home = disk / "home"
        bkp_env.write_policy("filling", {"type": "local", "country": "NL",
                                         "path": str(disk / "repository")})
        assert bkp_env.bkp("init", "filling", BKP_HOME=str(home)).returncode == 0
        big_file(bkp_env.root / "data" / "filling" / "big.bin", 40)
        done = bkp_env.bkp("run", "--json", "--healthcheck-url", f"{base}/ping/all",
                           "--prometheus-textfile", str(metrics), BKP_HOME=str(home))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["status"] == "failed" and "space" in run["error"], run
    assert pings[-1][0] == "/ping/all/fail"
    text = metrics.read_text()
    assert 'bkp_backup_last_ok{tenant="filling"} 0' in text and "bkp_run_last_ok 0" in text


# ---------------------------------------------------------------- signals

def test_sigterm_with_json_still_prints_one_document(bkp_env):
    bkp_env.local_tenant("termed")
    big_file(bkp_env.root / "data" / "termed" / "big.bin", 300)
    bkp_env.bkp_json("init", "termed")
    repo = bkp_env.tenants["termed"]["destination"]["path"]
    proc = popen_bkp(bkp_env, "backup", "termed", "--json")
    wait_until(lambda: restic_running_for(repo), what="restic to start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    document = json.loads(out)
    assert [(r["status"], r["result"]) for r in document["runs"]] == [("failed", "interrupted")]
    assert document["runs"][0]["tenant"] == "termed"
