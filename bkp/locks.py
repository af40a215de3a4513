"""Advisory file locks under $BKP_HOME/locks.

flock(2) is released by the kernel when the holder dies, so a crash never leaves a lock
that blocks the next night. The lock file records who holds it, for the refusal message.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from bkp import names
from bkp.catalog import utc_now
from bkp.errors import OperationError


class LockHeld(OperationError):
    """Someone else is working; nothing was done (a refusal, not a failed attempt)."""


def holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def exclusive(path: Path, what: str):
    """Hold an exclusive lock or fail at once with who holds it; never queue behind it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = holder(path)
            raise LockHeld(
                f"another {what} (pid {info.get('pid', '?')}, started "
                f"{info.get('started', '?')}) holds the lock {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": utc_now()}).encode())
        yield
    finally:
        os.close(fd)


def tenant_lock(locks: Path, tenant: str):
    """The lock of one tenant; its name is built from the tenant id, so only a full tenant
    id may build it (UnsafeName, exit 3, before anything is created)."""
    name = names.file_name(f"tenant-{names.tenant_part(tenant)}.lock", "lock")
    return exclusive(locks / name, f"bkp operation on tenant {tenant}")


def run_lock(locks: Path):
    return exclusive(locks / "run.lock", "run")
