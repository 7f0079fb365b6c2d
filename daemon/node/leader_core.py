"""The leader's policy, free of I/O: what to batch, whom to answer, when.

`LeaderCore` takes events (a decoded request, a batch made durable, a
follower's fetch, the clock) and returns actions (replies to send, chunks
to ship, a step-down). The node loop performs the actions; tests drive the
core directly with no sockets, files or sleeps.

Invariants it protects (docs/protocol.md):
- commit: a write is answered with success only when the leader's own
  fsync covers it and, with ack_replicas = K >= 1, when K followers have
  fetched past it. A follower's fetch offset is its durable end (it fsyncs
  before asking for more), so a fetch doubles as its acknowledgement, but
  only when its position (last epoch, end) is a prefix of this log;
- divergence: a follower whose log stops matching is told where (Kafka's
  OffsetsForLeaderEpoch); a follower ahead of the leader in the leader's own
  epoch is never told to truncate;
- a restarted leader that cut bytes from its log (`confirming`) takes no
  writes and truncates nobody until F - K + 1 followers show they hold
  nothing it lost; if one does, it steps down (the replicas repair it);
- reads: a fresh read is served only from committed state, after K
  followers' fetches at this epoch prove it still leads (ReadIndex, Raft
  thesis 6.4); reads waiting together share one round;
- retries: see daemon/node/retry.py; a write that would grow the retry
  window past its budget is refused `busy` (nothing written, no client
  forgotten), and each record with a client id carries the leader's time;
- epochs: a higher epoch in a fetch is a hint to ask the peers, never a command.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from daemon.config import RETRY_BUDGET_BYTES
from daemon.node.identity import epoch_end
from daemon.node.kv import KVState, Placed, content_digest
from daemon.node.retry import Conflict, Join, Known, RetryTracker, Waiters, Waiting
from daemon.wal.format import Record, encode_frame
from daemon.wire.client import Err, ProtocolError, Request, error_reply, validate_write, write_ok
from daemon.wire.replication import Data, Fetch, FromLeader, Refuse, Truncate

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
    msg: FromLeader


@dataclass(slots=True)
class StepDown:
    epoch: int
    leader: str | None
    reason: str
    loud: bool = False  # an anomaly an operator must see (logged as an error)


@dataclass(slots=True)
class CheckPeers:
    """A message claims a newer epoch: ask the peers now; adopt it only if one holds it."""

    reason: str


@dataclass(slots=True)
class ServeRead:
    """Answer this read from the KV state now (committed, and leadership confirmed if K >= 1)."""

    envelope: Envelope
    request: Request
    linearizable: bool


@dataclass(slots=True)
class Confirmed:
    """A restarted leader that lost its tail has heard from enough followers: it may take writes."""

    followers: list[str]


@dataclass(slots=True)
class Pending:
    """A record in the log awaiting commit, and who waits for its answer."""

    record: Record
    placed: Placed
    waiters: Waiters
    deadline: float
    digest: bytes = b""


@dataclass(slots=True)
class PendingRead:
    envelope: Envelope
    request: Request
    round: int  # the read round whose confirmation it needs
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
    round: int = 0  # the highest read round it has confirmed at our epoch


@dataclass
class Counters:
    appends: int = 0
    batches: int = 0
    bad_requests: int = 0
    dropped: int = 0
    dedup_hits: int = 0
    retry_conflicts: int = 0
    reads: int = 0
    acked: int = 0  # success replies to writes (retries included)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class InvariantViolation(Exception):
    """A rule of the core was broken by its caller: the node logs it and exits cleanly."""


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
        confirming: bool = False,
        incarnation: int = 0,
        retry_budget_bytes: int = RETRY_BUDGET_BYTES,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.epoch = epoch
        self.end = end
        # Everything below start_end was in the log when this leader began
        # (restart or promotion), and is in the KV state already. With K >= 1
        # none of it is known to be on K followers: the commit point is
        # learnt from the followers' fetches, a retry of such a record waits,
        # and no read is served before the commit point reaches start_end.
        self.start_end = end
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
        # Followers that showed they hold nothing this restarted leader lost;
        # None when there is nothing to confirm.
        # All followers must answer: once this leader writes again, it writes
        # offsets of its epoch a second time, so no follower may hold the old
        # bytes there (they would look like a matching prefix).
        self.confirm_need = len(followers)
        self.confirming: set[str] | None = set() if confirming and self.confirm_need else None
        # Read rounds count only from fetches that echo this incarnation: a
        # restarted leader starts its rounds again, and a fetch sent to (or
        # before) an earlier incarnation must not confirm a read of this one.
        self.incarnation = incarnation
        self.pending: deque[Pending] = deque()
        # Retries of records already in the log (replayed) but not yet known
        # committed: answered when the commit point passes their end.
        self.replayed_waits: list[tuple[Placed, Waiters, float]] = []
        self.retries = RetryTracker(kv.window)
        self.retry_budget = retry_budget_bytes
        # Record times (ms): the wall clock, but never behind the log's newest
        # record time plus the time this leader has led (a new leader whose
        # clock is behind keeps the log's time going at the real rate).
        self.wall_clock = wall_clock
        self._stamp_base: tuple[float, int] | None = None
        self._last_stamp = 0
        # The open batch takes new writes; the sealed one is on its way to disk.
        self.batch: list[tuple[Record, bytes, Waiting]] = []
        self.sealed: list[tuple[Record, bytes, Waiting]] = []
        self.batch_bytes = 0
        self.reads: deque[PendingRead] = deque()
        self.round = 0
        self.round_wanted = False
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
        if self.confirming is not None:
            self.counters.error(Err.NOT_ENOUGH_REPLICAS)
            return [Reply(envelope, error_reply(
                req.id, Err.NOT_ENOUGH_REPLICAS,
                f"{self.name} restarted with a damaged tail and is confirming its log with its followers "
                f"({len(self.confirming)} of {self.confirm_need} heard); nothing was written", written=False))]
        digest = b""
        charge = 0
        if rec.client_id is not None:
            key = (rec.client_id, req.id)
            digest = content_digest(rec)
            stamp = self._stamp(now)
            self.kv.window.expire(stamp)
            found = self.retries.find(key, digest)
            if isinstance(found, Conflict):
                self.counters.retry_conflicts += 1
                self.counters.error(Err.BAD_REQUEST)
                where = f" (the record at offset {found.placed.offset})" if found.placed else ""
                return [Reply(envelope, error_reply(
                    req.id, Err.BAD_REQUEST,
                    f"request id {req.id} of this client id was already used for a different record{where}; "
                    "a retry must repeat the same op, key and value: use a new request id for a new write",
                    written=False))]
            if isinstance(found, Join):
                # A retry of a record on its way: answered with the original when it commits.
                found.entry.waiters.append((envelope, req.id))
                if isinstance(found.entry, Pending):
                    found.entry.deadline = max(found.entry.deadline, now + self.timeout)
                self.counters.dedup_hits += 1
                return []
            if isinstance(found, Known):
                self.counters.dedup_hits += 1
                if found.placed.end <= self.commit:
                    return [Reply(envelope, self._write_ok(req.id, found.placed))]
                self.replayed_waits.append((found.placed, [(envelope, req.id)], now + self.timeout))
                return []
            charge = self.retries.growth(key)
            if charge and self.retries.used() + charge > self.retry_budget:
                return [Reply(envelope, self._window_full(req.id, rec.client_id, stamp))]
            rec = replace(rec, ts=stamp)
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
        entry = Waiting(digest, [(envelope, req.id)])
        self.batch.append((rec, frame, entry))
        if rec.client_id is not None:
            self.retries.add((rec.client_id, req.id), entry, charge)
        self.batch_bytes += len(frame)
        return []

    def _stamp(self, now: float) -> int:
        """The record time (ms) of a write admitted now (`now`: this node's monotonic clock)."""
        wall = int(self.wall_clock() * 1000)
        if self._stamp_base is None:
            self._stamp_base = (now, max(wall, self.kv.window.clock or 0))
        since, base = self._stamp_base
        t = max(wall, base + int((now - since) * 1000), self._last_stamp)
        self._last_stamp = t
        return t

    def _window_full(self, request_id: int, client_id: bytes, stamp: int) -> bytes:
        w = self.kv.window
        oldest = w.oldest()
        wait = max(1, -(-(oldest + w.window_ms - stamp) // 1000)) if oldest is not None else w.window_ms // 1000
        self.counters.error(Err.BUSY)
        new = "a new client id" if not w.has_client(client_id) else "more request ids of this client"
        return error_reply(
            request_id, Err.BUSY,
            f"the retry window is full ({self.retries.used()} of retry_budget_bytes = {self.retry_budget} bytes, "
            f"{w.clients()} client(s) seen in the last {w.window_ms / 1000:g}s), so {self.name} takes no write "
            f"for {new}; nothing was written. Retry in {wait}s (when the oldest client's window expires), "
            "reuse one client id for many writes, or raise retry_budget_bytes in the cluster file",
            written=False)

    def _write_ok(self, request_id: int, placed: Placed) -> bytes:
        self.counters.acked += 1
        return write_ok(request_id, placed.offset, placed.end, placed.epoch)

    def take_batch(self) -> list[bytes]:
        """Seal the open batch and return its frames, in order, for one write + fsync."""
        if self.sealed:
            raise InvariantViolation("the previous batch is still on its way to disk")
        self.sealed, self.batch, self.batch_bytes = self.batch, [], 0
        self.retries.seal()
        return [frame for _, frame, _ in self.sealed]

    def batch_failed(self, code: str, message: str) -> list[Reply]:
        """The sealed batch's write failed and was rolled back: nothing was appended."""
        out = []
        for _, _, entry in self.sealed:
            for env, rid in entry.waiters:
                out.append(Reply(env, error_reply(rid, code, message, written=False)))
        self.counters.error(code)
        self.sealed = []
        self.retries.sealed_failed()
        return out

    def batch_durable(self, new_end: int, now: float) -> list[Reply | SendChunk | SendControl | ServeRead]:
        """The sealed batch is written and fsynced up to new_end."""
        pos = self.end
        for rec, frame, entry in self.sealed:
            placed = Placed(pos, pos + len(frame), self.epoch)
            pos += len(frame)
            p = Pending(rec, placed, entry.waiters, now + self.timeout, entry.digest)
            self.pending.append(p)
            if rec.client_id is not None:
                self.retries.sealed_durable((rec.client_id, rec.request_id), p)  # type: ignore[arg-type]
        if pos != new_end:
            raise InvariantViolation(f"batch accounting: {pos} != {new_end}")
        self.counters.appends += len(self.sealed)
        self.counters.batches += 1
        self.sealed = []
        self.retries.sealed_done()
        self.end = new_end
        out: list[Reply | SendChunk | SendControl | ServeRead] = []
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

    def _advance_commit(self) -> list[Reply | ServeRead]:
        point = self._commit_point()
        if point <= self.commit:
            return []
        self.commit = point
        out: list[Reply | ServeRead] = []
        while self.pending and self.pending[0].placed.end <= point:
            p = self.pending.popleft()
            self.kv.apply(p.record, p.placed)
            if p.record.client_id is not None:
                self.retries.committed((p.record.client_id, p.record.request_id))  # type: ignore[arg-type]
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
        out.extend(self._serve_reads())
        return out

    # -- reads (ReadIndex) ------------------------------------------------------

    def admit_read(self, req: Request, envelope: Envelope, now: float) -> list[ServeRead]:
        """A `get`: served from committed state once K followers confirm we still lead."""
        self.counters.reads += 1
        if self.k == 0:
            # Nobody can confirm: the reply says so (linearizable: false).
            return [ServeRead(envelope, req, False)]
        self.reads.append(PendingRead(envelope, req, self.round + 1, now + self.timeout))
        self.round_wanted = True
        return []

    def _confirmed_round(self) -> int:
        rounds = sorted((f.round for f in self.followers.values()), reverse=True)
        return rounds[self.k - 1] if len(rounds) >= self.k else 0

    def _serve_reads(self) -> list[ServeRead]:
        if not self.reads or self.commit < self.start_end or self.confirming is not None:
            return []
        confirmed = self._confirmed_round()
        out = []
        while self.reads and self.reads[0].round <= confirmed:
            r = self.reads.popleft()
            out.append(ServeRead(r.envelope, r.request, True))
        return out

    # -- followers ------------------------------------------------------------

    def on_fetch(self, fetch: Fetch, envelope: Envelope, now: float) -> list[Any]:
        """A follower asks for bytes from its durable end (and so acknowledges it, if its log matches ours)."""
        name, offset = fetch.name, fetch.offset
        if fetch.epoch > self.epoch:
            return [CheckPeers(f"follower {name} says it is at epoch {fetch.epoch}")]
        f = self.followers.get(name)
        if f is None:
            return [SendControl(envelope, Refuse(self.epoch, f"{name} is not a node of this cluster"))]
        if fetch.last_epoch > fetch.epoch:
            return [SendControl(envelope, Refuse(self.epoch, f"last epoch {fetch.last_epoch} is above epoch {fetch.epoch}"))]
        if fetch.last_epoch == self.epoch and offset > self.end:
            # Ahead of us in our own epoch: we lost fsynced records that it holds.
            if self.confirming is not None:
                return [self._lost_tail(name, offset)]
            return [SendControl(envelope, Refuse(
                self.epoch, f"follower end {offset} is beyond the leader's end {self.end} in epoch {self.epoch}; "
                "a disk lost fsynced records: no truncation"))]
        matched_epoch, matched_end = epoch_end(self.history, fetch.last_epoch, self.end)
        consistent = offset == 0 or (matched_epoch == fetch.last_epoch and offset <= matched_end)
        if not consistent:
            if self.confirming is not None and offset > self.end:
                return [self._lost_tail(name, offset)]
            # Kafka's OffsetsForLeaderEpoch: where its log stops matching ours.
            # Its bytes beyond that were never part of this log, so never
            # acknowledged by it; it does not count as in sync meanwhile.
            return [SendControl(envelope, Truncate(self.epoch, self.name, matched_end, matched_epoch))]
        out: list[Any] = []
        if self.confirming is not None:
            self.confirming.add(name)
            if len(self.confirming) >= self.confirm_need:
                out.append(Confirmed(sorted(self.confirming)))
                self.confirming = None
        if f.last_seen == float("-inf") or now - f.last_seen > self.timeout:
            f.connects += 1
        f.last_seen = now
        self._in_sync_at = float("nan")
        f.records = fetch.records
        if fetch.epoch == self.epoch and fetch.inc == self.incarnation and fetch.round > f.round:
            f.round = min(fetch.round, self.round)
        if offset != f.acked:
            f.acked = offset
            out.extend(self._advance_commit())
        out.extend(self._serve_reads())
        if offset < self.end:
            f.parked = None
            out.append(SendChunk(name, envelope, offset))
        elif fetch.epoch < self.epoch or f.round < self.round:
            # Tell it our epoch (or our read round) now rather than at the next heartbeat.
            f.parked = None
            out.append(SendControl(envelope, self.heartbeat_msg()))
        else:
            f.parked = envelope
            f.parked_at = now
        return out

    def revoke(self, names: set[str]) -> None:
        """These followers' keys were revoked: their parked fetches get no answer
        (no log bytes, no heartbeat). Acks they gave before stay true: each was
        an fsync that node really made."""
        for n in names:
            f = self.followers.get(n)
            if f is not None:
                f.parked = None

    def _lost_tail(self, name: str, offset: int) -> StepDown:
        sd = StepDown(self.epoch, None,
                      f"follower {name} holds records up to offset {offset}, beyond this leader's end {self.end} "
                      f"after its recovery cut its log: they may have been acknowledged. Not truncating anyone; "
                      f"stepping down: run 'zwal promote {name}'", loud=True)
        self.stepped_down = sd
        return sd

    def tick(self, now: float) -> list[Reply | SendControl]:
        """Heartbeats to parked followers; a read round; errors for expired writes and reads."""
        out: list[Reply | SendControl] = []
        if self.round_wanted:
            # One round for every read that arrived since the last: each
            # follower is sent the round now, and its next fetch confirms it.
            self.round += 1
            self.round_wanted = False
            for f in self.followers.values():
                if f.parked is not None:
                    out.append(SendControl(f.parked, self.heartbeat_msg()))
                    f.parked = None
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
        while self.reads and now >= self.reads[0].deadline:
            r = self.reads.popleft()
            self.counters.error(Err.NOT_ENOUGH_REPLICAS)
            why = (f"the commit point ({self.commit}) has not reached the log's end when {self.name} began leading "
                   f"({self.start_end})" if self.commit < self.start_end else
                   f"fewer than {self.k} follower(s) confirmed that {self.name} still leads epoch {self.epoch}")
            out.append(Reply(r.envelope, error_reply(
                r.request.id, Err.NOT_ENOUGH_REPLICAS,
                f"read not served within {self.timeout}s: {why}; retry, or read from any node with stale reads",
                written=False)))
        return out

    def _not_acked(self, placed: Placed, waiters: Waiters) -> list[Reply]:
        self.counters.error(Err.NOT_ENOUGH_REPLICAS)
        return [Reply(env, error_reply(
            rid, Err.NOT_ENOUGH_REPLICAS,
            f"record at offset {placed.offset} is durable on the leader but fewer than "
            f"{self.k} follower(s) acknowledged it within {self.timeout}s; it may still "
            "become committed: retry with the same request id",
            written=True, offset=placed.offset, epoch=placed.epoch,
        )) for env, rid in waiters]

    def heartbeat_msg(self) -> Data:
        return Data(self.epoch, self.name, None, self.end, self.commit, self.round, None, self.incarnation)

    def chunk_msg(self, offset: int, data: bytes) -> Data:
        return Data(self.epoch, self.name, offset, self.end, self.commit, self.round, data, self.incarnation)

    def next_deadline(self, now: float) -> float:
        t = now + self.heartbeat
        if self.round_wanted:
            return now
        for f in self.followers.values():
            if f.parked is not None:
                t = min(t, f.parked_at + self.heartbeat)
        for p in self.pending:
            if p.waiters:
                t = min(t, p.deadline)
                break
        for _, _, deadline in self.replayed_waits:
            t = min(t, deadline)
        if self.reads:
            t = min(t, self.reads[0].deadline)
        return t

    def fail_all(self, code: str, message: str) -> list[Reply]:
        """Stepping down or stopping: every waiting client gets an error now.

        The caller first waits for the batch in flight: its clients must be
        told whether it was written, and only its completion says.
        """
        if self.sealed:
            raise InvariantViolation("fail_all with a batch in flight: wait for it first")
        out = []
        for _, _, entry in self.batch:
            out.extend(Reply(env, error_reply(rid, code, message, written=False)) for env, rid in entry.waiters)
        self.batch, self.batch_bytes = [], 0
        self.retries.drop_open()
        for p in self.pending:
            for env, rid in p.waiters:
                out.append(Reply(env, error_reply(rid, code, message, written=True, offset=p.placed.offset)))
            p.waiters = []
        for placed, waiters, _ in self.replayed_waits:
            out.extend(Reply(env, error_reply(rid, code, message, written=True, offset=placed.offset)) for env, rid in waiters)
        self.replayed_waits = []
        for r in self.reads:
            out.append(Reply(r.envelope, error_reply(r.request.id, code, message, written=False)))
        self.reads.clear()
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
