"""When a node takes a snapshot, and what it does when one is written (decisions only).

The files are daemon/node/snapshot.py; the writing happens behind the
`SnapshotPort` (production: a forked child, daemon/node/snapshot_writer.py;
the simulator: its world), so the same rules run in both.

Invariants:
- a snapshot is taken only at `kv.end`, and only when `kv.end` is at or
  below the commit point this node knows (a leader's commit; a follower's
  leader's commit): bytes a later truncation of a divergent suffix could
  cut are never in a snapshot (with K >= 1 committed records survive every
  promotion). Should a truncation cut below one anyway, `truncating` moves
  it aside first (logged);
- one snapshot is written at a time; it runs beside the loop, never in it;
- after a snapshot is written, only the newest KEEP are kept (each removal
  logged); a failed write is logged and tried again a period later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from daemon.node.kv import KVState
from daemon.node.ports import ClientPort, Events, Log
from daemon.node.retaining import Retainer
from daemon.node.transfer import SnapInfo
from daemon.wire.client import Err, error_reply, ok_reply

SNAPSHOT_OP = "snapshot"
RETRY_AFTER_FAILURE = 10.0  # seconds before a failed snapshot is tried again


@dataclass(frozen=True, slots=True)
class Written:
    """What a snapshot write came to: `error` None means `path` is durable and holds the state at `offset`."""

    offset: int
    path: str
    error: str | None = None
    seconds: float = 0.0
    nbytes: int = 0


class SnapshotPort(Protocol):
    """Writes snapshot files beside the loop and manages the directory (mechanism only)."""

    @property
    def busy(self) -> bool: ...
    def start(self, kv: KVState, last_crc: int) -> None:
        """Begin writing the state `kv` holds now (at kv.end); `kv` may change right after this returns."""
        ...
    def poll(self) -> Written | None:
        """The write that finished since the last poll, if any."""
        ...
    def cancel(self) -> None:
        """Stop the write in flight (its temp file removed); no-op when idle."""
        ...
    def offsets(self) -> list[int]:
        """Offsets of the snapshots in the directory, newest first."""
        ...
    def remove(self, offset: int) -> str: ...
    def move_aside(self, offset: int, why: str) -> str: ...
    def describe(self, offset: int) -> SnapInfo | None:
        """The snapshot at `offset`'s size and header crc, read from its header (None: gone or unreadable)."""
        ...
    def read_at(self, offset: int, pos: int, n: int) -> bytes:
        """Bytes [pos, pos + n) of the snapshot at `offset`: opened, pread, closed (raises OSError when gone)."""
        ...


def due(busy: bool, kv_end: int, commit: int | None, newest: int, every: int, requested: bool,
        retry_at: float, now: float) -> bool:
    """Start a snapshot of the state at `kv_end` now? (pure)."""
    if busy or commit is None or kv_end > commit or kv_end <= newest or kv_end == 0:
        return False
    if requested:
        return True
    # every = 0: only on demand (daemon/config.py), never "always due".
    return every > 0 and now >= retry_at and kv_end - newest >= every


