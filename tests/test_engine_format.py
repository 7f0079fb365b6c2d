"""Frames: any record round-trips; limits and types are enforced; damage is detected."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.wal.format import (
    HEADER_SIZE,
    MAX_KEY,
    MAX_VALUE,
    FrameStatus,
    Record,
    RecordError,
    encode_frame,
    encode_frame_v1,
    parse_frame,
)
from daemon.wal.reader import CLEAN, CORRUPT, TORN, scan_buffer

keys = st.binary(min_size=1, max_size=64) | st.binary(min_size=MAX_KEY - 2, max_size=MAX_KEY)
values = st.binary(min_size=1, max_size=256)


@st.composite
def records(draw) -> Record:
    op = draw(st.sampled_from(["set", "del"]))
    cid = draw(st.none() | st.binary(min_size=1, max_size=64))
    rid = None if cid is None else draw(st.integers(0, 2**63 - 1))
    return Record(op, draw(keys), draw(values) if op == "set" else None, cid, rid)


@settings(max_examples=300, deadline=None)
@given(records(), st.integers(0, 2**64 - 1))
def test_any_record_round_trips(rec, epoch):
    frame = encode_frame(rec, epoch)
    status, parsed = parse_frame(frame, 0, base=1000)
    assert status == FrameStatus.OK
    assert parsed.record() == rec and parsed.epoch == epoch
    assert parsed.offset == 1000 and parsed.size == len(frame)


def test_size_limits():
    Record("set", b"k" * MAX_KEY, b"v" * MAX_VALUE)  # the largest record is accepted
    encode_frame(Record("set", b"k" * MAX_KEY, b"v" * MAX_VALUE), 1)
    for bad in (
        lambda: Record("set", b"k" * (MAX_KEY + 1), b"v"),
        lambda: Record("set", b"k", b"v" * (MAX_VALUE + 1)),
        lambda: Record("set", b"", b"v"),
        lambda: Record("set", b"k", b""),
    ):
        with pytest.raises(RecordError):
            bad()


@pytest.mark.parametrize("args", [
    ("set", "str-key", b"v"), ("set", b"k", 42), ("put", b"k", b"v"), ("del", b"k", b"v"),
    ("set", b"k", b"v", b"cid", None), ("set", b"k", b"v", b"cid", -1), ("set", b"k", b"v", "cid", 1),
    ("set", b"k", b"v", b"c" * 65, 1), ("set", b"k", None),
])
def test_bad_types_rejected(args):
    with pytest.raises(RecordError):
        Record(*args)


def test_header_fields_are_covered_by_the_crc():
    frame = bytearray(encode_frame(Record("set", b"key", b"value"), 7))
    for pos in range(0, HEADER_SIZE):
        damaged = bytearray(frame)
        damaged[pos] ^= 0x01
        status, parsed = parse_frame(bytes(damaged), 0)
        assert parsed is None, f"flipped header byte {pos} went unnoticed"


def log_of(n: int, seed: int = 1) -> tuple[bytes, list[tuple[int, Record]]]:
    rnd = random.Random(seed)
    out, placed = b"", []
    for i in range(n):
        r = Record("set", f"key{i}".encode(), rnd.randbytes(rnd.randrange(1, 80)))
        placed.append((len(out), r))
        out += encode_frame(r, 1)
    return out, placed


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_flipped_bytes_are_detected_never_misread(data):
    buf, placed = log_of(8, seed=data.draw(st.integers(0, 50)))
    damaged = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        damaged[pos] ^= data.draw(st.integers(1, 255))
    seen = []
    result = scan_buffer(bytes(damaged), on_frame=lambda f, r: seen.append((f.offset, r)))
    if bytes(damaged) != buf:
        assert result.status in (TORN, CORRUPT)
    # Whatever was read as valid is exactly what was written there.
    assert seen == placed[: len(seen)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_never_crash_the_scanner(garbage):
    result = scan_buffer(garbage)
    assert result.status in (CLEAN, TORN, CORRUPT)
    assert 0 <= result.valid_end <= len(garbage)


def test_middle_corruption_is_named_with_its_offset():
    buf, placed = log_of(10)
    damaged = bytearray(buf)
    third = placed[2][0]
    damaged[third + HEADER_SIZE + 2] ^= 0xFF
    r = scan_buffer(bytes(damaged))
    assert r.status == CORRUPT and r.bad_offset == third and r.records == 2
    assert f"valid frame at offset {placed[3][0]}" in r.reason


def test_zero_filled_tail_is_torn_and_impossible_length_is_torn_only_at_the_end():
    buf, _ = log_of(3)
    r = scan_buffer(buf + bytes(4096))
    assert r.status == TORN and r.valid_end == len(buf)
    bogus = bytearray(encode_frame_v1(Record("set", b"k", b"v"), 1))  # v1: the length has no checksum
    bogus[4:8] = (2**31).to_bytes(4, "little")
    r = scan_buffer(buf + bytes(bogus))
    assert r.status == TORN and r.valid_end == len(buf) and "impossible record length" in r.reason
    v2 = bytearray(encode_frame(Record("set", b"k", b"v"), 1))  # v2: the header's checksum fails first
    v2[4:8] = (2**31).to_bytes(4, "little")
    r = scan_buffer(buf + bytes(v2))
    assert r.status == TORN and r.valid_end == len(buf) and "fails its checksum" in r.reason
    later = encode_frame(Record("set", b"k2", b"v2"), 1)
    r = scan_buffer(buf + bytes(bogus) + later)
    assert r.status == CORRUPT and r.bad_offset == len(buf)


def test_garbage_tail_with_a_bad_magic_is_torn():
    """Stale blocks after a crash (ext4 data=writeback): a whole header's
    worth of garbage with no valid frame after it cannot hide a record."""
    buf, _ = log_of(3)
    garbage = bytes(range(1, 256)) * 16  # non-zero, no zwal marker in it
    r = scan_buffer(buf + garbage)
    assert r.status == TORN and r.valid_end == len(buf) and "garbage tail" in r.reason
    bad_magic = bytearray(encode_frame(Record("set", b"k", b"v"), 1))
    bad_magic[16] ^= 0xFF
    r = scan_buffer(buf + bytes(bad_magic))
    assert r.status == TORN and r.valid_end == len(buf)


def test_garbage_followed_by_a_valid_frame_stays_corrupt():
    buf, _ = log_of(3)
    garbage = bytes(range(1, 256)) * 4
    later = encode_frame(Record("set", b"k2", b"v2"), 1)
    r = scan_buffer(buf + garbage + later)
    assert r.status == CORRUPT and r.bad_offset == len(buf) and "followed by a valid frame" in r.reason
