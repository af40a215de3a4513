"""The few table operations the catalog's records use, in plain sqlite3.

sqlite-utils stays the owner of the schema (its migrations, in schema.py), but importing it
costs more than all of a pod's other start-up work (it compiles large regular expressions
and looks for plugins). A pod's backup and `bkp status` only insert, update and read rows,
so those go through this instead, on the same connection and with sqlite-utils' behaviour
for values (dicts and lists stored as JSON, times as ISO text) and for missing rows.
"""

from __future__ import annotations

import datetime
import decimal
import json
import sqlite3
import uuid
from collections.abc import Iterator


class NotFoundError(LookupError):
    """No row with that primary key (sqlite-utils raises its own NotFoundError here)."""


def stored(value: object) -> object:
    """A value as sqlite-utils would store it."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=repr, ensure_ascii=False)
    if isinstance(value, (datetime.time, datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, (datetime.timedelta, uuid.UUID)):
        return str(value)
    return value


def _quoted(name: str) -> str:
    return "[" + name.replace("]", "]]") + "]"


def _rows(cursor: sqlite3.Cursor) -> Iterator[dict]:
    columns = [column[0] for column in cursor.description]
    for row in cursor:
        yield dict(zip(columns, row, strict=True))


class Database:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._keys: dict[str, str] = {}

    def execute(self, sql: str, parameters=()) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    def query(self, sql: str, parameters=()) -> Iterator[dict]:
        yield from _rows(self.conn.execute(sql, parameters))

    def table_names(self) -> list[str]:
        return [row[0] for row in self.conn.execute(
            "select name from sqlite_master where type = 'table'")]

    def __getitem__(self, name: str) -> Table:
        return Table(self, name)

    def primary_key(self, table: str) -> str:
        if table not in self._keys:
            keys = [row[1] for row in self.conn.execute(f"pragma table_info({_quoted(table)})")
                    if row[5]]
            self._keys[table] = keys[0] if len(keys) == 1 else "rowid"
        return self._keys[table]


class Table:
    def __init__(self, db: Database, name: str):
        self.db, self.name = db, name
        self.last_pk: object = None
        self.last_rowid: int | None = None

    def insert(self, record: dict) -> Table:
        columns = ", ".join(_quoted(column) for column in record)
        marks = ", ".join("?" for _ in record)
        cursor = self.db.execute(f"insert into {_quoted(self.name)} ({columns}) values "
                                 f"({marks})", [stored(value) for value in record.values()])
        self.last_rowid = cursor.lastrowid
        key = self.db.primary_key(self.name)
        self.last_pk = record.get(key, cursor.lastrowid)
        return self

    def update(self, pk: object, updates: dict) -> Table:
        if not updates:
            return self
        sets = ", ".join(f"{_quoted(column)} = ?" for column in updates)
        key = _quoted(self.db.primary_key(self.name))
        cursor = self.db.execute(f"update {_quoted(self.name)} set {sets} where {key} = ?",
                                 [*(stored(value) for value in updates.values()), pk])
        if cursor.rowcount != 1:
            raise NotFoundError(f"no row {pk!r} in {self.name}")
        self.last_pk = pk
        return self

    def get(self, pk: object) -> dict:
        key = _quoted(self.db.primary_key(self.name))
        for row in self.rows_where(f"{key} = ?", [pk]):
            return row
        raise NotFoundError(f"no row {pk!r} in {self.name}")

    def rows_where(self, where: str | None = None, where_args=(), order_by: str | None = None,
                   limit: int | None = None) -> Iterator[dict]:
        sql = f"select * from {_quoted(self.name)}"
        if where:
            sql += f" where {where}"
        if order_by:
            sql += f" order by {order_by}"
        if limit is not None:
            sql += f" limit {int(limit)}"
        yield from _rows(self.db.execute(sql, list(where_args or ())))

    @property
    def rows(self) -> Iterator[dict]:
        return self.rows_where()

    @property
    def count(self) -> int:
        return self.count_where()

    def count_where(self, where: str | None = None, where_args=()) -> int:
        sql = f"select count(*) from {_quoted(self.name)}"
        if where:
            sql += f" where {where}"
        return self.db.execute(sql, list(where_args or ())).fetchone()[0]
