"""Back up one tenant: preflight, restic backup, retention, record.

A nightly backup costs two restic processes: `backup`, then `forget --prune` (which prunes
only when something was forgotten). Whether the repository exists is learnt from the
destination's preflight, not from another restic call: each one costs ~0.8 s of key
derivation.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import TYPE_CHECKING

from bkp.catalog import as_json
from bkp.context import (
    Context,
    Outcome,
    human_bytes,
    interrupt,
    locked,
    open_tenant_run,
    stopping,
)
from bkp.destinations import destination_for
from bkp.errors import BkpError, OperationError, SafetyError, VerificationError
from bkp.policy import Policy
from bkp.restic import (
    DRY_RUN_SINCE,
    ENCRYPTION,
    EXIT_PARTIAL,
    KIND_DATABASE,
    KIND_FILES,
    KIND_INVENTORY,
    Restic,
    version,
    version_on_record,
)
from bkp.results import BackupRun
from bkp.settings import snapshot_host
from bkp.tenants.copies import CopyResult, copy_to_all, failure_of
from bkp.tenants.retention import apply_retention, pending_retention

if TYPE_CHECKING:
    from bkp.databases.dump import DatabaseDump


def check_sources(policy: Policy) -> None:
    """A missing source is often an unmounted filesystem: never back up the empty mount point
    as if it were the tenant's data."""
    missing = [s for s in policy.sources if not os.path.exists(s)]
    if missing:
        raise OperationError(f"source {', '.join(missing)} does not exist; is the tenant's "
                             f"filesystem mounted?")


def backup_tenant(ctx: Context, policy: Policy, *, trigger: str = "manual",
                  slot: str | None = None) -> Outcome:
    return locked(ctx, policy, "backup", lambda: _backup(ctx, policy, trigger, slot), BackupRun)


def preview_backup(ctx: Context, policy: Policy) -> Outcome:
    """`bkp backup --dry-run`: every check, and restic's own dry run where the installed
    restic has one (files read and compared, nothing written); no record is made."""
    try:
        check_sources(policy)
        destination = destination_for(policy, ctx.settings.home)
        preflight = destination.preflight()
        if preflight.initialised is False:
            raise OperationError(f"no repository at {destination.repository().label}: run "
                                 f"`bkp init {policy.tenant}` first")
        restic = Restic(destination.repository(), policy.tenant,
                        timeout=policy.timeout_minutes * 60)
        if not version().at_least(*DRY_RUN_SINCE):
            return Outcome(policy.tenant, 0, BackupRun(
                policy.tenant, "ok", result="dry-run", restic_calls=restic.calls,
                error=f"restic {version()} has no backup --dry-run: only the checks ran"))
        summary, _ = restic.backup(policy, snapshot_host(), dry_run=True)
    except BkpError as exc:
        return Outcome(policy.tenant, exc.exit_code, BackupRun.failure(policy.tenant, str(exc)))
    return Outcome(policy.tenant, 0, BackupRun(
        policy.tenant, "ok", result="dry-run", files=summary.files,
        bytes_added=summary.bytes_added, duration_s=None, restic_calls=restic.calls,
        extra={"dry_run": True, "files_new": summary.files_new,
               "files_changed": summary.files_changed}))


