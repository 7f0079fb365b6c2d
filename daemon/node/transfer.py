"""Snapshot transfer's decisions, free of I/O (Raft's InstallSnapshot, KRaft's FetchSnapshot).

The leader answers a fetch with `SnapshotNeeded` instead of log bytes when
the follower asks below the leader's oldest retained offset (retention
deleted those segments), or when it has an empty log and the leader's
newest snapshot is smaller than the log below it. The follower then
fetches the file in chunks of at most fetch_max_bytes, by position, into a
temp file `snapshot-<offset>-<crc>.transfer` in its snapshots directory;
after a restart or a leader change it resumes at the temp file's size if
the offer names the same file (offset and header crc), and starts again
otherwise. The glue that moves the bytes is daemon/node/install.py
(follower) and daemon/node/leader.py (leader, pread per chunk).

Invariants:
- a snapshot is offered only for an offset the follower does not hold and
  the leader's snapshot covers (follower offset < snapshot offset <= the
  leader's end), so installing it replaces a log that is a prefix below it;
- a chunk is written only at the position the transfer has reached: bytes
  are never written over bytes of another file or at a gap;
- a transfer's bytes are installed only after the whole file passes the
  snapshot checks (daemon/node/snapshot.py decode) and its header crc is
  the one offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.wire.replication import FetchSnapshot, SnapshotChunk, SnapshotNeeded

TRANSFER = ".transfer"


@dataclass(frozen=True, slots=True)
class SnapInfo:
    """The leader's newest snapshot: its offset, file size and header checksum."""

    offset: int
    size: int
    crc: int


@dataclass(slots=True)
class Partial:
    """A follower's transfer under way: the file it names and how many bytes of it are written."""

    offset: int
    crc: int
    pos: int
    size: int | None = None  # None: found on disk at start, not yet offered again


def wants_snapshot(offset: int, oldest: int, end: int, snap: SnapInfo | None) -> bool:
    """Does a fetch at `offset` get the snapshot instead of log bytes?

    Below `oldest` the log is gone: only the snapshot holds it. An empty
    follower (offset 0) gets it when the log up to the snapshot is larger
    than the snapshot file (global offsets are byte counts)."""
    if snap is None or not offset < snap.offset <= end:
        return False
    return offset < oldest or (offset == 0 and snap.offset > snap.size)


def serve_range(req: FetchSnapshot, snap: SnapInfo | None, max_bytes: int) -> tuple[int, int] | None:
    """(pos, length) of the chunk to send for `req`; None: it names another file (offer the newest again)."""
    if snap is None or req.offset != snap.offset or req.crc != snap.crc or req.pos >= snap.size:
        return None
    return req.pos, min(req.max, max_bytes, snap.size - req.pos)


def resume_pos(partial: Partial | None, offer: SnapshotNeeded) -> int:
    """Where a follower's transfer of `offer` starts: the bytes it holds of the same file, else 0."""
    if partial is None or partial.offset != offer.offset or partial.crc != offer.crc or partial.pos > offer.size:
        return 0
    return partial.pos


def chunk_fits(partial: Partial | None, msg: SnapshotChunk) -> str:
    """Why a chunk is not written ("" : it is the next bytes of our transfer)."""
    if partial is None:
        return "no snapshot transfer under way"
    if msg.offset != partial.offset or msg.crc != partial.crc or msg.size != partial.size:
        return (f"chunk of snapshot {msg.offset} (crc {msg.crc:#x}, {msg.size} bytes) is not the transfer under way "
                f"({partial.offset}, crc {partial.crc:#x})")
    if msg.pos != partial.pos:
        return f"chunk at {msg.pos} does not start where the transfer is ({partial.pos})"
    return ""


def transfer_name(offset: int, crc: int) -> str:
    return f"snapshot-{offset:020d}-{crc:08x}{TRANSFER}"


def parse_transfer_name(name: str) -> tuple[int, int] | None:
    """(offset, crc) a transfer's temp file name carries, or None."""
    if not (name.startswith("snapshot-") and name.endswith(TRANSFER)):
        return None
    body = name[len("snapshot-"):-len(TRANSFER)]
    digits, _, crc = body.partition("-")
    if len(digits) != 20 or not digits.isdigit() or len(crc) != 8:
        return None
    try:
        return int(digits), int(crc, 16)
    except ValueError:
        return None
