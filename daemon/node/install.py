"""A follower's snapshot transfer on disk: the temp file, its checks, and the install (daemon/node/transfer.py decides).

Install, each step durable before the next (docs/format.md, "After a snapshot install"):

1. the transfer's temp file `snapshots/snapshot-<offset>-<crc>.transfer` is
   fsynced and passes every snapshot check (header, each chunk, its crc is
   the one offered, its offset the one named);
2. a new log directory `log.installing/` is made, holding one empty segment
   named by the snapshot's offset (file, directory and data directory fsynced);
3. the temp file is renamed `snapshots/snapshot-<offset>` and the directory
   fsynced: the commit point. Before it, recovery removes `log.installing/`
   and the node is what it was (the temp file is resumed); after it,
   recovery finishes the install (`finish`);
4. `log/` is renamed `log.replaced/`, `log.installing/` is renamed `log/`,
   the data directory is fsynced;
5. recovery (`finish`, called before the log is opened) removes
   `log.replaced/`, logged: the leader sends a snapshot only to a follower
   whose log ends below it and is a prefix of its own, so every record in
   it is in the snapshot.

Node-state's epoch history is taken from the snapshot's epoch starts by
recovery (Node._open_log merges them), and its damaged_end (the leader's
end when it offered the snapshot) was saved before the transfer began.
"""

from __future__ import annotations

import os
import shutil

from daemon.node import snapshot as snap
from daemon.node.ports import Events
from daemon.node.transfer import Partial, parse_transfer_name, transfer_name
from daemon.wal.segments import LOG_DIR, list_segments, segment_name
from daemon.wal.writer import fsync_dir

INSTALLING = "log.installing"
REPLACED = "log.replaced"


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> int:
    """Remove a directory tree; the bytes it held."""
    n = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                n += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    shutil.rmtree(path)
    return n


def finish(data_dir: str, events: Events) -> None:
    """Recovery's part of an install: roll an interrupted one back (before its commit point) or forward."""
    new = os.path.join(data_dir, INSTALLING)
    log_dir = os.path.join(data_dir, LOG_DIR)
    old = os.path.join(data_dir, REPLACED)
    if os.path.isdir(new):
        segs = list_segments(new)
        base = segs[0][0] if len(segs) == 1 else None
        placed = base is not None and os.path.exists(os.path.join(snap.snapshot_dir(data_dir), snap.name_for(base)))
        if not placed:
            _remove_tree(new)
            fsync_dir(data_dir)
            events.warn("snapshot_install_rolled_back", path=new, reason="the node stopped before the snapshot was "
                        "in place: the old log stands; the transfer resumes from its temp file")
        else:
            if os.path.isdir(log_dir):
                if os.path.isdir(old):
                    _remove_tree(old)
                os.rename(log_dir, old)
            os.rename(new, log_dir)
            fsync_dir(data_dir)
            events.event("snapshot_install_finished", offset=base, log=log_dir,
                         first_segment=segment_name(base or 0))
    if os.path.isdir(old) and os.path.isdir(log_dir):
        count = len(list_segments(old))
        n = _remove_tree(old)
        fsync_dir(data_dir)
        events.event("replaced_log_removed", path=old, segments=count, bytes=n,
                     reason="a snapshot from the leader replaced it: the log was a prefix of the leader's, "
                            "below the snapshot's offset, so the snapshot holds every record it held")


class FileTransfer:
    """The TransferPort over a data directory: temp file writes, verification, the install's steps."""

    def __init__(self, data_dir: str, window_seconds: float) -> None:
        self.data_dir = data_dir
        self.dir = snap.snapshot_dir(data_dir)
        self.window_seconds = window_seconds
        self._fd: int | None = None
        self._path = ""

    def _listing(self) -> list[tuple[int, int, str]]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            p = parse_transfer_name(n)
            if p is not None:
                out.append((p[0], p[1], os.path.join(self.dir, n)))
        return sorted(out, reverse=True)

    def partial(self) -> Partial | None:
        """The transfer a stopped process left (its bytes so far), if any; older ones are removed."""
        found = self._listing()
        for _, _, path in found[1:]:
            os.unlink(path)
        if not found:
            return None
        offset, crc, path = found[0]
        return Partial(offset, crc, os.path.getsize(path))

    def begin(self, offset: int, crc: int, pos: int) -> None:
        """Open the temp file of this transfer, keeping its first `pos` bytes; other transfers' files go."""
        self.close()
        os.makedirs(self.dir, exist_ok=True)
        self._path = os.path.join(self.dir, transfer_name(offset, crc))
        for _, _, p in self._listing():
            if p != self._path:
                os.unlink(p)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.ftruncate(self._fd, pos)

    def write(self, pos: int, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, pos)
            view, pos = view[n:], pos + n

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Give the transfer up: its temp file is removed."""
        self.close()
        for _, _, p in self._listing():
            os.unlink(p)

    def install(self, offset: int, crc: int, size: int) -> str:
        """Verify the whole file and install it (steps 1-4 above). "" when installed, else why not (file removed)."""
        assert self._fd is not None
        os.fsync(self._fd)
        self.close()
        path = self._path
        try:
            buf = snap.read(path)
            if len(buf) != size:
                raise snap.SnapshotError(f"{len(buf)} bytes, the leader offered {size}")
            loaded = snap.decode(buf, self.window_seconds)
            if loaded.header.offset != offset or snap.header_crc(buf) != crc:
                raise snap.SnapshotError(f"holds the state at {loaded.header.offset} (crc {snap.header_crc(buf):#x}), "
                                         f"the leader offered {offset} (crc {crc:#x})")
        except snap.SnapshotError as e:
            os.unlink(path)
            return str(e)
        del buf, loaded
        new = os.path.join(self.data_dir, INSTALLING)
        if os.path.isdir(new):
            _remove_tree(new)
        os.mkdir(new, 0o755)
        seg = os.path.join(new, segment_name(offset))
        os.close(os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        _fsync_file(seg)
        fsync_dir(new)
        fsync_dir(self.data_dir)
        # The commit point: from here recovery finishes the install.
        os.rename(path, os.path.join(self.dir, snap.name_for(offset)))
        fsync_dir(self.dir)
        log_dir = os.path.join(self.data_dir, LOG_DIR)
        old = os.path.join(self.data_dir, REPLACED)
        if os.path.isdir(old):
            _remove_tree(old)
        if os.path.isdir(log_dir):
            os.rename(log_dir, old)
        os.rename(new, log_dir)
        fsync_dir(self.data_dir)
        return ""
