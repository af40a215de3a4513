#!/usr/bin/env python3
"""What bkp's database dumps and database drills cost against the raw commands.

A throwaway PostgreSQL (the tests' approach: the `postgres` system user, a private socket and
a loopback port, the read-only role `bkp_reader` with a password file) holds one database
of about --size-mb, generated server-side with generate_series: patients, appointments,
measurements and documents, with primary keys, a foreign key and a secondary index.
Tenant `bench-db` has only that database and a tiny source folder in its policy.

Each of --runs runs starts from a fresh BKP_HOME and fresh repositories (`bkp init`; the
raw repository is a copy of the fresh one, see README) and times, the side that goes
first alternating from run to run:

1. first night: `bkp backup bench-db` vs two raw pipelines, each into its own repository:
   the issue's named baseline `pg_dump -Fc zorgapp | restic backup --stdin` (pg_dump's
   default compression) and the stricter `pg_dump -Fc -Z0 zorgapp | restic backup --stdin`
   (what bkp runs: no compression, so that restic deduplicates from night to night);
2. second night, database unchanged: the same again;
3. drill: `bkp drill bench-db` (the whole drill; `load_s` from its JSON) vs raw
   `restic dump latest` into a file + initdb of a fresh cluster + pg_ctl start +
   createdb + pg_restore + exact row counts + pg_ctl stop and rm.

    bench/databases.py [--size-mb 1024] [--runs 3]

Targets (issue 12): nights <= 1.05x the named baseline (`pg_dump -Fc`), drill <= 1.10x
raw; the ratio against `-Z0` is reported beside it.
Results: a table on stdout, JSON in bench/results/databases.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BKP,
    HOST,
    PASSWORD,
    Measure,
    RawRepo,
    Tenant,
    _children_cpu,
    bkp_json,
    clean_env,
    die,
    environment_info,
    fmt,
    free_port,
    load_warning,
    median,
    ratio,
    timed,
    watched,
    write_results,
    write_secret,
)

BENCH_ROOT = Path("/var/tmp/bkp-bench")
TENANT = "bench-db"
DATABASE = "zorgapp"
DUMP_FILENAME = f"{DATABASE}.pgdump"  # bkp's name for it, so both snapshots look alike
SERVER_USER = "postgres"
TARGETS = {"first": 1.05, "rerun": 1.05, "drill": 1.10}
CASES = {"first": "first night (dump + backup)",
         "rerun": "second night, database unchanged",
         "drill": "drill (restore, load, count)"}

# Speed over durability, exactly what bkp's scratch server sets (bkp/databases/scratch.py):
# the raw cluster gets the same, so the drill ratio shows orchestration, not settings.
SCRATCH_SETTINGS = {"listen_addresses": "", "fsync": "off", "synchronous_commit": "off",
                    "full_page_writes": "off", "autovacuum": "off",
                    "dynamic_shared_memory_type": "mmap", "max_wal_size": "4GB",
                    "logging_collector": "off"}


def pg_bindir() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()),
                      reverse=True) if root.is_dir() else []
    if not versions:
        die("no PostgreSQL server under /usr/lib/postgresql: run scripts/install.sh --dev")
    return root / str(versions[0]) / "bin"


BIN = pg_bindir()


def owned_dir(prefix: str, owner: str) -> Path:
    """A folder in /var/tmp the server user can reach (not under a 0700 work folder)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    entry = pwd.getpwnam(owner)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *argv]


def timed_io(argv: list[str], env: dict[str, str], what: str, *, stdin: Path | None = None,
             stdout: Path | None = None, sync: bool = False) -> Measure:
    """`timed` with a file on stdin or stdout (the raw steps redirect like a shell would)."""
    if sync:
        os.sync()
    cpu = _children_cpu()
    started = time.perf_counter()
    with open(stdin or os.devnull, "rb") as fin, open(stdout or os.devnull, "wb") as fout:
        done = subprocess.run(argv, env=env, stdin=fin, stdout=fout, stderr=subprocess.PIPE,
                              text=True)
    measure = Measure(time.perf_counter() - started, _children_cpu() - cpu)
    if done.returncode != 0:
        die(f"{what} failed (exit {done.returncode}): {argv}\n{done.stderr[-2000:]}")
    return measure


