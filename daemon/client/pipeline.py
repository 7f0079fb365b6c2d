"""Many requests in flight on one socket, for loaders and benchmarks.

The blocking `Client` waits for each answer; a `Pipeline` keeps a window of
writes outstanding on one DEALER, which is how one process can play many
concurrent clients. Retries keep their request id, so they are as safe as
the blocking client's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgpack
import zmq

from daemon.client.blocking import dealer
from daemon.wire.client import RETRY_WINDOW, Err

RETRYABLE = Err.RETRYABLE
SPAN = RETRY_WINDOW // 2  # most ids issued from the oldest unanswered one on (run_writes)
SCAN = 0.005  # seconds between passes over the outstanding window


@dataclass
class Outstanding:
    msg: dict[str, Any]
    first_sent: float
    last_sent: float
    resend_at: float | None = None  # set while waiting out a retryable error
    attempts: int = 1


@dataclass
class PipelineResult:
    acked: list[tuple[bytes, bytes | None, int, int]] = field(default_factory=list)  # key, value, offset, epoch
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[bytes, bytes | None, str]] = field(default_factory=list)


class Pipeline:
    def __init__(self, endpoints: list[str], *, client_id: bytes | None = None, timeout: float = 2.0,
                 deadline: float = 30.0, context: zmq.Context | None = None, creds: Any = None) -> None:
        self.endpoints = endpoints
        self.creds = creds  # daemon.auth.creds.Credentials, or None for security = "none"
        self.cluster_id = getattr(creds, "cluster_id", "")
        self.client_id = client_id or os.urandom(12)
        self.timeout = timeout
        self.deadline = deadline
        self.ctx = context or zmq.Context.instance()
        self._next_id = 1  # ids are issued in order: `out` (insertion-ordered) starts with the oldest
        self._pack = msgpack.Packer(use_bin_type=True).pack  # reused: a new Packer per message costs more
        self._ep = 0
        self.epoch = 0
        self.sock: zmq.Socket | None = None
        self._connect(endpoints[0])

    def _connect(self, ep: str) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = dealer(self.ctx, ep, hwm=100000, creds=self.creds)  # a whole window may be queued at once
        self.current = ep

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def _send(self, o: Outstanding) -> None:
        o.msg["epoch"] = self.epoch
        assert self.sock is not None
        self.sock.send(self._pack(o.msg))
        o.last_sent = time.perf_counter()

    def run_writes(self, items: Iterator[tuple[str, bytes, bytes | None]], window: int,
                   stop: Callable[[], bool] = lambda: False,
                   on_ack: Callable[[bytes, bytes | None, dict[str, Any]], None] | None = None) -> PipelineResult:
        """Send ("set"|"del", key, value) items keeping `window` outstanding.

        Stops taking new items when `items` ends or `stop()` is true, then
        waits for what is outstanding (up to each request's deadline).
        """
        if not 1 <= window <= SPAN:
            # A resend of an id the node no longer remembers would be written twice.
            raise ValueError(f"window {window} is outside 1..{SPAN}: the node's retry window "
                             f"(docs/protocol.md, Retries) covers the last {RETRY_WINDOW} ids of a client")
        res = PipelineResult()
        out: dict[int, Outstanding] = {}
        exhausted = False
        # Deadlines, resends and silence are checked every SCAN seconds, not
        # after every reply: a pass over the window per reply cost the load
        # generator more CPU than the write itself.
        next_scan = 0.0
        assert self.sock is not None
        while True:
            while not exhausted and len(out) < window:
                # No new id more than SPAN past the oldest unanswered one: then
                # fewer than 2*SPAN = RETRY_WINDOW ids can be placed after any
                # unanswered id, and its resend is still recognised, however
                # long its reply takes (a lost reply waits `timeout`).
                if out and self._next_id - next(iter(out)) >= SPAN:
                    break
                if stop():
                    exhausted = True
                    break
                try:
                    op, key, value = next(items)
                except StopIteration:
                    exhausted = True
                    break
                rid = self._next_id
                self._next_id += 1
                msg: dict[str, Any] = {"id": rid, "op": op, "key": key, "cid": self.client_id}
                if self.cluster_id:
                    msg["cluster"] = self.cluster_id
                if value is not None:
                    msg["value"] = value
                now = time.perf_counter()
                sent = Outstanding(msg, now, now)
                out[rid] = sent
                self._send(sent)
            if not out:
                return res
            if self.sock.poll(20):
                while True:
                    try:
                        body = self.sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        reply = msgpack.unpackb(body, raw=False)
                    except Exception:
                        continue
                    o = out.get(reply["id"]) if isinstance(reply, dict) and "id" in reply else None
                    if o is None or o.resend_at is not None:
                        continue  # a late answer to an earlier attempt
                    if isinstance(reply.get("epoch"), int):
                        self.epoch = max(self.epoch, reply["epoch"])
                    now = time.perf_counter()
                    if reply.get("ok"):
                        del out[reply["id"]]
                        res.latencies.append(now - o.first_sent)
                        res.acked.append((o.msg["key"], o.msg.get("value"), reply["offset"], reply["epoch"]))
                        if on_ack:
                            on_ack(o.msg["key"], o.msg.get("value"), reply)
                        continue
                    code = reply.get("error", "?")
                    res.errors[code] = res.errors.get(code, 0) + 1
                    if code not in RETRYABLE:
                        del out[reply["id"]]
                        res.failed.append((o.msg["key"], o.msg.get("value"), code))
                    elif code == Err.NOT_LEADER:
                        self._failover(reply.get("leader_endpoint"), out)
                    else:
                        o.resend_at = now + min(0.5, 0.05 * o.attempts)
            now = time.perf_counter()
            if now < next_scan:
                continue
            next_scan = now + SCAN
            for rid, o in list(out.items()):
                if now - o.first_sent > self.deadline:
                    del out[rid]
                    res.failed.append((o.msg["key"], o.msg.get("value"), "deadline"))
                elif o.resend_at is not None:
                    if now >= o.resend_at:
                        o.resend_at = None
                        o.attempts += 1
                        self._send(o)
                elif now - o.last_sent > self.timeout:
                    # No answer: the node may be gone. Try the next one, resend all.
                    self._failover(None, out)
                    break

    def _failover(self, endpoint: str | None, out: dict[int, Outstanding]) -> None:
        if endpoint is None:
            self._ep += 1
            endpoint = self.endpoints[self._ep % len(self.endpoints)]
        self._connect(endpoint)
        for o in out.values():
            o.attempts += 1
            o.resend_at = None
            self._send(o)
