"""What a database holds, as tables and exact row counts: counted on a live server at dump
time, counted again in the scratch server after the drill loaded the dump, compared.

PostgreSQL counts inside the snapshot the dump reads (`exported_snapshot`); MariaDB cannot
share a snapshot with mariadb-dump, so its counts come from the dump stream itself
(`MariadbDumpCounter`, a tee on the stream that goes to restic).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from bkp import runner
from bkp.errors import OperationError, VerificationError


@dataclass
class Inventory:
    """Tables and their exact row counts: {"schema.table": rows} for PostgreSQL,
    {"table": rows} for MariaDB (a dump holds one database)."""

    tables: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())

    def to_json(self) -> dict:
        return {"tables": dict(sorted(self.tables.items()))}

    @classmethod
    def from_json(cls, data: object) -> Inventory:
        """Read an inventory kept with a dump; anything else than {"tables": {name: rows}}
        is damage (exit 5), not a crash."""
        tables = data.get("tables") if isinstance(data, dict) else None
        if not isinstance(tables, dict) or not all(
                isinstance(k, str) and type(v) is int and v >= 0 for k, v in tables.items()):
            raise VerificationError("the recorded table inventory is damaged: expected "
                                    "{\"tables\": {name: rows}}")
        return cls(dict(tables))

    def differences(self, loaded: Inventory) -> list[str]:
        """How `loaded` (what the scratch server holds) differs from this recorded inventory,
        one sentence per table; empty when they are equal. Names only, never row data."""
        found = []
        for name in sorted(self.tables.keys() | loaded.tables.keys()):
            want, got = self.tables.get(name), loaded.tables.get(name)
            if got is None:
                found.append(f"table {name} is missing ({want} rows recorded)")
            elif want is None:
                found.append(f"table {name} was not recorded ({got} rows loaded)")
            elif want != got:
                found.append(f"table {name} holds {got} rows, {want} recorded")
        return found


# ------------------------------------------------------------------ PostgreSQL

# Exact counts of every ordinary table (partitions counted, their partitioned parents not,
# so no row counts twice), outside the system schemas and extensions (an extension creates
# its own tables with its own rows in the scratch server). The server quotes the names
# (format %I) and builds the JSON, so no table name can break the query or the parsing.
INVENTORY_QUERY_POSTGRESQL = """\
SELECT coalesce(json_object_agg(t.name, t.rows ORDER BY t.name), '{}')
FROM (
  SELECT n.nspname || '.' || c.relname AS name,
         (xpath('/row/c/text()', query_to_xml(
            format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname),
            false, true, '')))[1]::text::bigint AS rows
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r'
    AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
) t"""


def inventory_query(kind: str) -> str:
    """The one query that lists a PostgreSQL database's tables with exact row counts as a
    JSON object. MariaDB needs two steps (see `mariadb_count_query`)."""
    if kind != "postgresql":
        raise ValueError(f"no single inventory query for {kind}")
    return INVENTORY_QUERY_POSTGRESQL


def parse_inventory_json(text: str, what: str) -> Inventory:
    """The JSON object a count query printed -> Inventory; anything else is an error that
    names `what` (the database), never a traceback."""
    try:
        tables = json.loads(text.strip() or "null")
    except ValueError:
        tables = None
    if not isinstance(tables, dict) or not all(type(v) is int for v in tables.values()):
        raise OperationError(f"{what}: could not read the table counts")
    return Inventory(tables)


# The tenant's application owns its database and may create functions and operators in it;
# a role setting that puts its schema before pg_catalog would let them answer bkp's count
# query (a `public.query_to_xml` that says 999 rows). A connection option outranks role
# and database settings; pg_dump and pg_restore set their own search_path all the same.
SAFE_SEARCH_PATH = "-c search_path=pg_catalog,pg_temp"


@dataclass(frozen=True)
class PgConnection:
    """How libpq clients (psql, pg_dump) reach a live database. The password is read from
    the policy's password file by the caller and travels in the child's environment
    (PGPASSWORD, redacted by the runner), never in argv."""

    database: str
    host: str | None = None  # a socket directory or a host name
    port: int | None = None
    user: str | None = None
    password: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None
    connect_timeout_s: int = 30

    def env(self) -> dict[str, str]:
        values = {"PGDATABASE": self.database, "PGHOST": self.host,
                  "PGPORT": str(self.port) if self.port else None, "PGUSER": self.user,
                  "PGPASSWORD": self.password, "PGSSLMODE": self.sslmode,
                  "PGSSLROOTCERT": self.sslrootcert,
                  "PGCONNECT_TIMEOUT": str(self.connect_timeout_s), "PGAPPNAME": "bkp",
                  "PGOPTIONS": SAFE_SEARCH_PATH}
        return {k: v for k, v in values.items() if v}


# Inherited PG* variables (an operator's PGSERVICE, PGPASSFILE) must not redirect a client.
PG_ENV_PREFIXES = ("PG",)


def live_inventory_postgresql(connection: PgConnection, *, psql: str = "psql",
                              timeout: float | None = None) -> Inventory:
    """Count a live database's tables outside any shared snapshot (status checks, tests)."""
    done = runner.run([psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c",
                       INVENTORY_QUERY_POSTGRESQL], env=connection.env(),
                      drop_env_prefixes=PG_ENV_PREFIXES, timeout=timeout)
    what = f"PostgreSQL database {connection.database}"
    if not done.ok:
        raise OperationError(f"{what}: could not count its tables: {done.stderr_tail}")
    return parse_inventory_json(done.stdout, what)


