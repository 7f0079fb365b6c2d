"""The leader's watches, free of I/O: which `watch` to answer, when, and from where.

A `watch` asks for committed records from a log offset (docs/protocol.md,
"watch"). The leader role hands each one to `Watches.admit` with the facts
it needs (the commit point, the log's end and oldest offset); the core
answers at once, or parks the request until the commit point passes its
offset or its wait expires (a long poll, like a follower's fetch).

Invariants:
- only committed records are streamed: every `ServeWatch` reads below the
  commit point it was decided at (`LeaderCore.commit`: with K >= 1, what K
  followers fsynced; a leader's uncommitted suffix is never sent, so a
  deposed leader's lost tail never appears in a stream);
- bad input changes nothing: `from` beyond the log's end, or not a frame
  boundary, gets `bad_offset`; below the oldest retained offset
  `offset_compacted` (with the oldest offset and the newest snapshot's);
- a watcher is bounded in bytes, like the client outbox: a parked watch
  reserves its `max_bytes` on its connection, and a watch that would take
  the connection's unread replies plus reservations past the budget is
  answered `busy`; so a watcher that never reads pins at most the budget;
- a parked watch is answered exactly once: records, an empty reply when
  its wait expires, or an error when the role ends (`fail_all`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from daemon.wire.client import Err, Request, Watch, error_reply, watch_reply

Envelope = list[bytes]

# Parked watches of all connections together: each costs a few hundred bytes
# of the leader's memory, and past this many new ones are answered `busy`.
MAX_PARKED = 4096


@dataclass(slots=True)
class Answer:
    """Send this reply now."""

    envelope: Envelope
    body: bytes


@dataclass(slots=True)
class ServeWatch:
    """Read whole frames in [offset, upto) (at most max_bytes, at least one) and send them as a watch reply.

    `upto` is the commit point: the glue never reads past it. No frame at
    `offset` (not a boundary) is answered `bad_offset`."""

    envelope: Envelope
    request_id: int
    offset: int
    upto: int
    max_bytes: int


@dataclass(slots=True)
class Parked:
    envelope: Envelope
    request_id: int
    watch: Watch
    deadline: float


class Watches:
    def __init__(self, budget: int, max_parked: int = MAX_PARKED) -> None:
        self.budget = budget
        self.max_parked = max_parked
        self.parked: list[Parked] = []
        self._reserved: dict[bytes, int] = {}  # connection -> bytes its parked watches may bring

    def reserved(self, peer: bytes) -> int:
        return self._reserved.get(peer, 0)

    def admit(self, req: Request, envelope: Envelope, now: float, *, commit: int, end: int, oldest: int,
              snapshot: int | None, epoch: int, waiting: int,
              boundary: Callable[[int], bool]) -> list[Answer | ServeWatch]:
        """A `watch` request. `waiting`: bytes of replies its connection has not read yet;
        `boundary(offset)`: does a frame of the log start at offset (commit < offset < end only)?"""
        w = req.watch
        assert w is not None
        rid = req.id
        if w.offset < oldest:
            return [Answer(envelope, error_reply(
                rid, Err.OFFSET_COMPACTED,
                f"offset {w.offset} is below the oldest offset this log retains ({oldest}): watch from {oldest}"
                + (f", or restore the snapshot at offset {snapshot} and watch from there" if snapshot is not None
                   else ""), oldest=oldest, snapshot=snapshot))]
        if w.offset > end:
            return [Answer(envelope, self._bad_offset(rid, f"offset {w.offset} is beyond the log's end ({end})",
                                                      commit, end))]
        if w.offset < commit:
            return [ServeWatch(envelope, rid, w.offset, commit, w.max_bytes)]
        if w.offset not in (commit, end) and not boundary(w.offset):
            return [Answer(envelope, self._bad_offset(rid, f"offset {w.offset} is not where a record starts",
                                                      commit, end))]
        if w.wait_ms == 0:
            return [Answer(envelope, watch_reply(rid, [], w.offset, commit, epoch))]
        peer = envelope[0]
        held = waiting + self.reserved(peer)
        if held + w.max_bytes > self.budget or len(self.parked) >= self.max_parked:
            return [Answer(envelope, error_reply(
                rid, Err.BUSY,
                f"watch not parked: this connection has {waiting} bytes of unread replies and {self.reserved(peer)} "
                f"reserved by its parked watches (budget {self.budget})" if held + w.max_bytes > self.budget else
                f"watch not parked: {len(self.parked)} watches are parked on this leader (at most {self.max_parked})"
                "; read your replies, then retry"))]
        self.parked.append(Parked(envelope, rid, w, now + w.wait_ms / 1000))
        self._reserved[peer] = self.reserved(peer) + w.max_bytes
        return []

    @staticmethod
    def _bad_offset(rid: int, why: str, commit: int, end: int) -> bytes:
        return error_reply(rid, Err.BAD_OFFSET, f"{why}: watch from 0, or from the `next` of a watch reply",
                           commit=commit, end=end)

    def committed(self, commit: int) -> list[ServeWatch]:
        """The commit point is `commit` now: serve every parked watch it passed."""
        if not self.parked:
            return []
        out: list[ServeWatch] = []
        still = []
        for p in self.parked:
            if p.watch.offset < commit:
                self._release(p)
                out.append(ServeWatch(p.envelope, p.request_id, p.watch.offset, commit, p.watch.max_bytes))
            else:
                still.append(p)
        self.parked = still
        return out

    def tick(self, now: float, commit: int, epoch: int) -> list[Answer]:
        """Parked watches whose wait is over: an empty reply with the same next offset."""
        if not self.parked:
            return []
        out = []
        still = []
        for p in self.parked:
            if now >= p.deadline:
                self._release(p)
                out.append(Answer(p.envelope, watch_reply(p.request_id, [], p.watch.offset, commit, epoch)))
            else:
                still.append(p)
        self.parked = still
        return out

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.parked), default=None)

    def fail_all(self, code: str, message: str) -> list[Answer]:
        """The role ends: every parked watch gets the error now (a client follows the redirect)."""
        out = [Answer(p.envelope, error_reply(p.request_id, code, message)) for p in self.parked]
        self.parked = []
        self._reserved.clear()
        return out

    def _release(self, p: Parked) -> None:
        peer = p.envelope[0]
        left = self._reserved.get(peer, 0) - p.watch.max_bytes
        if left > 0:
            self._reserved[peer] = left
        else:
            self._reserved.pop(peer, None)
