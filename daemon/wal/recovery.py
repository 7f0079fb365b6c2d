"""Opening a log for writing: lock, scan, repair a torn tail, or refuse.

Recovery may remove exactly one thing: a torn tail (bytes after the last
valid frame that cannot hide a later record). Those bytes are copied to
`<log>.torn-<offset>` first, then cut, then the cut is fsynced. Anything that
looks like damage in the middle of the log is refused with its offset and
the file is left untouched: the operator decides, not the daemon.

Recovery reads the disk, not the page cache (PostgreSQL's fsyncgate rule):
after a failed fsync the kernel may keep serving pages it never wrote. So
it first fsyncs what is still dirty, then drops the file's cached pages
(POSIX_FADV_DONTNEED), then applies a `<log>.unsynced` note left by a
writer whose fsync failed (cutting what that process wrote after its last
successful fsync), and only then scans. docs/format.md explains the choice.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from daemon.ops import logs
from .format import Frame, Record
from .reader import CORRUPT, TORN, LogOpenError, ScanResult, scan_fd
from .writer import (SyncFn, WalError, WalFsyncError, WalWriter, WriteFn, fsync_dir, lock_exclusive, open_append,
                     save_copy, tail_digest, unsynced_note_path)


class LogCorrupt(WalError):
    """The log is damaged before its end; nothing was changed."""

    code = "log_corrupt"

    def __init__(self, path: str, result: ScanResult) -> None:
        super().__init__(
            f"{path}: refusing to open: {result.describe()}. The file was not changed; "
            f"inspect it with 'zwal log dump --skip-damaged {path}' (--from OFFSET starts at a frame) "
            "and restore it from a replica"
        )
        self.result = result


def open_log(
    path: str,
    *,
    on_frame: Callable[[Frame, Record], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    before_cut: Callable[[ScanResult], None] | None = None,
    create: bool = True,
    replay_from: int = 0,
    write: WriteFn = os.write,
    fsync: SyncFn = os.fdatasync,
) -> tuple[WalWriter, ScanResult]:
    """Open `path` for appending after recovery; `on_frame` sees every valid frame.

    `before_cut` is called with the scan before a torn tail is cut, so the
    caller can durably note the cut first: a crash between the cut and that
    note would otherwise forget that bytes were removed.

    The exclusive lock is taken before the scan, so no other process can
    append between the scan and the first write.

    `replay_from` (a snapshot's offset): frames below it are checked but
    not decoded nor handed to `on_frame` (reader.scan_buffer); the result's
    `replayed_from` says where replay began, for the caller to check that
    the log still holds the prefix its snapshot describes.

    A missing `path` is a new, empty log; with `create=False` (the repair
    tools) it is a `LogOpenError` and nothing is created.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise WalError(f"{path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise WalError(f"{path}: is a directory, not a log file")
    try:
        fd, created = open_append(path, create=create)
    except PermissionError:
        raise WalError(f"{path}: permission denied") from None
    except FileNotFoundError:
        raise LogOpenError(f"{path}: no such file (nothing was created)") from None
    try:
        lock_exclusive(fd, path)
        if created:
            # The new directory entry must survive a crash as well as the data.
            fsync_dir(parent)
            logs.event("log_created", path=path)
        rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            read_from_disk(fd, rfd, path, fsync)
            apply_unsynced_note(fd, rfd, path, fsync)
            result = scan_fd(rfd, on_frame, progress, replay_from)
            if result.status == CORRUPT:
                raise LogCorrupt(path, result)
            if result.status == TORN:
                if before_cut is not None:
                    before_cut(result)
                saved = f"{path}.torn-{result.valid_end}"
                if os.path.exists(saved):
                    saved = f"{saved}-{os.getpid()}"
                save_copy(rfd, result.valid_end, result.file_size, saved)
                os.ftruncate(fd, result.valid_end)
                fsync(fd)
                logs.warn(
                    "torn_tail_truncated", path=path, offset=result.valid_end,
                    dropped_bytes=result.dropped, reason=result.reason, saved_to=saved,
                )
        finally:
            os.close(rfd)
        return WalWriter(fd, path, result.valid_end, write=write, fsync=fsync), result
    except BaseException:
        os.close(fd)
        raise


def read_from_disk(fd: int, rfd: int, path: str, fsync: SyncFn) -> None:
    """Make later reads of the file come from the disk, not the page cache.

    fsync first: POSIX_FADV_DONTNEED skips dirty pages, and bytes a crashed
    process left dirty become durable here (or fail to, and are then clean
    and dropped like the rest). A failed fsync here is logged, not fatal:
    the pages it could not write are dropped next, so the scan sees exactly
    what the disk holds.
    """
    try:
        fsync(fd)
    except OSError as e:
        # The kernel reports a writeback error once. A second fsync either
        # writes what is still dirty or finds it already failed (then those
        # pages are clean and DONTNEED drops them). If it fails too, the disk
        # is failing now: refuse rather than read what may be cache only.
        logs.warn("recovery_fsync_failed", path=path, error=os.strerror(e.errno) if e.errno else str(e),
                  action="one more fsync, then dropping cached pages")
        try:
            fsync(fd)
        except OSError as e2:
            raise WalFsyncError(f"{path}: fsync fails at recovery ({os.strerror(e2.errno) if e2.errno else e2}); "
                                "the disk is failing: refusing to start until it works") from None
    os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)


def apply_unsynced_note(fd: int, rfd: int, path: str, fsync: SyncFn) -> None:
    """Cut what a writer whose fsync failed wrote after its last good fsync.

    The note names the durable end. Bytes after it were never acknowledged
    by this node (no reply and no fetch counts them before their fsync), so
    cutting them removes nothing acknowledged; they are still saved aside.
    The note is removed only after the cut is durable, and nothing is
    appended until its removal is durable too: a stale note must never cut
    records written later.
    """
    note = unsynced_note_path(path)
    try:
        with open(note, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return
    try:
        info = json.loads(raw)
        durable_end = int(info["durable_end"])
        if durable_end < 0:
            raise ValueError(durable_end)
    except (ValueError, KeyError, TypeError) as e:
        raise WalError(f"{note}: unreadable note of a failed fsync ({e}); the log was not changed. "
                       f"Inspect it; delete it only if {path} was restored from a replica") from None
    size = os.fstat(fd).st_size
    stale = note_is_stale(info, rfd, durable_end, size)
    if stale:
        # Not this file's note, or the disk lost the bytes it vouched for:
        # the scan below judges the file as it is (and marks any cut).
        logs.warn("unsynced_note_ignored", path=path, durable_end=durable_end, reason=stale)
    elif size > durable_end:
        saved = f"{path}.unsynced-{durable_end}"
        if os.path.exists(saved):
            saved = f"{saved}-{os.getpid()}"
        save_copy(rfd, durable_end, size, saved)
        os.ftruncate(fd, durable_end)
        fsync(fd)
        logs.warn("unsynced_tail_cut", path=path, offset=durable_end, dropped_bytes=size - durable_end,
                  saved_to=saved, reason="written after the last successful fsync of a process whose fsync failed")
    os.unlink(note)
    try:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise WalFsyncError(f"{path}: cannot make the removal of {note} durable ({e}); refusing to append") from None
    if not stale:
        logs.event("unsynced_note_applied", path=path, durable_end=durable_end, size_before=size)


def note_is_stale(info: dict, fd: int, durable_end: int, size: int) -> str:
    """Why a note does not describe this file (empty if it does)."""
    st = os.fstat(fd)
    if "ino" in info and (info["ino"], info.get("dev")) != (st.st_ino, st.st_dev):
        return "the note names another file (the log was replaced since)"
    if size < durable_end:
        return f"the file ({size} bytes) is shorter than the noted durable end"
    if "tail_sha256" in info and info["tail_sha256"] != tail_digest(fd, durable_end):
        return "the bytes before the noted durable end differ from those the note saw"
    return ""
