"""The audit_log table: append one chained event, read them back. The only SQL about it;
the chain itself (hashes, verification) lives in bkp.evidence.audit."""

from __future__ import annotations

from collections.abc import Callable

from bkp.catalog.base import GENESIS_HASH, where


class AuditLogTable:
    """Mixed into Catalog: `self.db` and `self.transaction()` come from it."""

    def append_audit(self, build: Callable[[int, str], dict]) -> dict:
        """Insert the event that `build(seq, prev_hash)` returns, chained to the current head.

        The head is read and the event written in one IMMEDIATE transaction, so concurrent
        bkp processes cannot fork the chain.
        """
        with self.transaction() as conn:
            head = conn.execute(
                "select seq, hash from audit_log order by seq desc limit 1").fetchone()
            seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
            event = build(seq, prev_hash)
            self.db["audit_log"].insert(event)
            return event

    def audit_events(self, tenant: str | None = None, since: str | None = None,
                     action: str | None = None) -> list[dict]:
        clause, args = where(tenant=tenant, action=action)
        if since:
            clause = " and ".join(filter(None, [clause, "time >= ?"]))
            args.append(since)
        return list(self.db["audit_log"].rows_where(clause, args, order_by="seq"))

    def last_audit_event(self) -> dict | None:
        rows = list(self.db["audit_log"].rows_where(order_by="seq desc", limit=1))
        return rows[0] if rows else None

    def last_event_of(self, actions: tuple[str, ...]) -> dict | None:
        """The newest event whose action is one of `actions`."""
        marks = ", ".join("?" for _ in actions)
        rows = list(self.db["audit_log"].rows_where(f"action in ({marks})", list(actions),
                                                    order_by="seq desc", limit=1))
        return rows[0] if rows else None

    def record_keys(self) -> dict[str, set]:
        """What the records tables hold, by the detail key events name them with: the audit
        check finds an event whose record was removed behind an intact chain."""
        def column(table: str, name: str) -> set:
            return {row[0] for row in self.db.execute(f"select {name} from {table}")}

        return {"run_id": column("runs", "id"), "record_id": column("records", "id"),
                "certificate_id": column("certificates", "id"),
                "serial": column("media", "serial")}

    def audit_event(self, seq: int) -> dict | None:
        rows = list(self.db["audit_log"].rows_where("seq = ?", [seq]))
        return rows[0] if rows else None


def audit_event(catalog, seq: int) -> dict | None:
    return catalog.audit_event(seq)
