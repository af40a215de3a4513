"""Helpers shared by the end-to-end and adversarial tests."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest


def big_file(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))


def popen_bkp(bkp_env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bkp", *args], env=bkp_env.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def restic_running_for(repo: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"restic") and repo.encode() in args:
            return True
    return False


def restic_locks(repo: str) -> list[Path]:
    # A killed local-backend write can leave a "-tmp-" file beside the locks: not a lock.
    return [p for p in (Path(repo) / "locks").iterdir() if "-tmp-" not in p.name]


class PingRecorder(http.server.BaseHTTPRequestHandler):
    pings: ClassVar[list] = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        PingRecorder.pings.append((self.path, self.rfile.read(length).decode()))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_pings():
    """A Healthchecks.io stand-in on loopback: (base URL, list of (path, body) received)."""
    PingRecorder.pings = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PingRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", PingRecorder.pings
    server.shutdown()




def restic_doing(subcommand: str, fragment: str) -> bool:
    """Whether a restic process runs `subcommand` on a repository whose URL contains
    `fragment` (a tenant name is unique per test)."""
    return bool(restic_pids(subcommand, fragment))


def restic_pids(subcommand: str, fragment: str) -> list[int]:
    """The pids of the restic processes restic_doing finds."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = [a.decode(errors="replace") for a in cmdline.read_bytes().split(b"\0")]
        except OSError:
            continue
        if (args and args[0].endswith("restic") and subcommand in args
                and any(fragment in a for a in args)):
            found.append(int(cmdline.parent.name))
    return found


def gone(pids: list[int]) -> bool:
    """Whether every one of `pids` has left the process table. A killed process is a
    zombie (no command line, still there) until it is reaped, and restic takes a zombie's
    lock for a live one."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def command_lines() -> list[str]:
    """The argument list of every process on the host, as `ps` shows them to anyone."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@contextlib.contextmanager
def read_only_view(path: Path):
    """`path` itself, bind-mounted read-only over itself (we are root)."""
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
