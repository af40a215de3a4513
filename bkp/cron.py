"""The one owner of croniter: cron expressions for schedules and drill schedules.

croniter 7 asks `platform.architecture()` at import, to detect a 32-bit Python. That runs
`file -b` on the interpreter: a process start in every bkp command that reads a policy (a
thousand pods a night, and each `bkp status`). The pointer size answers the same question
without a process, so the import sees that answer instead.
"""

from __future__ import annotations

import platform
import struct


def _import_croniter():
    asked = platform.architecture

    def architecture(*args, **kwargs):
        if args or kwargs:
            return asked(*args, **kwargs)
        return f"{struct.calcsize('P') * 8}bit", "ELF"

    platform.architecture = architecture
    try:
        from croniter import croniter
    finally:
        platform.architecture = asked
    return croniter


croniter = _import_croniter()
