"""Attacks on today's start-up work: the catalog made in one transaction from schema.sql,
its rows through plain sqlite3, the policy reader's one walk of the YAML nodes, the result
key read without cryptography, and the sftp results inbox. Real SQLite files, the real CLI
as a subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import popen_bkp, read_only_view, wait_until

pytestmark = pytest.mark.integration

# A bkp process that makes a new catalog and stops inside its one creation transaction,
# after every table was made and before the commit, until its stdin closes: the moment a
# second bkp process started at the same time on an empty BKP_HOME can meet.
PAUSED_CREATOR = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bkp.catalog import Catalog, schema

    names = schema.registered_names
    paused = []

    def pause():
        if not paused:
            paused.append(True)
            Path(sys.argv[2]).write_text("inside")
            sys.stdin.read()
        return names()

    schema.registered_names = pause
    Catalog(Path(sys.argv[1])).close()
""")


def as_yesterdays(catalog: Path) -> None:
    """The catalog as yesterday's bkp left it: every migration up to 0017 (0018, the index
    for status' latest run, is today's), closed cleanly (no write-ahead log left)."""
    conn = sqlite3.connect(catalog, isolation_level=None)
    conn.execute("drop index idx_runs_tenant_kind_latest")
    conn.execute("delete from _sqlite_migrations where name = '0018_runs_latest_first'")
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()
    assert not (catalog.parent / "catalog.db-wal").exists()


# A bkp command on a host that loses power as it ends: its writes are committed, in the
# catalog's write-ahead log, and never checkpointed into catalog.db (no connection closed).
DIES_AS_IT_ENDS = textwrap.dedent("""
    import os
    import sys

    from bkp.cli import main

    try:
        main(sys.argv[1:])
    finally:
        os._exit(0)
""")


def dies_as_it_ends(env, *args: str) -> None:
    done = subprocess.run([sys.executable, "-c", DIES_AS_IT_ENDS, *args], env=env.env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (env.home / "catalog.db-wal").stat().st_size > 0


def paused_creator(env, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    inside = tmp_path / "creator-inside"
    creator = subprocess.Popen([sys.executable, "-c", PAUSED_CREATOR,
                                str(env.home / "catalog.db"), str(inside)],
                               stdin=subprocess.PIPE, env=env.env(), text=True)
    wait_until(lambda: inside.exists() or creator.poll() is not None, what="the creator")
    assert creator.poll() is None, "the creator ended before its transaction"
    return creator, inside


def waits_for_flock(pid: int) -> bool:
    """`pid` is blocked on a flock (the catalog's migration lock)."""
    return any(" -> " in line and f" {pid} " in line
               for line in Path("/proc/locks").read_text().splitlines())


def test_two_commands_on_a_new_home_neither_calls_the_catalog_lost(bkp_env, tmp_path):
    """A `bkp init` started while another bkp is making the brand-new catalog waits for it
    and works; `bkp status` then says there is no catalog yet, never that one was lost."""
    env = bkp_env
    env.local_tenant("race")
    creator, _ = paused_creator(env, tmp_path)
    try:
        status = env.bkp("status", "race")
        assert status.returncode == 0 and "lost" not in status.stderr, status.stderr
        acting = popen_bkp(env, "init", "race")
        wait_until(lambda: acting.poll() is not None or waits_for_flock(acting.pid),
                   what="bkp init to finish or wait for the creation")
    finally:
        creator.communicate("")
    out, err = acting.communicate(timeout=120)
    assert creator.returncode == 0
    assert acting.returncode == 0, (out, err)
    assert "lost" not in err, err
    after = env.bkp("status", "race")
    assert after.returncode == 0 and "lost" not in after.stderr, after.stderr


def test_a_creation_killed_midway_leaves_a_home_the_next_command_starts_in(bkp_env, tmp_path):
    """A pod evicted while making its catalog recorded nothing: the next command makes the
    catalog (no `bkp catalog init` needed, nothing called lost)."""
    env = bkp_env
    env.local_tenant("evicted")
    creator, _ = paused_creator(env, tmp_path)
    creator.kill()
    creator.wait(timeout=30)
    status = env.bkp("status", "evicted")
    assert "lost" not in status.stderr, status.stderr
    done = env.bkp("init", "evicted")
    assert done.returncode == 0, done.stderr
    listed = env.bkp_json("status", "evicted")[0]
    assert [t["tenant"] for t in listed["tenants"]] == ["evicted"]


def test_yesterdays_catalog_on_a_read_only_home_is_read_not_called_broken(bkp_env):
    """Every catalog made before today still lacks migration 0018, so a read-only command
    migrates a copy in memory. On a read-only BKP_HOME (a frozen or mounted copy) that copy
    must be read as the catalog itself is: `audit verify` saying the trail is broken
    (exit 5) would be a false verdict."""
    env = bkp_env
    env.local_tenant("frozen")
    env.bkp_json("init", "frozen")
    env.bkp_json("backup", "frozen")
    as_yesterdays(env.home / "catalog.db")
    with read_only_view(env.home):
        verify = env.bkp("audit", "verify", "--json")
        status = env.bkp("status", "frozen", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["valid"]
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["tenants"][0]["last_backup"]["status"] == "ok"



@pytest.mark.parametrize("version", ["today's", "yesterday's"])
def test_a_frozen_home_is_read_with_the_writes_still_in_its_log(bkp_env, tmp_path, version):
    """A host that died, or a copy of BKP_HOME taken while bkp ran, mounted read-only for an
    audit: the newest records are committed in catalog.db-wal, not yet in catalog.db. Read
    commands must see them (SQLite told the file is immutable ignores the log): an older
    head called intact, or the whole trail called missing, is a false verdict."""
    env = bkp_env
    env.local_tenant("frozen")
    env.bkp_json("init", "frozen")
    if version == "yesterday's":
        as_yesterdays(env.home / "catalog.db")
    dies_as_it_ends(env, "backup", "frozen")
    truth = tmp_path / "truth"
    subprocess.run(["cp", "-a", str(env.home), str(truth)], check=True)
    expected = env.bkp_json("audit", "head", BKP_HOME=str(truth))[0]
    with read_only_view(env.home):
        verify = env.bkp("audit", "verify", "--json")
        head = env.bkp("audit", "head", "--json")
        status = env.bkp("status", "frozen", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["events"] == expected["events"]
    assert head.returncode == 0 and json.loads(head.stdout) == expected, head.stdout
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["tenants"][0]["last_backup"]["status"] == "ok"


# ---------------------------------------------------------------- policies

@pytest.mark.parametrize("tagged", ["!!bool maybe", "!!timestamp someday", "!!bool ''"])
def test_a_value_tagged_as_what_it_is_not_is_one_clear_problem(bkp_env, tagged):
    """YAML's own tags on a value that is no such thing: PyYAML's constructors raise a
    KeyError or an AttributeError for these, which bkp called an internal error."""
    env = bkp_env
    policy = env.local_tenant("tagged")
    policy.write_text(policy.read_text().replace("  daily: 7\n",
                                                 f"  daily: 7\n  legal_hold: {tagged}\n"))
    assert tagged in policy.read_text()
    done = env.bkp("policy", "validate", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    (report,) = json.loads(done.stdout)["policies"]
    messages = [e["message"] for e in report["errors"]]
    assert not any("internal error" in m for m in messages), messages
    assert any(tagged.split()[0] in m for m in messages), messages
