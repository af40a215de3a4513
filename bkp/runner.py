"""The one place that starts processes.

Every child runs in its own process group so that a timeout or an interrupt of bkp kills
the whole tree (restic starts ssh). The command is logged with secrets masked, and the
last lines of output are kept for the error message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pwd
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bkp.runner")

TAIL_LINES = 20
# restic prints its message first and a Go stack trace after it: the first lines are kept
# too, or the cause would scroll out of the tail.
HEAD_LINES = 10
# Environment variables whose values are never logged, whatever their content.
SECRET_ENV_NAMES = frozenset({
    "RESTIC_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "B2_ACCOUNT_KEY",
    "PGPASSWORD", "MYSQL_PWD",
    "RESTIC_REPOSITORY",  # a REST location carries user:password
    "RESTIC_FROM_PASSWORD", "RESTIC_FROM_REPOSITORY",  # the source of restic copy
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
    stop_on_stdout: Callable[[str], str | None] | None = None,
    stdout_file: int | None = None,
    user: str | None = None,
    stdin_path: Path | None = None,
) -> Completed:
    """Run argv to completion; never raises for a non-zero exit, only for a missing program.

    `env` is added to the environment of the child only. `on_stdout_line` sees each
    stdout line as it arrives (progress); stdout is also returned unless capture_stdout is
    false (for commands that print gigabytes); with `stdout_file` (a file descriptor) stdout
    goes there untouched (binary output such as a database dump). `stop_when` sees each
    stderr line and returns a reason to stop the child at once (a cause that retrying
    cannot fix), or None; `stop_on_stdout` does the same for each stdout line (a child
    that keeps printing progress without making any). `user` runs the child as that
    system user (see `as_user`); `stdin_path` is a file bkp opens and the child reads as
    its stdin (the child itself may not be allowed to open it).
    """
    secrets = [s for s in secrets if s] + [v for k, v in (env or {}).items()
                                           if k in SECRET_ENV_NAMES and v]
    log.info("run: %s", redact(" ".join(argv), secrets))
    # Inherited variables such as RESTIC_REPOSITORY from an operator's shell must not
    # redirect a child to another repository.
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env_prefixes)}
    child_env.update(env or {})
    identity = as_user(user, child_env)
    started = time.monotonic()
    stdin_file = open(stdin_path, "rb") if stdin_path is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=(stdin_file if stdin_file is not None else
                   subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL),
            stdout=subprocess.PIPE if stdout_file is None else stdout_file,
            stderr=subprocess.PIPE,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            **identity,
        )
    finally:
        if stdin_file is not None:
            stdin_file.close()  # the child holds its own descriptor
    with _live_lock:
        _live.add(proc)
    try:
        stdout, tail, timed_out, stopped = _communicate(proc, timeout, on_stdout_line,
                                                        capture_stdout, stdin_data, stop_when,
                                                        stop_on_stdout)
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


def _communicate(proc, timeout, on_stdout_line, capture_stdout, stdin_data, stop_when=None,
                 stop_on_stdout=None):
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
        if proc.stdout is None:  # it goes to a file
            return
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if capture_stdout:
                chunks.append(line)
            if on_stdout_line:
                on_stdout_line(line.rstrip("\n"))
            reason = stop_on_stdout(line) if stop_on_stdout and not stopped else None
            if reason:
                stopped.append(reason)
                terminate(proc, grace=2.0)

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


def as_user(user: str | None, env: dict[str, str]) -> dict:
    """Popen arguments that run a child as the system user `user` (None: as bkp itself),
    with only that user's group, and HOME/USER/LOGNAME set to match in `env`.

    PostgreSQL refuses to run as root, and a scratch server that loads a tenant's dump
    should not run as root anyway: a hostile dump then acts with that user's rights only."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise FileNotFoundError(f"system user {user!r} does not exist") from None
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    if os.geteuid() == entry.pw_uid:
        return {}
    # extra_groups=[] drops root's supplementary groups, which the child would otherwise keep.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class Service:
    """A long-running child (a scratch database server) started by `start`."""

    def __init__(self, proc: subprocess.Popen, argv: list[str], log_file: Path):
        self.proc = proc
        self.argv = argv
        self.log_file = log_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, grace: float = 10.0, first: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal the service's process group (`first`, SIGTERM unless the service has a
        quicker way out), SIGKILL after `grace` seconds; its exit code."""
        terminate(self.proc, grace=grace, first=first)
        with _live_lock:
            _live.discard(self.proc)
        return self.proc.returncode


def start(argv: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None,
          cwd: str | None = None, user: str | None = None,
          drop_env_prefixes: tuple[str, ...] = ()) -> Service:
    """Start a long-running child whose stdout and stderr go to `log_file` (a pipe nobody
    reads would fill up and hang it). It dies with bkp (parent-death signal) and is
    stopped by `terminate_all`; its caller stops it with `Service.stop`."""
    log.info("start: %s", " ".join(argv))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env_prefixes)}
    child_env.update(env or {})
    identity = as_user(user, child_env)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=child_env, cwd=cwd,
                                start_new_session=True, preexec_fn=_die_with_parent,
                                **identity)
    with _live_lock:
        _live.add(proc)
    return Service(proc, list(argv), log_file)


class Conversation:
    """A child bkp talks to line by line (psql holding a transaction open), see `converse`."""

    def __init__(self, proc: subprocess.Popen, secrets: list[str]):
        self.proc = proc
        self._secrets = secrets
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._errors: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read_stdout(self) -> None:
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line:
                self._errors.append(line)

    @property
    def stderr_tail(self) -> str:
        return redact("\n".join(self._errors), self._secrets)

    def ended(self, timeout: float = 5.0) -> str:
        """Wait (up to `timeout`) for a child that stopped answering to end; its stderr."""
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self._stderr_reader.join(timeout=timeout)
        return self.stderr_tail

    def send(self, text: str) -> None:
        with suppress(BrokenPipeError):  # the child ended; the next read_line says so
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()

    def read_line(self, timeout: float | None) -> str | None:
        """The child's next stdout line, or None when it ended or said nothing within
        `timeout` seconds (None: wait as long as it runs)."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None


