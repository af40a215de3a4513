"""Policy versions, weakening flags and approval requests: the only SQL about who may act
and under which rules."""

from __future__ import annotations

from bkp.catalog.base import select, utc_now


class AccessTables:
    """Mixed into Catalog: `self.db` and `self.transaction()` come from it."""

    # ------------------------------------------------------------ policy versions
    def latest_policy_version(self, tenant: str) -> dict | None:
        rows = select(self.db, "policy_versions", "tenant = ?", [tenant], order_by="id desc",
                      limit=1)
        return rows[0] if rows else None

    def policy_versions(self, tenant: str) -> list[dict]:
        """Every version of a tenant's policy bkp acted under, oldest first."""
        return list(self.db["policy_versions"].rows_where("tenant = ?", [tenant],
                                                          order_by="id"))

    def add_policy_version(self, tenant: str, fingerprint: str, document: str,
                           operator: str) -> int:
        with self.transaction():
            return self.db["policy_versions"].insert({
                "tenant": tenant, "fingerprint": fingerprint, "document": document,
                "seen_at": utc_now(), "operator": operator}).last_pk

    def add_policy_flag(self, tenant: str, version_id: int, changes: str) -> int:
        with self.transaction():
            return self.db["policy_flags"].insert({
                "tenant": tenant, "version_id": version_id, "changes": changes,
                "flagged_at": utc_now()}).last_pk

    def open_policy_flags(self, tenant: str | None = None) -> list[dict]:
        clause, args = "acknowledged_at is null", []
        if tenant is not None:
            clause, args = clause + " and tenant = ?", [tenant]
        return select(self.db, "policy_flags", clause, args, order_by="id")

    def acknowledge_policy_flags(self, tenant: str, operator: str, os_user: str) -> list[dict]:
        with self.transaction():
            flags = self.open_policy_flags(tenant)
            now = utc_now()
            for flag in flags:
                self.db["policy_flags"].update(flag["id"], {
                    "acknowledged_by": operator, "acknowledged_os_user": os_user,
                    "acknowledged_at": now})
            return [self.db["policy_flags"].get(flag["id"]) for flag in flags]

    # ------------------------------------------------------------ approvals
    def add_approval(self, request: dict) -> dict:
        with self.transaction():
            approval_id = self.db["approvals"].insert(
                {**request, "status": "pending"}).last_pk
            return self.db["approvals"].get(approval_id)

    def approvals_of(self, kind: str, subject: str) -> list[dict]:
        return list(self.db["approvals"].rows_where("kind = ? and subject = ?",
                                                    [kind, subject], order_by="id"))

    def approvals_for_subject(self, subject: str) -> list[dict]:
        return list(self.db["approvals"].rows_where("subject = ?", [subject], order_by="id"))

    def waiting_approvals(self) -> list[dict]:
        return list(self.db["approvals"].rows_where("status = 'pending'", order_by="id"))

    def close_approval(self, approval_id: int, status: str, **fields) -> dict | None:
        """Close a pending request once; None when it was closed meanwhile."""
        with self.transaction():
            row = self.db["approvals"].get(approval_id)
            if row["status"] != "pending":
                return None
            self.db["approvals"].update(approval_id, {"status": status, **fields})
            return self.db["approvals"].get(approval_id)
