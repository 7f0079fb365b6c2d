"""Replies to clients, with the memory each connection may pin bounded in bytes.

ZeroMQ bounds a connection's send queue in messages (SNDHWM), not bytes,
and a ROUTER silently drops what does not fit. Both are wrong for a log
service: a client that sends 2,000 `get`s of a 1 MiB value and never reads
made the leader hold 2 GB; and a dropped reply to a write that was done
makes the client resend, which is only harmless inside the retry window.

So the client socket is a ROUTER with ROUTER_MANDATORY and a small SNDHWM,
and this outbox sits in front of it (Redis's client output buffer is the
model: the server knows exactly what it holds for each client).

Invariants:
- a reply is never dropped while its connection exists: what ZeroMQ will
  not take now (EAGAIN) waits here, in order, and is retried each turn of
  the role loop (`flush`); only a connection that is gone (EHOSTUNREACH)
  loses its replies, and then nobody is left to read them;
- per connection, ZeroMQ holds at most SNDHWM messages and this outbox at
  most REPLY_BUDGET bytes of replies plus the small ones of requests it had
  already admitted: a connection past its budget is *congested*, and its new
  requests are dropped unread (nothing executed, so a retry with the same id
  is safe) until it reads; a read served to a congested connection is
  answered `busy` (a few bytes) instead of the value;
- replies to one connection leave in the order they were produced.
"""

from __future__ import annotations

import errno
import time
from collections import deque

import zmq

from daemon.ops import logs

# Messages ZeroMQ may queue per connection: a few group-commit batches'
# worth of replies to one pipelined client. Beyond it replies wait here.
SNDHWM = 128
# Bytes of replies this outbox may hold for one connection before its new
# requests are refused.
REPLY_BUDGET = 4 * 1024 * 1024
LOG_EVERY_S = 10.0
# A connection whose replies ZeroMQ refused is tried again after a delay that
# doubles while it does not read (1 ms .. 100 ms), so stuck clients cost
# little CPU however many there are; one that reads is back at full speed.
RETRY_MIN_S = 0.001
RETRY_MAX_S = 0.1


class Outbox:
    def __init__(self, sock: zmq.Socket, budget: int = REPLY_BUDGET) -> None:
        self.sock = sock
        self.budget = budget
        self._queues: dict[bytes, deque[list[bytes]]] = {}
        self._bytes: dict[bytes, int] = {}
        self._retry: dict[bytes, tuple[float, float]] = {}  # peer -> (next try, delay)
        self.refused = 0  # requests dropped because their connection would not read
        self.lost = 0  # replies whose connection was gone
        self._logged_at = -1e9
        self.moved = False  # did the last flush hand ZeroMQ anything?

    # -- sending --------------------------------------------------------------------------

    def send(self, frames: list[bytes]) -> None:
        """Send a reply (envelope frames, then the body), now or as soon as the peer reads."""
        peer = frames[0]
        q = self._queues.get(peer)
        if q is not None:
            self._enqueue(peer, q, frames)
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            q = self._queues[peer] = deque()
            self._enqueue(peer, q, frames)
        except zmq.ZMQError as e:
            if e.errno != errno.EHOSTUNREACH:
                raise
            self.lost += 1

    def _enqueue(self, peer: bytes, q: deque[list[bytes]], frames: list[bytes]) -> None:
        q.append(frames)
        self._bytes[peer] = self._bytes.get(peer, 0) + sum(len(f) for f in frames)

    def flush(self) -> None:
        """Hand ZeroMQ what it will take now, connection by connection, in order."""
        self.moved = False
        now = time.monotonic()
        for peer in list(self._queues):
            q = self._queues[peer]
            at, delay = self._retry.get(peer, (0.0, RETRY_MIN_S))
            if now < at:
                continue
            sent = 0
            while q:
                frames = q[0]
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as e:
                    if e.errno != errno.EHOSTUNREACH:
                        raise
                    self.lost += len(q)
                    q.clear()
                    break
                q.popleft()
                sent += 1
                self.moved = True
                self._bytes[peer] -= sum(len(f) for f in frames)
            if not q:
                del self._queues[peer]
                del self._bytes[peer]
                self._retry.pop(peer, None)
            elif sent:
                self._retry[peer] = (0.0, RETRY_MIN_S)
            else:
                self._retry[peer] = (now + delay, min(RETRY_MAX_S, delay * 2))

    @property
    def pending(self) -> bool:
        """Are replies waiting?"""
        return bool(self._queues)

    def poll_timeout(self, timeout_ms: float) -> float:
        """How long the role loop may wait for events: not at all while replies
        are moving (ZeroMQ's I/O thread drains a reading client's queue in
        microseconds), until the soonest retry while they wait on clients that
        do not read (at least a millisecond)."""
        if not self._queues:
            return timeout_ms
        if self.moved:
            return 0.0
        soonest = min((self._retry.get(p, (0.0, 0.0))[0] for p in self._queues), default=0.0)
        return min(timeout_ms, max(1.0, (soonest - time.monotonic()) * 1000))

    def pending_bytes(self) -> int:
        return sum(self._bytes.values())

    def stats(self) -> dict[str, int]:
        return {"outbox_connections": len(self._queues), "outbox_bytes": self.pending_bytes(),
                "slow_reader_refused": self.refused, "replies_lost": self.lost}

    # -- admission ------------------------------------------------------------------------

    def congested(self, peer: bytes) -> bool:
        """Has this connection stopped reading (its waiting replies exceed the budget)?"""
        return self._bytes.get(peer, 0) > self.budget

    def waiting(self, peer: bytes) -> int:
        return self._bytes.get(peer, 0)

    def would_exceed(self, peer: bytes, size: int) -> bool:
        """Would a reply of `size` bytes take this connection past its budget?
        True only while replies already wait for it (ZeroMQ refused some)."""
        return peer in self._queues and self._bytes[peer] + size > self.budget

    def refuse(self, peer: bytes) -> None:
        """Count (and now and then log) a request dropped because its connection does not read."""
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            logs.warn("slow_reader", waiting_bytes=self._bytes.get(peer, 0), budget=self.budget,
                      connections_waiting=len(self._queues), refused_total=self.refused,
                      action="dropping new requests from connections that do not read their replies")


def configure(sock: zmq.Socket) -> None:
    """Options the outbox relies on (before bind)."""
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
