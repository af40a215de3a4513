"""Approvals by a second person, proven with that person's own SSH key.

A two-person rule that compares two typed names proves nothing: anyone can type two names.
Here a request (an offboarding, an erasure, the validation of a sanitization) is a fixed
text with a random nonce; the approver signs exactly that text with `ssh-keygen -Y sign -n
bkp` and the key registered to them in bkp.yaml, and bkp checks the signature with
`ssh-keygen -Y verify` against the registered keys. The signature goes into the request's
record, the audit trail and the certificate, so anyone can check it again later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bkp import access, runner
from bkp.catalog import parse_time, utc_now
from bkp.errors import OperationError, SafetyError, UsageError

if TYPE_CHECKING:
    from bkp.context import Context

NAMESPACE = "bkp"  # ssh-keygen -n: a signature for bkp is never valid for anything else
VALID_FOR = timedelta(days=7)
MAX_SIGNATURE_BYTES = 64 * 1024
ARMOR = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"


def read_signature(path: Path) -> bytes:
    """The signature file's bytes, at most MAX_SIGNATURE_BYTES + 1 of them. Only a regular
    file: /dev/zero or a FIFO named by mistake (or on purpose) would never end, and a
    huge file is not read into memory (UsageError, exit 2)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise UsageError(f"cannot read the signature {path}: {exc.strerror or exc}") from exc
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise UsageError(f"the signature {path} is not a file: give the .sig file "
                             f"`ssh-keygen -Y sign` wrote")
        return file.read(MAX_SIGNATURE_BYTES + 1)


def canonical_signature(signature: bytes) -> str:
    """The signature as ssh-keygen writes it, and nothing else: whatever else a file holds
    would otherwise travel into the record and the certificate as part of the approval
    (SafetyError, exit 4)."""
    refused = SafetyError("the signature file is not one SSH signature (`ssh-keygen -Y sign "
                          f"-n {NAMESPACE}` writes one from {ARMOR} to {ARMOR_END}, and "
                          f"nothing else)")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise refused
    try:
        lines = signature.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        raise refused from None
    if len(lines) < 3 or lines[0] != ARMOR or lines[-1] != ARMOR_END:
        raise refused
    try:
        base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise refused from None
    return "\n".join(lines) + "\n"


def request(ctx: Context, kind: str, subject: str, tenant: str | None, what: str,
            details: dict | None = None) -> dict:
    """A pending request, with the text the approver signs; recorded and audited.

    `details` may name `signer` (the one person who must sign), `excluded_person` and
    `excluded_os_user` (who may not: by default the requester, for a validation the person
    who did the work)."""
    details = {"excluded_person": ctx.settings.operator,
               "excluded_os_user": ctx.settings.os_user, **(details or {})}
    now = datetime.now(UTC)
    expires = (now + VALID_FOR).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    message = "\n".join([
        "bkp approval request",
        f"kind: {kind}",
        f"subject: {subject}",
        f"tenant: {tenant or '-'}",
        f"what: {what}",
        f"requested by: {ctx.settings.operator} (OS user {ctx.settings.os_user})",
        f"requested at: {now.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"expires at: {expires[:19]}Z",
        f"nonce: {secrets.token_hex(16)}",
        ""])
    with ctx.catalog.transaction():
        row = ctx.catalog.add_approval({
            "kind": kind, "subject": subject, "tenant": tenant,
            "requested_by": ctx.settings.operator, "requested_os_user": ctx.settings.os_user,
            "requested_at": utc_now(), "expires_at": expires, "message": message,
            "details": json.dumps(details, sort_keys=True)})
        ctx.audit("approval.request", "pending", tenant, approval_id=row["id"], kind=kind,
                  subject=subject, message_sha256=_sha256(message.encode()))
    return row


def pending(catalog, subject: str, kind: str | None = None) -> dict | None:
    """The request waiting for approval for `subject` (a record id), if any; of `kind`
    when named (a sanitization record and an erasure record may share a number)."""
    rows = [r for r in catalog.approvals_for_subject(subject) if r["status"] == "pending"
            and (kind is None or r["kind"] == kind)]
    return rows[-1] if rows else None


def approved(catalog, kind: str, subject: str) -> dict | None:
    rows = [r for r in catalog.approvals_of(kind, subject) if r["status"] == "approved"]
    return rows[-1] if rows else None


def expired(row: dict, now: datetime | None = None) -> bool:
    return parse_time(row["expires_at"]) <= (now or datetime.now(UTC))


