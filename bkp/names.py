"""Values that become names: tenant ids, media serials, and file and lock names built from
them. A value is checked here, in full, before it names anything on disk.

Full match everywhere: Python's `$` also matches before a final newline, so `re.match`
with `^...$` accepts "acme\\n"; `fullmatch` does not.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from bkp.errors import PolicyError

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
TENANT_ID_RULE = ("2-63 characters of a-z, 0-9 and '-', starting with a letter or digit "
                  "(e.g. acme-zorg)")

# A serial as printed on a label or reported by a device: printable ASCII without '/' or
# '\\', at least one letter or digit, no leading '-' (never an option), no space at either
# end, at most 128 characters (SCSI and USB serials are the longest, well below that).
_SERIAL_CHAR = r"[\x21-\x2e\x30-\x5b\x5d-\x7e]"  # printable, not space, '/' or '\'
SERIAL = re.compile(rf"(?!-)(?=.*[A-Za-z0-9]){_SERIAL_CHAR}(?:[ {_SERIAL_CHAR[1:-1]}]{{0,126}}"
                    rf"{_SERIAL_CHAR})?")
SERIAL_RULE = ("a serial is 1-128 printable ASCII characters with at least one letter or "
               "digit, without '/' or '\\', not starting with '-'")

MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def is_tenant_id(value: object) -> bool:
    return isinstance(value, str) and TENANT_ID.fullmatch(value) is not None


def serial_problem(serial: str) -> str | None:
    """Why a serial typed by an operator is not one, or None."""
    if SERIAL.fullmatch(serial):
        return None
    return f"{shown(serial)} is not a usable serial: {SERIAL_RULE}"


def control_character(text: str) -> str | None:
    """The first character that would break a line-based format (a line of a crontab, a
    systemd unit, a log, an ssh_config): control characters (C0, DEL, C1), line and
    paragraph separators, and lone surrogates (bytes that are not UTF-8). None if clean."""
    if text.isascii() and text.isprintable():  # the common case, without a lookup per char
        return None
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs"):
            return char
    return None


def text_problem(value: str, limit: int) -> str | None:
    """Why a free text typed by an operator (a name, a note, a reason) cannot be recorded as
    one, or None: empty, a control character, or longer than `limit` characters."""
    if not value.strip():
        return "it is empty"
    char = control_character(value)
    if char is not None:
        return (f"{shown(value)} contains a control character ({shown(char)}): one line of "
                f"printable text")
    if len(value) > limit:
        return f"it is {len(value)} characters long; at most {limit}"
    return None


def shown(value: str, limit: int = 60) -> str:
    """A value for a message: quoted, escapes visible, never a raw newline."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


class UnsafeName(PolicyError):
    """A value that would name a file outside its directory, or no file at all."""


def file_name(value: str | int, what: str) -> str:
    """`value` as one file name inside a directory, or UnsafeName: never '', '.', '..', a
    '/', NUL or any control character, never longer than a file name can be."""
    text = str(value)
    if (text in ("", ".", "..") or "/" in text or control_character(text)
            or len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES):
        raise UnsafeName(f"{what} {shown(text)} cannot name a file: it could escape its "
                         f"directory or is not one file name")
    return text


def tenant_part(tenant: str) -> str:
    """A tenant id as part of a file or lock name: only a full tenant id, so that no two
    tenants share a name and none leaves its directory."""
    if not is_tenant_id(tenant):
        raise UnsafeName(f"{shown(str(tenant))} is not a tenant id ({TENANT_ID_RULE}): it "
                         "cannot name a file, folder or lock")
    return tenant


def child(directory: Path, *parts: str | int, what: str) -> Path:
    """directory/part1/part2..., each part checked by `file_name`."""
    path = Path(directory)
    for part in parts:
        path = path / file_name(part, what)
    return path
