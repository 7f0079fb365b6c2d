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

from daemon.wal.format import OP_SET, Frame, Record
from daemon.wire.client import RETRY_WINDOW

# Bounds of the retry window (documented in docs/protocol.md).
WINDOW_PER_CLIENT = RETRY_WINDOW
WINDOW_CLIENTS = 4096


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


class RetryWindow:
    """Recent request ids per client, with where each record landed and its content digest."""

    def __init__(self, per_client: int = WINDOW_PER_CLIENT, clients: int = WINDOW_CLIENTS) -> None:
        self.per_client = per_client
        self.clients = clients
        self._by_client: OrderedDict[bytes, OrderedDict[int, Seen]] = OrderedDict()

    def get(self, client_id: bytes, request_id: int) -> Seen | None:
        ids = self._by_client.get(client_id)
        if ids is None:
            return None
        return ids.get(request_id)

    def put(self, client_id: bytes, request_id: int, placed: Seen) -> None:
        ids = self._by_client.get(client_id)
        if ids is None:
            ids = self._by_client[client_id] = OrderedDict()
            if len(self._by_client) > self.clients:
                self._by_client.popitem(last=False)
        else:
            self._by_client.move_to_end(client_id)
        ids[request_id] = placed
        if len(ids) > self.per_client:
            ids.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_client.values())


class KVState:
    """SET/DEL applied in log order."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.window = RetryWindow()
        self.records = 0
        self.end = 0

    def apply(self, rec: Record, placed: Placed) -> None:
        if rec.op == OP_SET:
            self.data[rec.key] = rec.value  # type: ignore[assignment]
        else:
            self.data.pop(rec.key, None)
        if rec.client_id is not None:
            self.window.put(rec.client_id, rec.request_id, Seen(placed, content_digest(rec)))  # type: ignore[arg-type]
        self.records += 1
        self.end = placed.end

    def apply_frame(self, frame: Frame, rec: Record) -> None:
        self.apply(rec, Placed(frame.offset, frame.end, frame.epoch))

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)
