"""Scratch servers: a throwaway PostgreSQL or MariaDB that a drill starts, loads a tenant's
dump into, counts, and removes again on every exit path.

Where things live, and why:
- `$BKP_HOME/scratch/<kind>-<token>.json` records each scratch server (its owner process,
  its server process, where its files are) before anything else exists, so that what a
  SIGKILLed drill leaves can be found and removed by the next one (`remove_leftovers`).
- `$BKP_HOME/scratch/<kind>-<token>/` (root, 0700) keeps the server's log.
- `/var/tmp/bkp-scratch-<token>/` (owned by the scratch user, 0700) holds the data
  directory and the unix socket (`BKP_SCRATCH_ROOT` names another folder than /var/tmp,
  e.g. a larger disk: a loaded dump takes more room than the dump). PostgreSQL refuses
  to run as root, and the scratch user cannot pass through a 0700 `$BKP_HOME`; /var/tmp
  is on disk (a dump may be larger than a tmpfs /tmp) and short enough for the 107-byte
  limit of a socket path. Nothing listens on the network: the socket's directory is
  private to the scratch user (and root).

Both servers, and every client that reads a dump (pg_restore, mariadb), run as the system
user `bkp-scratch` (created on first use, and by scripts/install.sh): a dump is the
tenant's data and may be hostile (COPY ... FROM PROGRAM, LOAD DATA, mariadb's `\\!`), so it
acts with the rights of a user that owns nothing but scratch files; `nobody` is shared with
other daemons and would make a tenant's records readable to them. The mariadb client also
runs with --sandbox and --binary-mode, which turn its shell and file commands off.

The server processes are children of bkp with a parent-death signal: if bkp is SIGKILLed
they die with it (the parent-death signal belongs to the thread that started them: enter
and leave `scratch_server` in one thread), and only files are left for `remove_leftovers`.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol

from bkp import runner
from bkp.databases.inventory import (
    MARIADB_TABLES_QUERY,
    SAFE_SEARCH_PATH,
    ExportedSnapshot,
    Inventory,
    MariadbDumpCounter,
    PgConnection,
    exported_snapshot,
    inventory_query,
    live_inventory_postgresql,
    mariadb_count_query,
    mariadb_dump_inventory,
    mariadb_quote_name,
    parse_inventory_json,
)
from bkp.errors import OperationError, SafetyError, VerificationError

__all__ = [
    "KINDS", "SCRATCH_ROOT", "SCRATCH_USER", "ExportedSnapshot", "Inventory",
    "MariadbDumpCounter", "PgConnection", "ScratchServer", "exported_snapshot",
    "inventory_query", "live_inventory_postgresql", "mariadb_dump_inventory",
    "postgresql_bindir", "remove_leftovers", "scratch_server",
]

log = logging.getLogger("bkp.databases.scratch")

KINDS = ("postgresql", "mariadb")
SCRATCH_USER = "bkp-scratch"
SCRATCH_ROOT = Path("/var/tmp")
SCRATCH_ROOT_ENV = "BKP_SCRATCH_ROOT"
FILES_PREFIX = "bkp-scratch-"
POSTGRESQL_LIB = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 120
STOP_GRACE_S = 10
# A dump's longest statement may be a row with a large BLOB; the client's default (16 MB)
# would refuse a dump that the source server accepted.
MARIADB_MAX_PACKET = "1G"


class ScratchServer(Protocol):
    kind: str

    def load(self, dump: Path, database: str) -> float:
        """Create `database`, load the dump file into it; seconds taken. A dump that does
        not load is a VerificationError (exit 5) with the client's error."""

    def inventory(self, database: str) -> Inventory:
        """Exact row counts of every base table of `database`."""


# ------------------------------------------------------------------ places and records


class _Place:
    """The files of one scratch server: its record, its log directory, its data."""

    def __init__(self, home: Path, kind: str, token: str, root: Path):
        self.home, self.kind, self.token = home, kind, token
        self.name = f"{kind}-{token}"
        self.record = home / "scratch" / f"{self.name}.json"
        self.logs = home / "scratch" / self.name
        self.files = root / f"{FILES_PREFIX}{token}"

    @property
    def data(self) -> Path:
        return self.files / "data"

    def write_record(self, server_pid: int | None = None) -> None:
        record = {"kind": self.kind, "token": self.token, "files": str(self.files),
                  "owner_pid": os.getpid(), "owner_start": _process_start(os.getpid()),
                  "server_pid": server_pid}
        tmp = self.record.with_name(f".{self.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record)


def _process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot), to tell it from a later process
    that got the same pid; None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