@contextmanager
def converse(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             secrets: Iterable[str] = (), drop_env_prefixes: tuple[str, ...] = (),
             grace: float = 10.0) -> Iterator[Conversation]:
    """Start argv with pipes to talk to; on leaving, close its stdin, give it `grace`
    seconds to end by itself, then stop its process group."""
    secrets = [s for s in secrets if s] + [v for k, v in (env or {}).items()
                                           if k in SECRET_ENV_NAMES and v]
    log.info("converse: %s", redact(" ".join(argv), secrets))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env_prefixes)}
    child_env.update(env or {})
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    with _live_lock:
        _live.add(proc)
    try:
        yield Conversation(proc, secrets)
    finally:
        with suppress(BrokenPipeError):
            proc.stdin.close()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            terminate(proc, grace=2.0)
        with _live_lock:
            _live.discard(proc)


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


def terminate(proc: subprocess.Popen, grace: float = 5.0,
              first: signal.Signals = signal.SIGTERM) -> None:
    """SIGTERM (or `first`) the child's process group, then SIGKILL what is left after
    `grace` seconds."""
    for sig in (first, signal.SIGKILL):
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


@dataclass
class Piped:
    """Two processes joined by bkp: what the producer wrote went to the consumer, unless the
    producer failed, in which case the consumer was killed before the end of its input."""

    producer: Completed
    consumer: Completed
    bytes: int | None  # None: not relayed through bkp


CHUNK = 1 << 20


