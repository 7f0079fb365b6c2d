"""Recovery's side of snapshots: which snapshot to start from, and whether the log still holds its prefix.

etcd's rule: a snapshot that fails a check is renamed `.broken` and logged,
and the next older one (or a full replay) is used; nothing is skipped
silently. The log is the truth: a snapshot whose offset is beyond the
recovered log's end (the disk lost bytes, a torn tail was cut), or whose
last frame is not the log's frame there, is not used (logged, moved aside).
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Iterator

from daemon.node import snapshot as snap
from daemon.node.ports import Events
from daemon.wal.format import MARKER_OFFSET, header_size
from daemon.wal.reader import ScanResult

BEYOND_END = ".beyond-end"
_HEADER = struct.Struct("<IIQ")  # a log frame's first checksum, length, epoch, in v1 and v2 (daemon/wal/format.py)



def candidates(directory: str, window_seconds: float, events: Events) -> Iterator[snap.Loaded]:
    """The snapshots that pass their own checks, newest first; the others are moved aside, logged."""
    entries, tmps = snap.listing(directory)
    for t in tmps:
        os.unlink(t)
        events.warn("snapshot_temp_removed", path=t, reason="a snapshot write did not finish (the node stopped "
                                                            "during it); the older snapshots and the log hold all")
    for e in entries:
        try:
            loaded = snap.decode(snap.read(e.path), window_seconds)
            if loaded.header.offset != e.offset:
                raise snap.SnapshotError(f"holds the state at {loaded.header.offset}, its name says {e.offset}")
        except (snap.SnapshotError, OSError) as ex:
            moved = snap.move_aside(e.path, snap.BROKEN)
            events.error("snapshot_broken", path=e.path, saved_to=moved, reason=str(ex),
                         action="nothing to do: the next older snapshot or a full replay is used")
            continue
        if loaded.header.window_ms != int(window_seconds * 1000):
            events.warn("snapshot_not_used", path=e.path, offset=e.offset,
                        reason=f"built with a retry window of {loaded.header.window_ms} ms and "
                               f"retry_window_seconds is {window_seconds:g} now: replaying the log instead")
            continue
        yield loaded


def check_prefix(h: snap.Header, scan: ScanResult, read_raw: Callable[[int, int], bytes], oldest: int = 0) -> str:
    """Why the recovered log does not hold the prefix `h` describes ("" if it does).

    `oldest` is the first offset the log still holds: when retention deleted
    the segment with the snapshot's last frame (it ended at the snapshot's
    offset), or the log begins at the snapshot's offset (an installed
    snapshot, daemon/node/install.py), there is no frame below it to
    compare: the snapshot is all there is of that prefix."""
    if scan.valid_end < h.offset:
        return f"the log ends at {scan.valid_end}, before the snapshot's offset {h.offset}"
    if scan.replayed_from != h.offset:
        return f"offset {h.offset} is not a frame boundary of the log (replay began at {scan.replayed_from})"
    if h.last_offset < 0 or h.last_offset < oldest:
        return ""
    raw = read_raw(h.last_offset, MARKER_OFFSET + 3)
    if len(raw) < MARKER_OFFSET + 3:
        return f"the log holds no frame at {h.last_offset}"
    crc, length, epoch = _HEADER.unpack_from(raw)
    hsize = header_size(raw[MARKER_OFFSET + 2])  # the frame's own version (format v1 or v2)
    if h.last_offset + hsize + length != h.offset or epoch != h.last_epoch or crc != h.last_crc:
        return (f"the log's frame at {h.last_offset} (epoch {epoch}, crc {crc:#x}) is not the one the snapshot "
                f"ends with (epoch {h.last_epoch}, crc {h.last_crc:#x})")
    return ""


def set_aside(path: str, why: str, beyond_end: bool, events: Events) -> None:
    moved = snap.move_aside(path, BEYOND_END if beyond_end else snap.BROKEN)
    (events.warn if beyond_end else events.error)(
        "snapshot_not_used" if beyond_end else "snapshot_broken", path=path, saved_to=moved, reason=why,
        action="nothing to do: the log is the truth; an older snapshot or a full replay is used")
