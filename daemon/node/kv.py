"""The key-value state and the retry window, both rebuilt from the log.

Everything here is derived from records, so every replica that holds the
same log holds the same state. That is why the retry window lives here and
not in the leader's memory: after a failover, the new leader still knows
which (client id, request id) pairs are already in the log.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from daemon.config import RETRY_WINDOW_SECONDS
from daemon.wal.format import OP_SET, Frame, Record
from daemon.wire.client import RETRY_WINDOW

# Bounds of the retry window (documented in docs/protocol.md, "Retries"):
# the last WINDOW_PER_CLIENT request ids of each client, for every client
# whose latest write is at most retry_window_seconds older (by record time)
# than the newest record. What a window costs against retry_budget_bytes is
# an estimate of its memory: CLIENT_COST + len(client id) per client, plus
# ENTRY_COST per request id it remembers.
WINDOW_PER_CLIENT = RETRY_WINDOW
CLIENT_COST = 256
ENTRY_COST = 128
# Records from before record times existed were written under the old bound
# (the 4,096 most recently active clients), and are still held to it: a long
# untimed log must not grow the window without limit on replay.
UNTIMED_CLIENTS = 4096


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a record landed: what a write acknowledgement reports."""

    offset: int
    end: int
    epoch: int


def content_digest(rec: Record) -> bytes:
    """What a retry must match: op, key and value (not the ids), as 16 bytes of BLAKE2b."""
    h = hashlib.blake2b(digest_size=16)
    h.update(rec.op.encode())
    h.update(len(rec.key).to_bytes(4, "big"))
    h.update(rec.key)
    if rec.value is not None:
        h.update(rec.value)
    return h.digest()


@dataclass(frozen=True, slots=True)
class Seen:
    """A (client id, request id) already in the log: where it landed and what it said."""

    placed: Placed
    digest: bytes


def client_cost(client_id: bytes) -> int:
    return CLIENT_COST + len(client_id)


@dataclass(slots=True)
class _Client:
    ids: OrderedDict[int, Seen]
    ts: int | None  # record time (ms) of its latest write; None: before any record had a time


class RetryWindow:
    """Recent request ids per client, with where each record landed and its content digest.

    Aged by record time only (`Record.ts`, stamped by the leader), never by
    this node's clock: every replica that applies the same records holds the
    same window. `clock` is the newest record time applied; a client whose
    latest write is more than `seconds` older than it is forgotten. Records
    from before record times existed (ts None) count as written at the first
    record time that follows them, so they expire one window after it; and,
    as when they were written, only the 4,096 latest of them are kept.
    Nothing else ever removes a client: the leader refuses new ones (`busy`)
    instead when the budget is spent (daemon/node/leader_core.py).
    """

    def __init__(self, per_client: int = WINDOW_PER_CLIENT, seconds: float = RETRY_WINDOW_SECONDS) -> None:
        self.per_client = per_client
        self.window_ms = int(seconds * 1000)
        self.clock: int | None = None
        self.bytes = 0
        self._first: int | None = None  # the first record time: the time of the untimed clients
        # Oldest latest-write first (record times never go backwards: see put).
        self._by_client: OrderedDict[bytes, _Client] = OrderedDict()

    def get(self, client_id: bytes, request_id: int) -> Seen | None:
        c = self._by_client.get(client_id)
        if c is None:
            return None
        return c.ids.get(request_id)

    def has_client(self, client_id: bytes) -> bool:
        return client_id in self._by_client

    def growth(self, client_id: bytes, request_id: int) -> int:
        """Bytes that putting a new (client id, request id) would add to the window."""
        c = self._by_client.get(client_id)
        if c is None:
            return client_cost(client_id) + ENTRY_COST
        if request_id in c.ids or len(c.ids) >= self.per_client:
            return 0  # replaces its own oldest id
        return ENTRY_COST

    def put(self, client_id: bytes, request_id: int, placed: Seen, ts: int | None = None) -> None:
        if ts is not None:
            # A record time below the clock (a leader whose clock is behind)
            # counts as the clock: time in the log never goes backwards.
            self.clock = ts if self.clock is None else max(self.clock, ts)
            if self._first is None:
                self._first = self.clock
        self.expire(self.clock)
        c = self._by_client.get(client_id)
        if c is None:
            c = self._by_client[client_id] = _Client(OrderedDict(), self.clock)
            self.bytes += client_cost(client_id)
            if self.clock is None and len(self._by_client) > UNTIMED_CLIENTS:
                old, gone = self._by_client.popitem(last=False)
                self.bytes -= client_cost(old) + ENTRY_COST * len(gone.ids)
        else:
            self._by_client.move_to_end(client_id)
            c.ts = self.clock
        if request_id not in c.ids:
            self.bytes += ENTRY_COST
        c.ids[request_id] = placed
        if len(c.ids) > self.per_client:
            c.ids.popitem(last=False)
            self.bytes -= ENTRY_COST

    def expire(self, now: int | None) -> None:
        """Forget the clients whose latest write is more than the window older than `now` (ms)."""
        if now is None:
            return
        while self._by_client:
            cid, c = next(iter(self._by_client.items()))
            ts = c.ts if c.ts is not None else self._first
            if ts is None or now - ts <= self.window_ms:
                return
            del self._by_client[cid]
            self.bytes -= client_cost(cid) + ENTRY_COST * len(c.ids)

    def oldest(self) -> int | None:
        """Record time of the least recently seen client (None: none, or untimed)."""
        for c in self._by_client.values():
            return c.ts if c.ts is not None else self._first
        return None

    def clients(self) -> int:
        return len(self._by_client)

    @staticmethod
    def client_bytes(client_id: bytes, c: _Client) -> int:
        """What one client's window costs against the budget (the sum of these is `bytes`)."""
        return client_cost(client_id) + ENTRY_COST * len(c.ids)

    def __len__(self) -> int:
        return sum(len(c.ids) for c in self._by_client.values())


class KVState:
    """SET/DEL applied in log order."""

    def __init__(self, retry_window_seconds: float = RETRY_WINDOW_SECONDS) -> None:
        self.data: dict[bytes, bytes] = {}
        self.window = RetryWindow(seconds=retry_window_seconds)
        self.records = 0
        self.end = 0
        # What a snapshot of this state names (daemon/node/snapshot.py): the
        # last frame applied, and the log's own (epoch, first offset) starts.
        self.last: Placed | None = None
        self.epoch_starts: list[tuple[int, int]] = []

    def apply(self, rec: Record, placed: Placed) -> None:
        if rec.op == OP_SET:
            self.data[rec.key] = rec.value  # type: ignore[assignment]
        else:
            self.data.pop(rec.key, None)
        if rec.client_id is not None:
            self.window.put(rec.client_id, rec.request_id, Seen(placed, content_digest(rec)),  # type: ignore[arg-type]
                            rec.ts)
        self.records += 1
        self.end = placed.end
        if not self.epoch_starts or placed.epoch != self.epoch_starts[-1][0]:
            self.epoch_starts.append((placed.epoch, placed.offset))
        self.last = placed

    def apply_frame(self, frame: Frame, rec: Record) -> None:
        self.apply(rec, Placed(frame.offset, frame.end, frame.epoch))

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)