def _backup(ctx: Context, policy: Policy, trigger: str, slot: str | None) -> Outcome:
    catalog = ctx.catalog
    run_id = open_tenant_run(ctx, policy, "backup", trigger=trigger, slot=slot,
                             restic_version=version_on_record())
    restic: Restic | None = None
    fields: dict = {}
    dumps: list[DatabaseDump] = []
    copies: list[CopyResult] = []
    try:
        if not policy.databases:
            check_sources(policy)  # nothing else to save: refuse before connecting
        destination = destination_for(policy, ctx.settings.home)
        preflight = destination.nightly_preflight()
        if not preflight.reachable:
            raise OperationError(f"destination not reachable: {preflight.detail}")
        fields["observations"] = _observations(policy, destination)
        if preflight.initialised is False:
            raise OperationError(
                f"no repository at {destination.repository().label}: run "
                f"`bkp init {policy.tenant}` once for a new tenant (for an existing tenant, "
                f"check that the destination is the right one)")
        restic = Restic(destination.repository(), policy.tenant,
                        timeout=policy.timeout_minutes * 60)
        if catalog.previous_run_interrupted(policy.tenant, run_id):
            restic.unlock_stale()  # the dead run's restic may have left its lock behind
        made: list[dict] = []
        files_error = _back_up_files(ctx, policy, destination, preflight, restic, fields, made)
        dumps = _dump_databases(ctx, policy, restic, made)
        destination.confirm_unchanged()
        error = files_error or next((d.failure for d in dumps if d.failure), None)
        if error is not None:
            raise error
        # An append-only server refuses the deletions forget would make: retention there is
        # applied by `bkp maintain`, with the credential that may delete.
        if policy.destination.append_only and not policy.retention.legal_hold:
            fields.update(pending_retention(ctx, policy, restic, made, destination))
        elif not policy.retention.legal_hold:
            fields.update(apply_retention(ctx, policy, restic, made, destination))
        fields["repository_bytes"] = repository_size(destination)
        # The snapshot is safe at the destination; a copy that fails now fails the run
        # (exit 1, naming the copy) but takes nothing away from the destination.
        copies += copy_to_all(ctx, policy, restic, fields.get("snapshot_id"),
                              fields.get("kept_snapshots"))
        error = failure_of(copies)
        if error is not None:
            raise error
    except BkpError as exc:
        return _close(ctx, policy, run_id, exc, fields, restic, dumps, copies)
    except KeyboardInterrupt:
        interrupt()
        _close(ctx, policy, run_id, OperationError("stopped by a signal"), fields, restic, dumps,
               copies)
        raise
    except Exception as exc:  # an unforeseen error still closes the record honestly
        error = OperationError(f"unexpected {exc.__class__.__name__}: {exc}")
        _close(ctx, policy, run_id, error, fields, restic, dumps, copies)
        raise
    return _close(ctx, policy, run_id, None, fields, restic, dumps, copies)


def _back_up_files(ctx: Context, policy: Policy, destination, preflight, restic: Restic,
                   fields: dict, made: list[dict]) -> BkpError | None:
    """The tenant's files. With databases, a failure here is returned, not raised: the
    dumps are still made (a missing mount must not also cost the night's dumps)."""
    started = datetime.now().astimezone()  # restic stamps the snapshot with its start
    try:
        check_sources(policy)
        try:
            summary, code = restic.backup(policy, snapshot_host(),
                                          progress=_progress(ctx, policy.tenant))
        except OperationError as exc:
            raise _diagnose(destination, preflight, exc) from None
        fields.update({"snapshot_id": summary.snapshot_id, "files": summary.files,
                       "bytes_added": summary.bytes_added,
                       "bytes_processed": summary.bytes_processed})
        made.append({"id": summary.snapshot_id, "time": started.isoformat(),
                     "kind": KIND_FILES})
        if code == EXIT_PARTIAL:
            shown = "; ".join(summary.errors[:3]) or "see restic's output"
            raise OperationError(
                f"snapshot {summary.snapshot_id} saved but {len(summary.errors) or 'some'}"
                f" file(s) could not be read: {shown}")
    except BkpError as exc:
        if not policy.databases or isinstance(exc, (SafetyError, VerificationError)):
            raise
        return exc
    return None


def _dump_databases(ctx: Context, policy: Policy, restic: Restic,
                    made: list[dict]) -> list[DatabaseDump]:
    if not policy.databases:
        return []
    # Imported here: most tenants have no database, and every pod pays its imports.
    from bkp.databases.dump import dump_database

    host = snapshot_host()
    dumps = []
    for database in policy.databases:
        if ctx.progress:
            ctx.progress(f"{policy.tenant}: dumping {database.label}")
        started = datetime.now().astimezone().isoformat()
        dump = dump_database(restic, policy, database, host)
        dumps.append(dump)
        if dump.status == "ok":
            made.append({"id": dump.snapshot_id, "time": started, "kind": KIND_DATABASE,
                         "database": database.name, "database_type": database.type})
            made.append({"id": dump.inventory_snapshot_id, "time": started,
                         "kind": KIND_INVENTORY, "database": database.name,
                         "database_type": database.type, "dump": dump.snapshot_id})
        if stopping.is_set():
            raise KeyboardInterrupt
    return dumps