_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")


class ExportedSnapshot:
    """A snapshot exported by a transaction bkp holds open: pg_dump --snapshot=`snapshot_id`
    reads exactly what `inventory()` counts."""

    def __init__(self, snapshot_id: str, talk: runner.Conversation, what: str):
        self.snapshot_id = snapshot_id
        self._talk = talk
        self._what = what
        self._inventory: Inventory | None = None

    def inventory(self, timeout: float | None = None) -> Inventory:
        """Count every table in the exported snapshot (once; later calls return the same).
        Call it after starting pg_dump: the count runs in its own server process while the
        dump streams, so a night does not read the database twice in a row."""
        if self._inventory is None:
            query = " ".join(INVENTORY_QUERY_POSTGRESQL.split())
            self._talk.send(query + ";\n")
            line = self._talk.read_line(timeout)
            if line is None:
                raise OperationError(f"{self._what}: could not count its tables: "
                                     f"{self._talk.ended() or 'no answer'}")
            self._inventory = parse_inventory_json(line, self._what)
        return self._inventory


@contextmanager
def exported_snapshot(connection: PgConnection, *, psql: str = "psql",
                      timeout: float = 60) -> Iterator[ExportedSnapshot]:
    """Open a REPEATABLE READ transaction on the live database, export its snapshot and keep
    the transaction open until the block ends (pg_dump --snapshot needs the exporting
    transaction alive when it starts). A refused connection or a wrong password is an
    OperationError naming the database and carrying psql's message."""
    what = f"PostgreSQL database {connection.database}"
    argv = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    with runner.converse(argv, env=connection.env(), drop_env_prefixes=PG_ENV_PREFIXES) as talk:
        talk.send("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
                  "SELECT pg_catalog.pg_export_snapshot();\n")
        line = talk.read_line(timeout)
        if line is None or not _SNAPSHOT_ID.match(line.strip()):
            reason = talk.ended() or f"no answer within {timeout:.0f}s"
            raise OperationError(f"{what}: could not open a consistent snapshot: {reason}")
        yield ExportedSnapshot(line.strip(), talk, what)
        talk.send("COMMIT;\n")


# ------------------------------------------------------------------ MariaDB


