"""The client's decisions, written once for both clients: Lazy Pirate retries, leader discovery,
safe retries, the rules of a read, batches and watch.

Every write carries this client's id and a request id. A retry (after a
timeout, a reconnect, or a failover) reuses the same request id, and every
node rebuilds its retry window from the log, so a retried write is answered
with the original acknowledgement instead of being appended twice.

`ClientCore`'s methods are generators that do no I/O: they yield the I/O they
need (`Connect`, `Send`, `Recv`, `Sleep`, `Statuses`) and get its result back,
like a sans-I/O protocol library. The blocking `Client` (blocking.py) runs them
over a pyzmq socket, `AsyncClient` (aio.py) over a `zmq.asyncio` one, so the
two cannot drift apart: a rule changed here changes in both.

Error codes from the wire map one-to-one to exception classes below.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Generator, Iterable, Union

import msgpack
import zmq

from daemon.wire.client import (BATCH_OP, MAX_BATCH, MAX_MESSAGE, Err, batch_request,
                                decode_watch_reply)
from daemon.auth.creds import Credentials, Plain


class ZwalError(Exception):
    """A request failed; `code` is the stable wire error code."""

    code = "error"
    retryable = False

    def __init__(self, message: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reply = reply or {}


class BadRequest(ZwalError):
    code = Err.BAD_REQUEST


class UnknownOp(ZwalError):
    code = Err.UNKNOWN_OP


class InvalidRecord(ZwalError):
    code = Err.INVALID_RECORD


class NotLeader(ZwalError):
    code = Err.NOT_LEADER
    retryable = True


class NotEnoughReplicas(ZwalError):
    code = Err.NOT_ENOUGH_REPLICAS
    retryable = True


class FsyncFailed(ZwalError):
    code = Err.FSYNC_FAILED
    retryable = True


class NoSpace(ZwalError):
    code = Err.NO_SPACE
    retryable = True


class WriteFailed(ZwalError):
    code = Err.WRITE_FAILED
    retryable = True


class StaleEpoch(ZwalError):
    code = Err.STALE_EPOCH


class Refused(ZwalError):
    code = Err.REFUSED


class ShuttingDown(ZwalError):
    code = Err.SHUTTING_DOWN
    retryable = True


class Forbidden(ZwalError):
    """This key's role may not send that op (docs/security.md); nothing changed."""

    code = Err.FORBIDDEN


class WrongCluster(ZwalError):
    """The node belongs to another cluster (its cluster_id differs from the one in your cluster file)."""

    code = Err.WRONG_CLUSTER


class Busy(ZwalError):
    """A read not served because this connection left too many replies unread."""

    code = Err.BUSY
    retryable = True


class OffsetCompacted(ZwalError):
    """A watch from below the oldest offset the log retains: `reply["oldest"]`, `reply["snapshot"]`."""

    code = Err.OFFSET_COMPACTED


class BadOffset(ZwalError):
    """A watch from an offset that is not where a record starts, or beyond the log's end."""

    code = Err.BAD_OFFSET


class Unavailable(ZwalError):
    """No node answered within the deadline."""

    code = "unavailable"
    retryable = True