class Snapshotter:
    def __init__(self, port: SnapshotPort, events: Events, every_bytes: int, retain_bytes: int = -1) -> None:
        self.port = port
        self.events = events
        self.every = every_bytes
        # Segments below the kept snapshots go by daemon/node/retaining.py.
        self.retainer = Retainer(retain_bytes, events)
        offs = port.offsets()
        self.newest = offs[0] if offs else 0
        self.newest_path = ""
        self._waiting: list[tuple[list[bytes], int]] = []  # on-demand requests: (reply envelope, request id)
        self._client: ClientPort | None = None
        self._retry_at = 0.0
        self._taking: int | None = None
        self._offer: SnapInfo | None = None

    def offer(self) -> SnapInfo | None:
        """The newest snapshot a leader offers a follower (snapshot transfer, daemon/node/transfer.py)."""
        if not self.newest:
            return None
        if self._offer is None or self._offer.offset != self.newest:
            self._offer = self.port.describe(self.newest)
        return self._offer

    def status(self) -> dict[str, Any]:
        return {"snapshot": {"newest": self.newest, "writing": self._taking, "every_bytes": self.every},
                **self.retainer.status()}

    def request(self, client: ClientPort, envelope: list[bytes], req_id: int, kv: KVState) -> None:
        """`zwal snapshot`: answered when the next snapshot is durable (one in flight, or one started for it).

        At once when the newest snapshot already holds the state's end."""
        self._client = client
        if kv.end == 0:
            client.send([*envelope, error_reply(req_id, Err.REFUSED, "the log is empty: nothing to snapshot")])
            return
        if kv.end == self.newest and self._taking is None and self.newest_path:
            client.send([*envelope, ok_reply(req_id, offset=self.newest, file=self.newest_path)])
            return
        self._waiting.append((envelope, req_id))

    def step(self, kv: KVState, commit: int | None, log: Log, now: float, acked_floor: int | None = None,
             transfer_floor: int | None = None) -> None:
        """Each turn: collect a finished write; start one if due (kv is the state at kv.end); then
        retention (`acked_floor`: the lowest offset every in-sync follower acknowledged, on a leader)."""
        done = self.port.poll()
        if done is not None:
            self._finished(done, now)
        self.retainer.step(log, self.port.offsets, acked_floor, transfer_floor, now)
        if due(self.port.busy, kv.end, commit, self.newest, self.every, bool(self._waiting), self._retry_at, now):
            last_crc = 0
            if kv.last is not None:
                last_crc = int.from_bytes(log.read_raw(kv.last.offset, 4), "little")
            self._taking = kv.end
            self.events.event("snapshot_started", offset=kv.end, records=kv.records, keys=len(kv.data),
                              log_bytes_since=kv.end - self.newest, on_demand=bool(self._waiting))
            self.port.start(kv, last_crc)

    def _finished(self, w: Written, now: float) -> None:
        self._taking = None
        if w.error is not None:
            self._retry_at = now + RETRY_AFTER_FAILURE
            self.events.error("snapshot_failed", offset=w.offset, error=w.error,
                              action=f"check the disk of {w.path}; the node tries again in "
                                     f"{RETRY_AFTER_FAILURE:g} s and restarts replay the whole log meanwhile")
            self._answer(lambda rid: error_reply(rid, Err.WRITE_FAILED, f"snapshot at {w.offset} failed: {w.error}"))
            return
        self.newest, self.newest_path = w.offset, w.path
        self.events.event("snapshot_written", offset=w.offset, path=w.path, bytes=w.nbytes,
                          seconds=round(w.seconds, 3))
        for off in self.port.offsets()[2:]:
            gone = self.port.remove(off)
            self.events.event("snapshot_removed", offset=off, path=gone, reason="two newer snapshots are kept")
        self._answer(lambda rid: ok_reply(rid, offset=w.offset, file=w.path))

    def _answer(self, body: Any) -> None:
        waiting, self._waiting = self._waiting, []
        if self._client is not None:
            for env, rid in waiting:
                self._client.send([*env, body(rid)])

    def recovered(self, offset: int, path: str) -> None:
        """Recovery started from the snapshot at `offset` (0: none); those it set aside are gone."""
        offs = self.port.offsets()
        self.newest = offs[0] if offs else 0
        self.newest_path = path if offset and offset == self.newest else ""

    def cancel(self, why: str) -> None:
        if self._taking is not None:
            self.port.cancel()
            self.events.warn("snapshot_cancelled", offset=self._taking, reason=why)
            self._taking = None
            self._answer(lambda rid: error_reply(rid, Err.REFUSED, f"snapshot cancelled: {why}; run it again"))

    def truncating(self, offset: int) -> None:
        """The log is about to be cut to `offset`: no snapshot may describe bytes beyond it."""
        if self._taking is not None and self._taking > offset:
            self.cancel(f"the log is cut to {offset}, below the snapshot being written")
        for off in self.port.offsets():
            if off > offset:
                moved = self.port.move_aside(off, "truncated")
                self.events.warn("snapshot_moved_aside", offset=off, cut_to=offset, saved_to=moved,
                                 reason="a divergent suffix is cut below this snapshot's offset")
        offs = self.port.offsets()
        self.newest = offs[0] if offs else 0
        self.newest_path = ""
