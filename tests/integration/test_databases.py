"""Tenant databases end to end: real PostgreSQL and MariaDB servers (fixtures), real
pg_dump / mariadb-dump, real restic, the real CLI. Dumps every night, drills that load them
into scratch servers and compare tables and rows, restore to a file, and the ways it fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import DatabaseServer, new_bkp_env, start_mariadb, start_postgresql


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    pg = start_postgresql(tmp_path_factory.mktemp("pg"))
    maria = start_mariadb(tmp_path_factory.mktemp("maria"))
    yield pg, maria
    pg.stop()
    maria.stop()


def database_entry(server: DatabaseServer, **overrides) -> dict:
    entry = {"type": server.kind, "name": server.database, "host": str(server.socket),
             "user": server.user, "password_file": str(server.password_file)}
    if server.kind == "postgresql":
        entry["port"] = server.port
    entry.update(overrides)
    return entry


@pytest.fixture(scope="module")
def installation(tmp_path_factory, servers):
    env = new_bkp_env(tmp_path_factory.mktemp("bkp"))
    pg, maria = servers
    env.local_tenant("zorg-db", databases=[database_entry(pg), database_entry(maria)],
                     retention={"last": 3})
    done = env.bkp("init", "zorg-db")
    assert done.returncode == 0, done.stderr
    # One night before any test: xdist may run this module's tests on different workers,
    # each with its own installation, so none may rely on another having run.
    env.bkp_json("backup", "zorg-db")
    return env


def snapshots(env, tenant: str) -> list[dict]:
    done = env.restic(tenant, "snapshots", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def kinds(snaps: list[dict]) -> list[tuple]:
    result = []
    for snap in snaps:
        tags = dict(t.split("=", 1) for t in snap.get("tags") or [] if "=" in t)
        result.append((tags.get("kind"), tags.get("database")))
    return result


def scratch_left(env) -> list[str]:
    """Scratch servers of this installation still recorded or present (other test workers
    run their own scratch servers in /var/tmp at the same time)."""
    base = env.home / "scratch"
    return sorted(p.name for p in base.glob("*") if p.name.startswith(("postgresql-",
                                                                        "mariadb-")))


def live_count(server: DatabaseServer, table: str) -> int:
    return int(server.admin(f"SELECT count(*) FROM {table};").strip())


def test_nightly_dumps_drill_restore_and_retention_per_kind(installation, servers, tmp_path):
    env = installation
    _pg, _maria = servers
    run, _ = env.bkp_json("backup", "zorg-db")
    [entry] = run["runs"]
    assert entry["status"] == "ok", entry
    by_name = {(d["type"], d["name"]): d for d in entry["databases"]}
    for server in servers:
        dump = by_name[(server.kind, server.database)]
        assert dump["status"] == "ok" and dump["snapshot_id"] and dump["bytes"] > 0, dump
        assert dump["error"] is None
    assert entry["snapshot_id"]  # the files were backed up too

    listed = kinds(snapshots(env, "zorg-db"))
    assert ("files", None) in listed
    assert ("database", "zorgapp") in listed and ("inventory", "zorgapp") in listed

    # The drill restores the files and loads both dumps into scratch servers.
    drilled, code = env.bkp_json("drill", "zorg-db")
    [drill] = drilled["drills"]
    assert code == 0 and drill["status"] == "passed", drill
    assert drill["files_checked"] > 0
    loaded = {d["type"]: d for d in drill["databases"]}
    assert loaded["postgresql"]["status"] == "passed"
    assert loaded["postgresql"]["rows"] >= 57 + 123 + 100
    assert loaded["mariadb"]["status"] == "passed" and loaded["mariadb"]["tables"] > 0
    assert scratch_left(env) == []

    status, _ = env.bkp_json("status", "zorg-db")
    [tenant] = status["tenants"]
    assert {d["name"] for d in tenant["databases"]} == {"zorgapp"}
    assert all(d["last_good_dump"]["rows"] > 0 for d in tenant["databases"])

    # Restore the dump to a file; an existing file is never overwritten.
    target = tmp_path / "zorgapp.pgdump"
    restored, _ = env.bkp_json("restore", "zorg-db", "--database", "postgresql:zorgapp",
                               "--target", str(target))
    assert restored["bytes"] == target.stat().st_size > 0
    again = env.bkp("restore", "zorg-db", "--database", "postgresql:zorgapp", "--target",
                    str(target))
    assert again.returncode == 4, again.stderr
    assert target.stat().st_size == restored["bytes"]

    # Retention per kind: three nights more, last: 3 keeps three of each.
    for _ in range(3):
        env.bkp_json("backup", "zorg-db")
    listed = kinds(snapshots(env, "zorg-db"))
    assert listed.count(("files", None)) == 3
    assert listed.count(("database", "zorgapp")) == 3 * 2  # one per server type
    assert listed.count(("inventory", "zorgapp")) == 3 * 2


def test_the_restored_dump_loads_into_a_server(installation, servers, tmp_path):
    env = installation
    pg, _ = servers
    target = tmp_path / "zorgapp.pgdump"
    env.bkp_json("restore", "zorg-db", "--database", "postgresql:zorgapp", "--target",
                 str(target))
    pg.admin("DROP DATABASE IF EXISTS zorgapp_restored; CREATE DATABASE zorgapp_restored;",
             database="postgres")
    load = subprocess.run(["pg_restore", "--no-owner", "-h", str(pg.socket), "-p",
                           str(pg.port), "-U", "postgres", "-d", "zorgapp_restored",
                           str(target)], capture_output=True, text=True, timeout=120)
    assert load.returncode == 0, load.stderr
    assert int(pg.admin("SELECT count(*) FROM patients;", database="zorgapp_restored")) == \
        live_count(pg, "patients")


def test_rows_written_throughout_the_dump_still_drill_with_exact_counts(
        installation, servers):
    env = installation
    _pg, _maria = servers
    stop = threading.Event()

    def keep_writing(server: DatabaseServer) -> None:
        while not stop.is_set():
            server.admin("INSERT INTO appointments (patient_id, at, reason) "
                         "VALUES (1, now(), 'during the dump');" if server.kind == "postgresql"
                         else "INSERT INTO appointments (patient_id, reason) "
                              "VALUES (1, 'during the dump');")

    writers = [threading.Thread(target=keep_writing, args=(s,)) for s in servers]
    for w in writers:
        w.start()
    try:
        run, _ = env.bkp_json("backup", "zorg-db")
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert run["runs"][0]["status"] == "ok", run
    drilled, code = env.bkp_json("drill", "zorg-db")
    assert code == 0, drilled
    assert all(d["status"] == "passed" for d in drilled["drills"][0]["databases"])


def test_a_missing_database_and_a_wrong_password_fail_the_run_naming_the_database(
        installation, servers, tmp_path):
    env = installation
    pg, maria = servers
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    env.local_tenant("zorg-baddb", databases=[
        database_entry(pg, name="no_such_db"),
        database_entry(maria, password_file=str(wrong))])
    assert env.bkp("init", "zorg-baddb").returncode == 0
    run, _code = env.bkp_json("backup", "zorg-baddb", expect=1)
    [entry] = run["runs"]
    assert entry["status"] == "failed" and entry["snapshot_id"], entry  # files still saved
    errors = {d["type"]: d["error"] for d in entry["databases"]}
    assert "no_such_db" in errors["postgresql"]
    assert "zorgapp" in errors["mariadb"] and "denied" in errors["mariadb"].lower()
    assert "not the password" not in json.dumps(run)
    assert all(d["status"] == "failed" and d["snapshot_id"] is None
               for d in entry["databases"])
    assert [k for k in kinds(snapshots(env, "zorg-baddb")) if k[0] != "files"] == []


def test_no_password_in_any_command_line_during_the_dump(installation, servers):
    env = installation
    passwords = [s.password for s in servers]
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for proc in Path("/proc").iterdir():
                try:
                    argv = (proc / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if "pg_dump" in argv or "mariadb-dump" in argv:
                    seen.append(argv)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run, _ = env.bkp_json("backup", "zorg-db")
    finally:
        stop.set()
        watcher.join()
    assert run["runs"][0]["status"] == "ok"
    assert seen, "the watcher never saw a dump client: it could not have failed"
    assert not [argv for argv in seen if any(p in argv for p in passwords)]
    catalog = (env.home / "catalog.db").read_bytes()
    assert not any(p.encode() in catalog for p in passwords)


def test_a_dump_killed_midway_leaves_no_snapshot(installation, servers):
    env = installation
    pg, _ = servers
    pg.admin("CREATE TABLE IF NOT EXISTS bulk AS SELECT i, repeat(md5(i::text), 40) AS pad "
             "FROM generate_series(1, 400000) i;")
    before = kinds(snapshots(env, "zorg-db")).count(("database", "zorgapp"))
    proc = subprocess.Popen([sys.executable, "-m", "bkp", "backup", "zorg-db", "--json"],
                            env=env.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = ""
    deadline = time.monotonic() + 120
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        # pg_dump's session, while it copies the big table (not the session bkp holds
        # the exported snapshot with)
        killed = pg.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query ILIKE 'COPY %bulk%' AND pid <> pg_backend_pid();",
                          database="postgres").strip()
    out, err = proc.communicate(timeout=300)
    assert killed, "pg_dump was never seen running: the test could not kill it"
    pg.admin("DROP TABLE bulk;")
    assert proc.returncode == 1, (out, err)
    [entry] = json.loads(out)["runs"]
    failed = next(d for d in entry["databases"] if d["type"] == "postgresql")
    assert failed["status"] == "failed" and "zorgapp" in failed["error"], failed
    # MariaDB's dump went in; PostgreSQL's half dump did not become a snapshot.
    assert kinds(snapshots(env, "zorg-db")).count(("database", "zorgapp")) == before + 1


def test_a_dump_damaged_in_the_repository_fails_the_drill(tmp_path_factory, servers):
    env = new_bkp_env(tmp_path_factory.mktemp("damaged"))
    pg, _ = servers
    env.local_tenant("zorg-dmg", databases=[database_entry(pg)])
    assert env.bkp("init", "zorg-dmg").returncode == 0
    run, _ = env.bkp_json("backup", "zorg-dmg")
    dump_id = run["runs"][0]["databases"][0]["snapshot_id"]
    tree = json.loads(env.restic("zorg-dmg", "cat", "snapshot", dump_id).stdout)["tree"]
    node = json.loads(env.restic("zorg-dmg", "cat", "blob", tree).stdout)["nodes"][0]
    blob = node["content"][0]
    found = env.restic("zorg-dmg", "find", "--show-pack-id", "--blob", blob)
    pack = re.search(r"belongs to pack ([0-9a-f]{64})", found.stdout + found.stderr).group(1)
    path = Path(env.tenants["zorg-dmg"]["destination"]["path"]) / "data" / pack[:2] / pack
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    drilled, _code = env.bkp_json("drill", "zorg-dmg", expect=5)
    [drill] = drilled["drills"]
    assert drill["databases"][0]["status"] == "failed"
    assert any("database" in p["kind"] for p in drill["problems"]), drill["problems"]
    assert scratch_left(env) == []


def test_a_drill_stopped_by_sigterm_leaves_no_scratch_server(installation):
    env = installation
    proc = subprocess.Popen([sys.executable, "-m", "bkp", "drill", "zorg-db", "--json"],
                            env=env.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    places: set[Path] = set()
    while proc.poll() is None and time.monotonic() < deadline and not places:
        for record in (env.home / "scratch").glob("*.json"):
            try:
                started = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            if started.get("server_pid"):  # the server runs: the drill is mid-way
                places.add(Path(started["files"]))
    assert places and proc.poll() is None, "the drill ended before a scratch server started"
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, (out, err)
    assert json.loads(out)["drills"][0]["status"] == "failed"
    assert [p for p in places if p.exists()] == []
    assert scratch_left(env) == []
