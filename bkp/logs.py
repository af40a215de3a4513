"""Where bkp's log lines go: stderr with UTC timestamps, optionally a log file, and the
journal's priorities when systemd runs bkp (journald adds its own timestamps)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)sZ %(levelname)s %(name)s: %(message)s"
DATE = "%Y-%m-%dT%H:%M:%S"
# sd-daemon(3) priority prefixes, read by journald on a service's stderr.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}


class UtcFormatter(logging.Formatter):
    converter = time.gmtime


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITY.get(record.levelno, 6)}>{record.name}: {record.getMessage()}"


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{stat.st_dev}:{stat.st_ino}"


def setup(verbose: int, log_file: Path | None = None) -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if log_file else level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(JournalFormatter() if stderr_is_journal()
                         else UtcFormatter(FORMAT, DATE))
    root.addHandler(console)
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
        handler.setLevel(logging.INFO if verbose < 2 else logging.DEBUG)
        handler.setFormatter(UtcFormatter(FORMAT, DATE))
        root.addHandler(handler)
