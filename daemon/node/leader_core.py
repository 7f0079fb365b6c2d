"""The leader's policy, free of I/O: what to batch, whom to answer, when.

`LeaderCore` takes events (a decoded request, a batch made durable, a
follower's fetch, the clock) and returns actions (replies to send, chunks
to ship, a step-down). The node loop performs the actions; tests drive the
core directly with no sockets, files or sleeps.

Commit rule: a write is answered with success only when the leader's own
fsync covers it and, with ack_replicas = K >= 1, when K followers have
fetched past it. A follower's fetch offset is its durable end (it fsyncs
before asking for more), so a fetch doubles as its acknowledgement.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from daemon.wire.client import Err, ProtocolError, Request, error_reply, validate_write, write_ok
from daemon.node.kv import KVState, Placed
from daemon.wal.format import Record, encode_frame
from daemon.node.identity import epoch_end

Envelope = list[bytes]


@dataclass(slots=True)
class Reply:
    envelope: Envelope
    body: bytes


@dataclass(slots=True)
class SendChunk:
    """Ship log bytes from `offset` to a follower (read from the file by the loop)."""

    follower: str
    envelope: Envelope
    offset: int


@dataclass(slots=True)
class SendControl:
    envelope: Envelope
    msg: dict[str, Any]


@dataclass(slots=True)
class StepDown:
    epoch: int
    leader: str | None
    reason: str


@dataclass(slots=True)
class Pending:
    """A record in the log awaiting commit, and who waits for its answer."""

    record: Record
    placed: Placed
    waiters: list[tuple[Envelope, int]]  # (envelope, request id)
    deadline: float


@dataclass(slots=True)
class FollowerProgress:
    name: str
    acked: int = 0
    records: int = 0
    last_seen: float = float("-inf")
    parked: Envelope | None = None
    parked_at: float = 0.0
    connects: int = 0


@dataclass
class Counters:
    appends: int = 0
    batches: int = 0
    bad_requests: int = 0
    dropped: int = 0
    dedup_hits: int = 0
    acked: int = 0  # success replies to writes (retries included)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class LeaderCore:
    def __init__(
        self,
        *,
        name: str,
        epoch: int,
        end: int,
        kv: KVState,
        history: list[tuple[int, int]],
        followers: list[str],
        ack_replicas: int,
        replication_timeout: float,
        heartbeat_interval: float,
        max_uncommitted_bytes: int,
        batch_max_records: int,
        batch_max_bytes: int,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.end = end
        # With K >= 1, nothing in the log we start with is known to be on K
        # followers: a restarted or newly promoted leader may hold a tail it
        # fsynced but never replicated. The commit point is learnt from the
        # followers' fetches; until then a retry of such a record waits.
        self.commit = end if ack_replicas == 0 else 0
        self.kv = kv
        self.history = history
        self.k = ack_replicas
        self.timeout = replication_timeout
        self.heartbeat = heartbeat_interval
        self.max_uncommitted = max_uncommitted_bytes
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.followers = {n: FollowerProgress(n) for n in followers}
        self.pending: deque[Pending] = deque()
        # Retries of records already in the log (replayed) but not yet known
        # committed: answered when the commit point passes their end.
        self.replayed_waits: list[tuple[Placed, list[tuple[Envelope, int]], float]] = []
        self.inflight: dict[tuple[bytes, int], Pending] = {}
        # The open batch takes new writes; the sealed one is on its way to disk.
        self.batch: list[tuple[Record, bytes, list[tuple[Envelope, int]]]] = []
        self.batch_index: dict[tuple[bytes, int], list[tuple[Envelope, int]]] = {}
        self.sealed: list[tuple[Record, bytes, list[tuple[Envelope, int]]]] = []
        self.sealed_index: dict[tuple[bytes, int], list[tuple[Envelope, int]]] = {}
        self.batch_bytes = 0
        self.counters = Counters()
        self.stepped_down: StepDown | None = None
        self._in_sync_at = float("nan")
        self._in_sync = 0

    # -- client writes ------------------------------------------------------

    def batch_full(self) -> bool:
        return len(self.batch) >= self.batch_max_records or self.batch_bytes >= self.batch_max_bytes

    def in_sync(self, now: float) -> int:
        if now != self._in_sync_at:
            self._in_sync_at = now
            self._in_sync = sum(1 for f in self.followers.values() if now - f.last_seen <= self.timeout)
        return self._in_sync

    def admit_write(self, req: Request, envelope: Envelope, now: float) -> list[Reply]:
        """Validate a write and queue it for the next batch, or answer at once."""
        try:
            rec = validate_write(req)
        except ProtocolError as e:
            self.counters.error(e.code)
            return [Reply(envelope, error_reply(req.id, e.code, str(e)))]
        if rec.client_id is not None:
            key = (rec.client_id, req.id)
            p = self.inflight.get(key)
            if p is not None:
                # A retry of a write already in the log but not yet committed:
                # it is answered with the original record when that commits.
                p.waiters.append((envelope, req.id))
                p.deadline = max(p.deadline, now + self.timeout)
                self.counters.dedup_hits += 1
                return []
            waiters = self.batch_index.get(key) or self.sealed_index.get(key)
            if waiters is not None:
                waiters.append((envelope, req.id))
                self.counters.dedup_hits += 1
                return []
            placed = self.kv.window.get(rec.client_id, req.id)
            if placed is not None:
                self.counters.dedup_hits += 1
                if placed.end <= self.commit:
                    return [Reply(envelope, self._write_ok(req.id, placed))]
                self.replayed_waits.append((placed, [(envelope, req.id)], now + self.timeout))
                return []
        if self.k and self.in_sync(now) < self.k:
            self.counters.error(Err.NOT_ENOUGH_REPLICAS)
            return [Reply(envelope, error_reply(
                req.id, Err.NOT_ENOUGH_REPLICAS,
                f"only {self.in_sync(now)} follower(s) in sync, ack_replicas = {self.k}; nothing was written",
                written=False,
            ))]
        if self.k and self.end - self.commit > self.max_uncommitted:
            self.counters.error(Err.NOT_ENOUGH_REPLICAS)
            return [Reply(envelope, error_reply(
                req.id, Err.NOT_ENOUGH_REPLICAS,
                f"followers are {self.end - self.commit} bytes behind; nothing was written", written=False,
            ))]
        frame = encode_frame(rec, self.epoch)
        waiters = [(envelope, req.id)]
        self.batch.append((rec, frame, waiters))
        if rec.client_id is not None:
            self.batch_index[(rec.client_id, req.id)] = waiters
        self.batch_bytes += len(frame)
        return []

    def _write_ok(self, request_id: int, placed: Placed) -> bytes:
        self.counters.acked += 1
        return write_ok(request_id, placed.offset, placed.end, placed.epoch)

    def take_batch(self) -> list[bytes]:
        """Seal the open batch and return its frames, in order, for one write + fsync."""
        assert not self.sealed, "the previous batch is still on its way to disk"
        self.sealed, self.sealed_index = self.batch, self.batch_index
        self.batch, self.batch_index, self.batch_bytes = [], {}, 0
        return [frame for _, frame, _ in self.sealed]

    def batch_failed(self, code: str, message: str) -> list[Reply]:
        """The sealed batch's write failed and was rolled back: nothing was appended."""
        out = []
        for _, _, waiters in self.sealed:
            for env, rid in waiters:
                out.append(Reply(env, error_reply(rid, code, message, written=False)))
        self.counters.error(code)
        self.sealed, self.sealed_index = [], {}
        return out

    def batch_durable(self, new_end: int, now: float) -> list[Reply | SendChunk]:
        """The sealed batch is written and fsynced up to new_end."""
        pos = self.end
        for rec, frame, waiters in self.sealed:
            placed = Placed(pos, pos + len(frame), self.epoch)
            pos += len(frame)
            p = Pending(rec, placed, waiters, now + self.timeout)
            self.pending.append(p)
            if rec.client_id is not None:
                self.inflight[(rec.client_id, rec.request_id)] = p  # type: ignore[index]
        assert pos == new_end, f"batch accounting: {pos} != {new_end}"
        self.counters.appends += len(self.sealed)
        self.counters.batches += 1
        self.sealed, self.sealed_index = [], {}
        self.end = new_end
        out: list[Reply | SendChunk] = []
        out.extend(self._advance_commit())
        for f in self.followers.values():
            if f.parked is not None and f.acked < self.end:
                out.append(SendChunk(f.name, f.parked, f.acked))
                f.parked = None
        return out

    def _commit_point(self) -> int:
        if self.k == 0:
            return self.end
        acks = sorted((f.acked for f in self.followers.values()), reverse=True)
        return min(self.end, acks[self.k - 1]) if len(acks) >= self.k else self.commit

    def _advance_commit(self) -> list[Reply]:
        point = self._commit_point()
        if point <= self.commit:
            return []
        self.commit = point
        out = []
        while self.pending and self.pending[0].placed.end <= point:
            p = self.pending.popleft()
            self.kv.apply(p.record, p.placed)
            if p.record.client_id is not None:
                self.inflight.pop((p.record.client_id, p.record.request_id), None)  # type: ignore[arg-type]
            for env, rid in p.waiters:
                out.append(Reply(env, self._write_ok(rid, p.placed)))
        if self.replayed_waits:
            still = []
            for placed, waiters, deadline in self.replayed_waits:
                if placed.end <= point:
                    out.extend(Reply(env, self._write_ok(rid, placed)) for env, rid in waiters)
                else:
                    still.append((placed, waiters, deadline))
            self.replayed_waits = still
        return out

    # -- followers ------------------------------------------------------------

    def on_fetch(self, msg: dict[str, Any], envelope: Envelope, now: float) -> list[Reply | SendChunk | SendControl | StepDown]:
        """A follower asks for bytes from its durable end (and so acknowledges it)."""
        name = msg["name"]
        offset = msg["offset"]
        last_epoch = msg["last_epoch"]
        their_epoch = msg["epoch"]
        if their_epoch > self.epoch:
            sd = StepDown(their_epoch, msg.get("leader"), f"follower {name} is at epoch {their_epoch}")
            self.stepped_down = sd
            return [sd]
        f = self.followers.get(name)
        if f is None:
            return [SendControl(envelope, {"t": "error", "epoch": self.epoch, "message": f"{name} is not a node of this cluster"})]
        if last_epoch < self.epoch or offset > self.end:
            diverge_at = epoch_end(self.history, last_epoch, self.end)
            if offset > diverge_at:
                f.last_seen = now
                return [SendControl(envelope, {"t": "truncate", "epoch": self.epoch, "leader": self.name,
                                               "offset": diverge_at, "last_epoch": last_epoch})]
        if offset > self.end:
            # Same epoch yet ahead of the leader: impossible unless a disk lost
            # fsynced data. Refuse loudly; never ask a replica to drop it.
            return [SendControl(envelope, {"t": "error", "epoch": self.epoch,
                                           "message": f"follower end {offset} is beyond the leader's end {self.end} in epoch {self.epoch}"})]
        if f.last_seen == float("-inf") or now - f.last_seen > self.timeout:
            f.connects += 1
        f.last_seen = now
        self._in_sync_at = float("nan")
        f.records = msg.get("records", f.records)
        out: list[Reply | SendChunk | SendControl | StepDown] = []
        if offset != f.acked:
            f.acked = offset
            out.extend(self._advance_commit())
        if offset < self.end:
            f.parked = None
            out.append(SendChunk(name, envelope, offset))
        elif their_epoch < self.epoch:
            # Tell a follower our epoch at once, so it fences older leaders now.
            f.parked = None
            out.append(SendControl(envelope, self.heartbeat_msg()))
        else:
            f.parked = envelope
            f.parked_at = now
        return out

    def tick(self, now: float) -> list[Reply | SendControl]:
        """Heartbeats to parked followers; not_enough_replicas for expired writes."""
        out: list[Reply | SendControl] = []
        for f in self.followers.values():
            if f.parked is not None and now - f.parked_at >= self.heartbeat:
                out.append(SendControl(f.parked, self.heartbeat_msg()))
                f.parked = None
        for p in self.pending:
            if p.waiters and now >= p.deadline:
                out.extend(self._not_acked(p.placed, p.waiters))
                p.waiters = []
        if self.replayed_waits:
            expired = [w for w in self.replayed_waits if now >= w[2]]
            self.replayed_waits = [w for w in self.replayed_waits if now < w[2]]
            for placed, waiters, _ in expired:
                out.extend(self._not_acked(placed, waiters))
        return out

    def _not_acked(self, placed: Placed, waiters: list[tuple[Envelope, int]]) -> list[Reply]:
        self.counters.error(Err.NOT_ENOUGH_REPLICAS)
        return [Reply(env, error_reply(
            rid, Err.NOT_ENOUGH_REPLICAS,
            f"record at offset {placed.offset} is durable on the leader but fewer than "
            f"{self.k} follower(s) acknowledged it within {self.timeout}s; it may still "
            "become committed: retry with the same request id",
            written=True, offset=placed.offset, epoch=placed.epoch,
        )) for env, rid in waiters]

    def heartbeat_msg(self) -> dict[str, Any]:
        return {"t": "data", "epoch": self.epoch, "leader": self.name, "offset": None, "end": self.end, "commit": self.commit}

    def next_deadline(self, now: float) -> float:
        t = now + self.heartbeat
        for f in self.followers.values():
            if f.parked is not None:
                t = min(t, f.parked_at + self.heartbeat)
        for p in self.pending:
            if p.waiters:
                t = min(t, p.deadline)
                break
        for _, _, deadline in self.replayed_waits:
            t = min(t, deadline)
        return t

    def fail_all(self, code: str, message: str) -> list[Reply]:
        """Stepping down or stopping: every waiting client gets an error now."""
        out = self.batch_failed(code, message) if self.sealed else []
        for _, _, waiters in self.batch:
            out.extend(Reply(env, error_reply(rid, code, message, written=False)) for env, rid in waiters)
        self.batch, self.batch_index, self.batch_bytes = [], {}, 0
        for p in self.pending:
            for env, rid in p.waiters:
                out.append(Reply(env, error_reply(rid, code, message, written=True, offset=p.placed.offset)))
            p.waiters = []
        for placed, waiters, _ in self.replayed_waits:
            out.extend(Reply(env, error_reply(rid, code, message, written=True, offset=placed.offset)) for env, rid in waiters)
        self.replayed_waits = []
        return out

    def follower_status(self, now: float) -> list[dict[str, Any]]:
        out = []
        for f in self.followers.values():
            seen = None if f.last_seen == float("-inf") else round(now - f.last_seen, 3)
            out.append({
                "name": f.name,
                "acked": f.acked,
                "lag_bytes": max(0, self.end - f.acked),
                "lag_records": max(0, self.kv.records + len(self.pending) - f.records),
                "seconds_since_ack": seen,
                "in_sync": seen is not None and seen <= self.timeout,
            })
        return out
