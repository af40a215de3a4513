"""Copy results: what each backup run copied to each of the tenant's copies at other sites.
The only SQL about copies."""

from __future__ import annotations

from bkp.catalog.base import utc_now


class CopiesTable:
    """Mixed into Catalog: `self.db` and `self.transaction()` come from it."""

    def add_copy_result(self, run_id: int, tenant: str, result: dict) -> None:
        """`result`: copy_id, destination (a label without credentials), status,
        snapshot_id (tonight's snapshot in the copy), source_snapshot_id, snapshots_copied,
        snapshots_kept, error, duration_s, kept_snapshots (JSON)."""
        with self.transaction():
            self.db["copy_results"].insert({"run_id": run_id, "tenant": tenant,
                                            "copied_at": utc_now(), **result})

    def copy_results_of_run(self, run_id: int) -> list[dict]:
        return list(self.db["copy_results"].rows_where("run_id = ?", [run_id], order_by="id"))

    def last_copy_result(self, tenant: str, copy_id: str, status: str | None = None,
                         kind: str | None = "backup") -> dict | None:
        """The copy's last result of a run of `kind`: a backup's (what was copied), a
        maintain's (retention at an append-only copy), or any run's (kind None)."""
        query = "tenant = ? and copy_id = ?" + (" and status = ?" if status else "")
        values = [tenant, copy_id, *([status] if status else [])]
        if kind is not None:
            query += " and run_id in (select id from runs where tenant = ? and kind = ?)"
            values += [tenant, kind]
        rows = list(self.db["copy_results"].rows_where(query, values, order_by="id desc",
                                                        limit=1))
        return rows[0] if rows else None

    def copy_kept_snapshots(self, tenant: str, copy_id: str) -> list[dict] | None:
        """What the copy held after the last run that touched it, a backup's copy or a
        maintenance (None: not known; list it)."""
        import json

        row = self.last_copy_result(tenant, copy_id, kind=None)
        if row is None or row["status"] != "ok" or not row.get("kept_snapshots"):
            return None
        return json.loads(row["kept_snapshots"])

    def last_copy_drill(self, tenant: str, copy_id: str) -> dict | None:
        """The last finished drill of one copy (`bkp drill TENANT --copy ID`)."""
        rows = list(self.db["runs"].rows_where(
            "tenant = ? and kind = 'copy-drill' and copy_id = ? and status != 'running'",
            [tenant, copy_id], order_by="coalesce(ended_at, started_at) desc, id desc",
            limit=1))
        return rows[0] if rows else None

    def good_backups_since(self, tenant: str, snapshot_id: str | None) -> list[dict]:
        """The tenant's good backups after the one that made `snapshot_id` (all of them
        when it is unknown): how many snapshots a copy lags behind."""
        rows = list(self.db["runs"].rows_where(
            "tenant = ? and kind = 'backup' and status in ('ok', 'failed') and snapshot_id "
            "is not null", [tenant], order_by="id"))
        if snapshot_id:
            short = snapshot_id[:8]
            for index, row in enumerate(rows):
                if row["snapshot_id"][:8] == short:
                    return rows[index + 1:]
        return rows
