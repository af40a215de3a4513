"""Small shared pieces of the catalog: time, process identity, JSON, filters."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime

HOST = socket.gethostname()
GENESIS_HASH = "0" * 64


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot: tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def process_alive(pid: int, start_ticks: int | None) -> bool:
    current = process_start_ticks(pid)
    return current is not None and (start_ticks is None or current == start_ticks)


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def where(**filters) -> tuple[str | None, list]:
    clauses, args = [], []
    for key, value in filters.items():
        if value is not None:
            clauses.append(f"{key} = ?")
            args.append(value)
    return (" and ".join(clauses) or None), args


def select(db, table: str, clause: str | None = None, args: list | tuple = (),
           order_by: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows as dicts (`db` is the catalog's tables.Database)."""
    return list(db[table].rows_where(clause, args, order_by=order_by, limit=limit))
