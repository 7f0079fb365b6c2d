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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from daemon.node.kv import Placed, RetryWindow

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

    def add(self, key: Key, entry: Tracked) -> None:
        self.open[key] = entry

    def seal(self) -> None:
        assert not self.sealed, "one sealed batch at a time"
        self.sealed, self.open = self.open, {}

    def sealed_failed(self) -> None:
        self.sealed = {}

    def sealed_durable(self, key: Key, entry: Tracked) -> None:
        """The sealed record of `key` is durable; `entry` now tracks it until commit."""
        self.sealed.pop(key, None)
        self.inflight[key] = entry

    def sealed_done(self) -> None:
        self.sealed = {}

    def committed(self, key: Key) -> None:
        """Committed: the KV window (applied in the same step) answers retries from now on."""
        self.inflight.pop(key, None)

    def drop_open(self) -> None:
        self.open = {}
