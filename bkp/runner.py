"""The one place that starts processes.

Every child runs in its own process group so that a timeout or an interrupt of bkp kills
the whole tree (restic starts ssh). The command is logged with secrets masked, and the
last lines of output are kept for the error message.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("bkp.runner")

TAIL_LINES = 20
# restic prints its message first and a Go stack trace after it: the first lines are kept
# too, or the cause would scroll out of the tail.
HEAD_LINES = 10
# Environment variables whose values are never logged, whatever their content.
SECRET_ENV_NAMES = frozenset({
    "RESTIC_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "B2_ACCOUNT_KEY",
})

_live: set[subprocess.Popen] = set()
_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def _die_with_parent() -> None:
    # Children live in their own session (so a timeout kills restic and its ssh together),
    # which also means they would outlive a SIGKILLed bkp and keep writing to the repository
    # with nobody recording it. The kernel kills them when bkp dies.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
_live_lock = threading.Lock()


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr_tail: str
    duration_s: float
    timed_out: bool = False
    stopped: str | None = None  # why bkp stopped it early (see `stop_when`)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.stopped is None


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    secrets: Iterable[str] = (),
    on_stdout_line: Callable[[str], None] | None = None,
    capture_stdout: bool = True,
    stdin_data: bytes | None = None,
    cwd: str | None = None,
    drop_env_prefixes: tuple[str, ...] = (),
    stop_when: Callable[[str], str | None] | None = None,
) -> Completed:
    """Run argv to completion; never raises for a non-zero exit, only for a missing program.

    `env` is added to the environment of the child only. `on_stdout_line` sees each
    stdout line as it arrives (progress); stdout is also returned unless capture_stdout is
    false (for commands that print gigabytes). `stop_when` sees each stderr line and returns
    a reason to stop the child at once (a cause that retrying cannot fix), or None.
    """
    secrets = [s for s in secrets if s] + [v for k, v in (env or {}).items()
                                           if k in SECRET_ENV_NAMES and v]
    log.info("run: %s", redact(" ".join(argv), secrets))
    # Inherited variables such as RESTIC_REPOSITORY from an operator's shell must not
    # redirect a child to another repository.
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env_prefixes)}
    child_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    with _live_lock:
        _live.add(proc)
    try:
        stdout, tail, timed_out, stopped = _communicate(proc, timeout, on_stdout_line,
                                                        capture_stdout, stdin_data, stop_when)
    except BaseException:
        # Interrupted while waiting (a signal in this thread): the child is in its own
        # session and would outlive us.
        terminate(proc, grace=2.0)
        raise
    finally:
        with _live_lock:
            _live.discard(proc)
    duration = time.monotonic() - started
    stderr_tail = redact("\n".join(tail), secrets)
    if proc.returncode != 0:
        log.debug("exit %s after %.1fs: %s", proc.returncode, duration, stderr_tail[-500:])
    return Completed(list(argv), proc.returncode, stdout, stderr_tail, duration, timed_out,
                     stopped)


def _communicate(proc, timeout, on_stdout_line, capture_stdout, stdin_data, stop_when=None):
    head: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    seen = [0]
    chunks: list[str] = []
    stopped: list[str] = []

    def read_stderr():
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line:
                continue
            seen[0] += 1
            if len(head) < HEAD_LINES:
                head.append(line)
            else:
                tail.append(line)
            reason = stop_when(line) if stop_when and not stopped else None
            if reason:
                stopped.append(reason)
                terminate(proc, grace=2.0)

    def read_stdout():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if capture_stdout:
                chunks.append(line)
            if on_stdout_line:
                on_stdout_line(line.rstrip("\n"))

    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=read_stdout, daemon=True)]
    for t in readers:
        t.start()
    if stdin_data is not None:
        try:
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    # A blocking wait with a watchdog thread: wait(timeout=...) polls with sleeps of up to
    # 50 ms, which every restic call of every tenant would pay.
    expired = threading.Event()

    def on_timeout() -> None:
        expired.set()
        terminate(proc)

    watchdog = threading.Timer(timeout, on_timeout) if timeout else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    try:
        proc.wait()
    finally:
        if watchdog:
            watchdog.cancel()
    timed_out = expired.is_set()
    for t in readers:
        t.join(timeout=5)
    lines = head + (["..."] if seen[0] > len(head) + len(tail) else []) + list(tail)
    return "".join(chunks), lines, timed_out, (stopped[0] if stopped else None)


def interactive(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                secrets: Iterable[str] = (), drop_env_prefixes: tuple[str, ...] = ()) -> int:
    """Run argv on the operator's terminal (stdin, stdout and stderr inherited, in bkp's
    process group so that Ctrl-C reaches it, e.g. to end `restic mount`); its exit code."""
    secrets = [s for s in secrets if s] + [v for k, v in (env or {}).items()
                                           if k in SECRET_ENV_NAMES and v]
    log.info("run (interactive): %s", redact(" ".join(argv), secrets))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env_prefixes)}
    child_env.update(env or {})
    proc = subprocess.Popen(list(argv), env=child_env, preexec_fn=_die_with_parent)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child decides what ^C does
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def terminate_all() -> None:
    """Stop every child still running (bkp itself was told to stop)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        terminate(proc, grace=2.0)


def which(program: str) -> str | None:
    from shutil import which as _which

    return _which(program)
