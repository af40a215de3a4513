"""Record the physical destruction of a medium (shredder, destruction service) and certify it.

The verification hash of a destruction is fixed by CLI.md: one evidence file, its SHA-256;
several, the SHA-256 of their `sha256sum`-style listing ("HASH  NAME\\n" per file) sorted by
name, which an auditor reproduces with `sha256sum` on the files given in name order piped
into `sha256sum`. Copies of the evidence are kept under $BKP_HOME/evidence/RECORD_ID/ so
the hash can be checked later.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

from bkp import catalog as cat
from bkp.context import Context
from bkp.errors import SafetyError, UsageError
from bkp.evidence.certificates import DESTRUCTION_METHODS
from bkp.evidence.certify import ensure_can_certify, issue_certificate
from bkp.files import file_sha256
from bkp.media.register import check_serial


def evidence_listing(evidence: list[tuple[str, str]]) -> str:
    """sha256sum-style lines, sorted by name: (name, sha256) -> 'sha256  name\\n'."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(evidence))


def evidence_hash(evidence: list[tuple[str, str]]) -> str:
    """The verification hash of a destruction (CLI.md): one file, its own SHA-256."""
    if len(evidence) == 1:
        return evidence[0][1]
    return hashlib.sha256(evidence_listing(evidence).encode("utf-8")).hexdigest()


def destroy(ctx: Context, serial: str, method: str, witness: str,
            evidence_files: list[Path], organization: str | None = None,
            notes: str | None = None, *, service: str | None = None,
            location: str | None = None, service_certificate: str | None = None,
            destroyed_on: str | None = None, people: dict | None = None) -> dict:
    """`people`: the performer's and witness's details (bkp.yaml), by role."""
    serial = check_serial(serial)
    medium = cat.get_medium(ctx.catalog, serial)
    if medium is None:
        raise SafetyError(f"serial {serial} is not in the media register; register it first "
                          f"(bkp media register --serial {serial} --type ...)")
    if medium["state"] == "destroyed":
        raise SafetyError(f"medium {medium['serial']} was already recorded destroyed on "
                          f"{medium['state_since']}")
    if method not in DESTRUCTION_METHODS:
        raise UsageError(f"--method must be one of {', '.join(DESTRUCTION_METHODS)}")
    ensure_can_certify(ctx)  # before the destruction is recorded without a certificate
    if not witness or not witness.strip():
        raise UsageError("--witness is required: the person who saw the medium destroyed")
    destroyed_on = destruction_date(destroyed_on)
    evidence = _hash_evidence(evidence_files)
    with ctx.catalog.transaction():  # the record and its event, or neither
        record_id = cat.add_destruction(ctx.catalog, {
            "serial": medium["serial"], "method": method, "category": "Destroy",
            "witness": witness.strip(), "operator": ctx.settings.operator,
            "organization": organization, "performed_at": cat.utc_now(),
            "evidence": json.dumps([{"name": n, "sha256": h} for n, h in evidence]),
            "hash": evidence_hash(evidence) if evidence else hashlib.sha256(b"").hexdigest(),
            "destination_after": "destroyed", "notes": notes, "service": service,
            "location": location, "service_certificate": service_certificate,
            "destroyed_on": destroyed_on,
            "people": json.dumps(people) if people else None})
        record = cat.get_destruction(ctx.catalog, record_id)
        ctx.audit("destroy", "destroyed", medium.get("tenant"), record_id=record_id,
                  serial=medium["serial"], method=method, witness=record["witness"],
                  hash=record["hash"], evidence=[n for n, _ in evidence], service=service,
                  location=location, service_certificate=service_certificate,
                  destroyed_on=destroyed_on)
    _keep_evidence(ctx, record_id, evidence_files)
    certificate = issue_certificate(ctx, record_id)
    return {"record_id": record_id, "serial": medium["serial"], "method": method,
            "category": "Destroy", "witness": record["witness"],
            "destruction": {"service": service, "location": location,
                            "service_certificate": service_certificate,
                            "destroyed_on": destroyed_on},
            "verification": {"mode": "evidence", "hash": record["hash"],
                             "evidence": [{"name": n, "sha256": h} for n, h in evidence]},
            "certificate": certificate}


def destruction_date(text: str | None) -> str:
    """The day of the destruction (YYYY-MM-DD): given, or today. Never in the future."""
    today = datetime.now(UTC).date()
    if text is None:
        return today.isoformat()
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--destroyed-on {text!r} is not a date (YYYY-MM-DD)") from None
    if day > today:
        raise UsageError(f"--destroyed-on {day} is in the future: record a destruction "
                         f"once it has happened")
    return day.isoformat()


def _hash_evidence(files: list[Path]) -> list[tuple[str, str]]:
    names = [f.name for f in files]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"evidence files must have distinct names ({', '.join(duplicates)} "
                         f"given twice): the hash lists them by name")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"evidence not found: {', '.join(missing)}")
    return sorted((f.name, file_sha256(f)) for f in files)


def _keep_evidence(ctx: Context, record_id: int, files: list[Path]) -> None:
    if not files:
        return
    directory = ctx.settings.home / "evidence" / str(record_id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for f in files:
        shutil.copyfile(f, directory / f.name)