def _close(ctx: Context, policy: Policy, run_id: int, error: BkpError | None, fields: dict,
           restic: Restic | None, dumps: list[DatabaseDump] = (),
           copies: list[CopyResult] = ()) -> Outcome:
    status = "ok" if error is None else "interrupted" if stopping.is_set() else "failed"
    calls = (restic.calls if restic else 0) + sum(c.restic_calls for c in copies)
    copies_json = _copies_json(policy, copies)
    with ctx.catalog.transaction():  # the record and its event, or neither
        for copy in copies:
            ctx.catalog.add_copy_result(run_id, policy.tenant, copy.to_record())
        for dump in dumps:
            ctx.catalog.add_database_dump(run_id, policy.tenant, {
                "name": dump.name, "type": dump.type, "status": dump.status,
                "snapshot_id": dump.snapshot_id,
                "inventory_snapshot_id": dump.inventory_snapshot_id, "bytes": dump.bytes,
                "tables": json.dumps(dump.tables, sort_keys=True), "error": dump.error,
                "duration_s": dump.duration_s})
        row = ctx.catalog.close_run(run_id, status, error=str(error) if error else None,
                                    restic_calls=calls, **fields,
                                    **({"copies": json.dumps(copies_json)}
                                       if policy.copies else {}))
        ctx.audit("backup", status, policy.tenant, run_id=run_id,
                  snapshot_id=row["snapshot_id"], files=row["files"],
                  bytes_added=row["bytes_added"], error=row["error"],
                  **({"databases": [d.to_json() for d in dumps]} if dumps else {}),
                  **({"copies": copies_json} if policy.copies else {}))
    data = BackupRun(tenant=policy.tenant, status="ok" if status == "ok" else "failed",
                     result=status, snapshot_id=row["snapshot_id"], files=row["files"],
                     bytes_added=row["bytes_added"], duration_s=row["duration_s"],
                     error=row["error"], run_id=run_id, snapshots_kept=row["snapshots_kept"],
                     restic_calls=row["restic_calls"],
                     extra={**({"databases": [d.to_json() for d in dumps]}
                               if policy.databases else {}),
                            **({"copies": copies_json} if policy.copies else {})})
    return Outcome(policy.tenant, error.exit_code if error else 0, data)


def _copies_json(policy: Policy, copies: list[CopyResult]) -> list[dict]:
    """Every copy of the policy in the run's JSON: one the run never reached (the backup
    failed first) is `failed`, with no snapshot."""
    reached = {c.id: c for c in copies}
    entries = []
    for copy in policy.copies:
        found = reached.get(copy.id)
        entries.append(found.to_json() if found else {
            "id": copy.id, "destination": copy.destination.type, "status": "failed",
            "snapshot_id": None, "error": "not copied: the backup did not complete",
            "snapshots_copied": 0, "snapshots_kept": None})
    return entries


def _diagnose(destination, preflight, error: BkpError) -> BkpError:
    """When the nightly check was the light one (sftp: OpenSSH checks the pinned key), a
    failed connection gets the full preflight, which names the cause better than OpenSSH's
    words in restic's output: a changed host key (exit 4), a refused or passphrase-protected
    identity, an unreachable server."""
    if preflight.initialised is not None or isinstance(error, SafetyError):
        return error
    try:
        destination.preflight()
    except BkpError as found:
        return found
    return error


def _observations(policy: Policy, destination) -> str:
    """What this run saw of where the data goes, for the evidence report (JSON)."""
    return as_json({**destination.observed(), "country": policy.destination.country,
                    "encryption_at_rest": ENCRYPTION})


def repository_size(destination) -> int | None:
    """The repository's size is a nicety: failing to read it never fails a good backup."""
    try:
        return destination.usage_bytes()
    except Exception:
        return None



def _progress(ctx: Context, tenant: str):
    if ctx.progress is None:
        return None

    def report(status: dict) -> None:
        done = status.get("bytes_done", 0)
        total = status.get("total_bytes", 0)
        pct = status.get("percent_done", 0.0) * 100
        eta = status.get("seconds_remaining")
        eta_text = f", ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta else ""
        ctx.progress(f"{tenant}: {pct:5.1f}% {human_bytes(done)}/{human_bytes(total)}{eta_text}")

    return report
