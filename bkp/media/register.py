"""The media register: every data carrier that held tenant data, and its state over time."""

from __future__ import annotations

import csv
import io

from bkp import catalog as cat
from bkp import names
from bkp.context import Context
from bkp.errors import OperationError, UsageError

CLASSIFICATIONS = ("normal", "sensitive")
EXPORT_COLUMNS = ("serial", "type", "vendor", "model", "capacity", "asset_tag", "tenant",
                  "host", "state", "state_since", "registered_at", "registered_by")


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


def list_media(ctx: Context, state: str | None = None, tenant: str | None = None) -> list[dict]:
    media = _as_it_is(ctx, cat.list_media(ctx.catalog, tenant=tenant))
    return [m for m in media if state is None or m["state"] == state]


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


def _csv_safe(value):
    # A cell starting with = + - @ is a formula in a spreadsheet: an auditor opening the
    # export must not run a serial someone typed as "=HYPERLINK(...)".
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
