"""restic 0.14 can hang after a failed pack upload: it keeps printing status and never
exits. On a local destination whose filesystem is full bkp sees why and stops it, instead
of waiting for the policy's timeout (seen in CI: a full disk held a night for 5 minutes)."""

from __future__ import annotations

import json

from bkp.restic import FullDestinationStall, parse_backup_progress

MiB = 1 << 20


def status(done_bytes: int, files: int = 1, elapsed: int = 0) -> dict | None:
    """A status line of `restic backup --json`, as bkp parses it."""
    return line({"message_type": "status", "seconds_elapsed": elapsed,
                 "bytes_done": done_bytes, "files_done": files})


def line(text_or_object) -> dict | None:
    text = text_or_object if isinstance(text_or_object, str) else json.dumps(text_or_object)
    return parse_backup_progress(text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watcher(free: int, clock: Clock) -> FullDestinationStall:
    return FullDestinationStall("/srv/repo", clock=clock, free_bytes=lambda _path: free)


def test_a_full_destination_with_no_progress_stops_restic():
    clock = Clock()
    stall = watcher(7 * MiB, clock)
    assert stall.seen(status(10 * MiB)) is None
    clock.now += 5
    assert stall.seen(status(10 * MiB, elapsed=5)) is None  # too soon to call it a hang
    clock.now += 20
    assert stall.seen(status(10 * MiB, elapsed=25)) == "full"
    assert "7 MiB free" in stall.detail and "/srv/repo" in stall.detail


def test_no_progress_with_room_left_is_not_a_full_disk():
    clock = Clock()
    stall = watcher(10_000 * MiB, clock)
    stall.seen(status(10 * MiB))
    clock.now += 600
    assert stall.seen(status(10 * MiB, elapsed=600)) is None


def test_progress_resets_the_stall_clock():
    clock = Clock()
    stall = watcher(1 * MiB, clock)
    for step in range(10):
        clock.now += 10
        assert stall.seen(status((step + 1) * MiB, elapsed=step * 10)) is None


def test_lines_that_are_not_status_are_ignored():
    clock = Clock()
    stall = watcher(1 * MiB, clock)
    stall.seen(status(1 * MiB))
    clock.now += 60
    assert stall.seen(line("not json at all")) is None
    assert stall.seen(line({"message_type": "error", "error": "no space left"})) is None


def test_a_filesystem_that_cannot_be_asked_is_not_called_full():
    clock = Clock()

    def unreadable(_path):
        raise OSError("gone")

    stall = FullDestinationStall("/srv/repo", clock=clock, free_bytes=unreadable)
    stall.seen(status(1 * MiB))
    clock.now += 60
    assert stall.seen(status(1 * MiB)) is None