def approve(ctx: Context, subject: str, signature: bytes,
            operators: tuple[access.Operator, ...]) -> dict:
    """Check the signature over the pending request of `subject` and record the approval.
    SafetyError (4, audited) when it is not a second registered person's own signature."""
    require_operators(operators)
    row = pending(ctx.catalog, subject)
    if row is None:
        raise UsageError(f"nothing waits for approval under record {subject}; `bkp status` "
                         f"lists the requests that do")
    try:
        signer = _check(row, signature, operators)
    except SafetyError as exc:
        ctx.audit("approve", "refused", row["tenant"], approval_id=row["id"],
                  kind=row["kind"], subject=subject, error=str(exc))
        raise
    text = canonical_signature(signature)
    signature = text.encode("ascii")
    with ctx.catalog.transaction():
        closed = ctx.catalog.close_approval(
            row["id"], "approved", approved_by=signer.name,
            approved_os_user=ctx.settings.os_user, approved_at=utc_now(), signature=text,
            key_fingerprint=key_fingerprint(signer.ssh_key))
        if closed is None:
            raise OperationError(f"request {row['id']} was closed meanwhile")
        ctx.audit("approve", "approved", row["tenant"], approval_id=row["id"],
                  kind=row["kind"], subject=subject, approved_by=signer.name,
                  role=signer.role, key_fingerprint=closed["key_fingerprint"],
                  signature_sha256=_sha256(signature))
    return closed


def require_operators(operators) -> None:
    if not operators:
        raise SafetyError("no operators are registered in bkp.yaml: an approval is a "
                          "registered person's signature, so there is nothing to approve "
                          "with")


def _check(row: dict, signature: bytes, operators):
    if expired(row):
        raise SafetyError(f"request {row['id']} expired at {row['expires_at'][:19]}Z; "
                          f"make the request again")
    signature = canonical_signature(signature).encode("ascii")
    rules = json.loads(row["details"] or "{}")
    signer = _signer(row["message"].encode(), signature, operators)
    excluded, excluded_os_user = rules.get("excluded_person"), rules.get("excluded_os_user")
    if signer.name == excluded:
        raise SafetyError(f"{signer.name} {_role_in(row)} and cannot approve it: a second "
                          f"person must")
    if excluded_os_user in signer.os_users:
        raise SafetyError(f"{signer.name} logs in as {excluded_os_user}, the OS user who "
                          f"{_role_in(row)}: the approval must come from another person's "
                          f"own account")
    if rules.get("signer") and signer.name != rules["signer"]:
        raise SafetyError(f"signed by {signer.name}, but the request names "
                          f"{rules['signer']}, who must sign it")
    if signer.role not in access.ALLOWED["approve"]:
        raise SafetyError(f"{signer.name} is registered as {signer.role}, which may not "
                          f"approve")
    return signer


def _role_in(row: dict) -> str:
    return "performed the work" if row["kind"] == "validation" else "made the request"


def _signer(message: bytes, signature: bytes, operators) -> access.Operator:
    """The registered person whose key made a good signature over `message`."""
    ssh_keygen = runner.which("ssh-keygen")
    if ssh_keygen is None:
        raise OperationError("ssh-keygen is not installed (package openssh-client); it checks "
                             "approval signatures")
    with tempfile.TemporaryDirectory(prefix="bkp-approve-") as scratch:
        allowed, signature_file = Path(scratch) / "allowed_signers", Path(scratch) / "sig"
        # Principals by index: names may hold characters the file format does not allow.
        allowed.write_text("".join(f'operator-{i} namespaces="{NAMESPACE}" {o.ssh_key}\n'
                                   for i, o in enumerate(operators)))
        signature_file.write_bytes(signature)
        found = runner.run([ssh_keygen, "-Y", "find-principals", "-s", str(signature_file),
                            "-f", str(allowed)], timeout=30)
        principals = [p for p in found.stdout.split() if p.startswith("operator-")]
        if not found.ok or not principals:
            raise SafetyError("the signature was not made with a key registered in bkp.yaml")
        index = int(principals[0].removeprefix("operator-"))
        checked = runner.run([ssh_keygen, "-Y", "verify", "-f", str(allowed), "-I",
                              principals[0], "-n", NAMESPACE, "-s", str(signature_file)],
                             stdin_data=message, timeout=30)
        if not checked.ok:
            raise SafetyError(f"the signature by {operators[index].name}'s key does not match "
                              f"this request (it signs another text, or was altered); sign "
                              f"the text of `bkp approve RECORD_ID --message`")
    return operators[index]


def key_fingerprint(ssh_key: str) -> str:
    """SHA256:... as `ssh-keygen -l` shows it."""
    blob = base64.b64decode(ssh_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_json(row: dict) -> dict:
    return {"id": row["id"], "kind": row["kind"], "subject": row["subject"],
            "tenant": row["tenant"], "requested_by": row["requested_by"],
            "requested_at": row["requested_at"], "expires_at": row["expires_at"],
            "status": "expired" if row["status"] == "pending" and expired(row)
            else row["status"], "approved_by": row["approved_by"],
            "approved_at": row["approved_at"], "key_fingerprint": row["key_fingerprint"]}
