"""Back up one tenant: preflight, restic backup, retention, record.

A nightly backup costs two restic processes: `backup`, then `forget --prune` (which prunes
only when something was forgotten). Whether the repository exists is learnt from the
destination's preflight, not from another restic call: each one costs ~0.8 s of key
derivation.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime

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
from bkp.errors import BkpError, OperationError, SafetyError
from bkp.policy import Policy
from bkp.restic import DRY_RUN_SINCE, EXIT_PARTIAL, Restic, kept_by_rules, version
from bkp.results import BackupRun


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
        summary, _ = restic.backup(policy, socket.gethostname(), dry_run=True)
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
                             restic_version=_restic_version())
    restic: Restic | None = None
    fields: dict = {}
    started = datetime.now().astimezone()  # restic stamps the snapshot with its start
    try:
        check_sources(policy)
        destination = destination_for(policy, ctx.settings.home)
        preflight = destination.nightly_preflight()
        if not preflight.reachable:
            raise OperationError(f"destination not reachable: {preflight.detail}")
        if preflight.initialised is False:
            raise OperationError(
                f"no repository at {destination.repository().label}: run "
                f"`bkp init {policy.tenant}` once for a new tenant (for an existing tenant, "
                f"check that the destination is the right one)")
        restic = Restic(destination.repository(), policy.tenant,
                        timeout=policy.timeout_minutes * 60)
        if catalog.previous_run_interrupted(policy.tenant, run_id):
            restic.unlock_stale()  # the dead run's restic may have left its lock behind
        try:
            summary, code = restic.backup(policy, socket.gethostname(),
                                          progress=_progress(ctx, policy.tenant))
        except OperationError as exc:
            raise _diagnose(destination, preflight, exc) from None
        destination.confirm_unchanged()
        fields = {"snapshot_id": summary.snapshot_id, "files": summary.files,
                  "bytes_added": summary.bytes_added,
                  "bytes_processed": summary.bytes_processed}
        if code == EXIT_PARTIAL:
            shown = "; ".join(summary.errors[:3]) or "see restic's output"
            raise OperationError(
                f"snapshot {summary.snapshot_id} saved but {len(summary.errors) or 'some'}"
                f" file(s) could not be read: {shown}")
        if not policy.retention.legal_hold:
            fields.update(_apply_retention(ctx, policy, restic, summary.snapshot_id, started))
        fields["repository_bytes"] = _usage(destination)
    except BkpError as exc:
        return _close(ctx, policy, run_id, exc, fields, restic)
    except KeyboardInterrupt:
        interrupt()
        _close(ctx, policy, run_id, OperationError("stopped by a signal"), fields, restic)
        raise
    except Exception as exc:  # an unforeseen error still closes the record honestly
        error = OperationError(f"unexpected {exc.__class__.__name__}: {exc}")
        _close(ctx, policy, run_id, error, fields, restic)
        raise
    return _close(ctx, policy, run_id, None, fields, restic)


def _close(ctx: Context, policy: Policy, run_id: int, error: BkpError | None, fields: dict,
           restic: Restic | None) -> Outcome:
    status = "ok" if error is None else "interrupted" if stopping.is_set() else "failed"
    with ctx.catalog.transaction():  # the record and its event, or neither
        row = ctx.catalog.close_run(run_id, status, error=str(error) if error else None,
                                    restic_calls=restic.calls if restic else 0, **fields)
        ctx.audit("backup", status, policy.tenant, run_id=run_id,
                  snapshot_id=row["snapshot_id"], files=row["files"],
                  bytes_added=row["bytes_added"], error=row["error"])
    data = BackupRun(tenant=policy.tenant, status="ok" if status == "ok" else "failed",
                     result=status, snapshot_id=row["snapshot_id"], files=row["files"],
                     bytes_added=row["bytes_added"], duration_s=row["duration_s"],
                     error=row["error"], run_id=run_id, snapshots_kept=row["snapshots_kept"],
                     restic_calls=row["restic_calls"])
    return Outcome(policy.tenant, error.exit_code if error else 0, data)


def _apply_retention(ctx: Context, policy: Policy, restic: Restic, snapshot_id: str,
                     started: datetime) -> dict:
    """forget + prune, unless the snapshots the last night left plus tonight's would all be
    kept by the rules: then restic would forget nothing, and one repository opening (a key
    derivation, the index) is saved. Where bkp does not know them, forget runs and tells."""
    known = ctx.catalog.kept_snapshots(policy.tenant)
    if known is not None and snapshot_id:
        candidate = [*known, {"id": snapshot_id, "time": started.isoformat()}]
        rules = policy.retention.keep_rules()
        if kept_by_rules(candidate, rules) == {s["id"] for s in candidate}:
            return {"snapshots_kept": len(candidate), "kept_snapshots": json.dumps(candidate)}
    result = restic.forget(policy.retention)
    return {"snapshots_kept": result.kept,
            "kept_snapshots": json.dumps(list(result.kept_snapshots))}


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


def _usage(destination) -> int | None:
    """The repository's size is a nicety: failing to read it never fails a good backup."""
    try:
        return destination.usage_bytes()
    except Exception:
        return None


def _restic_version() -> str | None:
    try:
        return str(version())
    except BkpError:
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
