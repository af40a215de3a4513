"""The database path under attack: hostile policy values, clients and restic killed mid-way,
bkp itself stopped, full disks, forged inventories, hostile table names, hostile restore
requests. Each must end in one clear sentence and the honest exit code (bkp/errors.py),
never a traceback, never a snapshot of half a dump, never a verdict the evidence does not
support, and no secret anywhere.

Real servers (the session fixtures `postgresql` and `mariadb` of tests/conftest.py), real
pg_dump / mariadb-dump, real restic, the real CLI as a subprocess. Each test works in a
database of its own, so that the tables it adds change no other test's counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DatabaseServer, new_bkp_env

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- helpers


def entry(server: DatabaseServer, name: str | None = None, **overrides) -> dict:
    found = {"type": server.kind, "name": server.database if name is None else name,
             "host": str(server.socket), "user": server.user,
             "password_file": str(server.password_file)}
    if server.kind == "postgresql":
        found["port"] = server.port
    found.update(overrides)
    return found


def pg_database(pg: DatabaseServer, name: str, sql: str = "") -> str:
    pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE); CREATE DATABASE "{name}";',
             database="postgres")
    if sql:
        pg.admin(sql, database=name)
    return name


def maria_database(maria: DatabaseServer, name: str, sql: str = "") -> str:
    maria.admin(f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`; "
                f"GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON `{name}`.* "
                f"TO bkp_reader@localhost;", database="mysql")
    if sql:
        maria.admin(sql, database=name)
    return name


def tenant(env, name: str, databases: list[dict], **overrides) -> str:
    env.local_tenant(name, databases=databases, **overrides)
    done = env.bkp("init", name)
    assert done.returncode == 0, done.stderr
    return name


def kinds(env, name: str) -> list[tuple]:
    done = env.restic(name, "snapshots", "--json")
    assert done.returncode == 0, done.stderr
    result = []
    for snap in json.loads(done.stdout):
        tags = dict(t.split("=", 1) for t in snap.get("tags") or [] if "=" in t)
        result.append((tags.get("kind"), tags.get("database"), snap["id"]))
    return result


def dumps_of(env, name: str) -> list[tuple]:
    return [k for k in kinds(env, name) if k[0] in ("database", "inventory")]


def one_sentence(stderr: str, *words: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("bkp:")]
    assert lines, stderr
    for word in words:
        assert any(word in line for line in lines), (word, stderr)
    return lines[-1]


def popen(env, *args: str, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bkp", *args], env=env.env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def processes(fragment: bytes, program: bytes) -> list[int]:
    """Pids whose argv[0] ends with `program` and whose command line holds `fragment`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(program) and fragment in b"\0".join(argv):
            found.append(int(cmdline.parent.name))
    return found


