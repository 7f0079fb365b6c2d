"""Reading a log: iterate frames, and classify how a log ends.

The classification is what recovery acts on, so it is deliberately
conservative: only a tail that cannot hide a later valid record is "torn";
anything that could be the middle of the log is "corrupt", and corrupt logs
are never modified automatically.

A version-2 header that passes its own checksum is trusted for its length:
the frame's bytes are its own, so a value that happens to contain a valid
frame is never taken for a later record. Its body running past the end of
the file is a torn write, whatever landed (docs/format.md).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .format import (
    MAGIC_BYTES,
    MARKER_OFFSET,
    MAX_FRAME,
    MAX_PAYLOAD,
    Frame,
    FrameStatus,
    Record,
    RecordError,
    decode_payload,
    frame_sizes,
    parse_frame,
    trusted_frame_end,
)

CLEAN = "clean"
TORN = "torn"
CORRUPT = "corrupt"

# A long recovery reports progress this often, so an operator watching a
# large log replay sees it move.
PROGRESS_EVERY_S = 2.0


@dataclass
class ScanResult:
    """How a log ends, and what its valid prefix holds."""

    status: str
    valid_end: int  # offset just after the last valid frame
    file_size: int
    records: int
    last_epoch: int  # epoch of the last valid frame (0 if none)
    epoch_starts: list[tuple[int, int]] = field(default_factory=list)  # (epoch, first offset)
    bad_offset: int | None = None
    reason: str = ""
    seconds: float = 0.0
    v1_records: int = 0  # valid frames of version 1 (written before format v2) in the valid prefix
    # With `replay_from` (a snapshot's offset): the first frame boundary at or
    # after it, where decoding and `on_frame` began, and how many records
    # were decoded from there. Without: 0 and `records`.
    replayed_from: int = 0
    replayed: int = 0

    @property
    def dropped(self) -> int:
        return self.file_size - self.valid_end if self.status == TORN else 0

    def describe(self) -> str:
        if self.status == CLEAN:
            return f"clean: {self.records} records, end offset {self.valid_end}"
        if self.status == TORN:
            return (
                f"torn tail at offset {self.bad_offset}: {self.dropped} bytes after the last "
                f"valid record ({self.reason}); {self.records} valid records end at {self.valid_end}"
            )
        return (
            f"corruption at offset {self.bad_offset}: {self.reason}; "
            f"{self.records} valid records before it"
        )


class LogOpenError(Exception):
    """The log path cannot be opened as a log (missing, a directory, unreadable)."""


def open_for_read(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LogOpenError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LogOpenError(f"{path}: is a directory, not a log file") from None
    except PermissionError:
        raise LogOpenError(f"{path}: permission denied") from None
    except OSError as e:
        raise LogOpenError(f"{path}: {e.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise LogOpenError(f"{path}: is a directory, not a log file")
    return fd


class _Mapped:
    """A read-only view of a whole file; empty files get an empty bytes."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self._mm: mmap.mmap | None = None
        if self.size:
            self._mm = mmap.mmap(fd, self.size, prot=mmap.PROT_READ)
            self.buf: bytes | mmap.mmap = self._mm
        else:
            self.buf = b""

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()

    def __enter__(self) -> "_Mapped":
        return self

    def __exit__(self, *a: object) -> None:
        self.close()


def _is_zero(buf: bytes | mmap.mmap, start: int, end: int) -> bool:
    step = 1 << 20
    for p in range(start, end, step):
        chunk = buf[p : min(end, p + step)]
        if chunk.count(0) != len(chunk):
            return False
    return True


# What a search after damage takes as proof that a later, intact record was
# written: a whole valid frame only. A v2 header that passes its checksum but
# whose body is short or fails its checksum is itself damaged: cutting it
# loses nothing intact, and the cut is marked (damaged_end) so that the
# records are repaired from the followers (Protocol-Aware Recovery). Counting
# such a header as "a later record" refused to start a leader whose last two
# records were damaged, which its followers could have repaired.
_LATER_RECORD = (FrameStatus.OK,)


def find_valid_frame_after(buf: bytes | mmap.mmap, start: int) -> int | None:
    """Offset of the first position > start where a later intact record shows:
    a whole valid frame of either version."""
    size = len(buf)
    search = start + 1 + MARKER_OFFSET
    while True:
        idx = buf.find(MAGIC_BYTES, search)
        if idx < 0:
            return None
        cand = idx - MARKER_OFFSET
        status, _ = parse_frame(buf, cand)
        if status in _LATER_RECORD:
            return cand
        search = idx + 1
        if search >= size:
            return None


