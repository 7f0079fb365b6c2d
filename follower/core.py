"""The follower's decisions, free of I/O: what to do with a leader's message.

Given the follower's durable end and epoch, a message from the leader
becomes exactly one decision. Every check that keeps a follower's log a
byte-identical prefix of its leader's lives here: the epoch fence, the
offset continuity check, and the per-frame CRC and payload checks. The role
loop performs the decision; tests feed the core bytes directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.wal.format import Frame, Record, RecordError, decode_payload, parse_frame


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
    """Ignore the message and ask again from our end; `reason` is logged if loud."""

    reason: str
    loud: bool = False


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


class FollowerCore:
    def __init__(self, name: str, epoch: int, end: int, last_epoch: int, records: int, max_fetch: int) -> None:
        self.name = name
        self.epoch = epoch
        self.end = end
        self.last_epoch = last_epoch
        self.records = records
        self.max_fetch = max_fetch
        self.leader_end: int | None = None
        self.leader_commit: int | None = None

    def fetch_msg(self) -> dict[str, Any]:
        return {"t": "fetch", "name": self.name, "epoch": self.epoch, "offset": self.end,
                "last_epoch": self.last_epoch, "records": self.records, "max": self.max_fetch}

    def on_message(self, hdr: Any, data: bytes | None) -> Append | Truncate | Refetch | AdoptEpoch | Redirect:
        if not isinstance(hdr, dict) or not isinstance(hdr.get("t"), str):
            return Refetch("malformed message from the leader", loud=True)
        epoch = hdr.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            return Refetch("message without a valid epoch", loud=True)
        kind = hdr["t"]
        if kind == "not_leader":
            return Redirect(epoch, hdr.get("leader") if isinstance(hdr.get("leader"), str) else None)
        if epoch < self.epoch:
            # A stale leader. Our next fetch carries our epoch, which makes it step down.
            return Refetch(f"leader epoch {epoch} is older than ours ({self.epoch}); not taking its data", loud=True)
        if epoch > self.epoch:
            return AdoptEpoch(epoch, hdr.get("leader") if isinstance(hdr.get("leader"), str) else None)
        if kind == "truncate":
            off = hdr.get("offset")
            if not isinstance(off, int) or isinstance(off, bool) or not 0 <= off < self.end:
                return Refetch(f"truncate to {off!r} is not below our end {self.end}", loud=True)
            return Truncate(off, epoch)
        if kind == "error":
            return Refetch(f"leader refused our fetch: {hdr.get('message')}", loud=True)
        if kind != "data":
            return Refetch(f"unknown message type {kind!r}", loud=True)
        if isinstance(hdr.get("end"), int):
            self.leader_end = hdr["end"]
        if isinstance(hdr.get("commit"), int):
            self.leader_commit = hdr["commit"]
        offset = hdr.get("offset")
        if offset is None:
            return Refetch("heartbeat")
        if not isinstance(offset, int) or data is None:
            return Refetch("data message without an offset or body", loud=True)
        if offset != self.end:
            # A duplicate below our end or a gap above it: drop and ask for our end.
            return Refetch(f"chunk at offset {offset} does not start at our end {self.end}", loud=offset > self.end)
        return self._check_frames(data, epoch)

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
            return Refetch("empty chunk")
        return Append(data, frames, starts)

    def appended(self, end: int, last_epoch: int, records: int) -> None:
        self.end = end
        self.last_epoch = last_epoch
        self.records += records
