"""Evidence from the drive itself that a hardware erase happened.

A drive's own erase (ATA SECURITY ERASE, SANITIZE, NVMe Format/Sanitize) is a command bkp
cannot watch: a drive or a tool that reports success and erases nothing is a known failure
(an imaging tool's `nvme format` without a secure-erase setting erased nothing for years and
reported success). And a blank range read after the erase proves nothing: it may have been
blank before. So before the erase bkp writes random markers into sample ranges of the
medium (the first and the last block and one block in each of equal subsections), reads
them back, and afterwards requires every marker gone, plus what the command promises (an
overwrite leaves zeros). The markers derive from a recorded seed, so an auditor can
regenerate them.

Markers alone are not enough: a drive (or tool) that erases only what was written lately,
its write journal, removes every marker and none of the data. So bkp also keeps the
SHA-256 of other sampled blocks that held data (never the data itself) and requires every
one of them changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from bkp.errors import OperationError
from bkp.media import wipe

BLOCK = wipe.ALIGN
COUNT = 64  # sample ranges: first and last block and one per subsection between

# What each hardware command promises about the content it leaves, beyond "not the data":
# an argv word -> (promise, the byte values a block may consist of).
PROMISES = {
    "--security-erase": ("every block all 0x00 or all 0xFF (ATA normal erase)",
                         (0x00, 0xFF)),
    "--sanitize-overwrite": ("every block all 0x00 (overwrite)", (0x00,)),
    "--sanact=3": ("every block all 0x00 (overwrite)", (0x00,)),
}


@dataclass(frozen=True)
class MarkerPlan:
    seed: bytes
    offsets: tuple[int, ...]

    def marker(self, offset: int) -> bytes:
        """The marker of one block: SHA-256 in counter mode over the seed and offset."""
        out = bytearray()
        counter = 0
        while len(out) < BLOCK:
            out += hashlib.sha256(self.seed + offset.to_bytes(8, "big")
                                  + counter.to_bytes(4, "big")).digest()
            counter += 1
        return bytes(out[:BLOCK])


def plan(size: int, seed: bytes | None = None, count: int = COUNT) -> MarkerPlan:
    """Block-aligned offsets spread over the whole medium, the first and last included."""
    seed = seed if seed is not None else os.urandom(16)
    blocks = size // BLOCK
    if blocks <= 0:
        return MarkerPlan(seed, ())
    if blocks <= count:
        return MarkerPlan(seed, tuple(b * BLOCK for b in range(blocks)))
    chosen = {0, blocks - 1}
    # One pick in each subsection of the blocks between the first and the last: never one
    # of those two again, so the plan holds `count` distinct blocks.
    span = (blocks - 2) / (count - 2)
    for index in range(count - 2):
        start = 1 + int(index * span)
        width = max(1 + int((index + 1) * span) - start, 1)
        pick = int.from_bytes(hashlib.sha256(seed + index.to_bytes(4, "big")).digest()[:8],
                              "big") % width
        chosen.add(start + pick)
    return MarkerPlan(seed, tuple(sorted(b * BLOCK for b in chosen)))


@dataclass(frozen=True)
class DataSample:
    """Blocks that held data before the erase, by offset, as SHA-256 digests only."""

    digests: tuple[tuple[int, bytes], ...]


def sample_data(handles: wipe.Handles, size: int, markers: MarkerPlan) -> DataSample:
    """Before the markers are written: other sampled blocks, spread like the markers but
    from another secret seed; a uniform block (blank) proves nothing and is left out."""
    taken = set(markers.offsets)
    digests = []
    for offset in plan(size).offsets:
        if offset in taken:
            continue
        block = _read(handles, offset)
        if len(set(block)) > 1:
            digests.append((offset, hashlib.sha256(block).digest()))
    return DataSample(tuple(digests))


def promise_of(hardware: list[list[str]]) -> tuple[str, tuple[int, ...]] | None:
    for argv in hardware:
        for word in argv:
            if word in PROMISES:
                return PROMISES[word]
    return None


def write(handles: wipe.Handles, markers: MarkerPlan) -> None:
    """Write every marker and read it back from the medium: a drive that does not keep what
    is written cannot show that an erase removed anything (OperationError)."""
    for offset in markers.offsets:
        _pwrite_all(handles.buffered_fd, markers.marker(offset), offset)
    os.fsync(handles.buffered_fd)
    missing = [o for o in markers.offsets if _read(handles, o) != markers.marker(o)]
    if missing:
        raise OperationError(f"{len(missing)} of {len(markers.offsets)} markers written "
                             f"before the erase cannot be read back (first at byte "
                             f"{missing[0]}); the medium does not keep what is written")


def check(handles: wipe.Handles, markers: MarkerPlan,
          promise: tuple[str, tuple[int, ...]] | None, data: DataSample | None = None) -> dict:
    """After the erase: which markers are gone, whether the promised content is there, and
    which sampled blocks of data still hold what they held before."""
    present, broken = [], []
    unchanged = [offset for offset, digest in (data.digests if data else ())
                 if hashlib.sha256(_read(handles, offset)).digest() == digest]
    for offset in markers.offsets:
        block = _read(handles, offset)
        if block == markers.marker(offset):
            present.append(offset)
        elif promise and not any(block == bytes([value]) * BLOCK for value in promise[1]):
            broken.append(offset)
    count = len(markers.offsets)
    return {"count": count, "gone": count - len(present), "block": BLOCK,
            "seed": markers.seed.hex(), "still_present": present[:20],
            "promise": promise[0] if promise else None,
            "promise_kept": None if promise is None else not broken,
            "promise_broken": broken[:20],
            "data_sampled": len(data.digests) if data else None,
            "data_unchanged": len(unchanged) if data else None,
            "data_unchanged_at": unchanged[:20]}


def problem(result: dict) -> str | None:
    """Why the markers show the erase did not happen as promised; None when they don't."""
    parts = []
    if result["gone"] < result["count"]:
        parts.append(f"{result['count'] - result['gone']} of {result['count']} random "
                     f"markers written before the erase are still on the medium (first at "
                     f"byte {result['still_present'][0]}): the drive reported success but "
                     f"did not erase")
    if result.get("data_unchanged"):
        parts.append(f"{result['data_unchanged']} of {result['data_sampled']} sampled blocks "
                     f"that held data still hold what they held before the erase (first at "
                     f"byte {result['data_unchanged_at'][0]}): the drive erased what bkp "
                     f"wrote, not the data")
    if result["promise_kept"] is False:
        parts.append(f"the command promises {result['promise']}, but "
                     f"{len(result['promise_broken'])} sampled blocks hold something else "
                     f"(first at byte {result['promise_broken'][0]})")
    return "; ".join(parts) or None


def _read(handles: wipe.Handles, offset: int) -> bytes:
    """One block from the medium itself, never from the page cache: the drive erased it
    underneath the kernel, which would otherwise show what it cached before."""
    if handles.direct:
        buf = wipe.AlignedBuffer(BLOCK)
        try:
            done = os.preadv(handles.read_fd, [buf.view], offset)
            return bytes(buf.view[:done])
        finally:
            buf.view.release()
            buf.mm.close()
    os.posix_fadvise(handles.buffered_read_fd, offset, BLOCK, os.POSIX_FADV_DONTNEED)
    return os.pread(handles.buffered_read_fd, BLOCK, offset)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OperationError(f"the medium ended before byte {offset}")
        view, offset = view[written:], offset + written