def classify_tail(buf: bytes | mmap.mmap, pos: int, status: str) -> tuple[str, str]:
    """Decide whether the bad bytes at pos are a torn tail or corruption."""
    size = len(buf)
    if status == FrameStatus.SHORT_BODY:
        # The header passed its checksum, so its length is the record's: the
        # bytes after it are this record's, never a later one, whatever they
        # hold (a client's value may contain a whole valid frame).
        claimed = trusted_frame_end(buf, pos) - pos
        return TORN, (f"incomplete last record: its header passes its checksum and claims {claimed} bytes, "
                      f"{size - pos} are there")
    if _is_zero(buf, pos, size):
        return TORN, f"{size - pos} zero bytes (unwritten space after a crash)"
    if status == FrameStatus.BAD_BODY_CRC:
        # The frame's end is known: a later record can only start after it.
        end = trusted_frame_end(buf, pos)
        if end < size and not _is_zero(buf, end, size):
            later = find_valid_frame_after(buf, end - 1)
            if later is not None:
                return CORRUPT, (f"bad frame ({status}: its header is valid, its payload is not) "
                                 f"followed by a valid frame at offset {later}")
            return TORN, "last record fails its body checksum, and the garbage after it holds no valid record"
        return TORN, "last record fails its body checksum (its header is valid; its payload did not all land)"
    later = find_valid_frame_after(buf, pos)
    if later is not None:
        return CORRUPT, f"bad frame ({status}) followed by a valid frame at offset {later}"
    if status == FrameStatus.BAD_HEADER_CRC:
        return TORN, "garbage tail: a header that fails its checksum and no valid record after it"
    if status == FrameStatus.BAD_HEADER:
        # Nothing valid follows, so these bytes cannot hide a record: stale
        # blocks a crash left at the end of the file (ext4 data=writeback,
        # a reused block) or the damaged header of the last record. Recovery
        # cuts them, saves them aside and notes the cut (damaged_end).
        length = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if length > MAX_PAYLOAD or length == 0:
            return TORN, f"garbage tail: impossible record length {length} and no valid record after it"
        return TORN, "garbage tail: header with a wrong magic, version or flags and no valid record after it"
    if status == FrameStatus.SHORT:
        return TORN, "incomplete last record"
    return TORN, "last record fails its checksum"


def scan_buffer(
    buf: bytes | mmap.mmap,
    on_frame: Callable[[Frame, Record], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    replay_from: int = 0,
) -> ScanResult:
    """Walk every frame of `buf`, classify its end; decode and hand to `on_frame` the frames from `replay_from`.

    Frames below `replay_from` (the prefix a snapshot already holds) are
    still checked (header and checksums: a torn tail or mid-log damage is
    found wherever it is) but not decoded nor applied: that is most of the
    cost of a replay (docs/format.md, "Snapshots")."""
    t0 = time.monotonic()
    size = len(buf)
    pos = 0
    records = 0
    v1 = 0
    last_epoch = 0
    starts: list[tuple[int, int]] = []
    next_progress = t0 + PROGRESS_EVERY_S
    replayed_from: int | None = None if replay_from > 0 else 0
    skipped = 0

    def result(status: str, bad: int | None, reason: str) -> ScanResult:
        first = min(replayed_from if replayed_from is not None else pos, pos)
        return ScanResult(status, pos, size, records, last_epoch, starts, bad, reason, time.monotonic() - t0, v1,
                          first, records - skipped)

    while pos < size:
        status, frame = parse_frame(buf, pos)
        if frame is None:
            verdict, reason = classify_tail(buf, pos, status)
            return result(verdict, pos, reason)
        if frame.epoch != last_epoch or not starts:
            if starts and frame.epoch < last_epoch:
                return result(CORRUPT, pos, f"epoch goes backwards ({last_epoch} -> {frame.epoch})")
            starts.append((frame.epoch, pos))
            last_epoch = frame.epoch
        if pos < replay_from:
            skipped += 1  # the snapshot holds it: checked, not decoded
        else:
            if replayed_from is None:
                replayed_from = pos
            try:
                record = decode_payload(frame.payload)
            except RecordError as e:
                return result(CORRUPT, pos, f"record passes its checksum but its payload is invalid: {e}")
            if on_frame is not None:
                on_frame(frame, record)
        records += 1
        if frame.version == 1:
            v1 += 1
        pos += frame.size
        if progress is not None and (records & 0x3FF) == 0:
            now = time.monotonic()
            if now >= next_progress:
                progress(pos, size)
                next_progress = now + PROGRESS_EVERY_S
    return result(CLEAN, None, "")


def scan_fd(
    fd: int,
    on_frame: Callable[[Frame, Record], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    replay_from: int = 0,
) -> ScanResult:
    with _Mapped(fd) as m:
        return scan_buffer(m.buf, on_frame, progress, replay_from)


def scan_path(path: str, on_frame: Callable[[Frame, Record], None] | None = None) -> ScanResult:
    fd = open_for_read(path)
    try:
        return scan_fd(fd, on_frame)
    finally:
        os.close(fd)


def iter_frames(path: str, start: int = 0) -> Iterator[Frame]:
    """Valid frames from `start` (which must be a frame boundary) to the first bad one."""
    fd = open_for_read(path)
    try:
        with _Mapped(fd) as m:
            pos = start
            while True:
                status, frame = parse_frame(m.buf, pos)
                if frame is None:
                    return
                yield frame
                pos += frame.size
    finally:
        os.close(fd)


def sha256_file(path: str) -> str:
    """Digest of a whole log file: how replicas are compared byte for byte."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_chunk(fd: int, offset: int, end: int, max_bytes: int) -> bytes:
    """Whole frames in [offset, end), at most max_bytes (or one frame if larger).

    Reads the file with pread, so a catch-up of a large log never holds more
    than one chunk in memory. The caller's log is already verified up to
    `end`, so frame boundaries are taken from the headers.
    """
    want = min(end - offset, max(max_bytes, MAX_FRAME))
    if want <= 0:
        return b""
    data = os.pread(fd, want, offset)
    sizes = frame_sizes(data)
    total = 0
    for s in sizes:
        if total + s > max_bytes and total > 0:
            break
        total += s
    return data[:total]
