"""A node's log as a directory of segment files (docs/format.md, "What is on disk").

`<data_dir>/log/<base>.seg`, where `<base>` is the global offset of the
file's first byte, 20 digits, zero-padded. Offsets stay global: segment
boundaries are invisible to clients and followers.

Invariants this module protects:
- the segments are contiguous: each file's base + size is the next base
  (a gap or an overlap is refused, naming the files);
- a segment rolls only between batches (`plan_roll`): a batch is never split
  across files, so every segment starts and ends on a frame boundary;
- the new file and the directory are fsynced before anything is written to
  it, so an acknowledged byte never lives in a file whose name may vanish;
- only the last segment is ever written (and so only it may have a torn
  tail or an `.unsynced` note); sealed segments are opened read-only, and
  damage in one is refused, never cut;
- the log is locked as a whole (flock on the log directory), so no two
  processes append to one log, whichever segment is last.
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from daemon.ops import logs
from .format import Frame, Record, encode_frame
from .reader import CLEAN, CORRUPT, TORN, LogOpenError, ScanResult, iter_frames, read_chunk, scan_fd, scan_path
from .recovery import LogCorrupt, open_log
from .writer import (SyncError, SyncFn, WalError, WalFsyncError, WalPoisoned, WalWriteError, WalWriter, WriteFn, fsync_dir,
                     replace_json_durably, unsynced_note_path, write_full)

LOG_DIR = "log"
LEGACY_LOG = "wal.log"  # the single-file log of zwal before segments
SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_NAME = re.compile(r"^(\d{20})\.seg$")
# The oldest offset the log keeps, written before retention deletes anything
# below it (docs/format.md, "Retention").
OLDEST_NOTE = "oldest.json"
DELETED = ".deleted"


def segment_name(base: int) -> str:
    return f"{base:020d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def plan_roll(segment_base: int, end: int, segment_bytes: int) -> bool:
    """Whether the next batch, which starts at `end`, starts a new segment.

    Decided only between batches: a batch that starts in a segment stays in
    it even if it overflows `segment_bytes` (no frame and no batch is split
    across files). An empty segment never rolls.
    """
    return end > segment_base and end - segment_base >= segment_bytes


def segment_index(bases: Sequence[int], offset: int) -> int:
    """Index of the segment holding `offset` (bases sorted; -1 below the first)."""
    return bisect.bisect_right(bases, offset) - 1


def chunk_stop(bases: Sequence[int], offset: int, end: int) -> int:
    """Where a read from `offset` must stop: `end`, or the end of offset's segment if sooner.

    Every segment ends on a frame boundary, so a chunk cut here is whole frames."""
    i = segment_index(bases, offset)
    return min(end, bases[i + 1]) if i + 1 < len(bases) else end


def kept_after_truncate(bases: Sequence[int], offset: int) -> list[int]:
    """The segments a truncation at `offset` keeps: those starting at or below it (the last is cut)."""
    return [b for b in bases if b <= offset] or list(bases[:1])


def list_segments(log_dir: str) -> list[tuple[int, str]]:
    """(base, path) of the segment files in `log_dir`, by base; other files are ignored."""
    out = []
    for name in os.listdir(log_dir):
        base = parse_segment_name(name)
        if base is not None:
            out.append((base, os.path.join(log_dir, name)))
    out.sort()
    return out


def check_contiguous(segs: Sequence[tuple[int, str, int]]) -> None:
    """(base, path, size) by base: each base + size must be the next base."""
    for (b, p, n), (nb, np_, _) in zip(segs, segs[1:]):
        if b + n != nb:
            what = "a gap" if b + n < nb else "an overlap"
            raise SegmentGap(
                f"{p} ends at offset {b + n} but the next segment {np_} starts at {nb}: {what} of "
                f"{abs(nb - b - n)} bytes between the files. Nothing was changed; restore the missing or damaged "
                "segment from a replica (or rebuild this node from one)")


class SegmentGap(WalError):
    code = "log_corrupt"


class ReplayPointMissing(WalError):
    """The log does not hold a frame boundary at `replay_from` (a snapshot's
    offset): below the oldest segment, past the end, or inside a frame. The
    caller uses an older snapshot, or a full replay."""

    def __init__(self, msg: str, below_oldest: bool = False) -> None:
        super().__init__(msg)
        self.below_oldest = below_oldest


def log_dir_of(path: str) -> str | None:
    """The segment directory a path names: a data directory (holding log/ or wal.log)
    or a log directory itself. None if `path` is not a directory."""
    if not os.path.isdir(path):
        return None
    sub = os.path.join(path, LOG_DIR)
    if os.path.isdir(sub) or os.path.exists(os.path.join(path, LEGACY_LOG)):
        return sub
    if os.path.basename(os.path.normpath(path)) == LOG_DIR or list_segments(path):
        return path
    return sub


@dataclass(frozen=True)
class Segment:
    base: int
    path: str
    fd: int  # read-only


class SegmentedLog:
    """The segmented log: appends go to the last segment, reads go anywhere.

    Offers what WalWriter offers (end, poisoned, append, append_batch,
    append_frames, truncate_suffix, close, fsync_count, last_fsync_s,
    last_append_s) with global offsets, plus reads across segments.
    Single writer thread; `read_chunk`/`read_raw` may run on another thread
    below the end that thread was told of (the segment list is replaced,
    never mutated, so a reader always sees a consistent one).
    """

    def __init__(self, log_dir: str, dir_fd: int, segments: list[Segment], active: WalWriter,
                 segment_bytes: int, *, write: WriteFn = os.write, fsync: SyncFn = os.fdatasync) -> None:
        self.dir = log_dir
        self.path = log_dir
        self._dir_fd = dir_fd  # holds the lock on the whole log
        # The segments and the writer of the last one, replaced together in
        # one assignment: `end` (read by the loop while the syncer thread
        # rolls) is always one state's base plus that state's writer end.
        self._cur: tuple[tuple[Segment, ...], WalWriter] = (tuple(segments), active)
        self.segment_bytes = segment_bytes
        self._write = write
        self._fsync = fsync
        self._roll_poison: str | None = None
        self.fsync_count = 0
        self._retired_fds: list[int] = []  # deleted segments' descriptors, closed at the next retire
        self._undeleted: list[tuple[str, int, int]] = []  # (path, base, bytes) of retired files whose rename or
        # unlink the file system refused: tried again at each retire

    @property
    def _segs(self) -> tuple[Segment, ...]:
        return self._cur[0]

    @property
    def _active(self) -> WalWriter:
        return self._cur[1]

    # -- what WalWriter offers ----------------------------------------------

    @property
    def oldest(self) -> int:
        """The first offset this log still holds (retention moves it; 0 until then)."""
        return self._segs[0].base

    @property
    def active_base(self) -> int:
        return self._segs[-1].base

    @property
    def end(self) -> int:
        segs, active = self._cur
        return segs[-1].base + active.end

    @property
    def poisoned(self) -> str | None:
        return self._roll_poison or self._active.poisoned

    @property
    def last_fsync_s(self) -> float:
        return self._active.last_fsync_s

    @property
    def last_append_s(self) -> float:
        return self._active.last_append_s

    @property
    def segments(self) -> list[tuple[int, str]]:
        """(base, path) of every segment; all but the last are sealed."""
        return [(s.base, s.path) for s in self._segs]

    def append(self, record: Record, epoch: int = 0) -> tuple[int, int]:
        frame = encode_frame(record, epoch)
        start, _ = self.append_frames(frame)
        return start, len(frame)

    def append_batch(self, records: Sequence[Record], epoch: int = 0) -> list[tuple[int, int]]:
        frames = [encode_frame(r, epoch) for r in records]
        start, _ = self.append_frames(b"".join(frames))
        out, pos = [], start
        for f in frames:
            out.append((pos, len(f)))
            pos += len(f)
        return out

    def append_frames(self, data: bytes | memoryview) -> tuple[int, int]:
        """Append whole frames durably (one batch, never split across segments); global (start, end)."""
        if self.poisoned:
            raise WalPoisoned(f"{self.dir}: log refuses writes after an fsync failure ({self.poisoned}); "
                              "restart the node")
        if not data:
            return self.end, self.end
        if plan_roll(self.active_base, self.end, self.segment_bytes):
            self._roll()
        segs, active = self._cur
        before = active.fsync_count
        start, end = active.append_frames(data)
        self.fsync_count += active.fsync_count - before
        base = segs[-1].base
        return base + start, base + end

    def _roll(self) -> None:
        """Seal the last segment and start the next at the current end.

        The last append's fsync covered every byte of the sealed file. The
        new file and the directory entry are fsynced before the caller
        writes to it: the batch that follows is acknowledged only after its
        own fsync, and by then its file's name is durable too.
        """
        base = self.end
        path = os.path.join(self.dir, segment_name(base))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise WalWriteError(f"{path}: cannot start a new segment: {os.strerror(e.errno) if e.errno else e}; "
                                "nothing was appended", e.errno) from None
        try:
            self._fsync(fd)
            os.fsync(self._dir_fd)
        except OSError as e:
            # Whether the new name is durable is unknown: the fsync rule.
            self._roll_poison = f"fsync of new segment {path} failed: {os.strerror(e.errno) if e.errno else e}"
            logs.error("fsync_failed", path=path, error=self._roll_poison, offset=base)
            os.close(fd)
            raise WalFsyncError(f"{self.dir}: {self._roll_poison}; the log refuses further writes") from None
        old = self._active
        new = WalWriter(fd, path, 0, write=self._write, fsync=self._fsync)
        new.fsync_count = 0
        rfd = new.read_fd
        # The old writer's read fd stays as the sealed segment's read fd; its
        # write fd is closed: a sealed segment is never written again.
        os.close(old.fd)
        old.fd = -1
        self._cur = (self._segs + (Segment(base, path, rfd),), new)
        self.fsync_count += 2
        logs.event("segment_rolled", path=path, base=base, sealed=self._segs[-2].path,
                   sealed_bytes=base - self._segs[-2].base)

    # -- reading across segments ----------------------------------------------

    def _find(self, segs: tuple[Segment, ...], offset: int) -> int:
        if offset < segs[0].base:
            raise OffsetCompacted(offset, segs[0].base)
        return segment_index([s.base for s in segs], offset)

    def read_chunk(self, offset: int, end: int, max_bytes: int) -> bytes:
        """Whole frames from `offset` below `end` (at most max_bytes, or one frame if larger).

        A chunk stops at its segment's end, which is a frame boundary; it is
        never empty when offset < end.
        """
        if offset >= end:
            return b""
        segs = self._segs
        seg = segs[self._find(segs, offset)]
        stop = chunk_stop([s.base for s in segs], offset, end)
        return read_chunk(seg.fd, offset - seg.base, stop - seg.base, max_bytes)

    def read_raw(self, offset: int, n: int) -> bytes:
        """n bytes from offset (fewer past the end), across segments."""
        out: list[bytes] = []
        segs = self._segs
        while n > 0:
            i = self._find(segs, offset)
            seg = segs[i]
            limit = segs[i + 1].base - offset if i + 1 < len(segs) else n
            b = os.pread(seg.fd, min(n, limit), offset - seg.base)
            if not b:
                break
            out.append(b)
            offset += len(b)
            n -= len(b)
        return b"".join(out)

    # -- removing a suffix -----------------------------------------------------

    def truncate_suffix(self, offset: int, save_path: str) -> int:
        """Remove bytes [offset, end) after saving them, in order, to save_path.

        Later segments go from the last backwards (so any crash leaves a
        contiguous prefix), then the segment holding `offset` is cut and
        becomes the last one. Returns the number of bytes removed.
        """
        if self.poisoned:
            raise WalPoisoned(f"{self.dir}: log is poisoned ({self.poisoned})")
        end = self.end
        if not self.oldest <= offset <= end:
            raise ValueError(f"truncate offset {offset} outside {self.oldest}..{end}")
        if offset == end:
            return 0
        segs = self._segs
        keep = len(kept_after_truncate([s.base for s in segs], offset)) - 1
        if keep == len(segs) - 1:
            return self._active.truncate_suffix(offset - segs[-1].base, save_path)
        _save_range(self, offset, end, save_path)
        removed = []
        for s in reversed(segs[keep + 1:]):
            os.unlink(s.path)
            removed.append(s.path)
        os.fsync(self._dir_fd)
        self._active.close()
        for s in segs[keep + 1:-1]:
            os.close(s.fd)
        target = segs[keep]
        os.close(target.fd)
        fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        w = WalWriter(fd, target.path, os.fstat(fd).st_size, write=self._write, fsync=self._fsync)
        self._cur = (segs[:keep] + (Segment(target.base, target.path, w.read_fd),), w)
        os.ftruncate(fd, offset - target.base)
        w._sync(cut_unsynced=False)
        w.end = offset - target.base
        logs.warn("segments_removed", path=self.dir, offset=offset, removed=removed, saved_to=save_path)
        return end - offset

    def retire(self, upto: int, reason: str) -> list[tuple[int, str, int]]:
        """Delete the sealed segments wholly below `upto`, a segment's base.

        The order is what keeps a crash at any point safe (KAFKA-16073 is the
        bug when it is the other way round):
        1. `oldest.json` names `upto`, written to a temporary file, fsynced,
           renamed, and the directory fsynced: from here on no reader and no
           recovery looks below `upto`;
        2. the in-memory segment list drops them, so reads below `upto` get
           OffsetCompacted;
        3. each file is renamed `<name>.deleted`, the directory fsynced, and
           the file unlinked. A read in flight on another thread keeps its
           descriptor, which is closed at the next retire or at close.
        Recovery finishes a pass a crash interrupted (open_segments).
        Returns (base, path, bytes) of each segment deleted now (one refused before included); each is
        logged. A segment whose rename or unlink the file system refuses is logged and left for the next
        retire (and recovery); a failed directory fsync poisons the log.
        """
        segs, active = self._cur
        bases = [s.base for s in segs]
        if upto not in bases:
            raise ValueError(f"retire: {upto} is not the base of a segment of {self.dir}")
        if upto > segs[-1].base:
            raise ValueError("retire: the last segment is still written")
        gone = [s for s in segs if s.base < upto]
        if not gone:
            return []
        try:
            same_dir = os.stat(self.dir).st_ino == os.fstat(self._dir_fd).st_ino
        except FileNotFoundError:
            same_dir = False
        if not same_dir:
            # A snapshot install swapped in a new log/ while this log is still open (it is closed at the
            # reload): its oldest offset and its files are not this log's to change.
            logs.warn("retention_pass_skipped", path=self.dir, reason="the log directory was replaced "
                      "(a snapshot install); this log is closed at the reload")
            return []
        if not self._write_oldest_or_skip(upto):
            return []
        keep = tuple(s for s in segs if s.base >= upto)
        self._cur = (keep, active)
        for fd in self._retired_fds:
            os.close(fd)
        self._retired_fds = []
        out = []
        still = []
        for path, base, size in self._undeleted:
            if _remove_retired(path, self.dir, upto, base=base, size=size, on_fsync_failure=self._dir_fsync_failed):
                logs.event("segment_deleted", path=path, base=base, bytes=size, oldest=upto,
                           reason="its delete was refused before; tried again")
                out.append((base, path, size))
            else:
                still.append((path, base, size))
        self._undeleted = still
        for s, nxt in zip(gone, [*gone[1:], keep[0]]):
            size = nxt.base - s.base
            self._retired_fds.append(s.fd)
            # From here the segment is below the durable oldest offset: no reader and no recovery
            # uses it again, so a file system that fails the rename or the unlink costs disk space,
            # never a byte of the log. The node keeps running; the file is tried again at the next
            # retire and at restart (finish_retirement), and the failure is logged.
            if not _remove_retired(s.path, self.dir, upto, base=s.base, size=size,
                                   on_fsync_failure=self._dir_fsync_failed):
                self._undeleted.append((s.path, s.base, size))
                continue
            logs.event("segment_deleted", path=s.path, base=s.base, bytes=size, oldest=upto, reason=reason)
            out.append((s.base, s.path, size))
        return out

    def _write_oldest_or_skip(self, upto: int) -> bool:
        """Step 1 of retire: `oldest.json` names `upto`, durably. False (logged, the pass skipped,
        nothing changed) if the file system refuses to create, write or rename it (a full disk, EIO);
        a failed fsync poisons the log and raises WalFsyncError (the fsync rule)."""
        try:
            _write_oldest(self.dir, upto)
        except SyncError as e:
            self._roll_poison = str(e)
            logs.error("fsync_failed", path=self.dir, error=self._roll_poison)
            raise WalFsyncError(f"{self.dir}: {self._roll_poison}; the log refuses further writes") from None
        except OSError as e:
            logs.warn("retention_pass_skipped", path=self.dir, oldest=upto, error=str(e),
                      effect="nothing was deleted; the next pass tries again")
            try:
                os.unlink(os.path.join(self.dir, OLDEST_NOTE + ".tmp"))
            except OSError:
                pass
            return False
        return True

    def _dir_fsync_failed(self, e: OSError) -> None:
        """The directory fsync after a retired segment's rename failed: whether the directory's entries
        are durable is unknown (the fsync rule), so the log refuses writes, as after a roll's."""
        self._roll_poison = f"fsync of {self.dir} after retiring a segment failed: {os.strerror(e.errno) if e.errno else e}"
        logs.error("fsync_failed", path=self.dir, error=self._roll_poison)

    def close(self) -> None:
        if self._dir_fd < 0:
            return
        try:
            self._active.close()
        finally:
            for s in self._segs[:-1]:
                os.close(s.fd)
            for fd in self._retired_fds:
                os.close(fd)
            self._retired_fds = []
            os.close(self._dir_fd)
            self._dir_fd = -1