# ---------------------------------------------------------------- the source database

# Rows per MiB of database (heap + indexes), measured on this schema: the sizes come out
# within a few percent of --size-mb.
SHARES = {"patients": 0.15, "appointments": 0.30, "measurements": 0.30, "documents": 0.25}
ROW_BYTES = {"patients": 230, "appointments": 215, "measurements": 95, "documents": 520}

SCHEMA = """
CREATE ROLE zorgapp_owner;
CREATE ROLE bkp_reader LOGIN PASSWORD :'password';
GRANT pg_read_all_data TO bkp_reader;
CREATE DATABASE zorgapp OWNER zorgapp_owner;
\\connect zorgapp
SET ROLE zorgapp_owner;
CREATE TABLE patients (id int PRIMARY KEY, bsn char(9) NOT NULL, name text, address text,
                       born date, notes text);
INSERT INTO patients
SELECT i, lpad((100000000 + i)::text, 9, '0'),
       (ARRAY['de Vries','Jansen','Bakker','Visser','Smit','Meijer','de Boer','Mulder'])[1 + i % 8]
         || ', ' || substr(md5(i::text), 1, 8),
       'Straatweg ' || (i % 400) || ', ' || (1000 + i % 8999) || ' AB Utrecht',
       date '1930-01-01' + ((i * 7919) % 32000)::int,
       CASE WHEN i % 3 = 0 THEN NULL
            ELSE 'allergie: ' || md5((i * 31)::text) || ' ' || md5(i::text) END
FROM generate_series(1::bigint, :patients) AS i;
CREATE TABLE appointments (id bigint PRIMARY KEY,
                           patient_id int NOT NULL REFERENCES patients(id),
                           at timestamptz NOT NULL, reason text, notes text);
INSERT INTO appointments
SELECT i, (1 + (i * 7) % :patients)::int,
       timestamptz '2015-01-01 08:00+01' + i * interval '17 minutes',
       (ARRAY['controle','bloedafname','consult','vaccinatie','nacontrole'])[1 + i % 5],
       'verslag ' || md5(i::text) || ' ' || md5((i + 1)::text)
FROM generate_series(1::bigint, :appointments) AS i;
CREATE TABLE measurements (patient_id int NOT NULL, taken timestamptz NOT NULL, kind text,
                           value numeric(8, 2));
INSERT INTO measurements
SELECT (1 + i % :patients)::int, timestamptz '2020-01-01 00:00+01' + i * interval '1 minute',
       (ARRAY['bloeddruk','gewicht','glucose','temperatuur'])[1 + i % 4],
       ((i * 7919) % 20000) / 100.0
FROM generate_series(1::bigint, :measurements) AS i;
CREATE INDEX measurements_patient ON measurements (patient_id, taken);
CREATE TABLE documents (id int PRIMARY KEY, patient_id int NOT NULL, title text, body text);
INSERT INTO documents
SELECT i, (1 + i % :patients)::int, 'brief ' || i,
       md5(i::text) || md5((i * 3)::text) || md5((i * 5)::text) || md5((i * 7)::text)
       || md5((i * 11)::text) || md5((i * 13)::text) || md5((i * 17)::text)
       || md5((i * 19)::text) || md5((i * 23)::text) || md5((i * 29)::text)
       || md5((i * 31)::text) || md5((i * 37)::text)
FROM generate_series(1::bigint, :documents) AS i;
RESET ROLE;
VACUUM (FREEZE, ANALYZE);
CHECKPOINT;
"""

COUNT_QUERY = """\
SELECT string_agg(t.tablename || '=' || (xpath('/row/c/text()', query_to_xml(
         format('SELECT count(*) AS c FROM %I.%I', t.schemaname, t.tablename),
         false, true, '')))[1]::text, ' ' ORDER BY t.tablename)
FROM pg_tables t WHERE t.schemaname NOT IN ('pg_catalog', 'information_schema')"""