def pipe(producer_argv: Sequence[str], consumer_argv: Sequence[str], *,
         producer_env: Mapping[str, str] | None = None,
         consumer_env: Mapping[str, str] | None = None,
         secrets: Iterable[str] = (), timeout: float | None = None,
         on_chunk: Callable[[bytes], None] | None = None,
         vet: Callable[[], str | None] | None = None,
         drop_env_prefixes: tuple[str, ...] = ()) -> Piped:
    """Stream the producer's stdout into the consumer's stdin, the end of the stream in
    bkp's hands.

    A consumer such as `restic backup --stdin` saves whatever arrived when its input ends,
    so a producer that failed halfway (a dump that lost its connection) must never let the
    input end normally: bkp holds the input open until the producer's exit status is known,
    and SIGKILLs the consumer, never told to finish, when the producer failed. Without
    `on_chunk` the producer writes straight into the pipe the consumer reads (no copy
    through Python), and bkp keeps a second write end of that pipe open: the consumer sees
    no end of input when the producer exits, only when bkp closes its end after judging.
    With `on_chunk` (to count what passes) bkp relays every chunk itself. `vet`, asked once
    the producer ended well, may still refuse the stream (a reason) before the consumer sees
    its end: a dump that exited 0 without its closing line. Piped.bytes is None when
    nothing was relayed (the consumer knows the size)."""
    secrets = [s for s in secrets if s]
    for env in (producer_env, consumer_env):
        secrets += [v for k, v in (env or {}).items() if k in SECRET_ENV_NAMES and v]
    log.info("run: %s | %s", redact(" ".join(producer_argv), secrets),
             redact(" ".join(consumer_argv), secrets))
    started = time.monotonic()
    relay = on_chunk is not None
    held: int | None = None  # bkp's write end of the consumer's input (direct mode)
    if relay:
        consumer = _start(consumer_argv, consumer_env, drop_env_prefixes, stdin=subprocess.PIPE)
    else:
        read_end, held = os.pipe()
        try:
            consumer = _start(consumer_argv, consumer_env, drop_env_prefixes, stdin=read_end)
        except BaseException:
            os.close(held)
            raise
        finally:
            os.close(read_end)
    try:
        producer = _start(producer_argv, producer_env, drop_env_prefixes,
                          stdout=subprocess.PIPE if relay else held)
    except BaseException:
        _kill(consumer)
        _close_fd(held)
        raise
    expired = threading.Event()

    def on_timeout() -> None:
        expired.set()
        _kill(consumer)
        terminate(producer, grace=2.0)

    watchdog = threading.Timer(timeout, on_timeout) if timeout else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    producer_tail: list[str] = []
    stderr_reader = threading.Thread(target=_collect_lines, args=(producer.stderr, producer_tail),
                                     daemon=True)
    stderr_reader.start()
    consumer_out: dict = {}
    consumer_reader = threading.Thread(target=_consumer_output, args=(consumer, consumer_out),
                                       daemon=True)
    consumer_reader.start()
    total: int | None = None
    try:
        if relay:
            total = _copy(producer, consumer, on_chunk)
        producer.wait()
        stderr_reader.join(timeout=5)
        refused = vet() if vet and producer.returncode == 0 and not expired.is_set() else None
        failed = producer.returncode != 0 or expired.is_set() or refused
        if failed:
            _kill(consumer)  # before its input ends: nothing half is saved
        fd, held = held, None
        _close_fd(fd)  # without a kill, the consumer now sees the end of its input
        if not failed:
            _close_quietly(consumer.stdin)
        consumer.wait()
    except BaseException:
        _kill(consumer)
        _close_fd(held)
        terminate(producer, grace=2.0)
        raise
    finally:
        if watchdog:
            watchdog.cancel()
        with _live_lock:
            _live.discard(producer)
            _live.discard(consumer)
    consumer_reader.join(timeout=5)
    duration = time.monotonic() - started
    timed_out = expired.is_set()
    made = Completed(list(producer_argv), producer.returncode,
                     "", redact("\n".join(producer_tail[-TAIL_LINES:]), secrets), duration,
                     timed_out, refused)
    used = Completed(list(consumer_argv), consumer.returncode, consumer_out.get("stdout", ""),
                     redact(consumer_out.get("stderr", ""), secrets), duration, timed_out)
    return Piped(made, used, total)


def _start(argv, env, drop_env_prefixes, stdin=subprocess.DEVNULL,
           stdout=subprocess.PIPE) -> subprocess.Popen:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(drop_env_prefixes)}
    child_env.update(env or {})
    proc = subprocess.Popen(list(argv), stdin=stdin, stdout=stdout,
                            stderr=subprocess.PIPE, env=child_env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    with _live_lock:
        _live.add(proc)
    return proc


def _copy(producer: subprocess.Popen, consumer: subprocess.Popen,
          on_chunk: Callable[[bytes], None] | None) -> int:
    total = 0
    source, sink = producer.stdout.fileno(), consumer.stdin
    while True:
        chunk = os.read(source, CHUNK)
        if not chunk:
            return total
        if on_chunk:
            on_chunk(chunk)
        try:
            sink.write(chunk)
        except (BrokenPipeError, ValueError, OSError):  # the consumer died (or was killed
            # by the watchdog): its exit status says why
            terminate(producer, grace=2.0)
            return total
        total += len(chunk)


def _collect_lines(stream, lines: list[str]) -> None:
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line:
            lines.append(line)
            del lines[:-(TAIL_LINES + HEAD_LINES)]


def _consumer_output(proc: subprocess.Popen, out: dict) -> None:
    tail: list[str] = []
    reader = threading.Thread(target=_collect_lines, args=(proc.stderr, tail), daemon=True)
    reader.start()
    out["stdout"] = proc.stdout.read().decode("utf-8", "replace")
    reader.join(timeout=5)
    out["stderr"] = "\n".join(tail[-TAIL_LINES:])


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _close_quietly(proc.stdin)


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _close_quietly(stream) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError, OSError):
        if stream:
            stream.close()
