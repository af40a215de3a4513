"""Scratch servers with real parts: the fixture databases are dumped with the real clients,
loaded into scratch servers that bkp starts, and counted on both sides; damaged dumps fail
with exit 5; a scratch server leaves nothing behind, whatever ends it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bkp.databases.inventory import PgConnection
from bkp.databases.scratch import (
    SCRATCH_ROOT,
    Inventory,
    MariadbDumpCounter,
    exported_snapshot,
    live_inventory_postgresql,
    remove_leftovers,
    scratch_server,
)
from bkp.errors import OperationError, VerificationError

pytestmark = pytest.mark.integration


def reader(server) -> PgConnection:
    return PgConnection(database=server.database, host=str(server.socket), port=server.port,
                        user=server.user, password=server.password)


def pg_dump(server, target: Path, *extra: str) -> None:
    """pg_dump -Fc -Z0 through a pipe, as bkp streams it into restic: the archive then
    has no data offsets, which pg_restore must cope with."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
           **reader(server).env()}
    with open(target, "wb") as out:
        dump = subprocess.Popen(["pg_dump", "-Fc", "-Z0", *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        cat = subprocess.Popen(["cat"], stdin=dump.stdout, stdout=out)
        dump.stdout.close()
        _, err = dump.communicate(timeout=120)
        cat.wait(timeout=120)
    assert dump.returncode == 0, err


def mariadb_dump(server, target: Path) -> MariadbDumpCounter:
    """mariadb-dump as the read-only user (password in its environment), counted by the
    tee that bkp puts on the stream."""
    counter = MariadbDumpCounter()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MYSQL")},
           **server.reader_env()}
    dump = subprocess.Popen(["mariadb-dump", *server.reader_argv(), "--single-transaction",
                             "--routines", "--triggers", "--events", server.database],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    with open(target, "wb") as out:
        while chunk := dump.stdout.read(4096):  # small chunks: tuples cross chunk borders
            counter.feed(chunk)
            out.write(chunk)
    assert dump.wait(timeout=120) == 0, dump.stderr.read()
    counter.close()
    return counter


def live_mariadb_inventory(server) -> dict[str, int]:
    tables = server.admin("SELECT table_name FROM information_schema.tables WHERE "
                          "table_schema = DATABASE() AND table_type IN "
                          "('BASE TABLE', 'SYSTEM VERSIONED')").splitlines()
    return {t: int(server.admin(f"SELECT COUNT(*) FROM `{t.replace('`', '``')}`"))
            for t in tables}


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bkp-home")
    path.chmod(0o700)  # as BKP_HOME is: the scratch user cannot pass through it
    return path


@pytest.fixture(scope="module")
def scratch_pg(home):
    with scratch_server("postgresql", home) as server:
        yield server


@pytest.fixture(scope="module")
def scratch_my(home):
    with scratch_server("mariadb", home) as server:
        yield server


# ------------------------------------------------------------------ dump, load, count


def test_postgresql_dump_loads_and_holds_what_the_snapshot_held(postgresql, scratch_pg,
                                                                tmp_path):
    dump = tmp_path / "zorgapp.pgdump"
    with exported_snapshot(reader(postgresql)) as snapshot:
        # Rows written after the export are neither dumped nor counted.
        postgresql.admin("INSERT INTO appointments (patient_id, reason) VALUES (1, 'late');"
                         "INSERT INTO archief.\"Patiënten 2019\" VALUES (9, 'late');")
        pg_dump(postgresql, dump, f"--snapshot={snapshot.snapshot_id}")
        recorded = snapshot.inventory()
    now = live_inventory_postgresql(reader(postgresql))
    assert now.tables["public.appointments"] == recorded.tables["public.appointments"] + 1
    # Partitions count, their partitioned parent does not (no row counted twice); views and
    # materialized views hold no rows of their own.
    assert recorded.tables["public.measurements_2023"] + recorded.tables[
        "public.measurements_2024"] == 100
    assert "public.measurements" not in recorded.tables
    assert "public.adults" not in recorded.tables
    assert "public.patient_count" not in recorded.tables
    assert recorded.tables["public.patients"] == 57
    assert recorded.tables["public.empty_table"] == 0
    assert "archief.Patiënten 2019" in recorded.tables

    seconds = scratch_pg.load(dump, "zorgapp_drill")
    assert seconds > 0
    loaded = scratch_pg.inventory("zorgapp_drill")
    assert loaded == recorded, recorded.differences(loaded)
    assert recorded.differences(loaded) == []


def test_mariadb_dump_loads_and_holds_what_the_stream_counted(mariadb, scratch_my, tmp_path):
    dump = tmp_path / "zorgapp.sql"
    counter = mariadb_dump(mariadb, dump)
    assert counter.completed
    recorded = counter.inventory
    assert recorded.tables == live_mariadb_inventory(mariadb)
    assert recorded.tables["patients"] == 57 and recorded.tables["empty_table"] == 0
    assert recorded.tables["odd `name` table"] == 2
    assert "invoice_numbers" not in recorded.tables and "adults" not in recorded.tables

    scratch_my.load(dump, "zorgapp_drill")
    loaded = scratch_my.inventory("zorgapp_drill")
    assert loaded == recorded, recorded.differences(loaded)


def test_differences_name_tables_and_counts_only():
    recorded = Inventory({"public.patients": 57, "public.notes": 3})
    loaded = Inventory({"public.patients": 56, "public.extra": 1})
    assert recorded.differences(loaded) == [
        "table public.extra was not recorded (1 rows loaded)",
        "table public.notes is missing (3 rows recorded)",
        "table public.patients holds 56 rows, 57 recorded"]
    assert Inventory.from_json(json.loads(json.dumps(recorded.to_json()))) == recorded
    for damaged in ({"tables": {"a": -1}}, {"tables": {"a": "3"}}, {"tables": []}, [], None,
                    {"tables": {"a": True}}):
        with pytest.raises(VerificationError):
            Inventory.from_json(damaged)


def test_a_wrong_password_names_the_database(postgresql):
    wrong = PgConnection(database=postgresql.database, host=str(postgresql.socket),
                         port=postgresql.port, user=postgresql.user, password="not-it")
    with pytest.raises(OperationError) as caught, exported_snapshot(wrong):
        pass
    assert "zorgapp" in str(caught.value) and "password authentication failed" in str(
        caught.value)
    assert "not-it" not in str(caught.value)


# ------------------------------------------------------------------ damaged dumps


def test_a_truncated_postgresql_dump_does_not_load(postgresql, scratch_pg, tmp_path):
    dump = tmp_path / "full.pgdump"
    pg_dump(postgresql, dump)
    data = dump.read_bytes()
    cut = tmp_path / "cut.pgdump"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VerificationError) as caught:
        scratch_pg.load(cut, "zorgapp_cut")
    assert caught.value.exit_code == 5
    assert "zorgapp_cut" in str(caught.value)


def test_a_corrupt_postgresql_dump_does_not_load(scratch_pg, tmp_path):
    dump = tmp_path / "garbage.pgdump"
    dump.write_bytes(b"PGDMP" + os.urandom(4096))
    with pytest.raises(VerificationError):
        scratch_pg.load(dump, "zorgapp_garbage")


def test_a_truncated_mariadb_dump_does_not_load_and_the_error_shows_no_rows(
        mariadb, scratch_my, tmp_path):
    dump = tmp_path / "full.sql"
    mariadb_dump(mariadb, dump)
    data = dump.read_bytes()
    # Cut inside the patients' rows: a statement without its end.
    cut_at = data.index(b"INSERT INTO `patients`") + 400
    cut = tmp_path / "cut.sql"
    cut.write_bytes(data[:cut_at])
    with pytest.raises(VerificationError) as caught:
        scratch_my.load(cut, "zorgapp_cut")
    assert "zorgapp_cut" in str(caught.value)
    assert "10000000" not in str(caught.value)  # no BSN from the failing statement


def test_a_hostile_mariadb_dump_cannot_run_commands(scratch_my, tmp_path):
    marker = tmp_path / "owned"
    dump = tmp_path / "hostile.sql"
    dump.write_text(f"CREATE TABLE t (id int);\n\\! touch {marker}\nsystem touch {marker}\n")
    with pytest.raises(VerificationError):
        scratch_my.load(dump, "zorgapp_hostile")
    assert not marker.exists()


# ------------------------------------------------------------------ nothing left behind


def _server_facts(server) -> tuple[int, Path, Path]:
    return server.service.pid, server.place.files, server.place.record


def test_a_scratch_server_leaves_nothing_after_success(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    with scratch_server("postgresql", home) as server:
        pid, files, record = _server_facts(server)
        assert running(pid) and files.is_dir() and record.exists()
        assert str(files).startswith(str(SCRATCH_ROOT))
    assert not running(pid) and not files.exists()
    assert list((home / "scratch").iterdir()) == []


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_scratch_server_leaves_nothing_after_an_exception(tmp_path, kind):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    with pytest.raises(KeyboardInterrupt), scratch_server(kind, home) as server:
        pid, files, _ = _server_facts(server)
        raise KeyboardInterrupt
    assert not running(pid) and not files.exists()
    assert list((home / "scratch").iterdir()) == []


KILLED_DRILL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bkp.databases.scratch import scratch_server
    with scratch_server(sys.argv[1], Path(sys.argv[2])) as server:
        print(server.place.name, server.service.pid, server.place.files, flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_what_a_sigkilled_drill_leaves_the_next_one_removes(tmp_path, kind):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    drill = subprocess.Popen([sys.executable, "-c", KILLED_DRILL, kind, str(home)],
                             stdout=subprocess.PIPE, text=True)
    name, pid, files = drill.stdout.readline().split()
    os.kill(drill.pid, signal.SIGKILL)
    drill.wait()
    assert Path(files).exists()  # SIGKILL leaves the files
    assert remove_leftovers(home) == [name]
    assert not running(int(pid)) and not Path(files).exists()
    assert list((home / "scratch").iterdir()) == []
    assert remove_leftovers(home) == []


def test_a_leftover_server_still_running_is_stopped_and_a_live_drills_is_not(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    with scratch_server("postgresql", home) as server:
        pid, files, record = _server_facts(server)
        # Another tenant's drill runs: its scratch server is not a leftover.
        assert remove_leftovers(home) == []
        assert running(pid)
        # Its drill died without taking the server along (e.g. killed before the
        # parent-death signal could act): the server is stopped and removed.
        facts = json.loads(record.read_text())
        facts["owner_pid"] = os.getpid() + 10**6  # no such process
        record.write_text(json.dumps(facts))
        assert remove_leftovers(home) == [server.place.name]
        assert not running(pid) and not files.exists()
    assert list((home / "scratch").iterdir()) == []


def test_a_record_pointing_elsewhere_removes_nothing(tmp_path):
    home = tmp_path / "home"
    (home / "scratch").mkdir(parents=True)
    victim = tmp_path / "precious"
    victim.mkdir()
    (home / "scratch" / "postgresql-0badc0de.json").write_text(json.dumps(
        {"kind": "postgresql", "token": "0badc0de", "files": str(victim),
         "owner_pid": os.getpid() + 10**6, "owner_start": 1, "server_pid": None}))
    assert remove_leftovers(home) == []
    assert victim.exists()
