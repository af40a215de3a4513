"""Validation of a sanitization or destruction (NIST SP 800-88 Rev. 2).

Verification asks whether the technique worked; validation is a named, responsible person
accepting or rejecting the result, and never the person who did the work. Without
registered operators that person is the name typed with --validator. With operators, the
validator is the registered person behind the OS identity, and the validation is complete
only with their own signature over the request (`bkp approve`, or --approve-with at once).
Either way the certificate is issued again, stating the validation.
"""

from __future__ import annotations

import json

from bkp import access
from bkp import catalog as cat
from bkp.access import Actor
from bkp.context import Context
from bkp.errors import SafetyError, UsageError
from bkp.evidence import approvals
from bkp.evidence.certify import issue_certificate, validation_event, validation_of

KIND = "validation"


def validate_record(ctx: Context, actor: Actor, operators: tuple, record_id: int, *,
                    validator: str | None, title: str, decision: str, comment: str | None,
                    signature: bytes | None, person=None) -> dict:
    """`person(name)`: the validator's details for the record (bkp.yaml `people`)."""
    header = cat.get_record(ctx.catalog, record_id)
    if header is None:
        raise UsageError(f"there is no sanitization or destruction record {record_id}; see "
                         f"`bkp media show SERIAL`")
    record = (cat.get_sanitization if header["kind"] == "sanitization"
              else cat.get_destruction)(ctx.catalog, record_id)
    if header["kind"] == "sanitization" and record["result"] == "running":
        raise SafetyError(f"sanitization {record_id} has not finished; validate its result "
                          f"once it has")
    if validation_of(ctx.catalog, record_id) is not None:
        raise SafetyError(f"record {record_id} is already validated")
    performer, performer_os_user = record["operator"], _os_user_of(ctx, record_id)
    name = _validator_name(actor, validator)
    # a name that reads as the performer's (case, spaces, invisible characters) is theirs
    same = performer is not None and access.name_key(name) == access.name_key(performer)
    if same or (actor.controlled and actor.os_user == performer_os_user):
        raise SafetyError(f"{name} performed record {record_id} and cannot validate it: "
                          f"validation is a second person's decision")
    details = {"title": title, "decision": decision, "comment": comment, "signer": name,
               "excluded_person": performer, "excluded_os_user": performer_os_user,
               "person": person(name) if person else None}
    what = (f"{decision} the {header['kind']} of medium {header['serial']} (record "
            f"{record_id}) as {name}, {title}")
    existing = approvals.pending(ctx.catalog, str(record_id), KIND)
    if existing and json.loads(existing["details"] or "{}").get("signer") != name \
            and not approvals.expired(existing):
        raise SafetyError(f"record {record_id} already waits for another validator's "
                          f"signature (request {existing['id']}, until "
                          f"{existing['expires_at'][:19]}Z)")
    if existing and approvals.expired(existing):
        ctx.catalog.close_approval(existing["id"], "expired")  # a new request replaces it
        existing = None
    row = existing or approvals.request(ctx, KIND, str(record_id), None, what, details)
    if not actor.controlled:
        # Nobody registered: the typed name is all there is, as before; said on the record.
        ctx.catalog.close_approval(row["id"], "approved", approved_by=name,
                                   approved_os_user=ctx.settings.os_user,
                                   approved_at=cat.utc_now())
        ctx.audit("validate", decision, None, record_id=record_id, validator=name,
                  title=title, comment=comment, approval_id=row["id"], signed=False)
        return finish(ctx, record_id)
    if signature is not None:
        approvals.approve(ctx, str(record_id), signature, operators)
        return finish(ctx, record_id)
    return {"record_id": record_id, "status": "pending_approval", "approval_id": row["id"],
            "validator": name, "message": row["message"]}


def finish(ctx: Context, record_id: int) -> dict:
    """After the approval: the validation on the record and a new certificate stating it."""
    validation = validation_of(ctx.catalog, record_id)
    approval = validation.get("approval")
    if approval and validation_event(ctx.catalog, record_id) is None:
        # the signed validation as an event of its own, which `certificate verify` finds
        ctx.audit("validate", validation["decision"], None, record_id=record_id,
                  validator=validation["validator"], title=validation["title"],
                  comment=validation["comment"], signed=True,
                  key_fingerprint=approval["key_fingerprint"],
                  signature_sha256=approval["signature_sha256"])
    certificate = issue_certificate(ctx, record_id)
    return {"record_id": record_id, "status": "validated",
            "validation": {k: validation[k] for k in ("validator", "title", "decision",
                                                      "time", "comment")},
            "signed": bool(validation.get("approval")), "certificate": certificate}


def _validator_name(actor: Actor, validator: str | None) -> str:
    if not actor.controlled:
        if not validator:
            raise UsageError("name the validator with --validator NAME")
        return validator
    if not actor.registered:
        raise SafetyError(f"validation needs a registered validator or admin: {actor.note}")
    if validator and validator != actor.operator:
        raise SafetyError(f"--validator {validator}: you are {actor.operator} (OS user "
                          f"{actor.os_user}); a validation is made by the validator in person")
    return actor.operator


def _os_user_of(ctx: Context, record_id: int) -> str | None:
    """The OS user that closed the record, from its audit event."""
    for event in reversed(ctx.catalog.audit_events()):
        if event["action"] in ("sanitize", "destroy") and \
                json.loads(event["details"] or "{}").get("record_id") == record_id:
            return event["os_user"]
    return None
