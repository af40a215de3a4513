"""The inbox table: which objects of the results inbox the gatherer has seen, and the runs a
verified result becomes. The only SQL about them."""

from __future__ import annotations

import json

from bkp.catalog.base import utc_now

# The columns of a run a pod's result may set; the rest (id, host, process) are this
# catalog's own.
RESULT_RUN_COLUMNS = (
    "kind", "trigger", "slot", "status", "started_at", "ended_at", "duration_s", "snapshot_id",
    "files", "bytes_added", "bytes_processed", "snapshots_kept", "repository_bytes", "error",
    "operator", "restic_version", "restic_calls", "files_checked", "bytes_restored", "subset",
    "problems", "sample_checked", "sample_skipped", "rto_minutes", "kept_snapshots",
    "policy_fingerprint", "clock_synchronized", "databases", "immutability",
    "maintenance_pending", "observations", "restore_s", "copies",
)
# What a run carries beside its own row (`copy_results`, `database_dumps` in a result), so
# that the central status knows a pod's copies and dumps as it knows a host's.
RESULT_CHILD_COLUMNS = {
    "copy_results": ("copy_id", "destination", "status", "snapshot_id", "source_snapshot_id",
                     "snapshot_time", "snapshots_copied", "snapshots_kept", "error",
                     "duration_s", "copied_at", "kept_snapshots"),
    "database_dumps": ("name", "type", "status", "snapshot_id", "inventory_snapshot_id",
                       "bytes", "tables", "error", "duration_s", "dumped_at"),
}
# Without these a row says nothing: it is left out.
RESULT_CHILD_REQUIRED = {"copy_results": ("copy_id", "status"),
                         "database_dumps": ("name", "type", "status")}
RESULT_CHILD_TIME = {"copy_results": "copied_at", "database_dumps": "dumped_at"}


class InboxTable:
    """Mixed into Catalog: `self.db` and `self.transaction()` come from it."""

    def seen_objects(self) -> dict[str, dict]:
        return {row["name"]: row for row in self.db["inbox"].rows}

    def result_seen(self, result_id: str) -> bool:
        return bool(list(self.db["inbox"].rows_where("result_id = ?", [result_id], limit=1)))

    def add_result_run(self, tenant: str, run: dict, host: str, report: str | None) -> int:
        row = _columns(run, RESULT_RUN_COLUMNS)
        row.update(tenant=tenant, host=host, source="result", report=report)
        with self.transaction():
            rebuilt = self._rebuilt_backup(tenant, row)
            if rebuilt is not None:
                # Listed from the repository before the result came: the result completes
                # that row (one snapshot, one backup), under the id the listing gave it.
                self.db["runs"].update(rebuilt, row)
                run_id = rebuilt
            else:
                run_id = self.db["runs"].insert(row).last_pk
            self._add_result_children(run_id, tenant, run)
            return run_id

    def _add_result_children(self, run_id: int, tenant: str, run: dict) -> None:
        """The run's copy and dump rows, under this catalog's run id."""
        for table, columns in RESULT_CHILD_COLUMNS.items():
            children = run.get(table)
            for child in children if isinstance(children, list) else ():
                if not isinstance(child, dict) or not all(
                        isinstance(child.get(key), str) for key in RESULT_CHILD_REQUIRED[table]):
                    continue
                values = _columns(child, columns)
                time_key = RESULT_CHILD_TIME[table]
                values[time_key] = str(values.get(time_key) or run.get("ended_at") or utc_now())
                self.db[table].insert({**values, "run_id": run_id, "tenant": tenant})

    def _rebuilt_backup(self, tenant: str, row: dict) -> int | None:
        """The id of the backup row `catalog sync` rebuilt from the repository for the same
        snapshot as this result's run (short and full ids share their first 8 hex)."""
        snapshot = row.get("snapshot_id")
        if row.get("kind") != "backup" or not isinstance(snapshot, str) or len(snapshot) < 8:
            return None
        found = self.db.execute(
            "select id from runs where tenant = ? and kind = 'backup' and source = "
            "'repository' and substr(snapshot_id, 1, 8) = ? order by id limit 1",
            [tenant, snapshot[:8]]).fetchone()
        return found[0] if found else None

    def note_object(self, name: str, status: str, *, result_id: str | None = None,
                    tenant: str | None = None, kind: str | None = None,
                    reason: str | None = None, signed_by: str | None = None,
                    run_ids: list[int] | None = None) -> None:
        with self.transaction():
            self.db["inbox"].insert({
                "name": name, "result_id": result_id, "tenant": tenant, "kind": kind,
                "status": status, "reason": reason, "signed_by": signed_by,
                "run_ids": json.dumps(run_ids) if run_ids is not None else None,
                "seen_at": utc_now()})


def _columns(row: dict, columns: tuple[str, ...]) -> dict:
    """The known columns of a row from a result; lists and objects as JSON text (a pod's
    catalog may keep them as text or not)."""
    picked = {key: row.get(key) for key in columns if key in row}
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else value
            for key, value in picked.items()}