class NoLeader(ZwalError):
    """A read found no answer it may return: no leader answered within the deadline and
    the read did not accept a stale answer (`stale=True`), or it did and every node that
    answered has a damaged log. Raised by the client, not sent by a node. `answered`
    maps each node that answered to why its answer was not used."""

    code = "no_leader"
    retryable = True

    def __init__(self, message: str, answered: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.answered = dict(answered or {})


ERRORS: dict[str, type[ZwalError]] = {
    c.code: c
    for c in (BadRequest, UnknownOp, InvalidRecord, NotLeader, NotEnoughReplicas, FsyncFailed, NoSpace,
              WriteFailed, StaleEpoch, Refused, ShuttingDown, Forbidden, Busy,
              WrongCluster, OffsetCompacted, BadOffset)  # not Unavailable and NoLeader: the client raises them, no node sends them
}


def error_from_reply(reply: dict[str, Any]) -> ZwalError:
    cls = ERRORS.get(reply.get("error", ""), ZwalError)
    err = cls(f"{reply.get('error')}: {reply.get('message')}", reply)
    if cls is ZwalError:
        err.code = str(reply.get("error"))
    return err


@dataclass(frozen=True)
class WriteResult:
    """Where the durable record is: its log offset, its end, and the epoch that wrote it."""

    offset: int
    end: int
    epoch: int


@dataclass(frozen=True)
class ReadResult:
    value: bytes | None
    node: str
    offset: int  # the serving node's applied end: how fresh the answer is
    stale: bool  # True when served by a follower (only with read(..., stale=True))
    linearizable: bool = True  # False for stale reads and for a leader with ack_replicas = 0 (no ReadIndex)


def damage(status: dict[str, Any]) -> str | None:
    """Why a node's answers may not be used for a stale read, from its status map; None when
    its log is intact. Recovery that cut bytes from a log sets `damaged_end` (the old end) and
    the node counts as no copy until its log has grown back to it (docs/protocol.md)."""
    d, end = status.get("damaged_end"), status.get("end")
    if isinstance(d, int) and not (isinstance(end, int) and end >= d):
        return f"damaged: recovery cut its log to {end} of {d} bytes, and it has not caught up from a leader"
    return None


def stale_order(statuses: dict[str, dict[str, Any] | None]) -> tuple[list[str], dict[str, str]]:
    """Which nodes may serve a stale read, most advanced log first, and why each other one may not.

    `statuses` maps an endpoint to that node's status (None: no answer). A damaged node is
    never a candidate, however far its log reaches."""
    ok: list[tuple[int, str]] = []
    skipped: dict[str, str] = {}
    for ep, st in statuses.items():
        if st is None:
            skipped[ep] = "no answer"
        elif (why := damage(st)) is not None:
            skipped[str(st.get("name") or ep)] = why
        else:
            ok.append((st["end"] if isinstance(st.get("end"), int) else -1, ep))
    return [ep for _, ep in sorted(ok, key=lambda t: -t[0])], skipped


def endpoints_from_config(path: str) -> list[str]:
    from daemon import config

    cfg = config.load(path)
    return [n.client_endpoint for n in cfg.nodes]


def dealer(ctx: zmq.Context, endpoint: str, hwm: int | None = None, creds: Credentials | Plain | None = None) -> zmq.Socket:
    """A DEALER to a node: no linger (a retry goes elsewhere, never queued behind a dead peer) and
    the protocol's message size cap, so a broken or hostile peer cannot make us allocate without bound.
    With `creds` it is a CURVE client that accepts only the node's own public key."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
    if hwm is not None:
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
    if creds is not None:
        try:
            creds.apply(s, endpoint)
        except Exception:
            s.close(linger=0)
            raise
    s.connect(endpoint)
    return s


# -- the I/O a core step asks its driver for -----------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Close the current socket (if any) and open a DEALER to `endpoint`; the driver sets `current`."""

    endpoint: str


@dataclass(frozen=True)
class Close:
    """Close the current socket; the driver sets `current` to None."""


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Recv:
    """One message from the current socket within `timeout` seconds: its bytes, or None."""

    timeout: float


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Statuses:
    """Every endpoint's status, asked at once: {endpoint: status or None}."""

    timeout: float


@dataclass(frozen=True)
class Emit:
    """A value for the caller of an iterating call (watch); the driver sends back None."""

    value: Any


Action = Union[Connect, Close, Send, Recv, Sleep, Statuses, Emit]
Steps = Generator[Action, Any, Any]


# A batch message stays well inside what a node takes in one message (ZMQ_MAXMSGSIZE = MAX_MESSAGE).
BATCH_BYTES = MAX_MESSAGE // 2


class ClientCore:
    """What both clients know and decide. `timeout` bounds one attempt; `deadline` bounds a
    whole call including retries, failovers and backoff. Not safe for concurrent calls: use one
    client per thread (Client) or per concurrent task (AsyncClient)."""

    def __init__(
        self,
        endpoints: list[str] | None = None,
        *,
        config: str | None = None,
        timeout: float = 1.0,
        deadline: float = 10.0,
        client_id: bytes | None = None,
        role: str = "client",
        cert: str | None = None,
        server_key: str | None = None,
        creds: Credentials | Plain | None = None,
        cluster_id: str | None = None,
    ) -> None:
        """`config` gives the endpoints (unless `endpoints` narrows them) and, with
        security = "curve", the certificate of `role` (keys/<role>s/<role>.key_secret,
        or `cert`) and each node's public key. Without a cluster file, `cert` and
        `server_key` give them by hand."""
        if config is not None:
            from daemon import config as config_mod
            from daemon.auth.creds import for_config

            cfg = config_mod.load(config)
            endpoints = endpoints or [n.client_endpoint for n in cfg.nodes]
            creds = creds or for_config(cfg, role, cert=cert)
            if cluster_id is None:
                cluster_id = cfg.cluster_id
        elif cert is not None and creds is None:
            from daemon.auth.creds import by_hand

            creds = by_hand(cert, server_key)
        self.creds = creds
        # Named in every request: a node of another cluster answers wrong_cluster.
        self.cluster_id = cluster_id if cluster_id is not None else getattr(creds, "cluster_id", "")
        if not endpoints:
            raise ValueError("a client needs endpoints or a cluster file")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.deadline = deadline
        self.client_id = client_id or os.urandom(12)
        self._ids = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)
        self.epoch = 0  # the highest epoch seen: sent along so stale leaders step down
        self._ep_index = 0
        self.current: str | None = None  # the endpoint the open socket is connected to (set by the driver)
        self._says_damaged: set[str] = set()  # endpoints whose `get` replies carry `damaged`: no status needed

    def _next_endpoint(self) -> str:
        ep = self.endpoints[self._ep_index % len(self.endpoints)]
        self._ep_index += 1
        return ep

    # -- one request, retried -----------------------------------------------------------

    def _request(self, op: str, *, deadline: float | None = None, endpoint: str | None = None,
                 attempt: float | None = None, **fields: Any) -> Steps:
        """Send one request until it succeeds, fails for good, or the deadline passes."""
        rid = next(self._ids)
        msg = {"id": rid, "op": op, **fields}
        if self.cluster_id:
            msg["cluster"] = self.cluster_id
        if op in ("set", "del"):
            msg["cid"] = self.client_id
        total = self.deadline if deadline is None else deadline
        end_at = time.monotonic() + total
        if endpoint is not None:
            yield Connect(endpoint)
        elif self.current is None:
            yield Connect(self._next_endpoint())
        last_err: ZwalError | None = None
        tried: list[str] = []  # every endpoint asked, in order: a timeout names them all
        attempts = 0
        backoff = 0.05
        while True:
            remaining = end_at - time.monotonic()
            if remaining <= 0:
                if last_err is not None and not isinstance(last_err, Unavailable):
                    raise last_err
                where = ", ".join(tried or ([endpoint] if endpoint else self.endpoints))
                raise Unavailable(f"no answer within {round(total, 2):g}s from {where} ({attempts} attempt(s) of up to "
                                  f"{self.timeout:g}s each)")
            msg["epoch"] = self.epoch
            if self.current is not None and self.current not in tried:
                tried.append(self.current)
            attempts += 1
            yield Send(msgpack.packb(msg, use_bin_type=True))
            reply = yield from self._await(rid, min(attempt or self.timeout, remaining))
            if reply is None:
                # Lazy Pirate: the socket may hold a dead connection; start afresh,
                # on the next node if we have several, with the same request id.
                if last_err is None or isinstance(last_err, Unavailable):
                    # A node's own error is the better account: an attempt cut short by the
                    # deadline must not replace "not_enough_replicas, written" with "no answer".
                    last_err = Unavailable(f"no answer from {self.current} within {self.timeout:g}s")
                yield Connect(self._next_endpoint() if endpoint is None else endpoint)
                continue
            if isinstance(reply.get("epoch"), int) and reply["epoch"] > self.epoch and op != "status":
                self.epoch = reply["epoch"]
            if reply.get("ok"):
                return reply
            err = error_from_reply(reply)
            if not err.retryable or endpoint is not None and not isinstance(err, (NotEnoughReplicas, NoSpace)):
                raise err
            last_err = err
            if isinstance(err, NotLeader) and reply.get("leader_endpoint"):
                yield Connect(reply["leader_endpoint"])
                continue
            if isinstance(err, NotLeader):
                yield Connect(self._next_endpoint())
            yield Sleep(min(backoff, max(0.0, end_at - time.monotonic())))
            backoff = min(backoff * 2, 0.5)

    def _await(self, rid: int, timeout: float) -> Steps:
        end_at = time.monotonic() + timeout
        while True:
            left = end_at - time.monotonic()
            if left <= 0:
                return None
            data = yield Recv(left)
            if data is None:
                return None
            try:
                reply = msgpack.unpackb(data, raw=False)
            except Exception:
                continue
            if isinstance(reply, dict) and reply.get("id") in (rid, None):
                if reply.get("id") is None and reply.get("ok") is not False:
                    continue
                return reply
            # A late reply to an earlier attempt: drop it.

    # -- writes ---------------------------------------------------------------------------

    def _write(self, op: str, **fields: Any) -> Steps:
        r = yield from self._request(op, **fields)
        return WriteResult(r["offset"], r["end"], r["epoch"])

    def _set_many(self, items: Iterable[tuple[bytes | str, bytes | str | None]]) -> Steps:
        out: list[WriteResult] = []
        chunk: list[tuple[int, str, bytes, bytes | None]] = []
        size = 0
        for key, value in items:
            k, v = _b(key), (None if value is None else _b(value))
            n = len(k) + (len(v) if v is not None else 0) + 32
            if chunk and (len(chunk) >= MAX_BATCH or size + n > BATCH_BYTES):
                out.extend((yield from self._batch(chunk)))
                chunk, size = [], 0
            chunk.append((next(self._ids), "set" if v is not None else "del", k, v))
            size += n
        if chunk:
            out.extend((yield from self._batch(chunk)))
        return out

    def _batch(self, writes: list[tuple[int, str, bytes, bytes | None]]) -> Steps:
        m = batch_request(0, self.client_id, writes)
        r = yield from self._request(BATCH_OP, cid=self.client_id, writes=m["writes"])
        return [WriteResult(x["offset"], x["end"], x["epoch"]) for x in r["results"]]

    # -- the log as a stream ------------------------------------------------------------------

    def _watch(self, from_offset: int, follow: bool, wait: float, max_bytes: int) -> Steps:
        pos = from_offset
        wait_ms = int(wait * 1000) if follow else 0
        while True:
            try:
                args: dict[str, Any] = {"from": pos, "max_bytes": max_bytes, "wait_ms": wait_ms}
                r = yield from self._request("watch", attempt=wait + self.timeout, **args)
            except ZwalError as e:
                # No node answered, or none led within the deadline (a failover): ask again from `pos`.
                if not follow or not e.retryable:
                    raise
                yield Close()
                continue
            batch = decode_watch_reply(r)
            for rec in batch.records:
                if rec.offset != pos:
                    raise ZwalError(f"watch reply starts at {rec.offset}, asked for {pos}", r)
                yield Emit(rec)
                pos = rec.end
            if not follow and not batch.records and pos >= batch.commit:
                return None

    # -- reads ------------------------------------------------------------------------------

    def _read(self, key: bytes | str, endpoint: str | None, stale: bool) -> Steps:
        k = _b(key)
        end_at = time.monotonic() + self.deadline
        if endpoint is not None:
            return (yield from self._read_at(k, endpoint, stale, end_at))
        if not stale:
            return (yield from self._read_leader(k, end_at))
        return (yield from self._read_any(k, end_at))

    @staticmethod
    def _result(r: dict[str, Any]) -> ReadResult:
        return ReadResult(r.get("value") if r.get("found") else None, r.get("node", ""), r.get("offset", 0),
                          bool(r.get("stale")), r.get("linearizable") is not False and not r.get("stale"))

    def _read_leader(self, k: bytes, end_at: float) -> Steps:
        """Follow followers' redirects until a leader answers or the deadline passes."""
        answered: dict[str, str] = {}
        backoff = 0.05
        while (left := end_at - time.monotonic()) > 0:
            try:
                r = yield from self._request("get", key=k, deadline=left)
            except Unavailable:
                if not answered:
                    raise
                break
            if not r.get("stale"):
                return self._result(r)
            answered[str(r.get("node"))] = f"a follower (epoch {r.get('epoch')}, log end {r.get('offset')})"
            if r.get("leader_endpoint"):
                yield Connect(r["leader_endpoint"])  # the leader it names (a dead one times out: Lazy Pirate)
            else:
                yield Connect(self._next_endpoint())
                yield Sleep(min(backoff, max(0.0, end_at - time.monotonic())))
                backoff = min(backoff * 2, 0.5)
        raise NoLeader(f"no leader answered within {self.deadline:g}s (" + "; ".join(
            f"{n}: {why}" for n, why in answered.items()) + "): a fresh read needs the leader; wait for one, "
            "or pass stale=True to accept a follower's answer", answered)

    def _read_any(self, k: bytes, end_at: float) -> Steps:
        """stale=True without an endpoint: the leader if one answers, else the most advanced
        intact follower."""
        statuses = yield Statuses(max(0.0, min(self.timeout, end_at - time.monotonic())))
        up = {ep: st for ep, st in statuses.items() if st}
        top = max((st["epoch"] for st in up.values()), default=0)
        leaders = [ep for ep, st in up.items() if st["role"] == "leader" and st["epoch"] == top]
        if len(leaders) == 1:
            try:  # half the time left at most: a leader that cannot confirm leaves time for a stale answer
                r = yield from self._request("get", key=k, endpoint=leaders[0],
                                             deadline=max(0.0, (end_at - time.monotonic()) / 2))
                if not r.get("stale"):
                    return self._result(r)
            except ZwalError as e:
                if not e.retryable:
                    raise
        order, answered = stale_order(statuses)
        if len(leaders) == 1 and leaders[0] in order:  # it had its turn: it cannot confirm a read now
            order.remove(leaders[0])
            answered[str(up[leaders[0]].get("name"))] = "the leader, but its read was not confirmed in time"
        for ep in order:
            name = str(statuses[ep].get("name") or ep)
            try:
                return (yield from self._read_at(k, ep, True, end_at, before=statuses[ep]))
            except (NoLeader, Unavailable) as e:
                answered[name] = str(e)
            except ZwalError as e:
                if not e.retryable:
                    raise
                answered[name] = str(e)
        if not any(why != "no answer" for why in answered.values()):
            raise Unavailable(f"no answer within {self.deadline:g}s from {', '.join(self.endpoints)}")
        raise NoLeader("no leader answered, and no node with an intact log did (" + "; ".join(
            f"{n}: {why}" for n, why in answered.items()) + ")", answered)

    def _read_at(self, k: bytes, ep: str, stale: bool, end_at: float,
                 before: dict[str, Any] | None = None) -> Steps:
        """One node's answer, by read()'s rules."""
        if stale and before is None and ep not in self._says_damaged:
            before = yield from self._status(ep, max(0.0, end_at - time.monotonic()))
        r = yield from self._request("get", key=k, endpoint=ep, deadline=max(0.0, end_at - time.monotonic()))
        if isinstance(r.get("damaged"), bool):
            self._says_damaged.add(ep)
        else:
            self._says_damaged.discard(ep)
        if not r.get("stale"):
            return self._result(r)
        node = str(r.get("node") or ep)
        if not stale:
            raise NoLeader(f"{node} is a follower (epoch {r.get('epoch')}): its answer may miss acknowledged "
                           "writes; read without endpoint to reach the leader, or pass stale=True",
                           {node: "a follower"})
        why = yield from self._damaged(r, ep, before)
        if why is not None:
            raise NoLeader(f"{node}'s answer is not used: {why}", {node: why})
        return self._result(r)

    def _damaged(self, r: dict[str, Any], ep: str, before: dict[str, Any] | None) -> Steps:
        """Was this stale answer served from a damaged log? The reply's own `damaged` flag when the
        node sends one; else the node's status before and after the read: recovery, at a process's
        start, is what marks a log damaged, so one process (same pid) intact before and after
        served the read intact."""
        if isinstance(r.get("damaged"), bool):
            return "damaged: its log was cut at recovery" if r["damaged"] else None
        if before is None:  # it sent the flag before, not now: a restart into an older version
            return "its reply does not say whether its log is intact"
        if (why := damage(before)) is not None:
            return why
        try:
            after = yield from self._status(ep, self.timeout)
        except ZwalError as e:
            return f"its status after the read did not come ({e.code}): cannot tell its log is intact"
        if after.get("pid") != before.get("pid") or after.get("name") != before.get("name"):
            return "it restarted during the read: cannot tell its log was intact"
        return damage(after)

    def _status(self, endpoint: str | None, deadline: float | None) -> Steps:
        r = yield from self._request("status", endpoint=endpoint, deadline=deadline)
        return r["status"]


def _b(x: bytes | str) -> bytes:
    return x.encode("utf-8") if isinstance(x, str) else x
