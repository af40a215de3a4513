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
        # A run that died while copying recorded nothing, though its restic may have
        # saved snapshots in the copy: then the record is stale.
        died = self.db.execute(
            "select 1 from runs where tenant = ? and kind = 'backup' and id > ? and status "
            "= 'interrupted' limit 1", [tenant, row["run_id"]]).fetchone()
        return None if died else json.loads(row["kept_snapshots"])

    def last_copy_drill(self, tenant: str, copy_id: str) -> dict | None:
        """The last finished drill of one copy (`bkp drill TENANT --copy ID`)."""
        rows = list(self.db["runs"].rows_where(
            "tenant = ? and kind = 'copy-drill' and copy_id = ? and status != 'running'",
            [tenant, copy_id], order_by="coalesce(ended_at, started_at) desc, id desc",
            limit=1))
        return rows[0] if rows else None

    def good_backups_since(self, tenant: str, snapshot_id: str | None) -> list[dict]:
        """The tenant's backups that made a snapshot after the one that made
        `snapshot_id` (all of them when it is unknown): how many snapshots a copy lags
        behind. A run stopped while copying made its snapshot too, and a run that died
        without a record (killed, power loss) may have made one no record names: it counts,
        so a copy is never called up to date on a night nobody knows about."""
        dead = {row["id"] for row in self.dead_runs() if row["tenant"] == tenant}
        rows = [row for row in self.db["runs"].rows_where(
            "tenant = ? and kind = 'backup' and (snapshot_id is not null and status in "
            "('ok', 'failed', 'interrupted') or snapshot_id is null and status in "
            "('interrupted', 'running'))", [tenant], order_by="id")
            if row["status"] != "running" or row["id"] in dead]
        rows = [{**row, "ended_at": row["ended_at"] or row["started_at"]} for row in rows]
        if snapshot_id:
            short = snapshot_id[:8]
            for index, row in enumerate(rows):
                if (row["snapshot_id"] or "")[:8] == short:
                    return rows[index + 1:]
        return rows
