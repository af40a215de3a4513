"""Erasure records: a tenant offboarded, or snapshots erased on request. The only SQL about
them. A record is one request; it moves from pending_approval (when a second person must
approve) through running to erased, or to failed and, re-run, on to erased. Every attempt
is an audit event, so the trail keeps what the row's latest state does not."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bkp.catalog.base import HOST, select, utc_now

if TYPE_CHECKING:
    from bkp.catalog import Catalog

# An offboarding in one of these states has begun to erase: the tenant's backups are
# (being) gone, so nothing may write new ones.
ERASING = ("running", "failed", "erased")


def add_erasure(catalog: Catalog, record: dict) -> int:
    """A new erasure record (and its id in the records' id space)."""
    with catalog.transaction():
        now = utc_now()
        record_id = catalog.db["records"].insert({
            "kind": "erasure", "serial": None, "tenant": record["tenant"],
            "created_at": now}).last_pk
        catalog.db["erasures"].insert({**record, "id": record_id, "requested_at": now,
                                       "attempts": 0, "host": HOST})
    return record_id


def get_erasure(catalog: Catalog, record_id: int) -> dict | None:
    rows = list(catalog.db["erasures"].rows_where("id = ?", [record_id]))
    return rows[0] if rows else None


def update_erasure(catalog: Catalog, record_id: int, **fields) -> dict:
    with catalog.transaction():
        catalog.db["erasures"].update(record_id, fields)
    return get_erasure(catalog, record_id)


def start_attempt(catalog: Catalog, record_id: int, **fields) -> dict:
    with catalog.transaction():
        row = catalog.db["erasures"].get(record_id)
        catalog.db["erasures"].update(record_id, {
            **fields, "status": "running", "started_at": row["started_at"] or utc_now(),
            "attempts": (row["attempts"] or 0) + 1, "host": HOST})
    return get_erasure(catalog, record_id)


def unfinished_erasures(catalog: Catalog, tenant: str, kind: str) -> list[dict]:
    """The tenant's requests of this kind not yet erased, oldest first."""
    return list(catalog.db["erasures"].rows_where(
        "tenant = ? and kind = ? and status != 'erased'", [tenant, kind], order_by="id"))


def erasures_of(catalog: Catalog, tenant: str | None = None) -> list[dict]:
    if tenant is None:
        return list(catalog.db["erasures"].rows_where(order_by="id"))
    return select(catalog.db, "erasures", "tenant = ?", [tenant], order_by="id")


def offboarded(catalog: Catalog, tenant: str | None = None) -> dict[str, dict]:
    """Tenants (or this one) whose offboarding has begun to erase, with their latest such
    record."""
    clause = f"kind = 'offboard' and status in ({', '.join('?' for _ in ERASING)})"
    args = list(ERASING)
    if tenant is not None:
        clause, args = clause + " and tenant = ?", [*args, tenant]
    rows = select(catalog.db, "erasures", clause, args, order_by="id")
    return {row["tenant"]: row for row in rows}


def closed_erasures(catalog: Catalog) -> list[dict]:
    """Records an attempt has ended (their closing event is in the trail)."""
    return list(catalog.db["erasures"].rows_where("status in ('erased', 'failed')",
                                                  order_by="id"))
