"""The media register: media, their events, sanitization and destruction records, and the
certificates issued for them (the decommission workflow). The only SQL about media."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from bkp.catalog.base import HOST, parse_time, process_alive, process_start_ticks, utc_now
from bkp.vocabulary import MEDIA_STATES, MEDIA_TYPES  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from bkp.catalog import Catalog

# A medium's state is the state of its latest event; the events are its history.


def add_medium(catalog: Catalog, medium: dict, operator: str) -> dict | None:
    """Register a medium; None when its serial is already in the register."""
    with catalog.transaction():
        if catalog.db["media"].count_where("serial = ?", [medium["serial"]]):
            return None
        now = utc_now()
        catalog.db["media"].insert({**medium, "registered_at": now, "registered_by": operator})
        catalog.db["media_events"].insert({"serial": medium["serial"], "time": now,
                                           "state": "registered", "operator": operator})
    return get_medium(catalog, medium["serial"])


def add_media_event(catalog: Catalog, serial: str, state: str, operator: str,
                    record_id: int | None = None, reason: str | None = None) -> None:
    with catalog.transaction():
        catalog.db["media_events"].insert({"serial": serial, "time": utc_now(), "state": state,
                                           "record_id": record_id, "operator": operator,
                                           "reason": reason})


_MEDIA_WITH_STATE = """
select m.*, e.state as state, e.time as state_since from media m
join media_events e on e.id = (select max(id) from media_events where serial = m.serial)
"""


def get_medium(catalog: Catalog, serial: str) -> dict | None:
    rows = list(catalog.db.query(_MEDIA_WITH_STATE + " where m.serial = ?", [serial]))
    return rows[0] if rows else None


def list_media(catalog: Catalog, state: str | None = None,
               tenant: str | None = None) -> list[dict]:
    clauses, args = [], []
    if state:
        clauses.append("e.state = ?")
        args.append(state)
    if tenant:
        clauses.append("m.tenant = ?")
        args.append(tenant)
    where = (" where " + " and ".join(clauses)) if clauses else ""
    return list(catalog.db.query(_MEDIA_WITH_STATE + where + " order by m.registered_at, "
                                 "m.serial", args))


def media_history(catalog: Catalog, serial: str) -> list[dict]:
    return list(catalog.db["media_events"].rows_where("serial = ?", [serial], order_by="id"))


def open_sanitization(catalog: Catalog, record: dict) -> int:
    """Open a `running` sanitization with this process's identity, so a dead one is found."""
    pid = os.getpid()
    with catalog.transaction():
        now = utc_now()
        record_id = catalog.db["records"].insert({
            "kind": "sanitization", "serial": record["serial"], "created_at": now}).last_pk
        catalog.db["sanitizations"].insert({
            **record, "id": record_id, "result": "running", "started_at": now, "host": HOST,
            "pid": pid, "pid_start": process_start_ticks(pid)})
        catalog.db["media_events"].insert({"serial": record["serial"], "time": now,
                                           "state": "sanitizing", "record_id": record_id,
                                           "operator": record.get("operator")})
    return record_id


def close_sanitization(catalog: Catalog, record_id: int, result: str,
                       medium_state: str, **fields) -> dict | None:
    """Close a running sanitization; None when it was already closed (records are closed
    once and never rewritten)."""
    with catalog.transaction():
        row = catalog.db["sanitizations"].get(record_id)
        if row["result"] != "running":
            return None
        ended = utc_now()
        duration = (parse_time(ended) - parse_time(row["started_at"])).total_seconds()
        catalog.db["sanitizations"].update(record_id, {
            **fields, "result": result, "ended_at": ended, "duration_s": round(duration, 3)})
        catalog.db["media_events"].insert({"serial": row["serial"], "time": ended,
                                           "state": medium_state, "record_id": record_id,
                                           "operator": row["operator"],
                                           "reason": fields.get("error")})
    return catalog.db["sanitizations"].get(record_id)


def note_sample_plan(catalog: Catalog, record_id: int, sample_plan: str) -> None:
    """The sample plan is known once the wipe is done; recorded before it is read."""
    with catalog.transaction():
        row = catalog.db["sanitizations"].get(record_id)
        if row["result"] == "running":
            catalog.db["sanitizations"].update(record_id, {"sample_plan": sample_plan})


def abandoned_sanitizations(catalog: Catalog, every_host: bool = False) -> list[dict]:
    """Running sanitizations of this host whose process is gone (killed, crash, power);
    with `every_host`, every running one (the host that ran them was lost)."""
    if every_host:
        return list(catalog.db["sanitizations"].rows_where("result = 'running'"))
    rows = catalog.db["sanitizations"].rows_where("result = 'running' and host = ?", [HOST])
    return [row for row in rows if not process_alive(row["pid"], row["pid_start"])]


def get_sanitization(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["sanitizations"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def add_destruction(catalog: Catalog, record: dict) -> int:
    with catalog.transaction():
        now = utc_now()
        record_id = catalog.db["records"].insert({
            "kind": "destruction", "serial": record["serial"], "created_at": now}).last_pk
        catalog.db["destructions"].insert({**record, "id": record_id, "host": HOST})
        catalog.db["media_events"].insert({"serial": record["serial"], "time": now,
                                           "state": "destroyed", "record_id": record_id,
                                           "operator": record.get("operator")})
    return record_id


def get_destruction(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["destructions"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def get_record(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["records"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def add_certificate(catalog: Catalog, build: Callable[[int], dict]) -> dict:
    """Insert the certificate that `build(certificate_id)` returns. The id is part of the
    signed content, so it is taken and used in one transaction: two bkp processes never
    sign the same number."""
    with catalog.transaction() as conn:
        certificate_id = conn.execute(
            "select coalesce(max(id), 0) + 1 from certificates").fetchone()[0]
        row = build(certificate_id)
        catalog.db["certificates"].insert({**row, "id": certificate_id})
    return catalog.db["certificates"].get(certificate_id)


def latest_certificate(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["certificates"].rows_where("record_id = ?", [record_id],
                                                      order_by="id desc", limit=1))
    return rows[0] if rows else None


def closed_sanitizations(catalog: Catalog) -> list[dict]:
    return list(catalog.db["sanitizations"].rows_where("result != 'running'", order_by="id"))


def all_destructions(catalog: Catalog) -> list[dict]:
    return list(catalog.db["destructions"].rows_where(order_by="id"))


def all_certificates(catalog: Catalog) -> list[dict]:
    return list(catalog.db["certificates"].rows_where(order_by="id"))


def latest_records(catalog: Catalog) -> dict[str, dict]:
    """Each medium's latest sanitization or destruction record with its result, latest
    certificate and hash: serial -> {"id", "kind", "result", "hash", "certificate_id",
    "method", "technique", "category"}."""
    rows = catalog.db.query("""
        select r.id, r.kind, r.serial,
               coalesce(s.result, case when d.id is not null then 'destroyed' end) as result,
               coalesce(s.hash, d.hash) as hash, coalesce(s.method, d.method) as method,
               coalesce(s.technique, d.technique) as technique,
               coalesce(s.category, d.category) as category,
               (select max(c.id) from certificates c where c.record_id = r.id)
                   as certificate_id
        from records r
        left join sanitizations s on s.id = r.id
        left join destructions d on d.id = r.id
        where r.id = (select max(id) from records where serial = r.serial)""")
    return {row["serial"]: row for row in rows}
