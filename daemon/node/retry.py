"""Retries: where a (client id, request id) stands, and whether a retry says the same thing.

Invariant (docs/protocol.md, "Retries"): a (cid, id) pair names exactly one
record content, identified by the digest of its op, key and value. A request
that carries a known pair is either
- a retry: same digest. It joins the waiters of that record while it is on
  its way (open batch, batch on disk, durable but not committed), or is
  answered with the original placement once that record is committed; or
- a conflict: another digest. It gets `bad_request` and changes nothing:
  never a success for content that was not written, never a second record.

A pair is in at most one of the in-memory places at a time (open batch,
sealed batch, in flight); once committed it is only in the KV state's
window, which every replica rebuilds from the log, so a new leader knows it
too after a failover.

Bounds (docs/protocol.md, "Retries"): the window forgets a client only when
its latest write is more than retry_window_seconds older, by record time,
than the newest record. It never forgets a client to make room: when the
window and the records still on their way (`charged`) would pass
retry_budget_bytes, the leader refuses the write that would grow it
(`busy`, nothing written) rather than evict a client that may still retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.node.kv import ENTRY_COST, Placed, RetryWindow

Envelope = list[bytes]
Key = tuple[bytes, int]
Waiters = list[tuple[Envelope, int]]  # (reply envelope, request id)


class Tracked(Protocol):
    digest: bytes
    waiters: Waiters


@dataclass(slots=True)
class Waiting:
    """A record in the open or sealed batch and who waits for its answer."""

    digest: bytes
    waiters: Waiters


@dataclass(frozen=True, slots=True)
class Join:
    """A retry of a record on its way: add the waiter to `entry`."""

    entry: Tracked


@dataclass(frozen=True, slots=True)
class Known:
    """A retry of a record already in the log at `placed` (answer when committed)."""

    placed: Placed


@dataclass(frozen=True, slots=True)
class Conflict:
    """The pair is taken by a record with other content."""

    placed: Placed | None


class RetryTracker:
    def __init__(self, window: RetryWindow) -> None:
        self.window = window
        self.open: dict[Key, Tracked] = {}
        self.sealed: dict[Key, Tracked] = {}
        self.inflight: dict[Key, Tracked] = {}
        # Bytes the window will grow by when the tracked records commit, as
        # charged when each was admitted; and how many tracked records each
        # client id has (a client id new to the window is charged once).
        self.charged = 0
        self._charge: dict[Key, int] = {}
        self._clients: dict[bytes, int] = {}

    def growth(self, key: Key) -> int:
        """What admitting a new record under `key` would charge against the budget."""
        cid, rid = key
        if cid in self._clients:
            return 0 if self.window.growth(cid, rid) == 0 else ENTRY_COST
        return self.window.growth(cid, rid)

    def used(self) -> int:
        """Bytes of the budget in use: the window plus what the records on their way will add."""
        return self.window.bytes + self.charged

    def _release(self, keys: list[Key]) -> None:
        for key in keys:
            self.charged -= self._charge.pop(key, 0)
            n = self._clients.get(key[0], 0) - 1
            if n > 0:
                self._clients[key[0]] = n
            else:
                self._clients.pop(key[0], None)

    def find(self, key: Key, digest: bytes) -> Join | Known | Conflict | None:
        for place in (self.inflight, self.sealed, self.open):
            entry = place.get(key)
            if entry is not None:
                if entry.digest != digest:
                    return Conflict(getattr(entry, "placed", None))
                return Join(entry)
        seen = self.window.get(*key)
        if seen is None:
            return None
        if seen.digest != digest:
            return Conflict(seen.placed)
        return Known(seen.placed)

    def add(self, key: Key, entry: Tracked, charge: int = 0) -> None:
        self.open[key] = entry
        self._charge[key] = charge
        self.charged += charge
        self._clients[key[0]] = self._clients.get(key[0], 0) + 1

    def seal(self) -> None:
        assert not self.sealed, "one sealed batch at a time"
        self.sealed, self.open = self.open, {}

    def sealed_failed(self) -> None:
        self._release(list(self.sealed))
        self.sealed = {}

    def sealed_durable(self, key: Key, entry: Tracked) -> None:
        """The sealed record of `key` is durable; `entry` now tracks it until commit."""
        self.sealed.pop(key, None)
        self.inflight[key] = entry

    def sealed_done(self) -> None:
        self._release(list(self.sealed))
        self.sealed = {}

    def committed(self, key: Key) -> None:
        """Committed: the KV window (applied in the same step) answers retries from now on."""
        if self.inflight.pop(key, None) is not None:
            self._release([key])

    def drop_open(self) -> None:
        self._release(list(self.open))
        self.open = {}
