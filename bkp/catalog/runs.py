"""Runs (backups and drills): opened as `running`, closed once as ok/failed/passed/
interrupted. The only SQL about runs."""

from __future__ import annotations

import os

from bkp.catalog.base import (
    HOST,
    parse_time,
    process_alive,
    process_start_ticks,
    select,
    utc_now,
    where,
)


class RunsTable:
    """Mixed into Catalog: `self.db` and `self.transaction()` come from it."""

    def open_run(self, tenant: str, kind: str, *, operator: str, trigger: str = "manual",
                 slot: str | None = None, restic_version: str | None = None,
                 **facts) -> int:
        """`facts`: policy_fingerprint, clock_synchronized."""
        pid = os.getpid()
        with self.transaction():
            return self.db["runs"].insert({
                "tenant": tenant, "kind": kind, "trigger": trigger, "slot": slot,
                "status": "running", "started_at": utc_now(), "host": HOST, "pid": pid,
                "pid_start": process_start_ticks(pid), "operator": operator,
                "restic_version": restic_version, **facts,
            }).last_pk

    def close_run(self, run_id: int, status: str, **fields) -> dict:
        with self.transaction():
            row = self.db["runs"].get(run_id)
            ended = utc_now()
            duration = (parse_time(ended) - parse_time(row["started_at"])).total_seconds()
            self.db["runs"].update(run_id, {"status": status, "ended_at": ended,
                                            "duration_s": round(duration, 3), **fields})
            return self.db["runs"].get(run_id)

    def update_run(self, run_id: int, **fields) -> None:
        with self.transaction():
            self.db["runs"].update(run_id, fields)

    def get_run(self, run_id: int) -> dict | None:
        rows = list(self.db["runs"].rows_where("id = ?", [run_id]))
        return rows[0] if rows else None

    def dead_runs(self, every_host: bool = False) -> list[dict]:
        """Running rows of this host whose process is gone (killed, crashed, power loss);
        with `every_host`, every running row (the host that ran them was lost)."""
        if every_host:
            return list(self.db["runs"].rows_where("status = 'running'"))
        rows = self.db["runs"].rows_where("status = 'running' and host = ?", [HOST])
        return [row for row in rows if not process_alive(row["pid"], row["pid_start"])]

    def close_dead_run(self, row: dict, error: str) -> dict | None:
        """Close a dead run as `interrupted`; None when another process closed it first."""
        with self.transaction():
            current = self.db["runs"].get(row["id"])
            if current["status"] != "running":
                return None
            self.db["runs"].update(row["id"], {"status": "interrupted", "ended_at": utc_now(),
                                               "error": error})
            return self.db["runs"].get(row["id"])

    def previous_run_interrupted(self, tenant: str, before_id: int) -> bool:
        """Whether this tenant's last run before `before_id` died (it may have left a lock)."""
        row = self.db.execute(
            "select status from runs where tenant = ? and id < ? order by id desc limit 1",
            [tenant, before_id]).fetchone()
        return bool(row) and row[0] == "interrupted"

    def last_backup_size(self, tenant: str) -> int | None:
        """Bytes the tenant's last good backup read: the size a restore of it will write."""
        row = self.db.execute(
            "select bytes_processed from runs where tenant = ? and kind = 'backup' and "
            "status = 'ok' and bytes_processed is not null order by id desc limit 1",
            [tenant]).fetchone()
        return row[0] if row else None

    def previous_drill_subset(self, tenant: str) -> str | None:
        row = self.db.execute(
            "select subset from runs where tenant = ? and kind = 'drill' and subset is not "
            "null and status in ('passed', 'failed') order by id desc limit 1",
            [tenant]).fetchone()
        return row[0] if row else None

    def drill_number(self, tenant: str, run_id: int) -> int:
        """A drill's number among the tenant's own drills (its first drill is number 1)."""
        row = self.db.execute("select count(*) from runs where tenant = ? and kind = 'drill' "
                              "and id <= ?", [tenant, run_id]).fetchone()
        return row[0]

    def runs(self, tenant: str | None = None, kind: str | None = None,
             limit: int = 100) -> list[dict]:
        clause, args = where(tenant=tenant, kind=kind)
        return list(self.db["runs"].rows_where(clause, args, order_by="id desc", limit=limit))

    def last_run(self, tenant: str, kind: str, status: str | None = None) -> dict | None:
        """The most recent run by time: rows rebuilt by `catalog sync` may be added after
        newer ones, so the id alone does not say which is last."""
        clause, args = where(tenant=tenant, kind=kind, status=status)
        rows = select(self.db, "runs", clause, args,
                      order_by="coalesce(ended_at, started_at) desc, id desc", limit=1)
        return rows[0] if rows else None

    def add_database_dump(self, run_id: int, tenant: str, dump: dict) -> None:
        """`dump`: name, type, status, snapshot_id, inventory_snapshot_id, bytes, tables
        (JSON text), error, duration_s."""
        self.db["database_dumps"].insert({"run_id": run_id, "tenant": tenant,
                                          "dumped_at": utc_now(), **dump})

    def database_dumps_of_run(self, run_id: int) -> list[dict]:
        return list(self.db["database_dumps"].rows_where("run_id = ?", [run_id], order_by="id"))

    def last_good_dumps(self, tenant: str) -> dict[tuple[str, str], dict]:
        """(type, name) -> the latest dump that reached the repository."""
        rows = self.db["database_dumps"].rows_where(
            "tenant = ? and status = 'ok'", [tenant], order_by="id")
        return {(row["type"], row["name"]): row for row in rows}

    def recorded_dump(self, tenant: str, snapshot_id: str) -> dict | None:
        """The dump row behind a snapshot (its inventory, when the repository lost it)."""
        rows = list(self.db["database_dumps"].rows_where(
            "tenant = ? and snapshot_id = ?", [tenant, snapshot_id], limit=1))
        return rows[0] if rows else None

    def kept_snapshots(self, tenant: str) -> list[dict] | None:
        """The snapshots the tenant's last backup or maintenance run left in the
        repository, when it recorded them (None: not known, e.g. a catalog rebuilt by
        sync). Only the last ended run counts, whatever its status: a run that failed after
        its snapshot (a copy failed) recorded what retention left, and one that failed or
        died before recording may have added a snapshot no record names, so the
        repository must be listed."""
        import json

        rows = list(self.db["runs"].rows_where(
            "tenant = ? and kind in ('backup', 'maintain') and status != 'running'",
            [tenant], order_by="coalesce(ended_at, started_at) desc, id desc", limit=1))
        if not rows or not rows[0].get("kept_snapshots"):
            return None
        return json.loads(rows[0]["kept_snapshots"])

    def last_listing(self, tenant: str) -> dict | None:
        """The last good backup or maintenance run: the latest record of which snapshots
        the repository holds (a maintenance run forgets some on an append-only one)."""
        rows = list(self.db["runs"].rows_where(
            "tenant = ? and kind in ('backup', 'maintain') and status = 'ok'", [tenant],
            order_by="coalesce(ended_at, started_at) desc, id desc", limit=1))
        return rows[0] if rows else None

    def known_snapshots(self, tenant: str) -> set[str]:
        """Short ids (8 hex) of the snapshots the catalog knows for a tenant (restic 0.14
        reports short ids after a backup, newer versions full ones)."""
        rows = self.db.execute("select snapshot_id from runs where tenant = ? and kind = "
                               "'backup' and snapshot_id is not null", [tenant]).fetchall()
        return {row[0][:8] for row in rows}

    def add_synced_backups(self, tenant: str, snapshots: list[dict], operator: str) -> int:
        """Backup rows rebuilt from a repository's snapshots; those already known are
        skipped, so syncing twice adds nothing."""
        added = 0
        with self.transaction():
            known = self.known_snapshots(tenant)
            for snap in snapshots:
                if snap["id"][:8] in known:
                    continue
                self.db["runs"].insert({
                    "tenant": tenant, "kind": "backup", "trigger": "sync", "status": "ok",
                    "started_at": snap["time"], "ended_at": snap["time"], "duration_s": None,
                    "snapshot_id": snap["id"], "host": snap.get("host"), "operator": operator,
                    "source": "repository", "snapshots_kept": len(snapshots)})
                known.add(snap["id"][:8])
                added += 1
        return added

    def tenant_runs(self, tenant: str, kinds: tuple[str, ...] = ("backup", "drill")
                    ) -> list[dict]:
        """Every run of a tenant of these kinds, oldest first by id (the evidence report
        orders them by time itself: synced rows carry the repository's times)."""
        marks = ", ".join("?" for _ in kinds)
        return list(self.db["runs"].rows_where(f"tenant = ? and kind in ({marks})",
                                               [tenant, *kinds], order_by="id"))

    def runs_of_process(self, pid: int) -> list[dict]:
        return list(self.db["runs"].rows_where(
            "host = ? and pid = ? and pid_start = ?", [HOST, pid, process_start_ticks(pid)],
            order_by="id"))

    def closed_runs(self) -> list[dict]:
        """Every run that has ended: each must have its event in the audit trail."""
        return list(self.db["runs"].rows_where("status != 'running'", order_by="id"))
