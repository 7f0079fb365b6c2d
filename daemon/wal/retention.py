"""Which sealed segments a node may delete: the retention decision, pure.

A sealed segment may go only when every one of these holds (docs/format.md,
"Retention"):

- it lies wholly below the newest valid snapshot (recovery and a snapshot
  transfer start there, so nothing below it is needed to rebuild state);
- every in-sync follower has acknowledged past it (a follower that still
  needs those bytes gets them by fetch rather than by a snapshot transfer);
- no snapshot transfer in progress needs it (etcd #4055: a follower that
  installs a snapshot and then finds the log after it gone loops forever);
- `retain_bytes` allows it: the log that stays is at least that long
  (Kafka's retention.bytes); `-1` keeps everything.

Deletion is always from the oldest end and in order, so the retained log is
one contiguous range. The caller moves the oldest retained offset first,
durably, and only then renames each file to `.deleted` and unlinks it
(KAFKA-16073 is the bug when the order is the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

KEEP_ALL = -1


@dataclass(frozen=True, slots=True)
class Segment:
    base: int  # global offset of its first byte
    end: int  # global offset just past its last byte
    sealed: bool  # never written again (every segment but the last)

    @property
    def size(self) -> int:
        return self.end - self.base


@dataclass(frozen=True, slots=True)
class Plan:
    """What to delete, oldest first, and the oldest offset that remains."""

    delete: tuple[Segment, ...]
    oldest: int
    # Why the first segment that stays was kept (empty when nothing is sealed
    # or everything allowed went): for the operator's log and status.
    kept_because: str


def plan(
    segments: Sequence[Segment],
    *,
    snapshot_offset: int | None,
    acked_floor: int | None,
    transfer_floor: int | None,
    retain_bytes: int,
) -> Plan:
    """The segments to delete now, given the node's segments in offset order.

    `acked_floor` is the lowest offset that every in-sync follower has
    acknowledged (None: no follower constrains this node, e.g. on a follower
    or a single node). `transfer_floor` is the lowest snapshot offset a
    running snapshot transfer will fetch from (None: no transfer).
    """
    if not segments:
        return Plan((), 0, "")
    for a, b in zip(segments, segments[1:]):
        if a.end != b.base:
            raise ValueError(f"segments are not contiguous: {a.base}..{a.end} then {b.base}")
    oldest = segments[0].base
    if retain_bytes == KEEP_ALL:
        return Plan((), oldest, "retain_bytes = -1 keeps everything")
    if retain_bytes < 0:
        raise ValueError(f"retain_bytes must be -1 or >= 0, got {retain_bytes}")
    if snapshot_offset is None:
        return Plan((), oldest, "no snapshot yet")
    total = segments[-1].end - oldest
    out: list[Segment] = []
    why = ""
    for seg in segments:
        if not seg.sealed:
            why = "the last segment is still written"
        elif seg.end > snapshot_offset:
            why = f"the newest snapshot is at {snapshot_offset}"
        elif acked_floor is not None and seg.end > acked_floor:
            why = f"an in-sync follower has acknowledged only up to {acked_floor}"
        elif transfer_floor is not None and seg.end > transfer_floor:
            why = f"a snapshot transfer will fetch from {transfer_floor}"
        elif total - seg.size < retain_bytes:
            why = f"retain_bytes = {retain_bytes} keeps it"
        if why:
            break
        out.append(seg)
        total -= seg.size
        oldest = seg.end
    return Plan(tuple(out), oldest, why)