def mariadb_quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def mariadb_text(value: str) -> str:
    """A string literal that no sql_mode or character can break: a hex literal."""
    return f"CONVERT(0x{value.encode().hex()} USING utf8mb4)" if value else "''"


# Base tables only: views hold no rows of their own and sequences are not dumped as rows.
MARIADB_TABLES_QUERY = (
    "SELECT JSON_ARRAYAGG(table_name) FROM information_schema.tables "
    "WHERE table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED')")


def mariadb_count_query(tables: Iterable[str]) -> str:
    """One statement counting the rows of `tables` as a JSON object {table: rows}."""
    pairs = ", ".join(f"{mariadb_text(t)}, (SELECT COUNT(*) FROM {mariadb_quote_name(t)})"
                      for t in tables)
    return f"SELECT JSON_OBJECT({pairs})"


# The head of a data statement of mariadb-dump: INSERT [IGNORE] INTO `t` [(`a`, `b`)] VALUES
# (REPLACE INTO with --replace). Names are backquoted with `` for a backquote, or
# double-quoted in ANSI mode. The tuples follow on the same line (older clients) or one per
# line (10.11.8 and later); the statement ends with ";" at the end of a line.
_NAME = rb'(?:`(?:[^`]|``)+`|"(?:[^"]|"")+")'
_INSERT = re.compile(rb"(?:INSERT(?: IGNORE)? INTO|REPLACE INTO) (" + _NAME + rb")"
                     rb"(?: \((?:" + _NAME + rb"|[, ])*\))? VALUES(?=[ \n(]|$)")
_CREATE_TABLE = re.compile(rb"CREATE TABLE (?:IF NOT EXISTS )?(" + _NAME + rb") \(")
_NESTED = re.compile(rb"\([^)]*\(")
_DUMP_COMPLETED = b"-- Dump completed"
_DATA_HEADS = (b"INSERT INTO ", b"INSERT IGNORE INTO ", b"REPLACE INTO ")
# A statement head with the longest names (64 characters, each up to 4 bytes, doubled
# quotes) and a column list is far shorter than this.
_LONGEST_HEAD = 1 << 16


def _unquote(name: bytes) -> str:
    quote = name[:1]
    return name[1:-1].replace(quote + quote, quote).decode("utf-8", "replace")