def _new_place(home: Path, kind: str, root: Path, owner: pwd.struct_passwd | None) -> _Place:
    (home / "scratch").mkdir(mode=0o700, exist_ok=True)
    while True:
        place = _Place(home, kind, secrets.token_hex(4), root)
        # The record comes first: whatever exists later, the next drill can find it.
        place.write_record()
        try:
            # /var/tmp is shared and sticky: mkdir fails rather than follow what someone
            # else put there, and then another token is tried.
            place.files.mkdir(mode=0o700)
        except FileExistsError:
            place.record.unlink()
            continue
        except BaseException:  # a signal between the record and the folder
            place.record.unlink(missing_ok=True)
            raise
        try:
            place.logs.mkdir(mode=0o700)
            if owner is not None:
                os.chown(place.files, owner.pw_uid, owner.pw_gid)
        except BaseException:
            _remove_place(place)
            raise
        return place


def _remove_place(place: _Place) -> None:
    for path in (place.files, place.logs):
        shutil.rmtree(path, ignore_errors=True)
    if place.files.exists() or place.logs.exists():
        raise OperationError(f"could not remove scratch server files {place.files}")
    place.record.unlink(missing_ok=True)


def scratch_user() -> pwd.struct_passwd | None:
    """The unprivileged user scratch servers run as, created on first use (None when bkp
    itself does not run as root: then the servers run as bkp's own user)."""
    if os.geteuid() != 0:
        return None
    for attempt in range(2):
        try:
            entry = pwd.getpwnam(SCRATCH_USER)
        except KeyError:
            if attempt:
                break
            # A concurrent drill may create it at the same time: look again either way.
            runner.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                        SCRATCH_USER], timeout=60)
            continue
        if entry.pw_uid == 0:
            raise SafetyError(f"system user {SCRATCH_USER} has uid 0; scratch servers must "
                              f"not run as root")
        return entry
    raise OperationError(f"could not create the system user {SCRATCH_USER} for scratch "
                         f"servers (useradd --system {SCRATCH_USER})")


