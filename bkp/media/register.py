"""The media register: every data carrier that held tenant data, and its state over time."""

from __future__ import annotations

import csv
import io
import json

from bkp import catalog as cat
from bkp import names
from bkp.context import Context
from bkp.errors import OperationError, UsageError

CLASSIFICATIONS = ("normal", "sensitive")
EXPORT_COLUMNS = ("serial", "type", "vendor", "model", "capacity", "asset_tag", "tenant",
                  "host", "state", "state_since", "registered_at", "registered_by",
                  # its latest sanitization or destruction record (NIST SP 800-88 Rev. 2)
                  "classification", "record_id", "record_kind", "method", "category",
                  "technique", "hash", "certificate_id", "validation")


def check_serial(serial: str) -> str:
    """The serial as registered (surrounding spaces dropped), or UsageError: the one rule for
    every serial an operator types (register, show, sanitize, destroy)."""
    serial = serial.strip()
    if not serial:
        raise UsageError("--serial must not be empty: use the serial printed on the label "
                         "or reported by the device (lsblk -do NAME,SERIAL)")
    problem = names.serial_problem(serial)
    if problem:
        raise UsageError(problem)
    return serial


def register_medium(ctx: Context, serial: str, type_: str, *, vendor: str | None = None,
                    model: str | None = None, capacity: int | None = None,
                    asset_tag: str | None = None, tenant: str | None = None,
                    host: str | None = None, classification: str | None = None) -> dict:
    serial = check_serial(serial)
    if classification not in (None, *CLASSIFICATIONS):
        raise UsageError(f"--classification must be one of {', '.join(CLASSIFICATIONS)}")
    if tenant is not None and not names.is_tenant_id(tenant):
        raise UsageError(f"--tenant {names.shown(tenant)} is not a tenant id: "
                         f"{names.TENANT_ID_RULE}")
    if type_ not in cat.MEDIA_TYPES:
        raise UsageError(f"--type must be one of {', '.join(cat.MEDIA_TYPES)}")
    medium = cat.add_medium(ctx.catalog, {
        "serial": serial, "type": type_, "vendor": vendor, "model": model,
        "capacity": capacity, "asset_tag": asset_tag, "tenant": tenant, "host": host,
        "classification": classification,
    }, ctx.settings.operator)
    if medium is None:
        existing = cat.get_medium(ctx.catalog, serial)
        raise OperationError(f"serial {serial} is already registered (state "
                             f"{existing['state']} since {existing['state_since']}); see "
                             f"`bkp media show {serial}`")
    ctx.audit("media.register", "registered", tenant, serial=serial, type=type_,
              vendor=vendor, model=model, capacity=capacity, asset_tag=asset_tag, host=host,
              classification=classification)
    return medium


def find_medium(ctx: Context, serial: str) -> dict:
    medium = cat.get_medium(ctx.catalog, check_serial(serial))
    if medium is None:
        raise OperationError(f"serial {serial} is not in the media register; register it "
                             f"with `bkp media register --serial {serial} --type ...`")
    return medium


def show_medium(ctx: Context, serial: str) -> dict:
    medium = _as_it_is(ctx, [find_medium(ctx, serial)])[0]
    return {**medium, "history": cat.media_history(ctx.catalog, medium["serial"])}


def list_media(ctx: Context, state: str | None = None, tenant: str | None = None,
               awaiting_validation: bool = False) -> list[dict]:
    media = _with_records(ctx, _as_it_is(ctx, cat.list_media(ctx.catalog, tenant=tenant)))
    return [m for m in media if (state is None or m["state"] == state)
            and (not awaiting_validation or m["validation"] in AWAITING)]


# A record waits for a second person's validation (NIST SP 800-88 Rev. 2) until it is
# approved or rejected; a request waiting for the validator's signature still waits.
AWAITING = ("awaiting", "pending_signature")


def _with_records(ctx: Context, media: list[dict]) -> list[dict]:
    """Each medium with its latest record, that record's certificate and validation."""
    records = cat.latest_records(ctx.catalog)
    out = []
    for medium in media:
        record = records.get(medium["serial"])
        out.append({**medium, "record_id": record["id"] if record else None,
                    "record_kind": record["kind"] if record else None,
                    "certificate_id": record["certificate_id"] if record else None,
                    **{key: record[key] if record else None
                       for key in ("method", "category", "technique", "hash")},
                    "validation": validation_state(ctx, record)})
    return out


def validation_state(ctx: Context, record: dict | None) -> str | None:
    """approved, rejected, pending_signature, awaiting, or None (nothing to validate: no
    record, or a wipe that did not finish)."""
    if record is None or record["result"] not in ("erased", "failed", "destroyed"):
        return None
    rows = ctx.catalog.approvals_of("validation", str(record["id"]))
    approved = [r for r in rows if r["status"] == "approved"]
    if approved:
        decision = json.loads(approved[-1]["details"] or "{}").get("decision")
        return "approved" if decision == "approved" else "rejected"
    if any(r["status"] == "pending" for r in rows):
        return "pending_signature"
    return "awaiting"


def _as_it_is(ctx: Context, media: list[dict]) -> list[dict]:
    """A wipe whose process died reads `aborted` at once, although only the next command
    that acts records it: reading never writes, and never shows a dead wipe as running."""
    dead = {row["serial"] for row in cat.abandoned_sanitizations(ctx.catalog)}
    return [{**m, "state": "aborted",
             "state_note": "its process is gone; the next bkp command that acts records it"}
            if m["state"] == "sanitizing" and m["serial"] in dead else m for m in media]


def media_csv(media: list[dict]) -> str:
    """The register as CSV for auditors: one row per medium with its current state."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for medium in media:
        writer.writerow({k: _csv_safe(medium.get(k)) for k in EXPORT_COLUMNS})
    return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "|", "%")


def _csv_safe(value):
    # A cell starting with = + - @ (or a tab or carriage return before one, or spaces) is
    # a formula in a spreadsheet: an auditor opening the export must not run a serial
    # someone typed as "=HYPERLINK(...)". Commas, quotes and newlines are the csv module's
    # quoting.
    if isinstance(value, str) and (value[:1] in FORMULA_STARTS
                                   or value.lstrip()[:1] in FORMULA_STARTS):
        return "'" + value
    return value
