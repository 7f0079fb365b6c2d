"""When a node deletes old segments (glue over daemon/wal/retention.py's plan).

Each turn of a role may run a retention pass, at most once a second, and
only while no batch is on its way to disk (the syncer thread may roll the
log then; a roll and a retire must not interleave). The decision is
`retention.plan`; the mechanism is the log port's `retire`
(daemon/wal/segments.py SegmentedLog.retire: the oldest offset moves first,
durably, then the files go).

The snapshot that bounds retention is the *oldest* of the snapshots kept
(two are kept, daemon/node/snapshotting.py): should the newest fail its
checks at the next start, the node still recovers from the older one and
the log after it, without a transfer from the leader.
"""

from __future__ import annotations

from typing import Callable

from daemon.node.ports import Events, Log
from daemon.ops import logs
from daemon.wal import retention

PASS_EVERY_S = 1.0
_SKIPPED = logs.Limited(burst=5)


class Retainer:
    def __init__(self, retain_bytes: int, events: Events) -> None:
        self.retain_bytes = retain_bytes
        self.events = events
        self._next = 0.0
        self.deleted_bytes = 0
        self.deleted_segments = 0
        self.kept_because = ""

    def status(self) -> dict:
        return {"retention": {"retain_bytes": self.retain_bytes, "deleted_segments": self.deleted_segments,
                              "deleted_bytes": self.deleted_bytes, "kept_because": self.kept_because}}

    def step(self, log: Log, snapshot_offsets: Callable[[], list[int]], acked_floor: int | None,
             transfer_floor: int | None, now: float) -> None:
        """One pass, at most once a second; `snapshot_offsets` lists the kept snapshots (newest first)
        and is called only when a pass runs (it reads a directory)."""
        if now < self._next or log.busy:
            return
        self._next = now + PASS_EVERY_S
        segs = log.segments_view()
        if len(segs) < 2:
            return
        try:
            kept = snapshot_offsets()[:2]
        except OSError as e:
            # Out of descriptors (EMFILE) or a disk error: no pass now, the next one tries again.
            _SKIPPED.warn("retention_pass_skipped", error=str(e))
            return
        p = retention.plan(segs, snapshot_offset=min(kept) if kept else None, acked_floor=acked_floor,
                           transfer_floor=transfer_floor, retain_bytes=self.retain_bytes)
        self.kept_because = p.kept_because
        if not p.delete:
            return
        why = (f"below the snapshot at {min(kept)}, acknowledged by every in-sync follower"
               if acked_floor is not None else f"below the snapshot at {min(kept)}")
        n, size = log.retire(p.oldest, why)
        self.deleted_segments += n
        self.deleted_bytes += size
