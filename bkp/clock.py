"""Whether this host's clock can be trusted: a time stamp is evidence only then.

Asked of the kernel itself (adjtimex, the call `timedatectl` reads NTPSynchronized from):
whichever daemon disciplines the clock (chrony, systemd-timesyncd, ntpd), the kernel
marks it unsynchronised until one does, and again when it loses its source. No process is
started and nothing is changed (modes = 0 only reads).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

TIME_ERROR = 5  # adjtimex's answer when the clock is not synchronised
STA_UNSYNC = 0x0040


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h> on 64-bit Linux: the fields read here come first; the
    # tail is padding the kernel may write into.
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("constant", ctypes.c_long),
                ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("padding", ctypes.c_int * 11)]


@dataclass(frozen=True)
class ClockState:
    synchronized: bool | None  # None: could not be told
    max_error_ms: float | None = None
    detail: str = ""

    def as_json(self) -> dict:
        return {"synchronized": self.synchronized, "max_error_ms": self.max_error_ms,
                "detail": self.detail}

    def describe(self) -> str:
        if self.synchronized is None:
            return f"clock synchronisation unknown ({self.detail})"
        if not self.synchronized:
            return "clock NOT synchronised: time stamps may be wrong"
        return f"clock synchronised (max error {self.max_error_ms:g} ms)"


def _libc():
    # glibc's name first: find_library runs `ldconfig -p`, a process start per command.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@functools.cache
def state() -> ClockState:
    """The kernel's view, once per process (a command takes seconds, not hours)."""
    try:
        libc = _libc()
        timex = _Timex()
        answer = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError) as exc:
        return ClockState(None, detail=f"adjtimex unavailable: {exc}")
    if answer < 0:
        return ClockState(None, detail=f"adjtimex failed (errno {ctypes.get_errno()})")
    synchronized = answer != TIME_ERROR and not timex.status & STA_UNSYNC
    return ClockState(synchronized, round(timex.maxerror / 1000, 3),
                      "kernel adjtimex: " + ("synchronised" if synchronized else
                                             "unsynchronised"))
