"""The append path: write-all, fdatasync, and what to do when either fails.

Invariants this module protects:
- bytes already in the log are never overwritten (O_APPEND, no seek);
- a running writer never leaves a partial frame behind: a write that cannot
  complete is rolled back to the last good offset before the error surfaces;
- after an fsync error nothing is appended again by this process. The kernel
  may have dropped the dirty pages and cleared the error, so a retried fsync
  can "succeed" over lost data (PostgreSQL's fsyncgate). Only a restart, which
  re-reads the file through recovery, is safe;
- after an fsync error nothing this process wrote since its last successful
  fsync is trusted again: the writer notes the durable end in
  `<log>.unsynced` and cuts the file back to it, and recovery applies the
  note (if the cut did not happen) and reads the disk, not the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from typing import Callable, Sequence

from daemon.ops import logs
from .format import Record, encode_frame

WriteFn = Callable[[int, memoryview], int]
SyncFn = Callable[[int], None]


class WalError(Exception):
    """Base of every log engine error; `code` is stable and shown to clients."""

    code = "wal_error"


class WalLocked(WalError):
    code = "log_locked"


class WalFsyncError(WalError):
    """fsync failed: the log is poisoned and the process must restart."""

    code = "fsync_failed"


class WalPoisoned(WalError):
    code = "log_poisoned"


class WalWriteError(WalError):
    """A write could not complete; the file was rolled back, nothing was added."""

    code = "write_failed"

    def __init__(self, msg: str, errno_: int | None) -> None:
        super().__init__(msg)
        self.errno = errno_

    @property
    def no_space(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)


def write_full(fd: int, data: bytes | memoryview, write: WriteFn = os.write) -> None:
    """Write every byte of data, looping over short writes and EINTR."""
    view = memoryview(data)
    while view:
        try:
            n = write(fd, view)
        except InterruptedError:
            continue
        if n <= 0:
            # A regular file returns 0 only when nothing more can be written;
            # treat it like ENOSPC rather than spin.
            raise OSError(errno.ENOSPC, "write made no progress")
        view = view[n:]


def fsync_dir(path: str) -> None:
    """Make a directory entry (a new or renamed file) durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncError(OSError):
    """An fsync failed: whether the bytes (or a name) reached the disk is unknown (the fsync rule).
    An OSError, so a caller that stops on any failure needs no change; one that can skip a refused
    write (a full disk, a refused rename: nothing changed) tells the two apart."""


def replace_json_durably(path: str, doc: object) -> None:
    """Replace the small JSON file `path` atomically and durably: a temporary file
    written and fsynced, renamed over `path`, then the directory fsynced. A failed
    fsync raises SyncError; any other OSError means `path` is unchanged."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_full(fd, json.dumps(doc).encode())
        try:
            os.fsync(fd)
        except OSError as e:
            raise SyncError(e.errno, f"fsync of {tmp} failed: {e.strerror or e}") from e
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise SyncError(e.errno, f"fsync of the directory of {path} failed: {e.strerror or e}") from e


def open_append(path: str, create: bool = True) -> tuple[int, bool]:
    """Open (creating if needed, unless `create` is False) for appending; returns (fd, created)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    if not create:
        return os.open(path, flags), False
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, flags), False


