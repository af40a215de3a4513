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
    "maintenance_pending", "observations", "restore_s",
)


class InboxTable:
    """Mixed into Catalog: `self.db` and `self.transaction()` come from it."""

    def seen_objects(self) -> dict[str, dict]:
        return {row["name"]: row for row in self.db["inbox"].rows}

    def result_seen(self, result_id: str) -> bool:
        return bool(list(self.db["inbox"].rows_where("result_id = ?", [result_id], limit=1)))

    def add_result_run(self, tenant: str, run: dict, host: str, report: str | None) -> int:
        row = {key: run.get(key) for key in RESULT_RUN_COLUMNS if key in run}
        for key, value in row.items():  # a pod's catalog may keep lists as JSON text or not
            if isinstance(value, (list, dict)):
                row[key] = json.dumps(value)
        row.update(tenant=tenant, host=host, source="result", report=report)
        with self.transaction():
            return self.db["runs"].insert(row).last_pk

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
