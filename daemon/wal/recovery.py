"""Opening a log for writing: lock, scan, repair a torn tail, or refuse.

Recovery may remove exactly one thing: a torn tail (bytes after the last
valid frame that cannot hide a later record). Those bytes are copied to
`<log>.torn-<offset>` first, then cut, then the cut is fsynced. Anything that
looks like damage in the middle of the log is refused with its offset and
the file is left untouched: the operator decides, not the daemon.
"""

from __future__ import annotations

import os
from typing import Callable

from daemon.ops import logs
from .format import Frame, Record
from .reader import CORRUPT, TORN, ScanResult, scan_fd
from .writer import SyncFn, WalError, WalWriter, WriteFn, fsync_dir, lock_exclusive, open_append, save_copy


class LogCorrupt(WalError):
    """The log is damaged before its end; nothing was changed."""

    code = "log_corrupt"

    def __init__(self, path: str, result: ScanResult) -> None:
        super().__init__(
            f"{path}: refusing to open: {result.describe()}. The file was not changed; "
            f"inspect it with 'zwal log dump {path}' and restore it from a replica"
        )
        self.result = result


def open_log(
    path: str,
    *,
    on_frame: Callable[[Frame, Record], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    before_cut: Callable[[ScanResult], None] | None = None,
    write: WriteFn = os.write,
    fsync: SyncFn = os.fdatasync,
) -> tuple[WalWriter, ScanResult]:
    """Open `path` for appending after recovery; `on_frame` sees every valid frame.

    `before_cut` is called with the scan before a torn tail is cut, so the
    caller can durably note the cut first: a crash between the cut and that
    note would otherwise forget that bytes were removed.

    The exclusive lock is taken before the scan, so no other process can
    append between the scan and the first write.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise WalError(f"{path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise WalError(f"{path}: is a directory, not a log file")
    try:
        fd, created = open_append(path)
    except PermissionError:
        raise WalError(f"{path}: permission denied") from None
    try:
        lock_exclusive(fd, path)
        if created:
            # The new directory entry must survive a crash as well as the data.
            fsync_dir(parent)
            logs.event("log_created", path=path)
        rfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = scan_fd(rfd, on_frame, progress)
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
