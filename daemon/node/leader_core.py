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
  writes and truncates nobody until every follower has answered; a
  follower holding records of its epoch that it lost repairs it (frames
  checked, daemon/node/repair.py) and it leads on; only records of another
  epoch it cannot repair make it step down, naming the follower to promote;
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
from daemon.node.repair import MAX_REPAIR_FAILURES, confirm_quorum, verify_repair
from daemon.wal.format import Frame
from daemon.node.transfer import SnapInfo, serve_range, wants_snapshot
from daemon.wire.replication import (Data, Fetch, FetchSnapshot, FromLeader, Refuse, RepairData, RepairRequest,
                                     SnapshotNeeded, Truncate)

Envelope = list[bytes]


@dataclass(slots=True)
class Reply:
    envelope: Envelope
    body: bytes
    # A write's `ok` (request id, offset): the role sends it only while its lease holds (docs/failover.md).
    acked: tuple[int, int] | None = None


@dataclass(slots=True)
class SendChunk:
    """Ship log bytes from `offset` to a follower (read from the file by the loop)."""

    follower: str
    envelope: Envelope
    offset: int


@dataclass(slots=True)
class SendSnapshot:
    """Ship bytes [pos, pos + n) of the snapshot at `offset` (pread from the file by the loop, per chunk)."""

    follower: str
    envelope: Envelope
    offset: int
    crc: int
    pos: int
    n: int
    size: int


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
    """A restarted leader that lost its tail has heard from enough followers: it may take writes.

    The glue saves `confirm_from` None and, durably, `resume_at` = `end` and
    `unheard` (NodeState): a follower that did not answer may hold old bytes
    of this epoch beyond `end`, which new writes would make look like a
    prefix; its first fetch beyond `end` is told to truncate there."""

    followers: list[str]
    end: int = 0
    unheard: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AppendRepair:
    """Append these verified frames of the leader's own epoch (copied from `source`), fsync, then call
    `LeaderCore.repaired(new_end, now)`; on a failed write, `repair_failed()`."""

    source: str
    offset: int
    data: bytes
    records: int


@dataclass(slots=True)
class RepairRefused:
    """Repair data that failed a check: nothing changed (log it, warn)."""

    source: str
    reason: str


@dataclass(slots=True)
class CompareOwn:
    """An unheard follower sent its frames beyond `resume_at`: read our own bytes at [offset, offset +
    len(data)), never beyond our end (fewer then), and call `LeaderCore.compared(follower, offset, data, ours)`."""

    follower: str
    offset: int
    data: bytes


