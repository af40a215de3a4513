"""A job's result as a signed document: what a pod leaves in the results inbox.

A pod keeps no state (its BKP_HOME is an emptyDir): what it did (the run rows, its audit
events, a drill's report) leaves the pod as one JSON document signed with the tenant's own
result key (Ed25519) from its Secret. The central gatherer verifies it with the tenant's public
key before a single fact enters the catalog, so a pod can only ever speak for its own tenant:
another tenant's key, a changed byte or no signature at all is rejected.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bkp.errors import PolicyError
from bkp.secrets import check_private_file

FORMAT = "bkp-result/1"
RESULT_KEY_ENV = "BKP_RESULT_KEY"  # set by the manifest: the pod's own tenant's key
KINDS = ("backup", "drill")


def canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------- keys

def create_key(private: Path, public: Path) -> str:
    """A new Ed25519 key pair: the private half 0600 (it goes into the tenant's Secret), the
    public half 0644 (the gatherer's). Returns the public key's fingerprint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    temporary = public.with_name(public.name + ".part")
    temporary.write_text(base64.b64encode(raw).decode() + "\n")
    temporary.chmod(0o644)
    os.replace(temporary, public)
    return fingerprint(raw)


def fingerprint(raw: bytes) -> str:
    return "SHA256:" + hashlib.sha256(raw).hexdigest()[:32]


# An Ed25519 private key in PKCS #8 (RFC 8410) is this DER prefix and the 32-byte seed.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
# White space around the key as cryptography's loader took it: a Secret rendered by a
# template often starts with a line break.
_PEM = re.compile(rb"\s*-----BEGIN PRIVATE KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*"
                  rb"-----END PRIVATE KEY-----\s*")


def load_private(path: Path):
    """The key `create_key` wrote. Read here rather than by cryptography's PEM loader, whose
    module (with the SSH formats) costs a pod more start-up than all of the signing."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    check_private_file(path, RESULT_KEY_ENV)
    try:
        pem = _PEM.fullmatch(path.read_bytes())
        der = base64.b64decode(b"".join(pem.group(1).split()), validate=True) if pem else b""
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{RESULT_KEY_ENV} {path} is not a result key (an Ed25519 private "
                          f"key from `bkp catalog result-keys`): {type(exc).__name__}") from None
    if len(der) != len(_PKCS8_ED25519) + 32 or not der.startswith(_PKCS8_ED25519):
        raise PolicyError(f"{RESULT_KEY_ENV} {path} is not a result key (an Ed25519 private "
                          f"key in PKCS #8 PEM, from `bkp catalog result-keys`)")
    return Ed25519PrivateKey.from_private_bytes(der[len(_PKCS8_ED25519):])


def load_public(path: Path) -> bytes | None:
    """The raw public key, or None when there is none (the result is then rejected)."""
    try:
        raw = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if len(raw) == 32 else None


# ---------------------------------------------------------------- writing

def result_document(tenant: str, kind: str, runs: list[dict], events: list[dict],
                    reports: dict[str, str], host: str) -> dict:
    written = datetime.now(UTC)
    return {"format": FORMAT, "id": uuid.uuid4().hex, "tenant": tenant, "kind": kind,
            "written_at": written.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "host": host,
            "runs": runs, "events": events, "reports": reports}


def object_name(document: dict) -> str:
    """Sorts in the order written: `20261124T221503123456Z-TENANT-KIND-ID12.json`."""
    stamp = datetime.strptime(document["written_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return (f"{stamp.strftime('%Y%m%dT%H%M%S%f')}Z-{document['tenant']}-{document['kind']}-"
            f"{document['id'][:12]}.json")


def sign(document: dict, key) -> bytes:
    raw = key.public_key().public_bytes_raw()
    signed = {"document": document,
              "signature": base64.b64encode(key.sign(canonical(document))).decode(),
              "signed_by": fingerprint(raw)}
    return json.dumps(signed, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------- reading

@dataclass(frozen=True)
class Verified:
    document: dict
    signed_by: str


class Rejected(Exception):
    """A result that does not prove who wrote it, or speaks for another tenant."""


def verify(name: str, data: bytes, public_key_of) -> Verified:
    """The document of a result object, or Rejected with the reason. `public_key_of(tenant)`
    gives the tenant's raw public key or None."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from bkp.destinations.inbox import MAX_RESULT_BYTES

    if len(data) > MAX_RESULT_BYTES:
        raise Rejected(f"larger than {MAX_RESULT_BYTES} bytes: not a result")
    try:
        signed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested past the parser
        raise Rejected("not a JSON document") from None
    if not isinstance(signed, dict) or not isinstance(signed.get("document"), dict):
        raise Rejected("not a signed result (no document)")
    document = signed["document"]
    tenant = document.get("tenant")
    if not isinstance(signed.get("signature"), str):
        raise Rejected(f"unsigned: no signature by {tenant!s}'s result key")
    raw = public_key_of(tenant) if isinstance(tenant, str) else None
    if raw is None:
        raise Rejected(f"no result key is known for tenant {tenant!s}")
    try:
        signature = base64.b64decode(signed["signature"], validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, canonical(document))
    except (ValueError, InvalidSignature, RecursionError):
        raise Rejected(f"the signature is not {tenant}'s: the result was changed, or signed "
                       f"with another key") from None
    problem = _shape_problem(name, document)
    if problem:
        raise Rejected(problem)
    return Verified(document, fingerprint(raw))


def _shape_problem(name: str, document: dict) -> str | None:
    tenant = document["tenant"]
    if document.get("format") != FORMAT:
        return f"format {document.get('format')!r} is not {FORMAT}"
    if document.get("kind") not in KINDS or not isinstance(document.get("id"), str):
        return "not a backup or drill result"
    if f"-{tenant}-{document['kind']}-" not in name:
        return f"the object's name does not name tenant {tenant}'s {document['kind']}"
    for key in ("runs", "events"):
        items = document.get(key)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return f"{key} is not a list of records"
        other = next((i.get("tenant") for i in items if i.get("tenant") != tenant), None)
        if other is not None or any("tenant" not in i for i in items):
            return f"speaks for another tenant ({other!s}): a pod speaks for its own only"
    if not isinstance(document.get("reports", {}), dict):
        return "reports is not a mapping"
    return _runs_problem(document)


# ---------------------------------------------------------------- what a run may say

# A run's verdicts by kind, once closed: a pod sends its runs when its command ends.
RUN_STATUSES = {"backup": ("ok", "failed", "interrupted"),
                "drill": ("passed", "failed", "error", "interrupted")}
CATALOG_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
# A pod's clock may run a little ahead of the gatherer's; a run ended days from now would
# stay "the last backup" and hide every night after it.
CLOCK_SLACK = timedelta(days=1)


def _runs_problem(document: dict) -> str | None:
    """Why the runs cannot enter the catalog as they are, or None. Only values a catalog
    column can hold as the pod's catalog held them (SQLite integers, finite numbers, times
    as bkp writes them), each run of the result's own kind, closed, and confirmed by its own
    audit event: what the central status and audit trail later read must not fail them."""
    from bkp.catalog.inbox import (
        RESULT_CHILD_COLUMNS,
        RESULT_CHILD_REQUIRED,
        RESULT_CHILD_TIME,
        RESULT_RUN_COLUMNS,
    )

    kind = document["kind"]
    latest = datetime.now(UTC) + CLOCK_SLACK
    confirmed = _confirmed(document["events"])
    if confirmed is None:
        return "an event names its run by something that is not a run id"
    ids = [run.get("id") for run in document["runs"]]
    if not all(type(i) is int for i in ids) or len(set(ids)) != len(ids):
        return "a run has no id of its own"
    for run in document["runs"]:
        what = f"run {run['id']}"
        if run.get("kind") != kind or run.get("status") not in RUN_STATUSES[kind]:
            return (f"{what} is a {run.get('kind')!s} {run.get('status')!s}: a {kind} result "
                    f"carries closed {kind} runs only")
        if (kind, run["id"], run["status"]) not in confirmed:
            return (f"{what} ({run['status']}) is not what the result's own audit events "
                    f"record of it")
        problem = (_values_problem(run, RESULT_RUN_COLUMNS, ("started_at", "ended_at"), latest)
                   or (None if run.get("started_at") and run.get("ended_at")
                       else "has no start and end time"))
        for table, columns in RESULT_CHILD_COLUMNS.items():
            rows = run.get(table, [])
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                problem = problem or f"{table} is not a list of records"
                continue
            for row in rows:
                if all(isinstance(row.get(k), str) for k in RESULT_CHILD_REQUIRED[table]):
                    problem = problem or _values_problem(
                        row, columns, (RESULT_CHILD_TIME[table],), latest)
        if problem:
            return f"{what}: {problem}"
    return None


def _confirmed(events: list[dict]) -> set[tuple] | None:
    """(action, run id, outcome) of every event that names a run; None when one names it
    by something else."""
    found = set()
    for event in events:
        details = event.get("details")
        if isinstance(details, str):
            try:
                details = json.loads(details)
            except (ValueError, RecursionError):
                details = None
        if not isinstance(details, dict) or details.get("run_id") is None:
            continue
        if type(details["run_id"]) is not int:
            return None
        found.add((event.get("action"), details["run_id"], event.get("outcome")))
    return found


def _values_problem(row: dict, columns: tuple[str, ...], times: tuple[str, ...],
                    latest: datetime) -> str | None:
    for key in columns:
        value = row.get(key)
        if key in times and value is not None and not _catalog_time(value, latest):
            return f"{key} {str(value)[:40]!r} is not a time bkp writes, nor a past one"
        if not _storable(value):
            return f"{key} is not a value the catalog can hold"
    return None


def _catalog_time(value, latest: datetime) -> bool:
    if not isinstance(value, str) or not CATALOG_TIME.fullmatch(value):
        return False
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return False
    return moment <= latest


def _storable(value) -> bool:
    """A value SQLite keeps as it is (lists and mappings are kept as JSON text)."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -(1 << 63) <= value < (1 << 63)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, dict)):
        try:
            json.dumps(value, allow_nan=False)
        except (ValueError, RecursionError):
            return False
        return True
    return False


# ---------------------------------------------------------------- the pod's side

@dataclass(frozen=True)
class Mark:
    """Where this command's records begin in the pod's catalog, and what signs them."""

    tenant: str
    key: object
    results: object  # installation.Results
    last_seq: int
    last_run_id: int


def mark_before_work(catalog, tenant: str, key_path: Path, results) -> Mark:
    last = catalog.last_audit_event()
    runs = catalog.runs(tenant, limit=1)
    return Mark(tenant, load_private(key_path), results, last["seq"] if last else 0,
                runs[0]["id"] if runs else 0)


def send_result(catalog, mark: Mark, kind: str, host: str, inbox) -> str:
    """Sign what this command recorded for the tenant and leave it in `inbox` (an open
    results inbox); the object's name. OperationError when the inbox cannot take it."""
    runs = [run for run in catalog.runs(mark.tenant, kind) if run["id"] > mark.last_run_id]
    events = [event for event in catalog.audit_events(tenant=mark.tenant)
              if event["seq"] > mark.last_seq]
    reports = {}
    for run in runs:
        if run.get("report"):
            # Unreadable: the run row still carries the drill's verdict.
            with contextlib.suppress(OSError, UnicodeDecodeError):
                reports[Path(run["report"]).name] = Path(run["report"]).read_text(
                    encoding="utf-8")
    document = result_document(
        mark.tenant, kind, [_with_children(catalog, run)
                            for run in sorted(runs, key=lambda r: r["id"])],
        [_portable(event) for event in events], reports, host)
    name = object_name(document)
    inbox.put(name, sign(document, mark.key))
    return name


# ---------------------------------------------------------------- the pod's own record

KEPT_FORMAT = "bkp-kept/1"


def kept_object_name(tenant: str) -> str:
    """Beside the results, never taken for one: the gatherer reads only result names."""
    return f"kept/{tenant}.json"


def send_kept(catalog, mark: Mark, inbox) -> bool:
    """The snapshots this job's good backup left in the tenant's repository, signed with its
    own result key, into `inbox`: what tomorrow's pod, which has no catalog, knows them
    from. False when the job recorded none (failed, legal hold): the old record stays, and
    tomorrow's repository listing will not confirm it."""
    row = catalog.last_listing(mark.tenant)
    if row is None or row["id"] <= mark.last_run_id or not row.get("kept_snapshots"):
        return False
    kept = json.loads(row["kept_snapshots"])
    written = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    document = {"format": KEPT_FORMAT, "tenant": mark.tenant, "written_at": written,
                "snapshots": kept}
    inbox.put(kept_object_name(mark.tenant), sign(document, mark.key))
    return True


def read_kept(mark: Mark) -> list[dict] | None:
    """The pod's own last record of its tenant's snapshots, when there is one signed with
    this tenant's key; None otherwise (missing, unreadable, changed, another key's). Only a
    hint: the backup trusts it only when the repository holds exactly these snapshots."""
    from bkp.destinations.inbox import open_inbox
    from bkp.errors import BkpError

    try:
        # A session of its own: the backup that follows may take hours, and a server
        # drops an idle one.
        with open_inbox(mark.results.inbox) as inbox:
            data = inbox.get(kept_object_name(mark.tenant))
    except BkpError:
        return None
    try:
        document = _verified_document(data, mark.key.public_key().public_bytes_raw())
    except Rejected:
        return None
    snapshots = document.get("snapshots")
    if (document.get("format") != KEPT_FORMAT or document.get("tenant") != mark.tenant
            or not isinstance(snapshots, list)
            or not all(isinstance(s, dict) and isinstance(s.get("id"), str)
                       and isinstance(s.get("time"), str) for s in snapshots)):
        return None
    return snapshots


def _verified_document(data: bytes, raw: bytes) -> dict:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        signed = json.loads(data.decode("utf-8"))
        document = signed["document"]
        signature = base64.b64decode(signed["signature"], validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, canonical(document))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, InvalidSignature):
        raise Rejected("not signed with this tenant's result key") from None
    if not isinstance(document, dict):
        raise Rejected("not a document")
    return document


def _with_children(catalog, run: dict) -> dict:
    """The run, and what it recorded beside its row: its copies' and dumps' rows."""
    return {**_portable(run),
            "copy_results": [_portable(row) for row in catalog.copy_results_of_run(run["id"])],
            "database_dumps": [_portable(row)
                               for row in catalog.database_dumps_of_run(run["id"])]}


def _portable(row: dict) -> dict:
    return {key: value for key, value in row.items()
            if key not in ("pid", "pid_start", "prev_hash", "hash")}
