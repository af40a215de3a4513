"""bkp's own records, off-site: `bkp evidence backup` and `bkp evidence recover`.

What is copied: a consistent copy of the catalog (SQLite's backup API, never a raw copy of a
live database), the drill reports, the issued certificates and the evidence files of
destructions, and the public halves of the signing keys. Never a private key: it is
escrowed by the operator (runbooks/disaster-recovery.md).

Each copy is a restic snapshot of an outbox folder with a manifest that lists every file
with its SHA-256 and the audit head the copy ends with. Recovery restores a snapshot,
checks every file against the manifest, and installs the records into an empty BKP_HOME:
the audit chain then continues where the copy ended, so an anchor kept before the disaster
still verifies, and old certificates still verify against the recovered key ring.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from bkp import __version__
from bkp import catalog as cat
from bkp.context import Context
from bkp.destinations import destination_for
from bkp.errors import BkpError, OperationError, SafetyError, VerificationError
from bkp.evidence import keyring
from bkp.evidence.audit import verify_chain, verify_trail
from bkp.files import file_sha256
from bkp.installation import EVIDENCE_NAME, Installation, evidence_policy
from bkp.restic import Restic, parse_restored_snapshot
from bkp.results import EvidenceCopy

MANIFEST = "manifest.json"
FORMAT = "bkp-evidence/1"
# Folders of BKP_HOME that hold records (besides the catalog).
RECORD_FOLDERS = ("reports", "certificates", "evidence")


def outbox(home: Path) -> Path:
    # Always the same path: restic finds the previous snapshot of it as its parent.
    return home / "outbox" / "evidence"


def stage(ctx: Context, target: Path) -> dict:
    """Fill `target` with a consistent copy of the records; returns the manifest."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True, mode=0o700)
    home = ctx.settings.home
    _copy_catalog(ctx.catalog.path, target / "catalog.db")
    for folder in RECORD_FOLDERS:
        if (home / folder).is_dir():
            shutil.copytree(home / folder, target / folder, symlinks=False)
    ring = keyring.export_ring(home)  # public halves only, also of a key from before the ring
    if ring is not None:
        (target / "keys").mkdir(mode=0o700)
        (target / keyring.RING_FILE).write_text(ring)
    copied = cat.Catalog.read_only(target / "catalog.db")
    try:
        chain = verify_chain(copied.audit_events())
    finally:
        copied.close()
    files = {str(p.relative_to(target)): file_sha256(p) for p in sorted(target.rglob("*"))
             if p.is_file()}
    manifest = {"format": FORMAT, "created": cat.utc_now(), "host": socket.gethostname(),
                "bkp_version": __version__, "audit": {"head": chain.head,
                                                      "events": chain.events},
                "files": files}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _copy_catalog(source: Path, target: Path) -> None:
    """SQLite's backup API: a consistent copy even while another bkp process writes."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    except sqlite3.Error as exc:
        raise OperationError(f"cannot copy the catalog {source}: {exc}") from None
    finally:
        dst.close()
        src.close()
    target.chmod(0o600)


def _restic(ctx: Context, installation: Installation) -> tuple[Restic, object]:
    policy = evidence_policy(installation)
    destination = destination_for(policy, ctx.settings.home)
    return (Restic(destination.repository(), EVIDENCE_NAME, timeout=6 * 3600, latest_kind=None),
            destination)


def backup_evidence(ctx: Context, installation: Installation) -> dict:
    """Copy the records to the evidence repository; recorded as a run of kind `evidence`."""
    folder = outbox(ctx.settings.home)
    # Staged before the run is opened: the copy holds every record up to now and no
    # half-open run of its own.
    manifest = stage(ctx, folder)
    run_id = ctx.catalog.open_run(EVIDENCE_NAME, "evidence", operator=ctx.settings.operator)
    snapshot_id, error = None, None
    try:
        snapshot_id = _push(ctx, installation, folder)
    except BkpError as exc:
        error = exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    status = "ok" if error is None else "failed"
    with ctx.catalog.transaction():
        ctx.catalog.close_run(run_id, status, snapshot_id=snapshot_id,
                              error=str(error) if error else None)
        ctx.audit("evidence", status, None, run_id=run_id, snapshot_id=snapshot_id,
                  audit_head=manifest["audit"]["head"], events=manifest["audit"]["events"],
                  files=len(manifest["files"]), error=str(error) if error else None)
    if error is not None:
        raise error
    return EvidenceCopy("ok", snapshot_id=snapshot_id, run_id=run_id,
                        audit_head=manifest["audit"]["head"],
                        events=manifest["audit"]["events"], files=len(manifest["files"]))


def _push(ctx: Context, installation: Installation, folder: Path) -> str:
    restic, destination = _restic(ctx, installation)
    preflight = destination.preflight()
    if not preflight.reachable:
        raise OperationError(f"evidence destination not reachable: {preflight.detail}")
    if not preflight.initialised:
        destination.prepare()
        restic.init()
    policy = dataclasses.replace(evidence_policy(installation), sources=(str(folder),))
    summary, code = restic.backup(policy, socket.gethostname())
    if code or not summary.snapshot_id:
        raise OperationError(f"the evidence copy is incomplete: {'; '.join(summary.errors)}")
    return summary.snapshot_id


# ---------------------------------------------------------------- recovery

def recover(settings, installation: Installation, *, snapshot: str | None,
            force: bool) -> dict:
    """Recover the records, then open them for work: what was running on the lost host is
    closed as interrupted, and the recovery itself is the next event of the chain."""
    from bkp.context import recover_dead_work

    found = recover_evidence(settings, installation, snapshot=snapshot, force=force)
    manifest = found["manifest"]
    ctx = Context(settings, cat.open_for_work(settings.home))
    try:
        last = ctx.catalog.last_audit_event()
        reason = (f"the host {manifest['host']} that ran it was lost; BKP_HOME was recovered "
                  f"from the evidence copy of {manifest['created']}")
        notes = recover_dead_work(ctx, lost_host=reason)
        lost = (f"events recorded after {manifest['created']} on {manifest['host']} were not "
                f"in the copy and are lost; a later anchor will not verify")
        event = ctx.audit("evidence.recover", "recovered", None,
                          snapshot_id=found["snapshot_id"], copied_at=manifest["created"],
                          copied_on=manifest["host"], last_seq=last["seq"] if last else None,
                          last_hash=last["hash"] if last else None,
                          events=manifest["audit"]["events"], set_aside=found["set_aside"])
    finally:
        ctx.catalog.close()
    return {"status": "recovered", "snapshot_id": found["snapshot_id"],
            "events": manifest["audit"]["events"],
            "last_event": {"seq": last["seq"] if last else None,
                           "hash": last["hash"] if last else None},
            "copied_at": manifest["created"], "copied_on": manifest["host"],
            "recovery_event": event["seq"], "lost": lost, "notes": notes,
            "set_aside": found["set_aside"]}


def records_present(home: Path) -> list[str]:
    """What in BKP_HOME would be overwritten by a recovery."""
    found = []
    path = home / cat.CATALOG_FILE
    if path.exists():
        found.append(str(path))
    for folder in RECORD_FOLDERS:
        if (home / folder).is_dir() and any((home / folder).iterdir()):
            found.append(f"{home / folder}/")
    return found


def recover_evidence(ctx_settings, installation: Installation, *, snapshot: str | None,
                     force: bool) -> dict:
    """Bring the records of an evidence snapshot back into BKP_HOME; returns what came back.

    Refused (SafetyError) where BKP_HOME already holds records, unless `force`, which keeps
    what was there aside (renamed, never deleted)."""
    home = ctx_settings.home
    present = records_present(home)
    if present and not force:
        raise SafetyError(f"BKP_HOME {home} already holds records ({', '.join(present)}); "
                          f"nothing was changed. Recover into an empty BKP_HOME, or add "
                          f"--force to set the present records aside")
    cat.check_home(home)
    bare = Context(ctx_settings, None)
    restic, destination = _restic(bare, installation)
    destination.preflight()
    scratch = home / "scratch" / "evidence-recover"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, mode=0o700)
    try:
        done = restic.restore(snapshot, scratch)
        if not done.ok:
            raise restic.failure(done, "restore").exception()
        restored_id = parse_restored_snapshot(done.stdout) or snapshot
        restored = _find_manifest(scratch)
        manifest = _checked_manifest(restored)
        _check_trail(restored, manifest)
        if snapshot is None:
            _check_not_replayed(restic, restored_id, manifest)
        aside = _set_aside(home, present) if present else []
        _install(restored, home)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"manifest": manifest, "set_aside": aside, "snapshot_id": restored_id}


def _find_manifest(scratch: Path) -> Path:
    found = list(scratch.rglob(MANIFEST))
    if len(found) != 1:
        raise VerificationError(f"the evidence snapshot holds {len(found)} manifests, not one:"
                                f" it is not a bkp evidence copy")
    return found[0].parent


def _checked_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise VerificationError(f"the evidence manifest is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VerificationError("the evidence manifest is not a bkp evidence manifest")
    problems = []
    for name, digest in (manifest.get("files") or {}).items():
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            problems.append(f"{name}: a path outside the copy")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name}: content differs from the manifest")
    listed = set(manifest.get("files") or {})
    problems += [f"{p.relative_to(folder)}: not in the manifest" for p in folder.rglob("*")
                 if p.is_file() and p.name != MANIFEST and str(p.relative_to(folder))
                 not in listed]
    if problems:
        raise VerificationError("the evidence copy does not match its manifest: "
                                + "; ".join(problems[:5]))
    return manifest


def _check_trail(folder: Path, manifest: dict) -> None:
    """The copy's audit trail is whole (every hash, every record's event) and ends where
    its manifest says: a copy changed and re-hashed by someone with the evidence password
    is damage, not a recovery."""
    try:
        copied = cat.Catalog.read_only(folder / "catalog.db")
    except BkpError as exc:
        raise VerificationError(f"the evidence copy's catalog cannot be read: {exc}") from None
    try:
        report = verify_trail(copied)
    finally:
        copied.close()
    problems = list(report.problems)
    said = manifest.get("audit") or {}
    if (report.head, report.events) != (said.get("head"), said.get("events")):
        problems.append(f"its trail ends at event {report.events} ({report.head[:16]}…), its "
                        f"manifest says {said.get('events')} ({str(said.get('head'))[:16]}…)")
    if problems:
        raise VerificationError("the evidence copy's audit trail is damaged, nothing was "
                                "recovered: " + "; ".join(problems[:5]))


def _check_not_replayed(restic: Restic, restored_id: str | None, manifest: dict) -> None:
    """The newest snapshot must hold the newest copy: a copy made before an earlier snapshot
    was taken is an older copy put back (which needs no deletion, only the password)."""
    items = sorted(restic.snapshots(), key=lambda s: _moment(s["time"]))
    if not items:
        return
    chosen = next((s for s in items if restored_id and s["id"].startswith(restored_id)),
                  items[-1])
    made = _moment(manifest.get("created") or "")
    later = [s for s in items if _moment(s["time"]) < _moment(chosen["time"])
             and _moment(s["time"]) > made]
    if later:
        raise VerificationError(
            f"the newest evidence snapshot {chosen['short_id']} holds a copy made "
            f"{manifest.get('created')}, before snapshot {later[-1]['short_id']} was taken "
            f"({later[-1]['time']}): an older copy was put back as the newest; nothing was "
            f"recovered. Find the genuine newest copy and recover it with --snapshot ID")


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise VerificationError(f"the evidence copy carries an unreadable time {text!r}") \
            from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _set_aside(home: Path, present: list[str]) -> list[str]:
    stamp = cat.utc_now().replace(":", "").replace(".", "")
    aside = home / f"replaced-{stamp}"
    aside.mkdir(mode=0o700)
    moved = []
    for name in [cat.CATALOG_FILE, f"{cat.CATALOG_FILE}-wal", f"{cat.CATALOG_FILE}-shm",
                 *RECORD_FOLDERS]:
        if (home / name).exists():
            shutil.move(str(home / name), str(aside / name))
            moved.append(str(aside / name))
    return moved


def _install(folder: Path, home: Path) -> None:
    for name in RECORD_FOLDERS:
        if (folder / name).is_dir():
            shutil.copytree(folder / name, home / name, dirs_exist_ok=True)
    ring = folder / keyring.RING_FILE
    if ring.is_file():
        keyring.merge_ring(home, ring.read_text(), f"the evidence copy's {keyring.RING_FILE}")
    shutil.copy2(folder / "catalog.db", home / cat.CATALOG_FILE)
    os.chmod(home / cat.CATALOG_FILE, 0o600)
    cat.write_home_marker(home)