@dataclass(slots=True)
class Heard:
    """A follower in `unheard` has fetched at a prefix of this log: the glue removes it durably."""

    follower: str


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
        repair_max_bytes: int = 1 << 20,
        resume_at: int | None = None,
        unheard: frozenset[str] = frozenset(),
        damaged_end: int | None = None,
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
        # Followers whose positions this restarted leader (which cut its tail)
        # has seen; None when there is nothing to confirm. All of them are
        # needed (daemon/node/repair.py confirm_quorum: F - K + 1 would find
        # every acknowledged record, but resuming in the same epoch with one
        # unheard let two logs differ after a promotion; Protocol-Aware
        # Recovery, Alagappan et al., FAST 2018, is the repair). Those that did not
        # answer may hold old, unacknowledged bytes of this epoch beyond the
        # end it resumes at: they are `unheard`, and truncated there.
        self.confirm_need = confirm_quorum(len(followers), ack_replicas)
        self.confirming: set[str] | None = set() if confirming and self.confirm_need else None
        self.repair_max = repair_max_bytes
        # Followers that hold bytes of our epoch beyond our end (their fetch offset).
        self.ahead: dict[str, int] = {}
        # Followers that hold bytes beyond our end of an epoch we cannot repair: (last_epoch, offset).
        self.beyond: dict[str, tuple[int, int]] = {}
        self.repair_failures: dict[str, int] = {}
        self.repairing: tuple[str, int, float] | None = None  # (follower asked, offset asked from, deadline)
        self.repair_frames: list[tuple[Frame, Any]] | None = None  # verified, on their way to disk
        self.resume_at = resume_at
        self.unheard = set(unheard) if resume_at is not None else set()
        # Per unheard follower beyond resume_at: how far its log is proved equal
        # to ours, where it was proved to differ, and a comparison under way.
        self.proved: dict[str, int] = {}
        self.differs: dict[str, int] = {}
        self.comparing: dict[str, int] = {}
        # The log's end before recovery cut it (NodeState.damaged_end). Every
        # record this leader ever acknowledged lay below it; once repair brings
        # the log back there, the log is whole again and no quorum is needed.
        self.damaged_end = damaged_end
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
        # -- snapshot transfer (daemon/node/transfer.py): the glue keeps these current --
        self.snap: SnapInfo | None = None  # the newest snapshot this node holds
        self.oldest = 0  # the oldest offset the log still holds (retention deletes below it)
        self.transfers: dict[str, float] = {}  # follower -> when it last fetched a snapshot chunk
        self.fetch_max = 1 << 20

    # -- client writes ------------------------------------------------------

    def batch_full(self) -> bool:
        return len(self.batch) >= self.batch_max_records or self.batch_bytes >= self.batch_max_bytes

    def retention_floor(self, now: float) -> int | None:
        """The lowest offset every follower has acknowledged (None: a leader with no followers).

        Retention keeps what any follower, in sync or away, still has to fetch
        (0 for one not heard since this node began leading): until followers
        can install a snapshot from the leader, a follower below the oldest
        offset could only be rebuilt (docs/format.md, "Retention")."""
        acks = [f.acked for f in self.followers.values()]
        return min(acks) if acks else None

    def in_sync(self, now: float) -> int:
        if now != self._in_sync_at:
            self._in_sync_at = now
            self._in_sync = sum(1 for f in self.followers.values() if now - f.last_seen <= self.timeout)
        return self._in_sync

    def admit_write(self, req: Request, envelope: Envelope, now: float, rec: Record | None = None) -> list[Reply]:
        """Validate a write and queue it for the next batch, or answer at once. `rec`: the record of `req`,
        already validated (a batch checks all of its writes before it admits any)."""
        if rec is None:
            try:
                rec = validate_write(req)
            except ProtocolError as e:
                self.counters.error(e.code)
                return [Reply(envelope, error_reply(req.id, e.code, str(e)))]
        if self.confirming is not None:
            self.counters.error(Err.NOT_ENOUGH_REPLICAS)
            return [Reply(envelope, error_reply(
                req.id, Err.NOT_ENOUGH_REPLICAS,
                f"{self.name} restarted (a crash, or recovery cut its log) and is confirming its log with its followers "
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
                    return [self._ok(envelope, req.id, found.placed)]
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

    def _ok(self, envelope: Envelope, request_id: int, placed: Placed) -> Reply:
        self.counters.acked += 1
        return Reply(envelope, write_ok(request_id, placed.offset, placed.end, placed.epoch),
                     (request_id, placed.offset))

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
                out.append(self._ok(env, rid, p.placed))
        if self.replayed_waits:
            still = []
            for placed, waiters, deadline in self.replayed_waits:
                if placed.end <= point:
                    out.extend(self._ok(env, rid, placed) for env, rid in waiters)
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
        if name in self.unheard and fetch.last_epoch == self.epoch and self.resume_at is not None \
                and offset > self.proved.get(name, self.resume_at):
            return self._unheard_beyond(name, envelope, offset, now)
        if fetch.last_epoch == self.epoch and offset > self.end:
            # Ahead of us in our own epoch: we lost fsynced records that it holds.
            if self.confirming is not None:
                return self._ahead(name, envelope, offset, now)
            return [SendControl(envelope, Refuse(
                self.epoch, f"follower end {offset} is beyond the leader's end {self.end} in epoch {self.epoch}; "
                "a disk lost fsynced records: no truncation"))]
        matched_epoch, matched_end = epoch_end(self.history, fetch.last_epoch, self.end)
        consistent = offset == 0 or (matched_epoch == fetch.last_epoch and offset <= matched_end)
        if not consistent:
            if self.confirming is not None and offset > self.end:
                # It holds bytes we lost, of an epoch other than ours: not ours
                # to repair. Told nothing (never truncated); decided below.
                self.beyond[name] = (fetch.last_epoch, offset)
                self.confirming.add(name)
                f.parked, f.parked_at = envelope, now
                return self._decide_confirm(now)
            # Kafka's OffsetsForLeaderEpoch: where its log stops matching ours.
            # Its bytes beyond that were never part of this log, so never
            # acknowledged by it; it does not count as in sync meanwhile.
            return [SendControl(envelope, Truncate(self.epoch, self.name, matched_end, matched_epoch))]
        out: list[Any] = []
        if name in self.unheard:
            # A prefix of the log this leader resumed (at or below resume_at, or
            # proved equal beyond it): from now on it holds only bytes we send it.
            self.unheard.discard(name)
            for d in (self.proved, self.differs, self.comparing):
                d.pop(name, None)
            out.append(Heard(name))
        if self.confirming is not None:
            self.confirming.add(name)
            self.ahead.pop(name, None)
            self.beyond.pop(name, None)
            out.extend(self._decide_confirm(now))
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
        if offset < self.end and wants_snapshot(offset, self.oldest, self.end, self.snap):
            # Below our oldest offset (or an empty log, for which the snapshot
            # is smaller than the log): the snapshot, not log bytes.
            assert self.snap is not None
            f.parked = None
            out.append(SendControl(envelope, SnapshotNeeded(self.epoch, self.name, self.snap.offset, self.snap.size,
                                                            self.snap.crc, self.end)))
        elif offset < self.oldest:
            f.parked = None
            out.append(SendControl(envelope, Refuse(self.epoch, f"offset {offset} is below the oldest offset "
                                                                f"{self.oldest} this leader keeps and it has no "
                                                                "snapshot to send")))
        elif offset < self.end:
            self.transfers.pop(name, None)
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

    def on_fetch_snapshot(self, req: FetchSnapshot, envelope: Envelope, now: float) -> list[Any]:
        """A follower asks for a chunk of our snapshot: send it, or offer the newest again if it names another."""
        if req.epoch > self.epoch:
            return [CheckPeers(f"follower {req.name} says it is at epoch {req.epoch}")]
        if req.name not in self.followers:
            return [SendControl(envelope, Refuse(self.epoch, f"{req.name} is not a node of this cluster"))]
        rng = serve_range(req, self.snap, self.fetch_max)
        if rng is None:
            self.transfers.pop(req.name, None)
            if self.snap is None:
                return [SendControl(envelope, Refuse(self.epoch, "this leader has no snapshot to send"))]
            # Another file (ours was replaced by a newer one, or another leader's): start again.
            return [SendControl(envelope, SnapshotNeeded(self.epoch, self.name, self.snap.offset, self.snap.size,
                                                         self.snap.crc, self.end))]
        assert self.snap is not None
        self.transfers[req.name] = now
        return [SendSnapshot(req.name, envelope, self.snap.offset, self.snap.crc, rng[0], rng[1], self.snap.size)]

    def revoke(self, names: set[str]) -> None:
        """These followers' keys were revoked: their parked fetches get no answer
        (no log bytes, no heartbeat). Acks they gave before stay true: each was
        an fsync that node really made."""
        for n in names:
            f = self.followers.get(n)
            if f is not None:
                f.parked = None

    # -- a restarted leader that cut its tail (Protocol-Aware Recovery) ---------------

    def _unheard_beyond(self, name: str, envelope: Envelope, offset: int, now: float) -> list[Any]:
        """A follower that did not answer when we resumed holds bytes of our epoch beyond resume_at.

        Those written by our earlier incarnation were never acknowledged
        (F - K + 1 others answered and we took up to the most advanced), but
        they sit at offsets we have written again, so they would pass for a
        prefix. We compare them with our own bytes (it sends them as repair
        data) and truncate it where they first differ: never a copy of a
        record we hold identically, acknowledged or not.
        """
        assert self.resume_at is not None
        f = self.followers[name]
        proved = self.proved.get(name, self.resume_at)
        if name in self.differs:
            return [SendControl(envelope, Truncate(self.epoch, self.name, self.differs[name], self.epoch))]
        if name in self.comparing:
            # Asked, and it fetched again without sending frames: nothing to compare, cut at what is proved.
            del self.comparing[name]
            self.differs[name] = proved
            return [SendControl(envelope, Truncate(self.epoch, self.name, proved, self.epoch))]
        upto = min(offset, self.end)
        if upto <= proved:
            # Beyond our end: bytes this incarnation never wrote, of an earlier one, never acknowledged.
            self.differs[name] = proved
            return [SendControl(envelope, Truncate(self.epoch, self.name, proved, self.epoch))]
        self.comparing[name] = proved
        f.parked = None
        return [SendControl(envelope, RepairRequest(self.epoch, self.name, proved, upto, self.repair_max))]

    def compared(self, name: str, offset: int, data: bytes, ours: bytes) -> None:
        """Our own bytes at [offset, offset + len(ours)) for a CompareOwn: record how far the logs agree."""
        if self.comparing.pop(name, None) != offset:
            return
        checked = verify_repair(data, offset, self.epoch, offset + len(data), len(data))
        agree = offset
        if not isinstance(checked, str):
            for frame, _ in checked:
                if ours[frame.offset - offset:frame.end - offset] != data[frame.offset - offset:frame.end - offset]:
                    break
                agree = frame.end
        self.proved[name] = agree  # its log equals ours up to here
        if agree < offset + len(data) or isinstance(checked, str):
            self.differs[name] = agree

    def _ahead(self, name: str, envelope: Envelope, offset: int, now: float) -> list[Any]:
        """A follower holds bytes of our epoch beyond our end: ask it for them (one source at a time)."""
        assert self.confirming is not None
        f = self.followers[name]
        self.confirming.add(name)
        self.ahead[name] = offset
        self.beyond.pop(name, None)
        if self.repair_frames is not None:
            pass  # a repair is on its way to disk (the append is asynchronous): repaired() goes on from there
        elif self.repairing is not None and self.repairing[0] == name:
            # Asked, and it fetched again without sending good frames (it has
            # none of our epoch there): a failure, so a refusal never spins.
            self.repairing = None
            self.repair_failures[name] = self.repair_failures.get(name, 0) + 1
        elif self.repairing is not None and now >= self.repairing[2]:
            self.repairing = None  # the follower asked never answered: ask another
        if (self.repairing is None and self.repair_frames is None
                and self.repair_failures.get(name, 0) < MAX_REPAIR_FAILURES):
            self.repairing = (name, self.end, now + self.timeout)
            f.parked = None
            return [SendControl(envelope, RepairRequest(self.epoch, self.name, self.end, offset, self.repair_max))]
        f.parked, f.parked_at = envelope, now  # a heartbeat brings its next fetch
        return self._decide_confirm(now)

    def on_repair(self, msg: RepairData, now: float) -> list[Any]:
        """A follower's answer to our RepairRequest: append it if every frame checks out, else change nothing."""
        src = msg.name
        if src in self.comparing:
            if msg.offset != self.comparing[src] or msg.epoch != self.epoch:
                del self.comparing[src]
                return self._repair_refused(src, f"compare data at offset {msg.offset} of epoch {msg.epoch}")
            return [CompareOwn(src, msg.offset, msg.data)]
        asked = self.repairing
        if self.confirming is None or asked is None or asked[0] != src or self.repair_frames is not None:
            return self._repair_refused(src, "no repair was asked of it now")
        if msg.offset != self.end or msg.offset != asked[1] or msg.epoch != self.epoch:
            return self._repair_refused(src, f"repair data at offset {msg.offset} of epoch {msg.epoch}; asked for "
                                             f"offset {self.end} of epoch {self.epoch}")
        checked = verify_repair(msg.data, msg.offset, self.epoch, self.ahead.get(src, self.end), self.repair_max)
        if isinstance(checked, str):
            return self._repair_refused(src, checked)
        self.repair_frames = checked
        return [AppendRepair(src, msg.offset, msg.data, len(checked))]

    def _repair_refused(self, src: str, reason: str) -> list[Any]:
        self.counters.error("repair_refused")
        if self.repairing is not None and self.repairing[0] == src:
            self.repairing = None
            self.repair_failures[src] = self.repair_failures.get(src, 0) + 1
        return [RepairRefused(src, reason)]

    def repaired(self, new_end: int, now: float) -> list[Any]:
        """The frames of AppendRepair are appended and fsynced: our log ends at `new_end` now."""
        frames = self.repair_frames
        if frames is None or self.repairing is None:
            raise InvariantViolation("repaired() without a repair on its way to disk")
        if frames[-1][0].end != new_end or frames[0][0].offset != self.end:
            raise InvariantViolation(f"repair accounting: {self.end}..{new_end} is not the frames appended")
        for frame, rec in frames:
            self.kv.apply(rec, Placed(frame.offset, frame.end, frame.epoch))
        src = self.repairing[0]
        self.repair_frames, self.repairing = None, None
        self.repair_failures.pop(src, None)
        self.end = self.start_end = new_end
        if self.k == 0:
            self.commit = new_end
        f = self.followers[src]
        if self.ahead.get(src, 0) > new_end and f.parked is not None:
            # More to take from it: ask now rather than at its next heartbeat.
            env, f.parked = f.parked, None
            return self._ahead(src, env, self.ahead[src], now)
        return self._decide_confirm(now)

    def repair_failed(self) -> None:
        """The append of a repair failed and was rolled back (disk full): nothing changed; ask again later."""
        self.repair_frames, self.repairing = None, None

    def _decide_confirm(self, now: float) -> list[Any]:
        """Enough answers? Then lead on, or (records of another epoch we cannot repair) step down."""
        if self.confirming is None or self.repair_frames is not None:
            return []
        if self.damaged_end is not None and self.end >= self.damaged_end:
            # Repaired up to where the log ended before the cut: byte for byte
            # the log it had (frames of its own epoch, copied back), so every
            # follower's log is a prefix of it again, answered or not.
            done = Confirmed(sorted(self.confirming), self.end, [])
            self.confirming = None
            self.ahead.clear()
            return [done]
        if len(self.confirming) < self.confirm_need:
            return []
        if any(off > self.end and self.repair_failures.get(n, 0) < MAX_REPAIR_FAILURES
               for n, off in self.ahead.items()):
            return []  # a follower still holds records of our epoch we can take: keep repairing
        lost = {n: p for n, p in self.beyond.items() if p[1] > self.end}
        lost.update({n: (self.epoch, off) for n, off in self.ahead.items() if off > self.end})
        if lost:
            return [self._lost_tail(lost)]
        out: list[Any] = [Confirmed(sorted(self.confirming), self.end, sorted(set(self.followers) - self.confirming))]
        self.confirming = None
        self.resume_at = self.end
        self.unheard = set(self.followers) - set(out[0].followers)
        self.ahead.clear()
        return out

    def _lost_tail(self, lost: dict[str, tuple[int, int]]) -> StepDown:
        # F - K + 1 followers answered (so a promotion's quorum is there) and
        # the most advanced of them holds every acknowledged record.
        best = max(lost, key=lambda n: (lost[n], n))
        last_epoch, offset = lost[best]
        sd = StepDown(self.epoch, None,
                      f"follower {best} holds records up to offset {offset} (last epoch {last_epoch}), beyond this "
                      f"leader's end {self.end} after its recovery cut its log, and they could not be repaired "
                      f"from it: they may have been acknowledged. Not truncating anyone; stepping down: "
                      f"run 'zwal promote {best}' ({len(self.confirming or ())} of {len(self.followers)} "
                      f"followers answered, {self.confirm_need} needed)", loud=True)
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
        out: list[Reply] = []
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