def _wait_until(ready, service: runner.Service, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not ready():
        if not service.running():
            raise OperationError(f"{what} did not start: {service.log_tail()}")
        if time.monotonic() > deadline:
            raise OperationError(f"{what} did not start within {timeout:.0f}s: "
                                 f"{service.log_tail()}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def scratch_root() -> Path:
    """Where scratch servers keep their data: $BKP_SCRATCH_ROOT, else /var/tmp."""
    chosen = os.environ.get(SCRATCH_ROOT_ENV)
    return Path(chosen) if chosen and chosen.startswith("/") else SCRATCH_ROOT


# What the clients and servers say when their disk is full (ENOSPC, PostgreSQL's "could not
# extend file", InnoDB's "table is full", MariaDB's errno 28).
_NO_SPACE = re.compile(r"No space left on device|could not extend file|is full|Disk full|"
                       r"[Ee]rr(?:code|no):? 28\b")
# Below this much free space a failed load is blamed on the disk, whatever the client said
# (a server that ran out of room for its WAL dies, and the client sees a lost connection).
SPACE_FLOOR = 16 << 20


def _no_space(place: _Place, *texts: str) -> str | None:
    """A sentence when the scratch server's disk is full, else None: an operational failure
    of the drill (exit 1), never a finding about the dump."""
    try:
        free = shutil.disk_usage(place.files).free
    except OSError:
        free = None
    if (free is None or free >= SPACE_FLOOR) and not any(_NO_SPACE.search(t) for t in texts):
        return None
    shown = f"{free >> 20} MiB free" if free is not None else "its free space unknown"
    return (f"no space left for the scratch server in {place.files.parent} ({shown}): free "
            f"space there or set {SCRATCH_ROOT_ENV} to a folder on a larger disk")


def _raise_if_environment(place: _Place, service, said: str) -> None:
    """A load that failed for want of disk space, or because the scratch server itself
    stopped, says nothing about the dump: the drill could not run (exit 1)."""
    log_tail = service.log_tail() if service else ""
    problem = _no_space(place, said, log_tail)
    if problem:
        raise OperationError(problem)
    if service is not None and not service.running():
        raise OperationError(f"the scratch server stopped during the load"
                             f"{_last_server_error(log_tail)}")


def _last_server_error(log_tail: str) -> str:
    """The server's last PANIC or FATAL line without quoted values (a server log may echo
    a statement, and with it the tenant's data), as ": ..." or nothing."""
    lines = [ln for ln in log_tail.splitlines() if re.search(r"PANIC|FATAL|\[ERROR\]", ln)]
    if not lines:
        return ""
    return ": " + re.sub(r"(['\"]).*?\1", r"\1…\1", lines[-1].strip())[:300]


def _failure(text: str, client: str) -> str:
    """A client's error without the tenant's data. Only the client's own error lines are
    kept (mariadb echoes the failing statement, pg_restore the command and its context), and
    values quoted inside them are cut out: a failing row, a duplicate key, the text near a
    syntax error."""
    prefix = "pg_restore: " if client == "pg_restore" else "ERROR "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    text = "\n".join(lines)
    text = re.sub(r"(Key \([^)\n]*\))=\([^\n]*?\)( already exists| is not present)",
                  r"\1=(…)\2", text)
    text = re.sub(r'(invalid input (?:syntax|value) for [^:\n]*): "[^\n]*"', r'\1: "…"', text)
    text = re.sub(r"near '.*?' at line", "near … at line", text)
    text = re.sub(r"Duplicate entry '.*?' for key", "Duplicate entry … for key", text)
    return text.strip()[-2000:]


# ------------------------------------------------------------------ PostgreSQL


def postgresql_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian keeps initdb and
    pg_ctl in /usr/lib/postgresql/N/bin, not on PATH)."""
    found = []
    with suppress(OSError):
        for entry in POSTGRESQL_LIB.iterdir():
            if entry.name.isdigit() and (entry / "bin" / "postgres").exists() and (
                    entry / "bin" / "initdb").exists():
                found.append((int(entry.name), entry / "bin"))
    if not found:
        raise OperationError("no PostgreSQL server is installed for scratch servers "
                             "(postgresql-15 under /usr/lib/postgresql; run scripts/install.sh)")
    return max(found)[1]


class ScratchPostgreSQL:
    kind = "postgresql"
    superuser = "postgres"

    def __init__(self, place: _Place, user: str | None):
        self.place = place
        self.user = user
        self.bindir = postgresql_bindir()
        self.service: runner.Service | None = None

    def _client_env(self, database: str = "postgres") -> dict[str, str]:
        return {"PGHOST": str(self.place.files), "PGUSER": self.superuser,
                "PGDATABASE": database, "PGAPPNAME": "bkp-drill",
                "PGOPTIONS": SAFE_SEARCH_PATH}  # a loaded dump's functions count nothing

    def _client(self, argv: list[str], *, database: str = "postgres",
                stdin_path: Path | None = None) -> runner.Completed:
        return runner.run(argv, env=self._client_env(database), drop_env_prefixes=("PG",),
                          user=self.user, cwd=str(self.place.files), stdin_path=stdin_path,
                          capture_stdout=True)

    def start(self) -> None:
        done = runner.run([str(self.bindir / "initdb"), "-D", str(self.place.data), "-U",
                           self.superuser, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8",
                           "--no-sync", "--no-instructions"],
                          user=self.user, cwd=str(self.place.files),
                          drop_env_prefixes=("PG", "LC_", "LANG"), timeout=START_TIMEOUT_S)
        if not done.ok:
            raise OperationError(_no_space(self.place, done.stderr_tail) or
                                 f"scratch PostgreSQL: initdb failed: {done.stderr_tail}")
        # Speed over durability: the cluster is thrown away after the drill.
        settings = {"listen_addresses": "", "unix_socket_directories": str(self.place.files),
                    "unix_socket_permissions": "0700", "fsync": "off",
                    "synchronous_commit": "off", "full_page_writes": "off",
                    "autovacuum": "off", "dynamic_shared_memory_type": "mmap",
                    "max_wal_size": "4GB", "logging_collector": "off"}
        argv = [str(self.bindir / "postgres"), "-D", str(self.place.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self.service = runner.start(argv, log_file=self.place.logs / "server.log",
                                    user=self.user, cwd=str(self.place.files),
                                    drop_env_prefixes=("PG",))
        self.place.write_record(self.service.pid)
        try:
            _wait_until(self._ready, self.service, "scratch PostgreSQL", START_TIMEOUT_S)
        except OperationError as exc:
            raise OperationError(_no_space(self.place, self.service.log_tail()) or
                                 str(exc)) from None

    def _ready(self) -> bool:
        # The postmaster writes "ready" as the 8th line of its pid file once it accepts
        # connections (what pg_ctl -w waits for).
        try:
            lines = (self.place.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def stop(self) -> None:
        # Immediate shutdown (SIGQUIT): no checkpoint for a cluster about to be removed.
        if self.service is not None:
            self.service.stop(grace=STOP_GRACE_S, first=signal.SIGQUIT)

    def load(self, dump: Path, database: str) -> float:
        started = time.monotonic()
        name = '"' + database.replace('"', '""') + '"'
        created = self._client([str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                "-c", f"CREATE DATABASE {name}"])
        if not created.ok:
            raise OperationError(f"scratch PostgreSQL: could not create database {database}: "
                                 f"{created.stderr_tail}")
        # The dump arrives on stdin (opened by bkp: the scratch user may not read bkp's
        # files); a regular file there is still seekable for pg_restore.
        done = self._client([str(self.bindir / "pg_restore"), "--no-owner", "--no-privileges",
                             "--exit-on-error", "-d", database],
                            database=database, stdin_path=dump)
        if not done.ok:
            _raise_if_environment(self.place, self.service, done.stderr_tail)
            reason = _failure(done.stderr_tail, "pg_restore") or "pg_restore failed"
            raise VerificationError(f"the dump of PostgreSQL database {database} does not "
                                    f"load: {reason}")
        return time.monotonic() - started

    def inventory(self, database: str) -> Inventory:
        done = self._client([str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v",
                             "ON_ERROR_STOP=1", "-c", inventory_query("postgresql")],
                            database=database)
        what = f"scratch PostgreSQL database {database}"
        if not done.ok:
            raise OperationError(f"{what}: could not count its tables: {done.stderr_tail}")
        return parse_inventory_json(done.stdout, what)


# ------------------------------------------------------------------ MariaDB


class ScratchMariaDB:
    kind = "mariadb"

    def __init__(self, place: _Place, user: str | None):
        self.place = place
        self.user = user
        self.socket = place.files / "mariadb.sock"
        self.service: runner.Service | None = None

    def _client(self, *args: str, database: str | None = None,
                stdin_path: Path | None = None) -> runner.Completed:
        # --no-defaults first: no my.cnf of the host; --sandbox and --binary-mode: a dump
        # cannot run shell or file commands of the client.
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root",
                "--batch", "--skip-column-names", "--raw", "--sandbox", "--binary-mode",
                "--local-infile=0", f"--max-allowed-packet={MARIADB_MAX_PACKET}", *args]
        if database is not None:
            argv.append(database)
        return runner.run(argv, drop_env_prefixes=("MYSQL", "MARIADB"), user=self.user,
                          cwd=str(self.place.files), stdin_path=stdin_path)

    def start(self) -> None:
        (self.place.files / "tmp").mkdir(mode=0o700)
        (self.place.files / "files").mkdir(mode=0o700)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for sub in ("tmp", "files"):
                os.chown(self.place.files / sub, entry.pw_uid, entry.pw_gid)
        done = runner.run(["mariadb-install-db", "--no-defaults",
                           "--auth-root-authentication-method=normal", "--skip-test-db",
                           f"--datadir={self.place.data}"],
                          user=self.user, cwd=str(self.place.files),
                          drop_env_prefixes=("MYSQL", "MARIADB"), timeout=START_TIMEOUT_S)
        if not done.ok:
            raise OperationError(_no_space(self.place, done.stderr_tail) or
                                 f"scratch MariaDB: mariadb-install-db failed: "
                                 f"{done.stderr_tail}")
        argv = ["mariadbd", "--no-defaults", f"--datadir={self.place.data}",
                f"--socket={self.socket}", f"--pid-file={self.place.files / 'mariadbd.pid'}",
                "--skip-networking", f"--tmpdir={self.place.files / 'tmp'}",
                f"--secure-file-priv={self.place.files / 'files'}", "--local-infile=0",
                f"--max-allowed-packet={MARIADB_MAX_PACKET}",
                # Speed over durability: the server is thrown away after the drill.
                "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                "--skip-log-bin", "--skip-name-resolve"]
        self.service = runner.start(argv, log_file=self.place.logs / "server.log",
                                    user=self.user, cwd=str(self.place.files),
                                    drop_env_prefixes=("MYSQL", "MARIADB"))
        self.place.write_record(self.service.pid)
        try:
            _wait_until(self._ready, self.service, "scratch MariaDB", START_TIMEOUT_S)
        except OperationError as exc:
            raise OperationError(_no_space(self.place, self.service.log_tail()) or
                                 str(exc)) from None

    def _ready(self) -> bool:
        # mariadbd creates its socket once it accepts connections.
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=STOP_GRACE_S)

    def load(self, dump: Path, database: str) -> float:
        started = time.monotonic()
        created = self._client("-e", f"CREATE DATABASE {mariadb_quote_name(database)}")
        if not created.ok:
            raise OperationError(f"scratch MariaDB: could not create database {database}: "
                                 f"{created.stderr_tail}")
        done = self._client(database=database, stdin_path=dump)
        if not done.ok:
            _raise_if_environment(self.place, self.service, done.stderr_tail)
            reason = _failure(done.stderr_tail, "mariadb") or "mariadb failed"
            raise VerificationError(f"the dump of MariaDB database {database} does not load: "
                                    f"{reason}")
        return time.monotonic() - started

    def inventory(self, database: str) -> Inventory:
        what = f"scratch MariaDB database {database}"
        listed = self._client("-e", MARIADB_TABLES_QUERY, database=database)
        if not listed.ok:
            raise OperationError(f"{what}: could not list its tables: {listed.stderr_tail}")
        try:
            tables = json.loads(listed.stdout.strip() or "null")
        except ValueError:
            tables = None
        if tables is None:
            return Inventory({})
        if not isinstance(tables, list):
            raise OperationError(f"{what}: could not read its table list")
        counts: dict[str, int] = {}
        for start in range(0, len(tables), 200):  # keep each statement a sane size
            done = self._client("-e", mariadb_count_query(tables[start:start + 200]),
                                database=database)
            if not done.ok:
                raise OperationError(f"{what}: could not count its tables: "
                                     f"{done.stderr_tail}")
            counts.update(parse_inventory_json(done.stdout, what).tables)
        return Inventory(counts)


_SERVERS = {"postgresql": ScratchPostgreSQL, "mariadb": ScratchMariaDB}


@contextmanager
def scratch_server(kind: str, home: Path, *, root: Path | None = None
                   ) -> Iterator[ScratchServer]:
    """Start a throwaway `kind` server, yield it, and stop and remove it whatever happens
    (an exception, KeyboardInterrupt, SIGTERM turned into an exception by the caller)."""
    if kind not in _SERVERS:
        raise ValueError(f"unknown scratch server kind {kind!r}")
    owner = scratch_user()
    place = _new_place(home, kind, root or scratch_root(), owner)
    server = None
    try:
        server = _SERVERS[kind](place, owner.pw_name if owner else None)
        server.start()
        yield server
    finally:
        try:
            if server is not None:
                server.stop()
        finally:
            _remove_place(place)


# ------------------------------------------------------------------ leftovers


def _server_pids(record: dict, files: Path) -> set[int]:
    pids = set()
    if isinstance(record.get("server_pid"), int):
        pids.add(record["server_pid"])
    for pid_file in (files / "data" / "postmaster.pid", files / "mariadbd.pid"):
        with suppress(OSError, ValueError, IndexError):
            pids.add(int(pid_file.read_text().split()[0]))
    # Only a process started on these very files is ours to stop.
    return {pid for pid in pids if str(files) in _cmdline(pid)}


def _kill_and_wait(pid: int, timeout: float = 30) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the server leads its own process group
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _process_start(pid) is not None:
        if time.monotonic() > deadline:
            raise OperationError(f"a leftover scratch server (pid {pid}) does not stop")
        time.sleep(0.05)


def remove_leftovers(home: Path) -> list[str]:
    """Remove what scratch servers of SIGKILLed drills left: stop a server still running,
    remove its files. Servers whose drill still runs (a tenant drilled concurrently) are
    left alone. Returns the names of the scratch servers removed ("postgresql-1a2b3c4d")."""
    base = home / "scratch"
    if not base.is_dir():
        return []
    removed = []
    for record_file in sorted(base.glob("*.json")):
        try:
            record = json.loads(record_file.read_text())
            kind, token = record["kind"], record["token"]
            files = Path(record["files"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable scratch record %s left alone", record_file)
            continue
        if _process_start(record.get("owner_pid") or 0) == record.get("owner_start"):
            continue  # its drill still runs
        # The files path comes from a record: remove nothing but a scratch directory.
        if (kind not in KINDS or not re.fullmatch(r"[0-9a-f]{8}", str(token))
                or not files.is_absolute() or files.name != f"{FILES_PREFIX}{token}"):
            log.warning("scratch record %s names unexpected files, left alone", record_file)
            continue
        for pid in _server_pids(record, files):
            _kill_and_wait(pid)
        place = _Place(home, kind, token, files.parent)
        _remove_place(place)
        removed.append(place.name)
    for tmp in base.glob(".*.tmp"):  # a record being written when its drill was killed
        pid = tmp.name.split(".")[-2]
        if pid.isdigit() and _process_start(int(pid)) is None:
            tmp.unlink(missing_ok=True)
    return removed
