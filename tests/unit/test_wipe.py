"""The overwrite/read-back engine on real files: patterns, plans, hashes, mismatches, errors."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os

import pytest

from bkp.media import wipe

MIB = 1 << 20


def image(path, size: int, content: bytes | None = None):
    with open(path, "wb") as fh:
        fh.write(content if content is not None else os.urandom(size))
    return str(path)


def handles_for(path) -> wipe.Handles:
    return wipe.open_handles(str(path), os.path.getsize(path), block_device=False)


def sha256_file(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_ranges(path, ranges) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for offset, length in ranges:
            fh.seek(offset)
            digest.update(fh.read(length))
    return digest.hexdigest()


# ---------------------------------------------------------------- patterns

def test_random_stream_is_seekable_and_seeded():
    seed = bytes(range(32))
    whole = bytearray(64 * 1024)
    wipe.StreamPattern(seed).fill(memoryview(whole), 0)
    part = bytearray(4096)
    wipe.StreamPattern(seed).fill(memoryview(part), 8192)
    assert part == whole[8192:8192 + 4096]
    other = bytearray(4096)
    wipe.StreamPattern(bytes(32)).fill(memoryview(other), 8192)
    assert other != part
    assert len(set(whole)) > 200  # looks random, not a constant


def test_random_stream_needs_block_addressing():
    with pytest.raises(ValueError):
        wipe.StreamPattern(bytes(32)).fill(memoryview(bytearray(16)), 8)


def test_constant_patterns():
    buf = bytearray(10_000)
    wipe.ONES.fill(memoryview(buf), 0)
    assert buf == b"\xff" * 10_000
    wipe.ZERO.fill(memoryview(buf), 0)
    assert buf == bytes(10_000)


# ---------------------------------------------------------------- plans

def covered(ranges, start, end) -> bool:
    return any(offset < end and offset + length > start for offset, length in ranges)


@pytest.mark.parametrize("size", [64 * MIB, 1 << 30, 3 * (1 << 30) + 12 * 4096,
                                  1000 * 2 * 4096 + 512])
def test_sample_plan_follows_nist_800_88(size):
    seed = b"seed-one"
    ranges = wipe.sample_plan(size, seed)
    assert ranges == sorted(ranges)
    assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    assert all(offset % 4096 == 0 for offset, _ in ranges)
    assert ranges[0][0] == 0  # the first block
    assert ranges[-1][0] + ranges[-1][1] == size  # the last block
    assert wipe.planned_bytes(ranges) >= 0.10 * size
    # one range in each of at least 1000 equal subsections
    span = (size // 4096 // 1000) * 4096  # the last subsection runs to the end
    assert all(covered(ranges, i * span, size if i == 999 else (i + 1) * span)
               for i in range(1000))
    assert wipe.sample_plan(size, seed) == ranges  # reproducible from the recorded seed
    assert wipe.sample_plan(size, b"seed-two") != ranges


def test_small_medium_is_read_in_full():
    assert wipe.sample_plan(4 * MIB, b"s") == [(0, 4 * MIB)]


def test_merge_ranges():
    assert wipe.merge_ranges([(10, 5), (0, 4), (4, 2), (12, 10)]) == [(0, 6), (10, 12)]


# ---------------------------------------------------------------- write and read back

@pytest.mark.parametrize("name", ["zero", "ones", "random"])
def test_write_then_full_read_back_hash_equals_sha256_of_the_file(tmp_path, name):
    path = image(tmp_path / "disk.img", 20 * MIB + 4096)
    pattern = wipe.pattern_named(name, os.urandom(32))
    handles = handles_for(path)
    try:
        written = wipe.write_pass(handles, pattern)
        result = wipe.read_back(handles, wipe.full_plan(handles.size), pattern, "full")
    finally:
        handles.close()
    assert written.bytes_written == handles.size and written.io_errors == 0
    assert result.clean and result.bytes_read == handles.size
    assert result.hash == sha256_file(path)
    expected = bytearray(handles.size)
    pattern.fill(memoryview(expected), 0)
    with open(path, "rb") as fh:
        assert fh.read() == expected


def test_odd_sized_image_gets_its_unaligned_tail_written(tmp_path):
    path = image(tmp_path / "odd.img", 3 * MIB + 777)
    handles = handles_for(path)
    try:
        wipe.write_pass(handles, wipe.ZERO)
        result = wipe.read_back(handles, wipe.full_plan(handles.size), wipe.ZERO, "full")
    finally:
        handles.close()
    assert result.clean
    with open(path, "rb") as fh:
        assert fh.read() == bytes(3 * MIB + 777)


def test_sample_read_back_hashes_the_sampled_ranges_in_address_order(tmp_path):
    path = image(tmp_path / "disk.img", 48 * MIB)
    seed = os.urandom(32)
    pattern = wipe.StreamPattern(seed)
    ranges = wipe.sample_plan(48 * MIB, b"sample-seed")
    handles = handles_for(path)
    try:
        wipe.write_pass(handles, pattern)
        result = wipe.read_back(handles, ranges, pattern, "sample")
    finally:
        handles.close()
    assert result.clean and result.bytes_read == wipe.planned_bytes(ranges)
    assert result.hash == sha256_ranges(path, ranges)


def test_read_back_counts_blocks_that_differ(tmp_path):
    path = image(tmp_path / "disk.img", 16 * MIB)
    handles = handles_for(path)
    try:
        wipe.write_pass(handles, wipe.ZERO)
        with open(path, "r+b") as fh:  # a second writer, after the wipe
            fh.seek(5 * MIB + 100)
            fh.write(b"patient record")
            fh.seek(9 * MIB)
            fh.write(b"\x01" * 8192)
        result = wipe.read_back(handles, wipe.full_plan(handles.size), wipe.ZERO, "full")
    finally:
        handles.close()
    assert not result.clean
    assert result.mismatched_blocks == 3
    assert result.first_mismatch == 5 * MIB
    assert result.hash == sha256_file(path)  # still the hash of what is there


def test_unreadable_blocks_are_counted_and_left_out_of_the_hash(tmp_path):
    path = image(tmp_path / "disk.img", 12 * MIB)
    bad_offset = 8 * MIB + 3 * 4096

    def failing_reader(fd, buffers, offset):
        view = buffers[0]
        if offset <= bad_offset < offset + len(view):
            raise OSError(errno.EIO, "Input/output error")
        return os.preadv(fd, buffers, offset)

    handles = handles_for(path)
    try:
        wipe.write_pass(handles, wipe.ZERO)
        result = wipe.read_back(handles, wipe.full_plan(handles.size), wipe.ZERO, "full",
                                reader=failing_reader)
    finally:
        handles.close()
    assert result.io_errors == 1 and not result.clean
    assert result.bytes_read == 12 * MIB - 4096
    assert result.mismatched_blocks == 0
    readable = [(0, bad_offset), (bad_offset + 4096, 12 * MIB - bad_offset - 4096)]
    assert result.hash == sha256_ranges(path, readable)


def test_progress_is_reported(tmp_path):
    path = image(tmp_path / "disk.img", 20 * MIB)
    seen = []
    handles = handles_for(path)
    try:
        wipe.write_pass(handles, wipe.ZERO, lambda phase, done, total: seen.append(
            (phase, done, total)))
    finally:
        handles.close()
    assert seen[-1] == ("write", 20 * MIB, 20 * MIB)
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)


def test_filesystem_without_direct_io_falls_back_to_buffered(tmp_path, monkeypatch):
    path = image(tmp_path / "disk.img", 2 * MIB)
    real_open = os.open

    def open_without_direct_io(file, flags, *args):
        # what older tmpfs and some network filesystems answer
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", open_without_direct_io)
    handles = handles_for(path)
    try:
        assert handles.direct is False
        wipe.write_pass(handles, wipe.ONES)
        result = wipe.read_back(handles, wipe.full_plan(handles.size), wipe.ONES, "full")
    finally:
        handles.close()
    assert result.clean and result.hash == sha256_file(path)
