"""The dump clients: pg_dump and mariadb-dump, their flags and their environment.

The only module that knows how the dump clients are called. Connection details go through
the client's environment where it has one (libpq's PG* variables), so that the command
line shows nothing but the database's name; a password never appears there.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from bkp import runner
from bkp.databases.inventory import PgConnection
from bkp.errors import PolicyError
from bkp.policy import Database
from bkp.secrets import SecretEnv, database_password

CONNECT_TIMEOUT_S = 30
# The program each type needs at 02:00, and the Debian package that brings it.
DUMP_PROGRAMS = {"postgresql": ("pg_dump", "postgresql-client"),
                 "mariadb": ("mariadb-dump", "mariadb-client")}
DUMP_FILE_SUFFIX = {"postgresql": "pgdump", "mariadb": "sql"}


def dump_filename(database: Database) -> str:
    """The name of the dump inside its snapshot (restic's --stdin-filename)."""
    return f"{database.name}.{DUMP_FILE_SUFFIX[database.type]}"


def inventory_filename(database: Database) -> str:
    return f"{database.name}.inventory.json"


def dump_program(kind: str) -> str | None:
    """The dump client for `kind`, or None when it is not installed. For PostgreSQL the
    newest installed pg_dump: an older pg_dump refuses a newer server."""
    name = DUMP_PROGRAMS[kind][0]
    if kind == "postgresql":
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
                          key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit()
                          else 0)
        if versions:
            return versions[-1]
    return runner.which(name)


def missing_client(kind: str) -> str | None:
    """One sentence when the dump client for `kind` is missing, else None."""
    if dump_program(kind):
        return None
    program, package = DUMP_PROGRAMS[kind]
    return (f"{program} is not installed, so {kind} databases cannot be dumped: install "
            f"the Debian package {package} (scripts/install.sh does)")


# sockaddr_un.sun_path holds 108 bytes with the closing NUL. The MariaDB client cuts a
# longer path without a word and then connects to whatever the cut path names.
SOCKET_PATH_LIMIT = 107


def socket_file(database: Database) -> str | None:
    """The unix socket the client will connect to, or None over TCP. PostgreSQL's host is
    the socket's directory; the file in it is named after the port."""
    if not database.socket:
        return None
    if database.type == "postgresql":
        return f"{database.host.rstrip('/')}/.s.PGSQL.{database.tcp_port}"
    return database.host


def require_reachable_socket_path(database: Database) -> None:
    """A socket path the kernel cannot hold is a policy error, said before connecting."""
    path = socket_file(database)
    if path is not None and len(path.encode()) > SOCKET_PATH_LIMIT:
        raise PolicyError(f"the socket path {path[:60]}… is {len(path.encode())} bytes long; "
                          f"a unix socket path holds at most {SOCKET_PATH_LIMIT}: give host "
                          f"a shorter path")


def require_client(kind: str) -> str:
    program = dump_program(kind)
    if program is None:
        raise PolicyError(missing_client(kind) or "")
    return program


def postgresql_connection(database: Database) -> PgConnection:
    """How libpq clients (psql for the exported snapshot, pg_dump) reach the database."""
    password = database_password("postgresql", database.password_file)
    return PgConnection(database=database.name, host=database.host, port=database.tcp_port,
                        user=database.user, password=password.env.get("PGPASSWORD"),
                        sslmode=database.sslmode,
                        sslrootcert=str(database.ca_file) if database.ca_file else None,
                        connect_timeout_s=CONNECT_TIMEOUT_S)


def postgresql_env(connection: PgConnection) -> SecretEnv:
    """pg_dump's environment; a password is never asked for on a terminal nobody watches."""
    env = {**connection.env(), "PGPASSFILE": os.devnull}
    return SecretEnv(env, (connection.password,) if connection.password else ())


def pg_dump_argv(database: Database, snapshot: str | None) -> list[str]:
    """A custom-format dump without compression: restic compresses and deduplicates, and a
    compressed stream would defeat deduplication from one night to the next. `snapshot`
    is an exported snapshot, so that the row counts bkp records come from the same
    moment as the dump."""
    argv = [require_client("postgresql"), "--format=custom", "--compress=0", "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    return [*argv, "--dbname", database.name]


def mariadb_env(database: Database) -> SecretEnv:
    return database_password("mariadb", database.password_file)


def mariadb_connection_args(database: Database) -> list[str]:
    """Options every MariaDB client takes; --no-defaults (first) so that no option file
    (root's ~/.my.cnf) changes where bkp connects or as whom."""
    args = ["--no-defaults", f"--user={database.user}"]
    if database.socket:
        args.append(f"--socket={database.host}")
    else:
        args += [f"--host={database.host}", f"--port={database.tcp_port}", "--protocol=TCP"]
    if database.sslmode and database.sslmode != "disable":
        args.append("--ssl")
        if database.ca_file:
            args.append(f"--ssl-ca={database.ca_file}")
        if database.sslmode.startswith("verify"):
            args.append("--ssl-verify-server-cert")
    return args


def mariadb_dump_argv(database: Database) -> list[str]:
    """One consistent transaction (InnoDB), with the code that lives in the database."""
    return [require_client("mariadb"), *mariadb_connection_args(database),
            "--single-transaction", "--routines", "--triggers", "--events",
            # the read-only role has no PROCESS privilege, which tablespaces would need
            "--no-tablespaces", "--hex-blob", "--", database.name]