def io_of(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_for_streaming(proc: subprocess.Popen, program: bytes, fragment: bytes,
                       field: str = "wchar", timeout: float = 120) -> int | None:
    """The pid of `program` once it has moved a MiB of the dump (mid-stream), or None when
    bkp ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for pid in processes(fragment, program):
            if io_of(pid, field) > (1 << 20):
                return pid
        time.sleep(0.01)
    return None


def runs(env) -> list[dict]:
    conn = sqlite3.connect(f"file:{env.home / 'catalog.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("select * from runs order by id")]
    finally:
        conn.close()


BIG_PG = ("CREATE TABLE bulk AS SELECT i, repeat(md5(i::text), 8) AS pad "
          "FROM generate_series(1, 250000) i;")
BIG_MARIA = ("CREATE TABLE bulk (i int PRIMARY KEY, pad text) ENGINE=InnoDB; "
             "INSERT INTO bulk SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_250000;")


# ---------------------------------------------------------------- hostile policy values


@pytest.mark.parametrize("name", [
    "zorg\napp", "zorg,app", "..", "../etc", "zorg'app", 'zorg"app', "-zorgapp",
    "--help", "z" * 64, "zörgapp", "zorg app", "zorg=app", "", "zorg\x00app"])
def test_a_hostile_database_name_is_refused_by_the_policy(bkp_env, postgresql, name):
    bkp_env.local_tenant("zorg-name", databases=[entry(postgresql, name)])
    done = bkp_env.bkp("policy", "validate", str(bkp_env.policies / "zorg-name.yaml"))
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert "name" in done.stdout + done.stderr
    backup = bkp_env.bkp("backup", "zorg-name")
    assert backup.returncode == 3, backup.stderr
    said = backup.stdout + backup.stderr
    assert "Traceback" not in said and "databases.0.name" in said, said
    assert len(said.strip().splitlines()) == 1, said  # a newline in the name is shown escaped


def test_a_socket_that_does_not_exist_fails_the_run_naming_the_database(
        bkp_env, postgresql, mariadb):
    missing = Path(f"/tmp/bkp-no-such-{os.getpid()}")
    name = tenant(bkp_env, "zorg-sock", [entry(postgresql, host=str(missing)),
                                          entry(mariadb, host=f"{missing}.sock")])
    run, _ = bkp_env.bkp_json("backup", name, expect=1)
    [row] = run["runs"]
    assert row["snapshot_id"], row  # the files were still saved
    for database in row["databases"]:
        assert database["status"] == "failed" and "zorgapp" in database["error"], database
        assert str(missing) in database["error"], database
    assert dumps_of(bkp_env, name) == []


def test_a_socket_path_longer_than_the_kernel_allows_is_refused(bkp_env, postgresql,
                                                                mariadb):
    """A unix socket path holds at most 107 bytes; the MariaDB client silently cuts a longer
    one and then connects to whatever the cut path names."""
    long = "/var/run/" + "d" * 100
    name = tenant(bkp_env, "zorg-longsock", [entry(postgresql, host=long),
                                              entry(mariadb, host=long + "/mysqld.sock")])
    run, code = bkp_env.bkp_json("backup", name, expect=None)
    assert code == 3, run
    for database in run["runs"][0]["databases"]:
        assert database["status"] == "failed" and "107" in database["error"], database


def _password_variants(server: DatabaseServer, tmp_path: Path):
    secret = server.password
    wrong_mode = tmp_path / "wrong-mode"
    wrong_mode.write_text(secret + "\n")
    wrong_mode.chmod(0o644)
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    open_target = tmp_path / "open-target"
    open_target.write_text(secret + "\n")
    open_target.chmod(0o644)
    link = tmp_path / "link"
    link.symlink_to(open_target)
    two_lines = tmp_path / "two-lines"
    two_lines.write_text(secret + "\nsecond line\n")
    two_lines.chmod(0o600)
    return {"wrong-mode": wrong_mode, "empty": empty, "symlink-to-open-file": link,
            "two-lines": two_lines}


@pytest.mark.parametrize("variant", ["wrong-mode", "empty", "symlink-to-open-file",
                                     "two-lines"])
def test_a_bad_password_file_is_a_policy_error_without_the_secret(
        bkp_env, postgresql, tmp_path, variant):
    path = _password_variants(postgresql, tmp_path)[variant]
    bkp_env.local_tenant("zorg-pw", databases=[entry(postgresql, password_file=str(path))])
    bkp_env.bkp("init", "zorg-pw")
    done = bkp_env.bkp("backup", "zorg-pw", "--json")
    assert done.returncode == 3, (done.stdout, done.stderr)
    said = done.stdout + done.stderr
    assert "Traceback" not in said and postgresql.password not in said
    assert "password_file" in said, said


def test_a_password_file_with_a_crlf_ending_still_dumps(bkp_env, postgresql, tmp_path):
    path = tmp_path / "crlf"
    path.write_text(postgresql.password + "\r\n")
    path.chmod(0o600)
    name = tenant(bkp_env, "zorg-crlf", [entry(postgresql, password_file=str(path))])
    run, _ = bkp_env.bkp_json("backup", name)
    assert run["runs"][0]["databases"][0]["status"] == "ok"


# ---------------------------------------------------------------- killed mid-stream


def _assert_failed_without_dump(env, name: str, proc: subprocess.Popen, database: str,
                                *words: str) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err, err
    [row] = json.loads(out)["runs"]
    [failed] = [d for d in row["databases"] if d["status"] == "failed"]
    assert database in failed["error"], failed
    for word in words:
        assert word in failed["error"], failed
    assert failed["snapshot_id"] is None
    assert [k for k in dumps_of(env, name) if k[1] == database] == []
    return failed


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_dump_client_killed_mid_stream_leaves_no_snapshot(
        bkp_env, postgresql, mariadb, kind):
    if kind == "postgresql":
        database = pg_database(postgresql, "adv_kill_pg", BIG_PG)
        server, program = postgresql, b"pg_dump"
    else:
        database = maria_database(mariadb, "adv_kill_my", BIG_MARIA)
        server, program = mariadb, b"mariadb-dump"
    name = tenant(bkp_env, f"zorg-kill-{kind[:2]}", [entry(server, database)])
    proc = popen(bkp_env, "backup", name, "--json")
    pid = wait_for_streaming(proc, program, database.encode())
    assert pid, "the dump client was never seen streaming: the test could not kill it"
    os.kill(pid, signal.SIGKILL)
    _assert_failed_without_dump(bkp_env, name, proc, database)


def test_restic_killed_mid_stream_leaves_no_snapshot(bkp_env, postgresql):
    database = pg_database(postgresql, "adv_kill_restic", BIG_PG)
    name = tenant(bkp_env, "zorg-kill-restic", [entry(postgresql, database)])
    proc = popen(bkp_env, "backup", name, "--json")
    pid = wait_for_streaming(proc, b"restic", f"{database}.pgdump".encode(), field="rchar")
    assert pid, "restic was never seen reading the dump: the test could not kill it"
    os.kill(pid, signal.SIGKILL)
    _assert_failed_without_dump(bkp_env, name, proc, database)


def test_a_database_dropped_mid_dump_fails_naming_it(bkp_env, postgresql):
    database = pg_database(postgresql, "adv_dropped", BIG_PG)
    name = tenant(bkp_env, "zorg-dropped", [entry(postgresql, database)])
    proc = popen(bkp_env, "backup", name, "--json")
    assert wait_for_streaming(proc, b"pg_dump", database.encode())
    postgresql.admin(f"DROP DATABASE {database} WITH (FORCE);", database="postgres")
    _assert_failed_without_dump(bkp_env, name, proc, database)


def test_a_server_stopped_mid_dump_fails_naming_the_database(bkp_env, tmp_path):
    from tests.conftest import start_mariadb

    (tmp_path / "own-mariadb").mkdir()
    server = start_mariadb(tmp_path / "own-mariadb")
    try:
        server.admin(BIG_MARIA)
        name = tenant(bkp_env, "zorg-stopped", [entry(server)])
        proc = popen(bkp_env, "backup", name, "--json")
        assert wait_for_streaming(proc, b"mariadb-dump", str(server.socket).encode())
        server.proc.kill()
        server.proc.wait(timeout=60)
        _assert_failed_without_dump(bkp_env, name, proc, server.database)
    finally:
        server.stop()


# ---------------------------------------------------------------- bkp itself stopped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_bkp_stopped_during_the_dump_leaves_no_snapshot_and_an_honest_record(
        bkp_env, postgresql, sig):
    database = pg_database(postgresql, f"adv_stop_{sig.name.lower()}", BIG_PG)
    name = tenant(bkp_env, f"zorg-{sig.name.lower()}", [entry(postgresql, database)])
    proc = popen(bkp_env, "backup", name, "--json")
    assert wait_for_streaming(proc, b"pg_dump", database.encode())
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, (out, err)
    assert "Traceback" not in err, err
    # Nothing of this run keeps running: the kernel or bkp stopped the clients.
    deadline = time.monotonic() + 30
    while processes(database.encode(), b"pg_dump") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes(database.encode(), b"pg_dump") == []
    assert [k for k in dumps_of(bkp_env, name) if k[1] == database] == []
    # The next night works, and the run before it is on record as interrupted (a SIGTERMed
    # run closed itself so; the next command that acts closes a SIGKILLed one).
    run, _ = bkp_env.bkp_json("backup", name)
    assert run["runs"][0]["databases"][0]["status"] == "ok"
    first = next(r for r in runs(bkp_env) if r["kind"] == "backup")
    assert first["status"] == "interrupted", first


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_bkp_stopped_during_the_drill_load_is_never_passed_and_leaves_no_server(
        bkp_env, postgresql, sig):
    database = pg_database(postgresql, f"adv_drill_{sig.name.lower()}", BIG_PG)
    name = tenant(bkp_env, f"zorg-drill-{sig.name.lower()}", [entry(postgresql, database)])
    bkp_env.bkp_json("backup", name)
    proc = popen(bkp_env, "drill", name, "--json")
    # pg_restore runs as the scratch user; wait until it loads this tenant's dump.
    deadline = time.monotonic() + 180
    loading: list[int] = []
    while proc.poll() is None and time.monotonic() < deadline and not loading:
        loading = [p for p in processes(database.encode(), b"pg_restore") if io_of(p, "rchar")]
        time.sleep(0.01)
    assert loading, "pg_restore was never seen loading: the test could not stop the drill"
    records = list((bkp_env.home / "scratch").glob("*.json"))
    files = [Path(json.loads(r.read_text())["files"]) for r in records]
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, (out, err)
    if sig == signal.SIGTERM:
        assert json.loads(out)["drills"][0]["status"] == "failed"
        assert [f for f in files if f.exists()] == []
    # The next drill closes the dead run, removes what is left, and passes.
    drilled, code = bkp_env.bkp_json("drill", name)
    assert code == 0, drilled
    assert [f for f in files if f.exists()] == []
    assert list((bkp_env.home / "scratch").glob("*.json")) == []
    first = next(r for r in runs(bkp_env) if r["kind"] == "drill")
    assert first["status"] == "interrupted", first


# ---------------------------------------------------------------- full disks


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int = 0) -> None:
    """Fill the filesystem at `path`, leaving about `leave` bytes free."""
    with open(path / "filler", "wb") as fh, contextlib.suppress(OSError):
        while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave + (1 << 20):
            fh.write(b"\0" * (1 << 20))
            fh.flush()
    if leave:
        with open(path / "filler2", "wb") as fh, contextlib.suppress(OSError):
            while os.statvfs(path).f_bavail * os.statvfs(path).f_frsize > leave:
                fh.write(b"\0" * 4096)
                fh.flush()


def test_a_full_bkp_home_during_the_drill_is_an_operational_failure(
        tmp_path, postgresql):
    database = pg_database(postgresql, "adv_full_home", BIG_PG.replace("250000", "600000"))
    with small_filesystem(tmp_path / "root", "480m") as root:
        env = new_bkp_env(root)
        name = tenant(env, "zorg-fullhome", [entry(postgresql, database)])
        run, _ = env.bkp_json("backup", name)
        assert run["runs"][0]["databases"][0]["bytes"] > 120 << 20
        # Room for the file drill (its 64 MiB margin) and the catalog, not for the dump.
        fill(root, leave=72 << 20)
        done = env.bkp("drill", name, "--json")
        os.unlink(root / "filler")
        _assert_drill_could_not_run(done, database)


def test_a_full_scratch_disk_during_the_load_is_an_operational_failure(
        bkp_env, postgresql, tmp_path):
    database = pg_database(postgresql, "adv_full_scratch", BIG_PG)
    name = tenant(bkp_env, "zorg-fullscratch", [entry(postgresql, database)])
    bkp_env.bkp_json("backup", name)
    # Where the scratch user can reach it (not under pytest's 0700 folders), like /var/tmp.
    with small_filesystem(Path(f"/var/tmp/bkp-adv-scratch-{os.getpid()}"), "80m") as root:
        os.chmod(root, 0o1777)
        done = bkp_env.bkp("drill", name, "--json", BKP_SCRATCH_ROOT=str(root))
        left = [p.name for p in root.iterdir()]
    _assert_drill_could_not_run(done, database)
    assert left == []


def _assert_drill_could_not_run(done: subprocess.CompletedProcess, database: str) -> None:
    """Exit 1 with one sentence naming the space and the database: a full disk is the
    drill's own trouble, not damage in the backup (never 5, never 0)."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, (done.stdout, done.stderr)
    drill = json.loads(done.stdout)["drills"][0]
    assert drill["status"] == "failed" and drill["result"] == "error", drill
    assert drill["problems"] == [], drill
    said = drill["error"]
    assert "\n" not in said and "space" in said and database in said, said


# ---------------------------------------------------------------- forged inventories


def _inventory_snapshot(env, name: str, database: str) -> tuple[str, dict]:
    [(_, _, snap_id)] = [k for k in kinds(env, name) if k[:2] == ("inventory", database)]
    done = env.restic(name, "dump", snap_id, f"/{database}.inventory.json")
    assert done.returncode == 0, done.stderr
    return snap_id, json.loads(done.stdout)


def _replace_inventory(env, name: str, database: str, document: dict | None) -> None:
    snap_id, _ = _inventory_snapshot(env, name, database)
    show = json.loads(env.restic(name, "snapshots", "--json", snap_id).stdout)[0]
    assert env.restic(name, "forget", snap_id).returncode == 0
    if document is None:
        return
    argv = ["backup", "--stdin", "--stdin-filename", f"{database}.inventory.json",
            "--host", show["hostname"]]
    for tag in show["tags"]:
        argv += ["--tag", tag]
    dest = env.tenants[name]["destination"]["path"]
    forged = subprocess.run(["restic", "-r", dest, *argv], input=json.dumps(document),
                            text=True, capture_output=True, timeout=120,
                            env={**env.env(), "RESTIC_PASSWORD_FILE":
                                 str(env.secrets / f"{name}.key")})
    assert forged.returncode == 0, forged.stderr


def _forge_catalog(env, change) -> None:
    conn = sqlite3.connect(env.home / "catalog.db")
    try:
        for row_id, tables in conn.execute("select id, tables from database_dumps").fetchall():
            conn.execute("update database_dumps set tables = ? where id = ?",
                         [json.dumps(change(json.loads(tables))), row_id])
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("where", ["repository", "catalog", "both"])
def test_an_edited_inventory_fails_the_drill(bkp_env, postgresql, where):
    database = pg_database(postgresql, f"adv_forged_{where}",
                           "CREATE TABLE t (i int); INSERT INTO t VALUES (1), (2), (3);")
    name = tenant(bkp_env, f"zorg-forged-{where}", [entry(postgresql, database)])
    bkp_env.bkp_json("backup", name)

    def more(tables: dict) -> dict:
        return {k: v + 1 for k, v in tables.items()}

    if where in ("repository", "both"):
        _, document = _inventory_snapshot(bkp_env, name, database)
        _replace_inventory(bkp_env, name, database,
                           {**document, "tables": more(document["tables"])})
    if where in ("catalog", "both"):
        _forge_catalog(bkp_env, more)
    drilled, _ = bkp_env.bkp_json("drill", name, expect=5)
    problems = json.dumps(drilled["drills"][0]["problems"])
    assert database in problems and ("public.t" in problems or "differ" in problems), problems


def test_a_missing_inventory_fails_the_drill_naming_the_cause(bkp_env, postgresql):
    database = pg_database(postgresql, "adv_no_inventory",
                           "CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    name = tenant(bkp_env, "zorg-noinv", [entry(postgresql, database)])
    bkp_env.bkp_json("backup", name)
    _replace_inventory(bkp_env, name, database, None)
    _forge_catalog(bkp_env, lambda tables: {})
    conn = sqlite3.connect(bkp_env.home / "catalog.db")
    conn.execute("update database_dumps set tables = NULL")
    conn.commit()
    conn.close()
    drilled, _ = bkp_env.bkp_json("drill", name, expect=5)
    problems = json.dumps(drilled["drills"][0]["problems"])
    assert "inventory" in problems and "deleted" in problems, problems


def test_a_count_that_fails_after_the_dump_is_named_at_backup_and_in_the_drill(
        bkp_env, postgresql):
    database = pg_database(postgresql, "adv_count_fails",
                           "CREATE TABLE big AS SELECT i FROM generate_series(1, 6000000) i;")
    name = tenant(bkp_env, "zorg-count", [entry(postgresql, database)])
    proc = popen(bkp_env, "backup", name, "--json")
    terminated = ""
    deadline = time.monotonic() + 180
    while not terminated and proc.poll() is None and time.monotonic() < deadline:
        # bkp's counting session (it holds the exported snapshot), while it counts
        terminated = postgresql.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            f"'{database}' AND query LIKE '%query_to_xml%' AND state = 'active' "
            "AND pid <> pg_backend_pid();", database="postgres").strip()
    out, err = proc.communicate(timeout=300)
    assert terminated, "the count was never seen running: the test could not stop it"
    assert proc.returncode == 1, (out, err)
    [row] = json.loads(out)["runs"]
    [dump] = row["databases"]
    assert dump["status"] == "failed" and "count" in dump["error"], dump
    assert database in dump["error"]
    drilled, code = bkp_env.bkp_json("drill", name, expect=None)
    problems = json.dumps(drilled["drills"][0]["problems"])
    assert code == 5, drilled
    assert "count" in problems and "no inventory in the repository or the catalog" \
        not in problems, problems


# ---------------------------------------------------------------- hostile table names


def test_mariadb_tables_with_newlines_and_backquotes_are_counted_exactly(
        bkp_env, mariadb):
    database = maria_database(mariadb, "adv_names", (
        "CREATE TABLE `new\nline` (i int, `col\nname` text); "
        "INSERT INTO `new\nline` VALUES (1, 'a'), (2, 'b\nc'), (3, NULL); "
        "CREATE TABLE `back``quote` (i int); INSERT INTO `back``quote` VALUES (1), (2); "
        "CREATE TABLE `INSERT INTO x VALUES (1);` (i int); "
        "INSERT INTO `INSERT INTO x VALUES (1);` VALUES (7); "
        "CREATE TABLE `semi;\nx` (i int); INSERT INTO `semi;\nx` VALUES (1), (2), (3), (4);"))
    name = tenant(bkp_env, "zorg-names", [entry(mariadb, database)])
    run, _ = bkp_env.bkp_json("backup", name)
    [dump] = run["runs"][0]["databases"]
    assert dump["status"] == "ok", dump
    assert dump["tables"] == 4 and dump["rows"] == 3 + 2 + 1 + 4, dump
    drilled, code = bkp_env.bkp_json("drill", name, expect=None)
    assert code == 0, drilled["drills"][0]["problems"]


def test_postgresql_tables_with_hostile_names_are_counted_exactly(bkp_env, postgresql):
    database = pg_database(postgresql, "adv_pg_names", (
        'CREATE TABLE "new\nline" (i int); INSERT INTO "new\nline" VALUES (1), (2); '
        'CREATE TABLE "a.b" (i int); INSERT INTO "a.b" VALUES (1); '
        'CREATE SCHEMA "a"; CREATE TABLE a.b (i int); INSERT INTO a.b VALUES (1), (2), (3); '
        "CREATE TABLE \"quote'\"\"\" (i int); INSERT INTO \"quote'\"\"\" VALUES (1);"))
    name = tenant(bkp_env, "zorg-pgnames", [entry(postgresql, database)])
    run, _ = bkp_env.bkp_json("backup", name)
    [dump] = run["runs"][0]["databases"]
    assert dump["status"] == "ok" and dump["rows"] == 2 + 1 + 3 + 1, dump
    drilled, code = bkp_env.bkp_json("drill", name, expect=None)
    assert code == 0, drilled["drills"][0]["problems"]


def test_a_database_owner_cannot_hijack_the_count(bkp_env, postgresql):
    """A tenant's application owns its database and may create functions in it: a
    `public.query_to_xml` ahead of pg_catalog in the reader's search_path must not decide
    the counts bkp records."""
    database = pg_database(postgresql, "adv_hijack", (
        "CREATE TABLE t (i int); INSERT INTO t VALUES (1), (2); "
        "CREATE FUNCTION public.query_to_xml(text, boolean, boolean, text) RETURNS xml "
        "LANGUAGE sql AS $$ SELECT '<row><c>999</c></row>'::xml $$;"))
    postgresql.admin(f"ALTER ROLE bkp_reader IN DATABASE {database} "
                     "SET search_path = public, pg_catalog;", database="postgres")
    name = tenant(bkp_env, "zorg-hijack", [entry(postgresql, database)])
    run, _ = bkp_env.bkp_json("backup", name)
    [dump] = run["runs"][0]["databases"]
    assert dump["status"] == "ok" and dump["rows"] == 2, dump


# ---------------------------------------------------------------- hostile restores


@pytest.mark.parametrize("database", ["../zorgapp", "zorg\napp", "-zorgapp", "zorgapp;ls",
                                      "postgresql:", ":zorgapp", "x" * 300, "zörgapp"])
def test_restore_database_with_a_hostile_name_is_a_usage_error(bkp_env, postgresql, tmp_path,
                                                               database):
    name = tenant(bkp_env, "zorg-rest", [entry(postgresql)])
    target = tmp_path / "out.dump"
    done = bkp_env.bkp("restore", name, "--database", database, "--target", str(target))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stderr.strip(), done.stderr
    assert not target.exists()


@pytest.mark.parametrize("target_kind", ["file", "symlink", "dangling-symlink", "directory",
                                         "missing-folder"])
def test_restore_database_never_writes_over_or_through_an_existing_target(
        bkp_env, postgresql, tmp_path, target_kind):
    database = pg_database(postgresql, "adv_restore_target",
                           "CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    name = tenant(bkp_env, f"zorg-rt-{target_kind}", [entry(postgresql, database)])
    bkp_env.bkp_json("backup", name)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    target = tmp_path / "target"
    expect = 4
    if target_kind == "file":
        target.write_text("keep me too\n")
    elif target_kind == "symlink":
        target.symlink_to(victim)
    elif target_kind == "dangling-symlink":
        target.symlink_to(tmp_path / "nowhere")
    elif target_kind == "directory":
        target.mkdir()
    else:
        target = tmp_path / "no-such-folder" / "target"
        expect = 2
    done = bkp_env.bkp("restore", name, "--database", database, "--target", str(target))
    assert done.returncode == expect, (done.stdout, done.stderr)
    one_sentence(done.stderr)
    assert victim.read_text() == "keep me\n"
    assert not (tmp_path / "nowhere").exists()