def lock_exclusive(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WalLocked(
            f"{path} is locked by another process (a running node or zwal command); "
            "stop it first, two writers must never append to one log"
        ) from None


class WalWriter:
    """Appends frames to one log file. Single-threaded by design."""

    def __init__(
        self,
        fd: int,
        path: str,
        end: int,
        *,
        write: WriteFn = os.write,
        fsync: SyncFn = os.fdatasync,
    ) -> None:
        self.fd = fd
        self.path = path
        self.end = end
        self._write = write
        # fdatasync, not fsync: it still flushes the file size (the metadata
        # needed to read the appended bytes back) but skips mtime/atime, which
        # recovery never needs. On ext4/xfs that saves a journal commit when
        # only the data blocks changed.
        self._fsync = fsync
        self.poisoned: str | None = None
        self.read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.fsync_count = 0
        self.last_fsync_s = 0.0
        self.last_append_s = 0.0

    # -- appending ---------------------------------------------------------

    def append(self, record: Record, epoch: int = 0) -> tuple[int, int]:
        """Encode, write and fdatasync one record; returns (offset, size)."""
        frame = encode_frame(record, epoch)
        start, _ = self.append_frames(frame)
        return start, len(frame)

    def append_batch(self, records: Sequence[Record], epoch: int = 0) -> list[tuple[int, int]]:
        """One write and one fdatasync for the whole batch (group commit)."""
        frames = [encode_frame(r, epoch) for r in records]
        start, _ = self.append_frames(b"".join(frames))
        out = []
        pos = start
        for f in frames:
            out.append((pos, len(f)))
            pos += len(f)
        return out

    def append_frames(self, data: bytes | memoryview) -> tuple[int, int]:
        """Append already-encoded, verified frames durably; returns (start, end).

        The leader's group commit and the follower's copy both come here, so
        the rollback and poisoning rules hold for every replica.
        """
        if self.poisoned:
            raise WalPoisoned(f"{self.path}: log refuses writes after an fsync failure ({self.poisoned}); restart the node")
        if not data:
            return self.end, self.end
        t0 = time.perf_counter()
        start = self.end
        try:
            write_full(self.fd, data, self._write)
        except OSError as e:
            if not self._roll_back(start, e):
                # The partial write could not be removed for sure: the same
                # rule as a failed fsync (a note, a cut, and a restart).
                self._distrust_unsynced()
                raise WalFsyncError(
                    f"{self.path}: write failed ({os.strerror(e.errno) if e.errno else e}) and rolling it back "
                    f"failed too ({self.poisoned}); the log refuses further writes"
                ) from None
            raise WalWriteError(
                f"{self.path}: write of {len(data)} bytes at offset {start} failed: "
                f"{os.strerror(e.errno) if e.errno else e}; nothing was appended",
                e.errno,
            ) from None
        self._sync()
        self.end = start + len(data)
        self.last_append_s = time.perf_counter() - t0
        return start, self.end

    def _sync(self, cut_unsynced: bool = True) -> None:
        t0 = time.perf_counter()
        try:
            self._fsync(self.fd)
        except OSError as e:
            self.poisoned = os.strerror(e.errno) if e.errno else str(e)
            logs.error("fsync_failed", path=self.path, error=self.poisoned, offset=self.end)
            if cut_unsynced:
                self._distrust_unsynced()
            raise WalFsyncError(
                f"{self.path}: fdatasync failed ({self.poisoned}); the log refuses further writes"
            ) from None
        self.last_fsync_s = time.perf_counter() - t0
        self.fsync_count += 1

    def _distrust_unsynced(self) -> None:
        """After a failed fsync: nothing past the last durable end is kept.

        `self.end` is still the end that the last successful fsync covered.
        The bytes after it are in the page cache only, perhaps already
        dropped by the kernel, perhaps never to reach the disk; the failed
        fsync's callers were told so. First a durable note of the end (so
        recovery cuts there even if this process dies now, or the cut below
        fails), then the cut itself, both best effort: the disk is failing.
        """
        durable_end = self.end
        noted = False
        try:
            write_unsynced_note(self.path, durable_end, self.poisoned or "", self.read_fd)
            noted = True
        except OSError as e:
            logs.error("unsynced_note_failed", path=self.path, offset=durable_end, error=str(e))
        try:
            size = os.fstat(self.fd).st_size
            if size > durable_end:
                os.ftruncate(self.fd, durable_end)
                self._fsync(self.fd)
            logs.warn("unsynced_tail_cut", path=self.path, offset=durable_end,
                      dropped_bytes=max(0, size - durable_end), noted=noted)
        except OSError as e:
            logs.error("unsynced_tail_cut_failed", path=self.path, offset=durable_end, error=str(e),
                       noted=noted)

    def _roll_back(self, good_end: int, cause: OSError) -> bool:
        """Cut a partial write back to the last good frame boundary; False if that failed."""
        try:
            size = os.fstat(self.fd).st_size
            if size != good_end:
                os.ftruncate(self.fd, good_end)
            self._fsync(self.fd)
        except OSError as e:
            self.poisoned = f"rollback after failed write failed: {e}"
            logs.error("rollback_failed", path=self.path, offset=good_end, error=str(e), cause=str(cause))
            return False
        logs.warn("write_rolled_back", path=self.path, offset=good_end, dropped=size - good_end, error=str(cause))
        return True

    # -- removing a suffix (the only sanctioned removal besides recovery) ----

    def truncate_suffix(self, offset: int, save_path: str) -> int:
        """Remove bytes [offset, end) after saving them to save_path.

        Used when a node rejoins a newer epoch and holds records the new
        leader never had. The bytes are kept beside the log (readable with
        `zwal log dump`) so nothing is destroyed silently.
        """
        if self.poisoned:
            raise WalPoisoned(f"{self.path}: log is poisoned ({self.poisoned})")
        if not 0 <= offset <= self.end:
            raise ValueError(f"truncate offset {offset} outside 0..{self.end}")
        n = self.end - offset
        if n == 0:
            return 0
        save_copy(self.read_fd, offset, self.end, save_path)
        os.ftruncate(self.fd, offset)
        # Nothing unsynced to distrust: every byte up to self.end was fsynced,
        # and the cut leaves a prefix of them, durable or not.
        self._sync(cut_unsynced=False)
        self.end = offset
        return n

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if not self.poisoned:
                self._sync()
        finally:
            os.close(self.fd)
            os.close(self.read_fd)
            self.fd = -1


def save_copy(src_fd: int, start: int, end: int, dest: str) -> None:
    """Copy bytes [start, end) of src_fd into a new durable file `dest`."""
    out, created = open_append(dest)
    try:
        if not created:
            raise FileExistsError(f"{dest} already exists; refusing to overwrite evidence")
        pos = start
        while pos < end:
            chunk = os.pread(src_fd, min(1 << 20, end - pos), pos)
            if not chunk:
                raise OSError(errno.EIO, f"short read copying {dest}")
            write_full(out, chunk)
            pos += len(chunk)
        os.fsync(out)
    finally:
        os.close(out)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))