class OffsetCompacted(WalError):
    """A read below the oldest offset the log still holds."""

    code = "offset_compacted"

    def __init__(self, offset: int, oldest: int) -> None:
        super().__init__(f"offset {offset} is below the oldest offset {oldest} this log holds")
        self.offset = offset
        self.oldest = oldest


def _save_range(log: SegmentedLog, start: int, end: int, dest: str) -> None:
    """Copy log bytes [start, end), across segments, into a new durable file `dest`."""
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        pos = start
        while pos < end:
            chunk = log.read_raw(pos, min(1 << 20, end - pos))
            if not chunk:
                raise OSError(errno.EIO, f"short read copying {dest}")
            write_full(out, chunk)
            pos += len(chunk)
        os.fsync(out)
    finally:
        os.close(out)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))


# -- migration from the single-file log -----------------------------------------

MigrateHook = Callable[[str], None]


def migrate_legacy(data_dir: str, hook: MigrateHook | None = None) -> bool:
    """Move `<data_dir>/wal.log` to `<data_dir>/log/00000000000000000000.seg`; True if it did.

    Crash-safe at every step; a later open finishes what a crash left:
      1. mkdir log/, fsync data_dir;
      2. rename wal.log.unsynced (a failed fsync's note) into log/ first, so
         the note is never left behind a log it must cut; fsync log/, data_dir;
      3. rename wal.log to the first segment; fsync log/, then data_dir.
    rename keeps the inode, so the note still names its file. Saved-aside
    files (wal.log.torn-*, .unsynced-*, divergent-*) stay in data_dir: they
    are evidence, not log. `hook(step)` is called before each step (tests
    crash there).
    """
    hook = hook or (lambda step: None)
    legacy = os.path.join(data_dir, LEGACY_LOG)
    note = unsynced_note_path(legacy)
    ldir = os.path.join(data_dir, LOG_DIR)
    first = os.path.join(ldir, segment_name(0))
    if not os.path.exists(legacy) and not os.path.exists(note):
        return False
    if os.path.isdir(ldir) and list_segments(ldir):
        raise WalError(
            f"{data_dir}: holds both {LEGACY_LOG} and segments in {ldir}; refusing to guess which is the log. "
            f"Keep the one that is this node's log (compare with 'zwal log verify') and move the other away")
    if not os.path.isdir(ldir):
        hook("mkdir")
        os.mkdir(ldir, 0o755)
        fsync_dir(data_dir)
    if os.path.exists(note):
        hook("move_note")
        os.rename(note, unsynced_note_path(first))
        fsync_dir(ldir)
        fsync_dir(data_dir)
    if os.path.exists(legacy):
        hook("move_log")
        os.rename(legacy, first)
        hook("fsync_log_dir")
        fsync_dir(ldir)
        hook("fsync_data_dir")
        fsync_dir(data_dir)
    logs.event("log_migrated", data_dir=data_dir, to=first,
               kept_aside=sorted(n for n in os.listdir(data_dir) if n.startswith(LEGACY_LOG + ".")))
    return True


