"""The follower's decisions, free of I/O: what to do with a leader's message.

Given the follower's durable end and epoch, a message from the leader
becomes exactly one decision. Every check that keeps a follower's log a
byte-identical prefix of its leader's lives here: the epoch fence, the
offset continuity check, and the per-frame CRC and payload checks. The role
loop performs the decision; tests feed the core bytes directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from daemon.node.identity import truncation_point
from daemon.wal.format import Frame, Record, RecordError, decode_payload, parse_frame
from daemon.node.transfer import Partial, chunk_fits, resume_pos
from daemon.wire.replication import (BadMessage, Data, Fetch, FetchSnapshot, FromLeader, NotLeader, Refuse,
                                     SnapshotChunk, SnapshotNeeded)
from daemon.wire.replication import Truncate as TruncateMsg


@dataclass(slots=True)
class Append:
    data: bytes
    frames: list[tuple[Frame, Record]]
    epoch_starts: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class Truncate:
    offset: int
    leader_epoch: int


@dataclass(slots=True)
class Refetch:
    """Ignore the message and ask again from our end, after `delay` seconds; `reason` is logged if loud.

    `times` counts loud refetches in a row: a standing refusal is asked
    again later and later (up to the core's `max_backoff`), never in a busy loop.
    """

    reason: str
    loud: bool = False
    delay: float = 0.0
    times: int = 0


@dataclass(slots=True)
class AdoptEpoch:
    """The leader is at a newer epoch: persist it before taking its data."""

    epoch: int
    leader: str | None


@dataclass(slots=True)
class Redirect:
    """The node we fetch from does not lead; it points elsewhere."""

    epoch: int
    leader: str | None


@dataclass(slots=True)
class StartTransfer:
    """The leader offers its snapshot: keep the bytes we hold of that file from `pos` (0: start again), fetch on.

    The glue first saves `catch_up_to` as the node's damaged_end: until its
    log reaches the leader's end of now, it counts as no copy for promotion."""

    offset: int
    crc: int
    size: int
    pos: int
    catch_up_to: int


@dataclass(slots=True)
class WriteChunk:
    """Write these snapshot bytes at `pos` of the transfer's temp file, then call `chunk_written`."""

    pos: int
    data: bytes


Decision = Append | Truncate | Refetch | AdoptEpoch | Redirect | StartTransfer | WriteChunk


class FollowerCore:
    def __init__(self, name: str, epoch: int, end: int, last_epoch: int, records: int, max_fetch: int,
                 history: list[tuple[int, int]] | None = None, max_backoff: float = 0.2) -> None:
        self.name = name
        self.epoch = epoch
        self.end = end
        self.last_epoch = last_epoch
        self.records = records
        self.max_fetch = max_fetch
        # (epoch, start offset) of this log: where our epochs end, for truncation.
        self.history = history if history is not None else []
        self.leader_end: int | None = None
        self.leader_commit: int | None = None
        # The highest read round of the current leader we have been sent; our
        # next fetch carries it, proving we still follow (ReadIndex).
        self.round = 0
        self.inc = 0  # the leader incarnation `round` belongs to
        self.max_backoff = max_backoff
        self.refused = 0  # loud refetches since the last append
        self.transfer: Partial | None = None  # a snapshot transfer under way (daemon/node/transfer.py)

    def on_message(self, msg: FromLeader | BadMessage) -> Decision:
        d = self._decide(msg)
        if isinstance(d, Refetch):
            self.refused = self.refused + 1 if d.loud else 0
            d.times = self.refused
            if self.refused > 1:
                d.delay = min(self.max_backoff, 0.01 * 2 ** min(self.refused, 10))
        return d

    def fetch_msg(self) -> Fetch:
        return Fetch(self.name, self.epoch, self.end, self.last_epoch, self.records, self.max_fetch, self.round,
                     self.inc)

    def fetch_snapshot_msg(self) -> FetchSnapshot:
        t = self.transfer
        assert t is not None
        return FetchSnapshot(self.name, self.epoch, t.offset, t.crc, t.pos, self.max_fetch)

    def chunk_written(self, n: int) -> bool:
        """`n` more bytes of the transfer are written: True when the file is all there."""
        t = self.transfer
        assert t is not None and t.size is not None
        t.pos += n
        return t.pos == t.size

    def _decide(self, msg: FromLeader | BadMessage) -> Decision:
        if isinstance(msg, BadMessage):
            return Refetch(f"malformed message from the leader: {msg}", loud=True)
        epoch = msg.epoch
        if isinstance(msg, Refuse):
            # A refusal changes nothing on either side, whatever epoch it
            # names (a node of another cluster refuses with its own epoch).
            return Refetch(f"leader refused our fetch: {msg.message}", loud=True)
        if isinstance(msg, NotLeader):
            return Redirect(epoch, msg.leader)
        if epoch < self.epoch:
            # A stale leader. Our next fetch carries our epoch, which makes it step down.
            return Refetch(f"leader epoch {epoch} is older than ours ({self.epoch}); not taking its data", loud=True)
        if epoch > self.epoch:
            self.round = 0
            return AdoptEpoch(epoch, getattr(msg, "leader", None))
        if isinstance(msg, TruncateMsg):
            # KIP-101/279: cut to the smaller of the leader's end of its epoch
            # and our own end of that epoch; below it the logs are the same.
            cut = truncation_point(self.history, self.end, msg.last_epoch, msg.offset)
            if not 0 <= cut < self.end:
                return Refetch(f"truncate to {cut} (leader: epoch {msg.last_epoch} ends at {msg.offset}) "
                               f"is not below our end {self.end}", loud=True)
            return Truncate(cut, epoch)
        if isinstance(msg, SnapshotNeeded):
            if msg.offset <= self.end:
                # It brings nothing we lack, and installing it would replace our log beyond it.
                return Refetch(f"snapshot at {msg.offset} offered, not beyond our end {self.end}", loud=True)
            pos = resume_pos(self.transfer, msg)
            self.transfer = Partial(msg.offset, msg.crc, pos, msg.size)
            self.leader_end = msg.end
            return StartTransfer(msg.offset, msg.crc, msg.size, pos, msg.end)
        if isinstance(msg, SnapshotChunk):
            why = chunk_fits(self.transfer, msg)
            if why:
                # Our fetch from our end brings the leader's offer again, and we resume from there.
                return Refetch(why, loud=True)
            return WriteChunk(msg.pos, msg.data)
        assert isinstance(msg, Data)
        self.leader_end = msg.end
        self.leader_commit = msg.commit
        if msg.inc != self.inc:
            self.inc, self.round = msg.inc, msg.round
        else:
            self.round = max(self.round, msg.round)
        if msg.offset is None:
            return Refetch("heartbeat")
        if msg.offset != self.end:
            # A duplicate below our end or a gap above it: drop and ask for our end.
            return Refetch(f"chunk at offset {msg.offset} does not start at our end {self.end}",
                           loud=msg.offset > self.end)
        return self._check_frames(msg.data or b"", epoch)

    def _check_frames(self, data: bytes, leader_epoch: int) -> Append | Refetch:
        frames: list[tuple[Frame, Record]] = []
        starts: list[tuple[int, int]] = []
        pos = 0
        last = self.last_epoch
        while pos < len(data):
            status, frame = parse_frame(data, pos, self.end)
            if frame is None:
                return Refetch(f"frame at offset {self.end + pos} failed its check ({status}); nothing appended", loud=True)
            if frame.epoch < last or frame.epoch > leader_epoch:
                return Refetch(f"frame at offset {frame.offset} has epoch {frame.epoch} outside {last}..{leader_epoch}", loud=True)
            try:
                rec = decode_payload(frame.payload)
            except RecordError as e:
                return Refetch(f"frame at offset {frame.offset} has an invalid payload: {e}", loud=True)
            if frame.epoch != last:
                starts.append((frame.epoch, frame.offset))
                last = frame.epoch
            frames.append((frame, rec))
            pos += frame.size
        if not frames:
            # Bytes were due (the leader sends a chunk only below its end):
            # an empty one is a refusal in disguise, asked again with a backoff.
            return Refetch(f"empty chunk at offset {self.end} (the leader has bytes beyond it)", loud=True)
        return Append(data, frames, starts)

    def appended(self, end: int, last_epoch: int, records: int, epoch_starts: Sequence[tuple[int, int]] = ()) -> None:
        self.refused = 0
        self.end = end
        self.last_epoch = last_epoch
        self.records += records
        for e, o in epoch_starts:
            if not self.history or self.history[-1][0] < e:
                self.history.append((e, o))