class MariadbDumpCounter:
    """Counts rows per table in a mariadb-dump SQL stream, fed chunk by chunk as the stream
    passes on its way to restic.

    A row is a top-level parenthesised tuple of an INSERT's VALUES once the quoted values
    (which may hold parentheses, commas, quotes and semicolons) are taken out. The work is
    done by bytes methods, not a character loop: escaped backslashes and quotes are dropped,
    the rest split at quotes (every other piece is outside a value), parentheses counted.
    mariadb-dump escapes newlines in values, so its statements end at ";" before a newline;
    a value that does hold a raw newline is followed across lines all the same.
    Tables whose structure is dumped count 0 until rows come. INSERTs inside DELIMITER
    blocks (trigger, routine and event bodies) are code, not rows."""

    def __init__(self) -> None:
        self.tables: dict[str, int] = {}
        self.completed = False  # mariadb-dump's closing line was seen
        self.unread: list[str] = []  # heads of data statements the counter could not read
        self._pending = bytearray()
        self._in_code = False
        self._table: str | None = None  # inside this table's INSERT statement
        self._in_string = False
        self._depth = 0

    def feed(self, chunk: bytes) -> None:
        newline = chunk.rfind(b"\n")  # only the new chunk: a long line costs no rescans
        self._pending += chunk
        if newline >= 0:
            end = len(self._pending) - len(chunk) + newline
            region = bytes(self._pending[:end + 1])
            done = self._region(region, final=False)
            del self._pending[:done]

    def close(self) -> Inventory:
        """The inventory of everything fed; a last line without its newline counts too."""
        if self._pending:
            self._region(bytes(self._pending) + b"\n", final=True)
        self._pending.clear()
        return self.inventory

    def problem(self) -> str | None:
        """Why the counts cannot be trusted, or None: a data statement the counter could not
        read would leave its rows uncounted, and a drill would then blame the dump."""
        if not self.unread:
            return None
        return (f"{len(self.unread)} data statement(s) of mariadb-dump could not be read to "
                f"count their rows (the first begins {self.unread[0]!r})")

    @property
    def inventory(self) -> Inventory:
        return Inventory(dict(self.tables))

    def _region(self, region: bytes, final: bool) -> int:
        """Complete lines: statement heads line by line, INSERT values in bulk. Returns how
        much was used: a statement head whose quoted name goes on past the region (a table
        name may hold a newline) waits for the next chunk."""
        pos, size = 0, len(region)
        while pos < size:
            if self._table is not None:
                pos = self._values(region, pos)
                continue
            newline = region.index(b"\n", pos)
            line = region[pos:newline]
            head = line[:1]
            if head == b"D" and line.startswith(b"DELIMITER "):
                self._in_code = line.strip() != b"DELIMITER ;"
            elif self._in_code:
                pass
            elif head in (b"I", b"R") and line.startswith(_DATA_HEADS):
                # Matched on the region, not the line: a quoted name may span lines.
                found = _INSERT.match(region, pos)
                if found is None and not final and size - pos < _LONGEST_HEAD:
                    return pos  # the rest of the head is in the next chunk
                if found is None:
                    self.unread.append(line[:60].decode("utf-8", "replace"))
                else:
                    self._table = _unquote(found.group(1))
                    self.tables.setdefault(self._table, 0)
                    self._depth, self._in_string = 0, False
                    pos = found.end()  # the values start right after VALUES
                    continue
            elif head == b"C" and line.startswith(b"CREATE TABLE "):
                found = _CREATE_TABLE.match(region, pos)
                if found is None and not final and size - pos < _LONGEST_HEAD:
                    return pos
                if found:
                    self.tables.setdefault(_unquote(found.group(1)), 0)
            elif head == b"-" and line.startswith(_DUMP_COMPLETED):
                self.completed = True
            pos = newline + 1
        return pos

    def _values(self, region: bytes, pos: int) -> int:
        """Count tuples from `pos` up to the end of the INSERT or of the region; the
        position after what was counted."""
        while True:
            end = region.find(b";\n", pos)
            if end < 0:
                self._count(region[pos:])
                return len(region)
            self._count(region[pos:end + 1])
            pos = end + 2
            if not self._in_string and self._depth <= 0:
                self._table = None  # that ";" ended the statement
                return pos

    def _count(self, text: bytes) -> None:
        if b"'" in text:
            # Escaped backslashes first, so that \\' is a backslash and a closing quote.
            if b"\\" in text:
                text = text.replace(b"\\\\", b"").replace(b"\\'", b"")
            parts = text.split(b"'")
            bare = b"".join(parts[1::2] if self._in_string else parts[0::2])
            if len(parts) % 2 == 0:  # an odd number of quotes: a value goes on
                self._in_string = not self._in_string
        elif self._in_string:
            return
        else:
            bare = text
        if self._depth == 0 and _NESTED.search(bare) is None:
            # The usual case: literals only, every tuple opens and closes here.
            opens = bare.count(b"(")
            self.tables[self._table] += opens
            self._depth = opens - bare.count(b")")
            return
        for char in re.findall(rb"[()]", bare):
            if char == b"(":
                self.tables[self._table] += self._depth == 0
                self._depth += 1
            else:
                self._depth -= 1


def mariadb_dump_inventory(stream: BinaryIO, chunk_size: int = 1 << 20) -> Inventory:
    """Count rows per table in a whole mariadb-dump stream (a file, a pipe)."""
    counter = MariadbDumpCounter()
    while chunk := stream.read(chunk_size):
        counter.feed(chunk)
    return counter.close()
