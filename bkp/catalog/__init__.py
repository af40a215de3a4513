"""The SQLite catalog at $BKP_HOME/catalog.db: opening it safely, transactions, and the
table families (runs.py, audit_log.py, media.py; the schema in schema.py).

The catalog is evidence: rows are appended and closed, never rewritten into something
else. No secret is ever written here.

Two ways in. Commands that only read (status, verify, list) open it read-only
(`Catalog.read_only`): they never migrate, never reap, never write a row, so an auditor's
check cannot move what it checks. Commands that act open it for work (`open_for_work`):
BKP_HOME is checked, the schema is migrated (after a copy of the file is kept) and writes
go through IMMEDIATE transactions. Every thread has its own connection (`--jobs N`).
Every failure to open or write is a CatalogError with a sentence that says what to do;
sqlite3's own exceptions never reach an operator.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bkp.catalog import schema, tables
from bkp.catalog.access import AccessTables
from bkp.catalog.audit_log import AuditLogTable, audit_event
from bkp.catalog.base import (
    GENESIS_HASH,
    HOST,
    as_json,
    parse_time,
    process_alive,
    process_start_ticks,
    utc_now,
)
from bkp.catalog.copies import CopiesTable
from bkp.catalog.erasures import (
    add_erasure,
    closed_erasures,
    erasures_of,
    get_erasure,
    offboarded,
    start_attempt,
    unfinished_erasures,
    update_erasure,
)
from bkp.catalog.inbox import InboxTable
from bkp.catalog.media import (
    MEDIA_STATES,
    MEDIA_TYPES,
    abandoned_sanitizations,
    add_certificate,
    add_destruction,
    add_media_event,
    add_medium,
    all_certificates,
    all_destructions,
    close_sanitization,
    closed_sanitizations,
    get_destruction,
    get_medium,
    get_record,
    get_sanitization,
    latest_certificate,
    latest_records,
    list_media,
    media_history,
    note_sample_plan,
    open_sanitization,
)
from bkp.catalog.runs import RunsTable
from bkp.errors import OperationError

__all__ = [
    "CATALOG_FILE",
    "GENESIS_HASH",
    "HOST",
    "MEDIA_STATES",
    "MEDIA_TYPES",
    "Catalog",
    "CatalogDamaged",
    "CatalogError",
    "CatalogMissing",
    "abandoned_sanitizations",
    "add_certificate",
    "add_destruction",
    "add_erasure",
    "add_media_event",
    "add_medium",
    "all_certificates",
    "all_destructions",
    "as_json",
    "audit_event",
    "check_home",
    "close_sanitization",
    "closed_erasures",
    "closed_sanitizations",
    "erasures_of",
    "get_destruction",
    "get_erasure",
    "get_medium",
    "get_record",
    "get_sanitization",
    "home_was_used",
    "is_blank",
    "latest_certificate",
    "latest_records",
    "list_media",
    "media_history",
    "note_sample_plan",
    "offboarded",
    "open_for_work",
    "open_sanitization",
    "parse_time",
    "process_alive",
    "process_start_ticks",
    "start_attempt",
    "unfinished_erasures",
    "update_erasure",
    "utc_now",
    "write_home_marker",
]

CATALOG_FILE = "catalog.db"
HOME_MARKER = ".bkp-home"  # written when the catalog is created: its absence is not proof
# Below this, SQLite may fail halfway through a night: say so before starting.
MIN_FREE_BYTES = 4 << 20


class CatalogError(OperationError):
    """The catalog cannot be opened or written; nothing was done."""


class CatalogMissing(CatalogError):
    """There is no catalog (a new installation, or a lost one)."""


class CatalogDamaged(CatalogError):
    """The catalog is not what bkp wrote: not a database, tables missing, a directory."""


def _explain(error: sqlite3.Error, path: Path, doing: str) -> CatalogError:
    text = str(error)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered:
        return CatalogDamaged(f"the catalog {path} is not a bkp catalog ({text}): it was "
                              f"damaged or replaced; restore it (runbooks/disaster-recovery.md)")
    if "no such table" in lowered or "no such column" in lowered:
        return CatalogDamaged(f"the catalog {path} lacks what bkp wrote there ({text}): it was "
                              f"damaged or tampered with; restore it "
                              f"(runbooks/disaster-recovery.md)")
    if "full" in lowered:
        return CatalogError(f"cannot {doing} the catalog {path}: the disk is full; free space "
                            f"in {path.parent} (BKP_HOME), then re-run")
    if "readonly" in lowered or "read-only" in lowered:
        return CatalogError(f"cannot {doing} the catalog {path}: it is read-only; bkp must "
                            f"record what it does: make {path.parent} writable")
    if "locked" in lowered or "busy" in lowered:
        return CatalogError(f"cannot {doing} the catalog {path}: another process holds it "
                            f"({text}); re-run when it is done")
    return CatalogError(f"cannot {doing} the catalog {path}: {text}")


class Catalog(RunsTable, AuditLogTable, AccessTables, InboxTable, CopiesTable):
    """One open catalog. Each thread gets its own connection to the same file."""

    def __init__(self, path: Path, *, read_only: bool = False,
                 _connection: sqlite3.Connection | None = None):
        self.path = Path(path)
        self.read_only = read_only
        self._shared = _connection  # an in-memory copy: one connection for all threads
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        if _connection is None and not read_only:
            self._create_and_migrate()

    # ---------------------------------------------------------------- opening

    @classmethod
    def read_only(cls, path: Path) -> Catalog:
        """Open for reading only; CatalogMissing when there is none. A catalog that still
        needs a migration is migrated in a private in-memory copy, never in place."""
        path = Path(path)
        if not path.exists():
            raise CatalogMissing(f"there is no catalog at {path}")
        if not path.is_file():
            raise CatalogDamaged(f"the catalog {path} is not a file: it was damaged or replaced;"
                                 f" restore it (runbooks/disaster-recovery.md)")
        if _frozen(path) and _holds_frames(_log_of(path)):
            # On a read-only filesystem SQLite reads the file as immutable, which skips the
            # write-ahead log: the newest records (a host that died, a copy taken while bkp
            # ran) would be missing. A private copy of both is read instead.
            with _copy_with_log(path) as copy:
                return cls._opened_read_only(copy, path, in_memory=True)
        return cls._opened_read_only(path, path)

    @classmethod
    def _opened_read_only(cls, source: Path, path: Path, in_memory: bool = False) -> Catalog:
        """`source`: the catalog `path`, or a private copy of it (then read into memory)."""
        if is_blank(source):
            raise CatalogMissing(f"the catalog {path} is empty (no tables): it was emptied, or "
                                 f"its creation never finished")
        catalog = cls(source, read_only=True)
        try:
            db = catalog.db
            _refuse_newer(db, path)
            if in_memory or schema.pending_names(db):
                catalog.close()
                return cls.in_memory_copy(source, shown=path)
            _refuse_missing_tables(db, path)
        except sqlite3.Error as exc:
            catalog.close()
            raise _explain(exc, path, "read") from None
        except CatalogError:
            catalog.close()
            raise
        return catalog

    @classmethod
    def in_memory_copy(cls, path: Path | None, shown: Path | None = None) -> Catalog:
        """A private copy in memory (of `path`, or empty), migrated: reads see the current
        schema and nothing is ever written to a file. `shown`: the catalog's own path, when
        `path` is a copy of it."""
        shown = shown or path
        memory = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        if path is not None:
            # read as the catalog itself is (a read-only BKP_HOME included): every catalog
            # made before a new migration comes this way until a command acts on it
            source = sqlite3.connect(f"file:{path}?{_read_only_mode(path)}", uri=True)
            try:
                source.backup(memory)
            except sqlite3.Error as exc:
                raise _explain(exc, shown, "read") from None
            finally:
                source.close()
        if path is None:
            schema.create(memory)
        elif schema.pending_names(memory):  # a copy of a current catalog needs nothing
            schema.apply(memory)
        catalog = cls(shown or Path(":memory:"), read_only=True, _connection=memory)
        _refuse_missing_tables(catalog.db, catalog.path)
        return catalog

    @classmethod
    def empty(cls) -> Catalog:
        """What a read command sees where no catalog exists yet: nothing recorded."""
        return cls.in_memory_copy(None)

    def _create_and_migrate(self) -> None:
        new = not self.path.exists() or is_blank(self.path)
        if self.path.exists() and not self.path.is_file():
            raise CatalogDamaged(f"the catalog {self.path} is not a file: it was damaged or "
                                 f"replaced; restore it (runbooks/disaster-recovery.md)")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"cannot create {self.path.parent}: {exc.strerror or exc}") \
                from None
        try:
            with _migration_lock(self.path):
                db = self.db
                if not db.table_names():
                    schema.create(db.conn)
                _refuse_newer(db, self.path)
                pending = schema.pending_names(db)
                if pending and not new and db.table_names():
                    _keep_copy(db.conn, self.path, pending[0])
                if pending:
                    schema.apply(db.conn)
                _refuse_missing_tables(db, self.path)
        except sqlite3.Error as exc:
            self.close()
            raise _explain(exc, self.path, "open") from None
        except CatalogError:
            self.close()
            raise
        with suppress(OSError):
            self.path.chmod(0o600)
        if new:
            write_home_marker(self.path.parent)

    def _new_connection(self) -> sqlite3.Connection:
        try:
            if self.read_only:
                conn = sqlite3.connect(f"file:{self.path}?{_read_only_mode(self.path)}",
                                       uri=True, timeout=30, check_same_thread=False,
                                       isolation_level=None)
                conn.execute("PRAGMA query_only=1")
            else:
                conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                       isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "open") from None
        return conn

    @property
    def db(self) -> tables.Database:
        if self._shared is not None:
            if getattr(self, "_shared_db", None) is None:
                self._shared_db = tables.Database(self._shared)
            return self._shared_db
        db = getattr(self._local, "db", None)
        if db is None:
            conn = self._new_connection()
            with self._guard:
                self._connections.append(conn)
            db = self._local.db = tables.Database(conn)
        return db

    def close(self) -> None:
        with self._guard:
            connections, self._connections = self._connections, []
        for conn in connections + ([self._shared] if self._shared else []):
            with suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # ---------------------------------------------------------------- writing

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: two bkp processes never interleave a read-then-write.
        (sqlite-utils' atomic() begins a deferred transaction, which in WAL mode fails at
        once instead of waiting when another process wrote after our first read.)

        Re-entrant within a thread: a record and its audit event are written in one
        transaction, so a killed process never leaves one without the other."""
        if self.read_only:
            raise CatalogError(f"internal error: a read-only command tried to write to "
                               f"{self.path}")
        conn = self.db.conn
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _explain(exc, self.path, "write to") from None
        self._local.depth = 1
        try:
            yield conn
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _explain(exc, self.path, "write to") from None
        except BaseException:
            _rollback(conn)
            raise
        finally:
            self._local.depth = 0
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _explain(exc, self.path, "write to") from None

    def applied_migrations(self) -> list[str]:
        return schema.applied_names(self.db)

    def table_counts(self) -> dict[str, int]:
        return {name: self.db[name].count for name in self.db.table_names()}