# -- recovery ------------------------------------------------------------------


def _write_oldest(log_dir: str, oldest: int) -> None:
    """Durably record the oldest offset the log keeps."""
    replace_json_durably(os.path.join(log_dir, OLDEST_NOTE), {"oldest": oldest})


def read_oldest(log_dir: str) -> int | None:
    """The oldest offset `oldest.json` names, or None when retention never ran."""
    path = os.path.join(log_dir, OLDEST_NOTE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        v = json.loads(raw)["oldest"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(v)
        return v
    except (ValueError, KeyError, TypeError) as e:
        raise WalError(f"{path}: unreadable ({e}); nothing was changed. It names the oldest offset this log "
                       "keeps: restore it from a replica's, or rebuild this node") from None


def _remove_retired(path: str, log_dir: str, oldest: int, base: int | None = None, size: int | None = None,
                    on_fsync_failure: Callable[[OSError], None] | None = None) -> bool:
    """Rename a retired segment (`path`, or its `.deleted` name if a rename already happened) to `.deleted`,
    fsync the directory, unlink it. False, logged as segment_delete_failed, if the file system refused the
    rename or the unlink: the file is wholly below `oldest`, so leaving it costs only its disk space. A
    failed directory fsync is another matter (a failed fsync ends trust): `on_fsync_failure` hears it
    (the running log poisons itself), and without one it is raised."""
    sized = {} if base is None else {"base": base, "bytes": size}

    def refused(e: OSError) -> bool:
        logs.warn("segment_delete_failed", path=path, **sized, oldest=oldest, error=str(e),
                  effect="the segment is below the oldest offset the log keeps: nothing of the log is lost, "
                         "its disk space is not freed yet", retry="at the next retention pass and at restart")
        return False

    if os.path.exists(path):
        try:
            os.rename(path, path + DELETED)
        except OSError as e:
            return refused(e)
        try:
            fsync_dir(log_dir)
        except OSError as e:
            if on_fsync_failure is None:
                raise
            on_fsync_failure(e)
            return False
    try:
        if os.path.exists(path + DELETED):
            os.unlink(path + DELETED)
    except OSError as e:
        return refused(e)
    return True


def live_segments(log_dir: str) -> list[tuple[int, str]]:
    """list_segments without the retired ones: segments wholly below `oldest.json`'s offset whose
    deletion the file system refused (or a crash interrupted) are no part of the log."""
    found = list_segments(log_dir)
    oldest = read_oldest(log_dir)
    if oldest is None:
        return found
    live = [(b, p) for b, p in found if b >= oldest]
    if not live or live[0][0] != oldest:
        raise SegmentGap(f"{log_dir}: {OLDEST_NOTE} says the log keeps offsets from {oldest}, but no segment "
                         f"starts there (segments start at {[b for b, _ in found][:5]}). Nothing was changed; "
                         "restore the segments from a replica or rebuild this node")
    return live


def finish_retirement(log_dir: str) -> None:
    """Complete a retention pass that a crash interrupted: delete the `.deleted`
    files and the segments below `oldest.json`'s offset, each logged. A `.deleted`
    file the file system refuses to unlink is logged and left (no reader opens it)."""
    oldest = read_oldest(log_dir)
    changed = False
    for name in sorted(os.listdir(log_dir)):
        if name.endswith(SUFFIX + DELETED) or name == OLDEST_NOTE + ".tmp":
            try:
                os.unlink(os.path.join(log_dir, name))
            except OSError as e:
                logs.warn("segment_delete_failed", path=os.path.join(log_dir, name), error=str(e),
                          finished_at_recovery=False, effect="left in place: no reader or recovery opens it",
                          retry="at the next restart")
                continue
            logs.event("segment_deleted", path=os.path.join(log_dir, name), finished_at_recovery=True)
            changed = True
    if oldest is not None:
        found = list_segments(log_dir)
        if not any(b == oldest for b, _ in found):
            raise SegmentGap(f"{log_dir}: {OLDEST_NOTE} says the log keeps offsets from {oldest}, but no segment "
                             f"starts there (segments start at {[b for b, _ in found][:5]}...). Nothing was "
                             "changed; restore the segments from a replica or rebuild this node")
        for b, p in found:
            if b < oldest:
                # A refused rename or unlink leaves the file (logged; live_segments skips it); a failed
                # directory fsync is raised: recovery does not go on past one.
                if _remove_retired(p, log_dir, oldest, base=b):
                    logs.event("segment_deleted", path=p, base=b, oldest=oldest, finished_at_recovery=True,
                               reason="a retention pass that a crash interrupted")
                    changed = True
    if changed:
        fsync_dir(log_dir)


def _lock_dir(ldir: str) -> int:
    fd = os.open(ldir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        from .writer import WalLocked

        raise WalLocked(f"{ldir} is locked by another process (a running node or zwal command); stop it first, "
                        "two writers must never append to one log") from None
    return fd


def _rebased(r: ScanResult, base: int) -> ScanResult:
    return dataclasses.replace(
        r, valid_end=r.valid_end + base, file_size=r.file_size + base,
        epoch_starts=[(e, o + base) for e, o in r.epoch_starts],
        bad_offset=None if r.bad_offset is None else r.bad_offset + base)


def open_segments(
    log_dir: str,
    *,
    replay_from: int = 0,
    on_frame: Callable[[Frame, Record], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    before_cut: Callable[[ScanResult], None] | None = None,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    create: bool = True,
    migrate_hook: MigrateHook | None = None,
    write: WriteFn = os.write,
    fsync: SyncFn = os.fdatasync,
) -> tuple[SegmentedLog, ScanResult]:
    """Recover the segmented log in `log_dir` (`<data_dir>/log`) for appending.

    Migrates a `wal.log` beside `log_dir` first. Sealed segments must be
    contiguous and clean (damage is refused with its file and offset); those
    wholly below `replay_from` (a snapshot's offset) are only checked for
    contiguity, not scanned. `on_frame` sees the frames at or after
    `replay_from`, with global offsets. The last segment is recovered as
    `open_log` recovers a file: the `.unsynced` note, then a torn tail cut
    (saved aside as `<segment>.torn-<offset in the segment>`).

    The ScanResult has global offsets; `records` and `epoch_starts` cover
    the scanned segments only.
    """
    data_dir = os.path.dirname(os.path.abspath(log_dir))
    if os.path.basename(os.path.normpath(log_dir)) == LOG_DIR:
        migrate_legacy(data_dir, migrate_hook)
    if not os.path.isdir(log_dir):
        if not create:
            raise LogOpenError(f"{log_dir}: no such log directory (nothing was created)")
        if not os.path.isdir(data_dir):
            raise WalError(f"{log_dir}: directory {data_dir} does not exist")
        os.mkdir(log_dir, 0o755)
        fsync_dir(data_dir)
        logs.event("log_created", path=log_dir)
    dir_fd = _lock_dir(log_dir)
    opened: list[int] = []
    try:
        finish_retirement(log_dir)
        found = live_segments(log_dir)
        if not found:
            if not create:
                raise LogOpenError(f"{log_dir}: holds no segment files (nothing was created)")
            found = [(0, os.path.join(log_dir, segment_name(0)))]
        bases = [b for b, _ in found]
        if bases[0] > replay_from > 0:
            raise ReplayPointMissing(
                f"{log_dir}: replay_from {replay_from} is below the oldest offset the log keeps ({bases[0]})",
                below_oldest=True)
        if bases[0] > replay_from:
            raise SegmentGap(
                f"{log_dir}: the oldest segment {found[0][1]} starts at offset {bases[0]}, above {replay_from} "
                "where replay must start: records between are missing. Nothing was changed; restore the "
                "segments from a replica or rebuild this node from one")
        sealed: list[tuple[int, str, int]] = []
        for b, p in found[:-1]:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(fd)
            sealed.append((b, p, os.fstat(fd).st_size))
        last_base, last_path = found[-1]
        check_contiguous(sealed + [(last_base, last_path, 0)])
        for _, p, _ in sealed:
            if os.path.exists(unsynced_note_path(p)):
                raise WalError(f"{unsynced_note_path(p)}: a failed fsync's note on a sealed segment (only the last "
                               "segment is ever written); nothing was changed. Inspect the log and restore it from a "
                               "replica")
        last_size = os.path.getsize(last_path) if os.path.exists(last_path) else 0
        if replay_from > last_base + last_size:
            raise ReplayPointMissing(f"{log_dir}: replay_from {replay_from} is past the end of the log "
                                     f"({last_base + last_size})")

        records = 0
        last_epoch = 0
        starts: list[tuple[int, int]] = []
        seconds = 0.0
        seen_replay_point = replay_from == 0
        replayed = 0

        def scanned(part: ScanResult) -> None:
            nonlocal records, last_epoch, seconds
            records += part.records
            seconds += part.seconds
            for e, o in part.epoch_starts:
                if starts and e == last_epoch:
                    continue
                if starts and e < last_epoch:
                    raise LogCorrupt(log_dir, dataclasses.replace(
                        part, status=CORRUPT, bad_offset=o, reason=f"epoch goes backwards ({last_epoch} -> {e})"))
                starts.append((e, o))
                last_epoch = e

        def frames_for(base: int) -> Callable[[Frame, Record], None] | None:
            def cb(f: Frame, r: Record) -> None:
                nonlocal seen_replay_point, replayed
                g = f.offset + base
                if g == replay_from:
                    seen_replay_point = True
                replayed += 1  # the scan hands on only the frames at or after replay_from
                if on_frame is not None:
                    on_frame(f if base == 0 else dataclasses.replace(f, offset=g), r)
            return cb

        def progress_for(base: int) -> Callable[[int, int], None] | None:
            if progress is None:
                return None
            return lambda pos, size: progress(base + pos, base + size)

        for (b, p, n), fd in zip(sealed, opened):
            if b + n <= replay_from:
                if b + n == replay_from:
                    seen_replay_point = True
                continue  # wholly below the snapshot: retention's, not replay's
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            # Frames below replay_from in this segment are checked, not decoded.
            part = _rebased(scan_fd(fd, frames_for(b), progress_for(b), max(0, replay_from - b)), b)
            if part.status != CLEAN:
                raise SealedSegmentDamaged(p, b, part)
            scanned(part)

        def cut_first(part: ScanResult) -> None:
            if before_cut is not None:
                before_cut(_rebased(part, last_base))

        active, tail = open_log(last_path, on_frame=frames_for(last_base), progress=progress_for(last_base),
                                before_cut=cut_first, create=True, replay_from=max(0, replay_from - last_base),
                                write=write, fsync=fsync)
        tail = _rebased(tail, last_base)
        try:
            scanned(tail)
        except BaseException:
            active.close()
            raise
        if replay_from == tail.valid_end or replay_from == last_base:
            seen_replay_point = True
        if not seen_replay_point:
            active.close()
            raise ReplayPointMissing(f"{log_dir}: replay_from {replay_from} is not where a record starts in this log")
        segs = [Segment(b, p, fd) for (b, p, _), fd in zip(sealed, opened)]
        segs.append(Segment(last_base, last_path, active.read_fd))
        log = SegmentedLog(log_dir, dir_fd, segs, active, segment_bytes, write=write, fsync=fsync)
        result = ScanResult(tail.status, tail.valid_end, tail.file_size, records, last_epoch, starts,
                            tail.bad_offset, tail.reason, seconds, replayed_from=replay_from, replayed=replayed)
        return log, result
    except BaseException:
        for fd in opened:
            os.close(fd)
        os.close(dir_fd)
        raise


class SealedSegmentDamaged(LogCorrupt):
    """A sealed segment is torn or damaged: it was fsynced whole before the next began, so nothing may be cut."""

    def __init__(self, path: str, base: int, result: ScanResult) -> None:
        WalError.__init__(
            self,
            f"{path}: refusing to open: sealed segment (base {base}) damaged at offset {result.bad_offset}: "
            f"{result.reason if result.status == CORRUPT else 'bytes after its last valid record: ' + result.reason}. "
            "A sealed segment was fsynced whole before the next one began, so this is damage, not a torn write. "
            f"Nothing was changed; inspect it with 'zwal log dump --skip-damaged {path}' and restore the segment "
            "from a replica (or rebuild this node from one)")
        self.result = result


# -- reading a log without opening it for writing (the tools, the tests) ---------


def log_files(path: str) -> list[tuple[int, str]]:
    """The files of the log `path` names, in order: (base, path).

    A data directory or a log directory gives its segments (a data directory
    still holding wal.log gives that); any other path is a single-file log.
    """
    d = log_dir_of(path)
    if d is None:
        return [(0, path)]
    if os.path.isdir(d):
        segs = live_segments(d)
        if segs:
            return segs
    legacy = os.path.join(os.path.dirname(d), LEGACY_LOG)
    if os.path.exists(legacy):
        return [(0, legacy)]
    raise LogOpenError(f"{path}: holds no log (no {LOG_DIR}/*{SUFFIX} segments and no {LEGACY_LOG})")


def read_all(path: str) -> bytes:
    """The whole log's bytes, concatenated (small logs: tests and tools)."""
    out = []
    for _, p in log_files(path):
        with open(p, "rb") as f:
            out.append(f.read())
    return b"".join(out)


def locate(path: str, offset: int) -> tuple[str, int]:
    """(file, offset in that file) of the log byte at global `offset`."""
    files = log_files(path)
    i = bisect.bisect_right([b for b, _ in files], offset) - 1
    if i < 0:
        raise LogOpenError(f"{path}: offset {offset} is below the oldest segment")
    return files[i][1], offset - files[i][0]


def iter_log_frames(path: str, start: int = 0) -> Iterator[Frame]:
    """Valid frames (global offsets) from `start`, a frame boundary, across segments, to the first bad one."""
    files = log_files(path)
    for i, (b, p) in enumerate(files):
        nxt = files[i + 1][0] if i + 1 < len(files) else None
        if nxt is not None and nxt <= start:
            continue
        pos = max(start, b)
        for f in iter_frames(p, pos - b):
            yield f if b == 0 else dataclasses.replace(f, offset=f.offset + b)
            pos = f.offset + b + f.size if b else f.end
        if nxt is not None and pos != nxt:
            return  # damage or a gap: stop, as iter_frames does


def scan_log(path: str, on_frame: Callable[[Frame, Record], None] | None = None) -> ScanResult:
    """How the whole log ends, read-only, in global offsets (a sealed segment that is
    not clean, or a gap between files, is CORRUPT)."""
    files = log_files(path)
    records, last_epoch, seconds = 0, 0, 0.0
    starts: list[tuple[int, int]] = []
    for i, (b, p) in enumerate(files):
        cb: Callable[[Frame, Record], None] | None = on_frame
        if on_frame is not None and b != 0:
            def cb(f: Frame, r: Record, b: int = b, on_frame: Callable[[Frame, Record], None] = on_frame) -> None:
                on_frame(dataclasses.replace(f, offset=f.offset + b), r)
        part = _rebased(scan_path(p, cb), b)
        records += part.records
        seconds += part.seconds
        for e, o in part.epoch_starts:
            if not (starts and e == last_epoch):
                starts.append((e, o))
                last_epoch = e
        last = i == len(files) - 1
        nxt = None if last else files[i + 1][0]
        if part.status != CLEAN and not last:
            return ScanResult(CORRUPT, part.valid_end, part.file_size, records, last_epoch, starts, part.bad_offset,
                              f"sealed segment {p}: {part.reason}", seconds)
        if nxt is not None and part.file_size != nxt:
            return ScanResult(CORRUPT, part.valid_end, part.file_size, records, last_epoch, starts, part.file_size,
                              f"{p} ends at {part.file_size} but the next segment starts at {nxt}", seconds)
        if last:
            return ScanResult(part.status, part.valid_end, part.file_size, records, last_epoch, starts,
                              part.bad_offset, part.reason, seconds)
    raise AssertionError("log_files is never empty")


def sha256_log(path: str) -> str:
    """Digest of the whole log's bytes, concatenated: how replicas are compared byte for byte."""
    h = hashlib.sha256()
    for _, p in log_files(path):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def log_size(path: str) -> int:
    try:
        files = log_files(path)
    except LogOpenError:
        return 0
    return sum(os.path.getsize(p) for _, p in files if os.path.exists(p))


__all__ = [
    "DEFAULT_SEGMENT_BYTES", "LOG_DIR", "OffsetCompacted", "SealedSegmentDamaged", "SegmentGap", "SegmentedLog",
    "TORN", "check_contiguous", "iter_log_frames", "list_segments", "locate", "log_dir_of", "log_files", "log_size",
    "migrate_legacy", "open_segments", "parse_segment_name", "plan_roll", "read_all", "scan_log", "segment_name",
    "sha256_log",
]