def unsynced_note_path(log_path: str) -> str:
    return log_path + ".unsynced"


NOTE_TAIL = 4096  # bytes before the durable end whose digest ties a note to its file


def tail_digest(fd: int, durable_end: int) -> str:
    start = max(0, durable_end - NOTE_TAIL)
    return hashlib.sha256(os.pread(fd, durable_end - start, start)).hexdigest()


def write_unsynced_note(log_path: str, durable_end: int, error: str, fd: int | None = None) -> None:
    """Durably record that nothing after `durable_end` may be trusted.

    Written atomically (temp file, fsync, rename, directory fsync). Recovery
    reads it before anything is appended again, cuts there, and removes it.
    It names the file (device, inode) and the digest of the bytes just
    before the durable end, so a note that outlived its file (a log
    restored from a replica, a copied data directory) never cuts another.
    """
    note = unsynced_note_path(log_path)
    tmp = note + ".tmp"
    info: dict = {"durable_end": durable_end, "error": error, "pid": os.getpid(), "time": round(time.time(), 3)}
    if fd is not None:
        st = os.fstat(fd)
        info.update(dev=st.st_dev, ino=st.st_ino, tail_sha256=tail_digest(fd, durable_end))
    body = json.dumps(info).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_full(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, note)
    fsync_dir(os.path.dirname(os.path.abspath(note)))