# -------------------------------------------------------------------- helpers

def _read_only_mode(path: Path) -> str:
    """mode=ro, except on a read-only filesystem (a mounted copy, a frozen BKP_HOME), where
    SQLite could not create the WAL index a reader needs: there nobody can be writing, and
    the file is read as immutable (Catalog.read_only first makes sure that no records wait
    in its write-ahead log)."""
    return "immutable=1" if _frozen(path) else "mode=ro"


def _frozen(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _log_of(path: Path) -> Path:
    return path.with_name(f"{path.name}-wal")


@contextmanager
def _copy_with_log(path: Path) -> Iterator[Path]:
    """The catalog and its write-ahead log copied into a private folder, where SQLite can
    read the log (on the catalog's read-only filesystem it cannot)."""
    try:
        folder = tempfile.TemporaryDirectory(prefix="bkp-catalog-")
    except OSError as exc:
        raise _no_copy(path, exc) from None
    with folder:
        copy = Path(folder.name) / path.name
        try:
            shutil.copyfile(path, copy)
            shutil.copyfile(_log_of(path), _log_of(copy))
        except OSError as exc:
            raise _no_copy(path, exc) from None
        yield copy


def _no_copy(path: Path, exc: OSError) -> CatalogError:
    return CatalogError(
        f"cannot read the catalog {path}: its newest records are in {_log_of(path).name}, "
        f"which SQLite cannot read on a read-only filesystem, and no private copy of both "
        f"could be made ({exc.strerror or exc}); set TMPDIR to a writable folder with room "
        f"for them")


def _rollback(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _refuse_newer(db: tables.Database, path: Path) -> None:
    unknown = schema.unknown_names(db)
    if unknown:
        raise CatalogError(f"the catalog {path} was written by a newer bkp (schema "
                           f"{', '.join(unknown)} unknown here): upgrade bkp on this host")


def _refuse_missing_tables(db: tables.Database, path: Path) -> None:
    missing = schema.missing_tables(db)
    if missing:
        raise CatalogDamaged(f"the catalog {path} lacks its table(s) {', '.join(missing)}: it "
                             f"was damaged or tampered with; restore it "
                             f"(runbooks/disaster-recovery.md)")


def _keep_copy(conn: sqlite3.Connection, path: Path, before: str) -> Path:
    """A consistent copy of the catalog before it is migrated (SQLite's backup API)."""
    copy = path.with_name(f"{path.name}.before-{before}")
    target = sqlite3.connect(copy)
    try:
        conn.backup(target)
    finally:
        target.close()
    copy.chmod(0o600)
    return copy


@contextmanager
def _migration_lock(path: Path):
    """Two bkp processes upgrading one catalog at once would both try each migration."""
    lock = path.with_name(f".{path.name}.migrate.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_blank(path: Path) -> bool:
    """A catalog file without a single table (zero bytes, or an empty database): nothing bkp
    recorded is in it, so where bkp worked before it was emptied, not freshly made."""
    if not path.is_file():
        return False
    try:
        if path.stat().st_size == 0:
            return True
        conn = sqlite3.connect(f"file:{path}?{_read_only_mode(path)}", uri=True)
        try:
            return conn.execute("select count(*) from sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return False  # unreadable or not a database: opening it names that


def write_home_marker(home: Path) -> None:
    with suppress(OSError):
        marker = home / HOME_MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"catalog_id": str(uuid.uuid4()),
                                          "created": utc_now(), "host": HOST}) + "\n")
            marker.chmod(0o600)


def home_was_used(home: Path) -> list[str]:
    """Signs that bkp worked in `home` before: a catalog missing there was lost, not new."""
    signs = []
    if (home / HOME_MARKER).exists():
        signs.append(f"{HOME_MARKER} (written when the catalog was created)")
    if _holds_frames(_log_of(home / CATALOG_FILE)):
        signs.append(f"{CATALOG_FILE}-wal")
    for folder in ("keys", "reports", "certificates"):
        with suppress(OSError):
            if (home / folder).is_dir() and any((home / folder).iterdir()):
                signs.append(f"{folder}/")
    return signs


def _holds_frames(wal: Path) -> bool:
    """A write-ahead log with something written in it. SQLite makes the file empty when a
    connection opens the catalog, and the one transaction that creates a new catalog writes
    nothing there until it commits: an empty log is another bkp making the catalog right
    now, or one killed while making it (an evicted pod), never records that were lost."""
    try:
        return wal.stat().st_size > 0
    except OSError:
        return False


def check_home(home: Path) -> None:
    """BKP_HOME exists (or is created), is a writable directory, and has room."""
    if home.exists() and not home.is_dir():
        raise CatalogError(f"BKP_HOME {home} is not a directory; set --home or BKP_HOME to "
                           f"bkp's state directory")
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogError(f"cannot create BKP_HOME {home}: {exc.strerror or exc}; create it "
                           f"(mode 0700) or set --home") from None
    try:
        usage = os.statvfs(home)
    except OSError as exc:
        raise CatalogError(f"cannot read BKP_HOME {home}: {exc.strerror or exc}") from None
    if usage.f_flag & os.ST_RDONLY or not os.access(home, os.W_OK):
        raise CatalogError(f"BKP_HOME {home} is read-only: bkp must record what it does; "
                           f"remount it read-write or set --home")
    free = usage.f_bavail * usage.f_frsize
    if free < MIN_FREE_BYTES:
        raise CatalogError(f"BKP_HOME {home} is full ({free >> 10} KiB free): bkp cannot "
                           f"record tonight's work; free space there, then re-run")


def open_for_work(home: Path) -> Catalog:
    """The catalog of a command that acts: BKP_HOME checked, schema current. A catalog that
    vanished from a BKP_HOME bkp has worked in is not silently replaced by an empty one."""
    check_home(home)
    path = home / CATALOG_FILE
    if not path.exists() or is_blank(path):
        signs = home_was_used(home)
        if signs:
            raise CatalogMissing(
                f"the catalog {path} is {'empty' if path.exists() else 'missing'}, but "
                f"BKP_HOME holds bkp's records "
                f"({', '.join(signs)}): it was lost or moved. Bring it back (`bkp evidence "
                f"recover`, runbooks/disaster-recovery.md), or start a new one knowingly "
                f"with `bkp catalog init`")
    return Catalog(path)