def parse_counts(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (item.split("=") for item in text.split())}


class Source:
    """The tenant's production PostgreSQL, started once for the whole benchmark."""

    def __init__(self, base: Path, size_mb: int):
        self.files = owned_dir("bkp-bench-pg-", SERVER_USER)
        self.port = free_port()
        self.log = self.files / "server.log"
        self.password_file = write_secret(base / "secrets" / "db-password",
                                          "reader-" + os.urandom(8).hex() + "\n")
        self.proc: subprocess.Popen | None = None
        self.size_mb = size_mb

    def psql(self, database: str = "postgres") -> list[str]:
        return as_server_user([str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v",
                               "ON_ERROR_STOP=1", "-h", str(self.files), "-p", str(self.port),
                               "-U", "postgres", "-d", database])

    def start(self) -> None:
        subprocess.run(as_server_user([
            str(BIN / "initdb"), "-D", str(self.files / "data"), "-U", "postgres", "-A",
            "scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8",
            "--no-sync", "--no-instructions"]), cwd=self.files, check=True,
            capture_output=True)
        (self.files / "data" / "pg_hba.conf").write_text(
            "local all postgres trust\nlocal all all scram-sha-256\n")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(as_server_user([
                str(BIN / "postgres"), "-D", str(self.files / "data"), "-c",
                "listen_addresses=127.0.0.1", "-c", f"port={self.port}", "-c",
                f"unix_socket_directories={self.files}", "-c", "fsync=off", "-c",
                "max_wal_size=4GB"]), cwd=self.files, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (self.files / f".s.PGSQL.{self.port}").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                die(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.2)  # the socket file appears just before connections are accepted

    def populate(self) -> dict:
        rows = {t: int(SHARES[t] * self.size_mb * 2**20 / ROW_BYTES[t]) for t in SHARES}
        print(f"generating a ~{self.size_mb} MiB database ({sum(rows.values()):,} rows) ...",
              file=sys.stderr)
        started = time.perf_counter()
        argv = [*self.psql(), "-v", f"password={self.password_file.read_text().strip()}"]
        for table, count in rows.items():
            argv += ["-v", f"{table}={count}"]
        done = subprocess.run(argv, input=SCHEMA, capture_output=True, text=True)
        if done.returncode != 0:
            die(f"generating the database failed: {done.stderr[-2000:]}")
        size = int(self.query("SELECT pg_database_size('zorgapp')"))
        counts = parse_counts(self.query(COUNT_QUERY, DATABASE))
        seconds = time.perf_counter() - started
        print(f"  {size / 2**20:.0f} MiB in {seconds:.0f}s", file=sys.stderr)
        return {"database_bytes": size, "rows": counts, "generate_s": round(seconds, 1)}

    def query(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run([*self.psql(database), "-c", sql], capture_output=True,
                              text=True)
        if done.returncode != 0:
            die(f"query failed: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def policy_entry(self) -> dict:
        return {"type": "postgresql", "name": DATABASE, "host": str(self.files),
                "port": self.port, "user": "bkp_reader",
                "password_file": str(self.password_file)}

    def reader_env(self) -> dict[str, str]:
        """pg_dump's connection, the password in libpq's variable (never argv), as bkp."""
        return {"PGHOST": str(self.files), "PGPORT": str(self.port), "PGUSER": "bkp_reader",
                "PGDATABASE": DATABASE, "PGPASSWORD": self.password_file.read_text().strip(),
                "PGPASSFILE": os.devnull}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.files, ignore_errors=True)


# ---------------------------------------------------------------- one run

class Side:
    """A fresh bkp tenant (BKP_HOME, repository) and a raw repository copied from it."""

    def __init__(self, run: int, work: Path, source: Source):
        self.base = work / f"run-{run}"
        self.home = self.base / "home"
        self.home.mkdir(mode=0o700, parents=True)
        self.policies = self.base / "policies"
        files = self.base / "app-config"  # the tiny source folder
        files.mkdir()
        for i in range(5):
            (files / f"config-{i}.yaml").write_text(f"setting: {i}\n" * 40)
        key = write_secret(self.base / "secrets" / f"{TENANT}.key", PASSWORD + "\n")
        self.bkp_repo, self.raw_repo = self.base / "bkp-repo", self.base / "raw-repo"
        self.raw_fc_repo = self.base / "raw-fc-repo"
        self.tenant = Tenant(TENANT, [str(files)],
                             {"type": "local", "country": "NL", "path": str(self.bkp_repo)},
                             key)
        doc = self.tenant.policy()
        doc["databases"] = [source.policy_entry()]
        doc["schedule"]["drill"] = "0 6 1 * *"  # monthly: check subsets n/12, as drill.py
        doc["drill"] = {"sample": 20, "rto_minutes": 240}
        self.policies.mkdir(mode=0o700)
        (self.policies / f"{TENANT}.yaml").write_text(json.dumps(doc, indent=2) + "\n")
        self.env = clean_env(BKP_POLICIES=str(self.policies), BKP_HOME=str(self.home),
                             BKP_OPERATOR="bench")
        self.raw = RawRepo(str(self.raw_repo), key, self.base / "raw-cache")
        self.raw_fc = RawRepo(str(self.raw_fc_repo), key, self.base / "raw-fc-cache")
        self.source = source

    def init(self) -> None:
        bkp_json(["init", TENANT], self.env, f"bkp init {TENANT}")
        shutil.copytree(self.bkp_repo, self.raw_repo, symlinks=True)
        shutil.copytree(self.bkp_repo, self.raw_fc_repo, symlinks=True)

    # -- nights

    def bkp_night(self) -> tuple[Measure, dict]:
        measure, doc = bkp_json(["backup", TENANT], self.env, f"bkp backup {TENANT}")
        row = doc["runs"][0]
        dumps = row.get("databases") or []
        if len(dumps) != 1 or dumps[0].get("status") != "ok":
            die(f"bkp backup did not dump the database: {row}")
        return measure, row

    def raw_night_argv(self, compressed: bool = False) -> list[str]:
        """`pg_dump -Fc | restic backup --stdin`; -Z0 unless `compressed` (pg_dump's default
        compression: the issue's named baseline)."""
        dump = [str(BIN / "pg_dump"), "--format=custom",
                *(() if compressed else ("--compress=0",)), "--no-password",
                "--dbname", DATABASE]
        tags = [*self.tenant.tags(), "kind=database", f"database={DATABASE}",
                "database_type=postgresql"]
        repo = self.raw_fc if compressed else self.raw
        backup = repo.argv("backup", "--json", "--host", HOST, "--stdin",
                           "--stdin-filename", DUMP_FILENAME)
        for tag in tags:
            backup += ["--tag", tag]
        pipeline = f"{shlex.join(dump)} | {shlex.join(backup)} > /dev/null"
        return ["bash", "-o", "pipefail", "-c", pipeline]

    def raw_night(self, compressed: bool = False) -> Measure:
        env = {**self.raw.env(), **self.source.reader_env()}
        measure, _ = timed(self.raw_night_argv(compressed), env,
                           "raw pg_dump | restic backup --stdin")
        return measure

    # -- drills

    def bkp_drill(self) -> tuple[Measure, dict]:
        measure, done = timed([str(BKP), "drill", TENANT, "--json"], self.env, "bkp drill",
                              check=False)
        try:
            result = json.loads(done.stdout)["drills"][0]
        except (ValueError, KeyError, IndexError):
            die(f"bkp drill printed no drill: exit {done.returncode}\n{done.stdout[-2000:]}\n"
                f"{done.stderr[-2000:]}")
        if done.returncode != 0 or result.get("status") != "passed":
            die(f"bkp drill did not pass (exit {done.returncode}): {result}")
        return measure, result

    def raw_drill(self, expected: dict[str, int]) -> tuple[Measure, dict[str, float]]:
        """What an operator would script: the latest dump into a file, a fresh cluster with
        the scratch server's settings, pg_restore, exact counts, stop, remove."""
        cluster = owned_dir("bkp-bench-raw-", SERVER_USER)
        dump_file = self.base / "raw-drill.pgdump"
        env = clean_env(LC_ALL="C.UTF-8")
        settings = " ".join(f"-c {k}={shlex.quote(v) if v else repr('')}"
                            for k, v in {**SCRATCH_SETTINGS,
                                         "unix_socket_directories": str(cluster),
                                         "unix_socket_permissions": "0700"}.items())
        client = {"PGHOST": str(cluster), "PGUSER": "postgres"}
        steps: dict[str, Measure] = {}
        steps["restic dump"] = timed_io(
            self.raw.argv("dump", "latest", f"/{DUMP_FILENAME}"), self.raw.env(),
            "raw restic dump", stdout=dump_file, sync=True)
        steps["initdb"] = timed_io(as_server_user([
            str(BIN / "initdb"), "-D", str(cluster / "data"), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"]), env,
            "raw initdb")
        steps["pg_ctl start"] = timed_io(as_server_user([
            str(BIN / "pg_ctl"), "-D", str(cluster / "data"), "-l", str(cluster / "log"),
            "-w", "-o", settings, "start"]), env, "raw pg_ctl start")
        try:
            steps["createdb"] = timed_io(as_server_user([
                str(BIN / "createdb", ), DATABASE]), {**env, **client}, "raw createdb")
            steps["pg_restore"] = timed_io(as_server_user([
                str(BIN / "pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                "-d", DATABASE]), {**env, **client}, "raw pg_restore", stdin=dump_file)
            counts_file = self.base / "raw-counts.txt"
            steps["count rows"] = timed_io(as_server_user([
                str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d",
                DATABASE, "-c", COUNT_QUERY]), {**env, **client}, "raw count",
                stdout=counts_file)
            counts = parse_counts(counts_file.read_text())
            if counts != expected:
                die(f"raw drill counted {counts}, expected {expected}")
        finally:
            steps["stop + rm"] = timed_io(as_server_user([
                str(BIN / "pg_ctl"), "-D", str(cluster / "data"), "-m", "immediate", "-w",
                "stop"]), env, "raw pg_ctl stop")
            started, cpu = time.perf_counter(), _children_cpu()
            shutil.rmtree(cluster)
            dump_file.unlink()
            steps["stop + rm"] += Measure(time.perf_counter() - started, _children_cpu() - cpu)
        total = Measure(0.0, 0.0)
        for measure in steps.values():
            total += measure
        return total, {k: round(v.wall, 3) for k, v in steps.items()}

    def watch_night(self) -> dict:
        return watched([str(BKP), "backup", TENANT, "--json"], self.env, self.base / "shim",
                       "bkp backup (watched)")

    def watch_drill(self) -> dict:
        return watched([str(BKP), "drill", TENANT, "--json"], self.env, self.base / "shim-drill",
                       "bkp drill (watched)")

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def bench(runs: int, work: Path, source: Source, expected: dict[str, int]) -> dict:
    samples: dict[str, dict[str, list[Measure]]] = {
        c: {"bkp": [], "raw": [], "raw_fc": []} for c in CASES}
    rows: dict[str, list] = {"restic_calls": [], "dump_bytes": [], "dump_duration_s": [],
                             "load_s": [], "drill_duration_s": [], "raw_drill_steps": []}
    watched_runs: dict = {}
    for run in range(runs):
        side = Side(run, work, source)
        try:
            side.init()
            sides = ("bkp", "raw", "raw_fc")
            order = sides[run % 3:] + sides[:run % 3]  # who goes first rotates
            for case in CASES:
                for who in order:
                    if who == "raw_fc":
                        if case == "drill":
                            continue  # one raw drill: pg_restore of the -Z0 dump
                        measure = side.raw_night(compressed=True)
                    elif who == "raw":
                        if case == "drill":
                            measure, steps = side.raw_drill(expected)
                            rows["raw_drill_steps"].append(steps)
                        else:
                            measure = side.raw_night()
                    elif case == "drill":
                        measure, result = side.bkp_drill()
                        db = (result.get("databases") or [{}])[0]
                        if db.get("rows") != sum(expected.values()):
                            die(f"bkp drill loaded {db.get('rows')} rows, expected "
                                f"{sum(expected.values())}: {result}")
                        rows["load_s"].append(db.get("load_s"))
                        rows["drill_duration_s"].append(result.get("duration_s"))
                    else:
                        measure, row = side.bkp_night()
                        rows["restic_calls"].append(row.get("restic_calls"))
                        rows["dump_bytes"].append(row["databases"][0].get("bytes"))
                        rows["dump_duration_s"].append(row["databases"][0].get("duration_s"))
                    samples[case][who].append(measure)
                last = {who: samples[case][who][-1] for who in order
                        if samples[case][who]}
                print(f"  run {run + 1}/{runs} {CASES[case]:<34} " + "  ".join(
                      f"{who} {m.wall:7.2f}s (cpu {m.cpu:6.2f}s)" for who, m in last.items()),
                      file=sys.stderr)
            if run == runs - 1:  # one more of each, untimed, with a restic shim on PATH
                watched_runs = {"night": side.watch_night(), "drill": side.watch_drill()}
        finally:
            side.remove()
    result: dict = {"cases": {}, **rows, "restic_processes_seen": watched_runs}
    for case, label in CASES.items():
        bkp, raw, raw_fc = (samples[case][k] for k in ("bkp", "raw", "raw_fc"))
        bkp_med, raw_med = median([m.wall for m in bkp]), median([m.wall for m in raw])
        bkp_cpu, raw_cpu = median([m.cpu for m in bkp]), median([m.cpu for m in raw])
        fc_med = median([m.wall for m in raw_fc]) if raw_fc else None
        ratio_z0 = ratio(bkp_med, raw_med)
        # The target is against the named baseline: pg_dump -Fc for the nights,
        # raw pg_restore for the drill.
        r = ratio(bkp_med, fc_med) if fc_med else ratio_z0
        result["cases"][case] = {
            "label": label, "bkp_s": [m.wall for m in bkp], "raw_s": [m.wall for m in raw],
            "raw_fc_s": [m.wall for m in raw_fc], "raw_fc_median_s": fc_med,
            "baseline": "pg_dump -Fc | restic backup --stdin" if fc_med
            else "restic dump + initdb + pg_restore + counts",
            "ratio_z0": ratio_z0 if fc_med else None,
            "bkp_median_s": bkp_med, "raw_median_s": raw_med, "ratio": r,
            "bkp_cpu_s": [m.cpu for m in bkp], "raw_cpu_s": [m.cpu for m in raw],
            "bkp_cpu_median_s": bkp_cpu, "raw_cpu_median_s": raw_cpu,
            # pg_ctl detaches the raw drill's server, so its CPU is nobody's waited-for
            # child; bkp's scratch server is bkp's child and counted: not comparable.
            "cpu_ratio": None if case == "drill" else ratio(bkp_cpu, raw_cpu),
            "target": TARGETS[case],
            "ok": r is not None and r <= TARGETS[case]}
    return result


# ---------------------------------------------------------------- report

def report(doc: dict) -> None:
    data, result = doc["data"], doc["result"]
    print()
    print(f"bkp vs raw pg_dump/restic/pg_restore, PostgreSQL database of "
          f"{data['database_bytes'] / 2**20:.0f} MiB ({sum(data['rows'].values()):,} rows, "
          f"dump {fmt(median(result['dump_bytes']) / 2**20, 0)} MiB), {doc['runs']} runs, "
          f"medians")
    print("nights: ratio vs the issue's baseline `pg_dump -Fc | restic backup --stdin` "
          "(pg_dump's compression), ratio Z0 vs `pg_dump -Fc -Z0 | restic ...` (bkp's flags)")
    print(f"{'case':<36}{'bkp':>9}{'-Fc':>9}{'ratio':>7}{'-Z0':>9}{'ratio Z0':>9}"
          f"{'target':>9}{'':8}{'cpu bkp':>9}{'cpu raw':>9}{'ratio':>7}")
    for case in result["cases"].values():
        verdict = "ok" if case["ok"] else "MISSED"
        fc = case.get("raw_fc_median_s")
        print(f"{case['label']:<36}{fmt(case['bkp_median_s'], 2, 's'):>9}"
              f"{fmt(fc if fc else case['raw_median_s'], 2, 's'):>9}{fmt(case['ratio']):>7}"
              f"{fmt(case['raw_median_s'] if fc else None, 2, 's'):>9}"
              f"{fmt(case.get('ratio_z0')):>9}"
              f"{'<= ' + str(case['target']):>9}  {verdict:<6}"
              f"{fmt(case['bkp_cpu_median_s'], 2, 's'):>9}"
              f"{fmt(case['raw_cpu_median_s'], 2, 's'):>9}{fmt(case['cpu_ratio']):>7}")
    steps = result["raw_drill_steps"]
    if steps:
        names = steps[0].keys()
        print("raw drill steps (median): " + ", ".join(
            f"{n} {median([s[n] for s in steps]):.2f}s" for n in names))
    print("cpu: the source server's work (COPY, bkp's row counts) is in neither column; the "
          "raw drill's server is detached by pg_ctl, so its cpu is not counted (no ratio)")
    print(f"bkp drill load_s (createdb + pg_restore in the scratch server): "
          f"{result['load_s']}, median {fmt(median([x for x in result['load_s'] if x]), 2, 's')}")
    print(f"bkp dump duration_s: {result['dump_duration_s']}; restic_calls per night: "
          f"{sorted(set(result['restic_calls']))}")
    for what, seen in result["restic_processes_seen"].items():
        if seen.get("processes"):
            print(f"watched {what}: {seen['wall_s']:.2f}s wall, {seen['inside_restic_s']:.2f}s "
                  f"in {seen['processes']} restic processes ({' '.join(seen['subcommands'])}); "
                  f"outside: {seen['before_first_s']:.2f}s before the first, "
                  f"{seen['between_s']:.2f}s between, {seen['after_last_s']:.2f}s after the last")
            per_process = zip(seen["subcommands"], seen.get("seconds_per_process", []),
                              strict=False)
            print("  per process: " + ", ".join(f"{c} {t:.2f}s" for c, t in per_process))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--size-mb", type=int, default=1024,
                        help="size of the database in MiB (default 1024)")
    parser.add_argument("--cache", type=Path, default=BENCH_ROOT,
                        help=f"where the work directory goes (default {BENCH_ROOT})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        die("run as root: the servers run as the postgres system user (runuser)")
    if not BKP.exists():
        die(f"{BKP} not found: install bkp into .venv (scripts/install.sh) or set BKP_BENCH_BKP")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="databases-", dir=args.cache))
    source = Source(work, args.size_mb)
    doc: dict = {"benchmark": "databases", "environment": environment_info(),
                 "runs": args.runs, "size_mb": args.size_mb,
                 "postgresql_bin": str(BIN)}
    started = time.perf_counter()
    try:
        source.start()
        doc["data"] = source.populate()
        doc["result"] = bench(args.runs, work, source, doc["data"]["rows"])
    finally:
        source.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc["total_s"] = round(time.perf_counter() - started, 1)
    warning = load_warning(doc["environment"])
    path = write_results("databases", doc)
    report(doc)
    if warning:
        print(warning)
    print(f"\nJSON: {path}  ({doc['total_s']:.0f}s in all)")


if __name__ == "__main__":
    main()
