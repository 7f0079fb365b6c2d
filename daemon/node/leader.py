"""The leader role: a reactor around `LeaderCore`, with no loop of its own.

The driver (daemon/node/driver.py in production, tests/sim/node.py in the
simulator) hands it what arrived: `on_client`, `on_fetch`, `on_batch_done`,
`on_peer_status`, then `on_tick` at the end of each turn, and sleeps until
`next_deadline`. Group commit: while a batch is on the disk, new requests
join the open batch; its completion starts the next.

Invariants:
- a write is answered `ok` only from `batch_durable`, after the append's
  completion said the bytes are durable (and K followers acked them);
- work that must follow the batch in flight (a step-down, an admin op)
  waits in `_after_batch`, and meanwhile the role takes no input
  (`accepting` is False), so every client learns the truth about `written`;
- one leader per epoch: a peer at a newer epoch, or another leader of ours,
  makes this role step down (saved before the role ends).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Union, assert_never

import msgpack

from daemon.node import answers, epochs
from daemon.node.admission import Dropped, OtherCluster, Sender, authorize_fetch, decode_client
from daemon.node.leader_core import (AppendRepair, CheckPeers, CompareOwn, Confirmed, Heard, LeaderCore,
                                     RepairRefused, Reply, SendChunk, SendControl, SendSnapshot, ServeRead, StepDown)
from daemon.node.repair import REPAIR_MAX_BYTES
from daemon.node.watch import Answer, ServeWatch, Watches
from daemon.node.ports import FsyncFailure, Host, Limited, SyncResult, Transition
from daemon.node.snapshotting import SNAPSHOT_OP
from daemon.ops.stats import LatencyWindow
from daemon.wal import WalFsyncError, WalPoisoned, WalWriteError
from daemon.wal.format import iter_frames_in
from daemon.wire.client import (ADMIN_OPS, BATCH_OP, WRITE_OPS, Err, ProtocolError, Request, WatchRecord, batch_reply,
                                error_reply, ok_reply, validate_write, watch_reply)
from daemon.wire.replication import FetchSnapshot, Refuse, RepairData, SnapshotChunk, encode

Action = Union[Reply, ServeRead, SendChunk, SendControl, StepDown, CheckPeers, Confirmed, AppendRepair,
               RepairRefused, CompareOwn, Heard, Answer, ServeWatch, SendSnapshot]
_EMPTY_CHUNK_LOG = Limited(burst=10)


# The first envelope frame of a batch's writes inside the leader: their replies are collected into one (never a
# ROUTER identity: those never start with a zero byte). The second frame is the batch's token.
BATCH_MARK = b"\x00zwal-batch"


@dataclass(slots=True)
class BatchReplies:
    """A `batch` request on its way: the client's envelope, its id, its writes' ids, the replies so far."""
    envelope: list[bytes]
    rid: int
    ids: list[int]
    results: dict[int, dict[str, Any]]


@dataclass(slots=True)
class Handoff:
    to: str
    envelope: list[bytes]
    rid: int
    t0: float
    deadline: float


class LeaderRole:
    def __init__(self, host: Host) -> None:
        self.host = host
        cfg = host.cfg
        self.cfg = cfg
        batch_records = 1 if cfg.fsync_mode == "per-record" else cfg.batch_max_records
        self.core = LeaderCore(
            name=host.name,
            epoch=host.state.epoch,
            end=host.log.end,
            kv=host.kv,
            history=host.state.history,
            followers=[n for n in cfg.names if n != host.name],
            ack_replicas=cfg.ack_replicas,
            replication_timeout=cfg.replication_timeout,
            heartbeat_interval=cfg.heartbeat_interval,
            max_uncommitted_bytes=cfg.max_uncommitted_bytes,
            batch_max_records=batch_records,
            batch_max_bytes=cfg.batch_max_bytes,
            confirming=host.state.confirm_from is not None,
            incarnation=host.incarnation(),
            retry_budget_bytes=cfg.retry_budget_bytes,
            wall_clock=host.clock.wall,
            # -- Protocol-Aware Recovery of a cut tail (daemon/node/repair.py) --
            repair_max_bytes=min(cfg.fetch_max_bytes, REPAIR_MAX_BYTES),
            resume_at=host.state.resume_at,
            unheard=frozenset(host.state.unheard),
            damaged_end=host.state.damaged_end,
        )
        if self.core.confirming is not None:
            host.events.warn("confirming_log", end=host.log.end, cut_at=host.state.confirm_from,
                             followers_needed=self.core.confirm_need,
                             reason="recovery cut this leader's log, or it did not stop cleanly; no writes "
                                    "until followers show they hold nothing it lost")
        self.watches = Watches(host.client.budget)  # parked `watch` requests (daemon/node/watch.py)
        self.fsync_lat = LatencyWindow()
        self.batch_sizes = LatencyWindow()
        self.transition: Transition | None = None
        self._after_batch: list[Callable[[], None]] = []  # work waiting for the batch in flight
        self._in_sync: set[str] = set()
        self._hint_at = 0.0
        self._keys_seen = host.keys_generation
        self.stopping = False  # the driver is waiting out the batch in flight: start no other
        self._started = host.clock.now()
        self._fencing = False
        self._busy_since: float | None = None  # when the batch now in flight was handed to the disk
        self._short_since: float | None = None  # the first turn with fewer than K followers in sync
        self.fenced = 0  # replies withheld because the lease did not hold (docs/failover.md)
        self._handoff: Handoff | None = None  # a switchover under way (zwal promote NAME in etcd mode)
        self._batches: dict[bytes, BatchReplies] = {}  # `batch` requests whose writes are not all answered
        self._batch_tokens = itertools.count(1)

    # -- what the driver asks ---------------------------------------------------------

    def start(self) -> None:
        self.on_tick(self.host.clock.now())

    def accepting(self) -> bool:
        """Does the role take input now? Not while work waits for the batch in flight."""
        return not self._after_batch

    def wants_clients(self) -> bool:
        """Read more client requests now? Not past a full open batch: they wait in the socket."""
        return not self._after_batch and not self.core.batch_full()

    def next_deadline(self, now: float) -> float:
        t = min(self.core.next_deadline(now), self.host.peers.next_at)
        coord = self.host.coord
        if coord.enabled:
            lease = coord.lease
            t = min(t, lease.deadline if lease.held else self._started + coord.ttl)
        w = self.watches.next_deadline()
        return t if w is None else min(t, w)

    def on_tick(self, now: float) -> None:
        """The end of a turn: drop what revoked keys left parked, start a batch, heed the peers, the core's timers."""
        host = self.host
        if host.keys_generation != self._keys_seen:
            # First: the batch started below may complete at once (inline),
            # and must find no parked fetch of a revoked key to answer.
            self._keys_seen = host.keys_generation
            allowed = host.node_keys()
            if allowed is not None:
                self.core.revoke(set(self.cfg.names) - allowed)
        host.peers.maybe_send(now, self.core.epoch)
        self._maybe_start_batch()
        self._check_peers()
        self._check_lease(now)
        if self.transition is not None:
            return
        self._beat(now)
        self._handoff_step(now)
        self._perform(self.core.tick(now))
        self._wake_watches()
        self._perform(self.watches.tick(now, self.core.commit, self.core.epoch))
        self._log_follower_changes(now)
        # The leader's KV state holds exactly the committed records (applied at commit).
        host.snapshots.step(host.kv, self.core.commit, host.log, now, acked_floor=self.core.retention_floor(now))

    # -- the lease (daemon/failover/lease.py) ------------------------------------------------

    def _check_lease(self, now: float) -> None:
        """Patroni's rule: a leader that cannot prove its lease steps down (it has stopped answering already)."""
        coord = self.host.coord
        if not coord.enabled or self.transition is not None:
            return
        if coord.lease.held and not coord.lease.valid(now):
            self._self_fence("the leader lease ran out before etcd renewed it")
        elif not coord.lease.held and now >= self._started + coord.ttl:
            self._self_fence(f"no leader lease within lease_ttl ({coord.ttl:g} s) of leading")

    def _beat(self, now: float) -> None:
        """Tell the coordinator this loop turned, and whether this leader is fit to keep its lease: not with
        a batch stuck on its way to disk, nor cut off from the K followers a commit needs (a leader in
        that state keeps the lease from a node that could lead; docs/failover.md, "A leader that is stuck")."""
        coord = self.host.coord
        if not coord.enabled:
            return
        from daemon.failover import lease as rules

        if not self.host.log.busy:
            self._busy_since = None
        core = self.core
        short = core.k > 0 and core.in_sync(now) < core.k
        # Only when the other nodes could elect a leader that does better: this one reaches no majority (itself
        # and its in-sync followers), and the others are one. A cluster that is short of followers everywhere
        # (K = 2 with one of 3 down; 2 nodes, one down) keeps its leader: handing the lease on would only flap.
        n = len(self.cfg.names)
        short = short and 1 + core.in_sync(now) < n // 2 + 1 <= n - 1
        self._short_since = (self._short_since if self._short_since is not None else now) if short else None
        problem = None
        if self._busy_since is not None and now - self._busy_since > rules.usable(coord.ttl):
            problem = f"a batch has been on its way to disk for {now - self._busy_since:.2f} s"
        elif self._short_since is not None and now - self._short_since > rules.stuck_commit_s(coord.ttl):
            problem = (f"only {core.in_sync(now)} follower(s) in sync for {now - self._short_since:.1f} s, "
                       f"ack_replicas = {core.k}: this leader cannot commit")
        coord.heartbeat(now, problem)

    # -- a batch of writes (docs/protocol.md, "batch") ------------------------------------------

    def _admit_batch(self, envelope: list[bytes], req: Request, now: float) -> None:
        """Every write of the batch is checked first (bad input changes nothing), then each is admitted as if
        it came alone, under the batch's client id; their replies come back through _batch_part."""
        host, core = self.host, self.core
        writes = req.writes or []
        recs = []
        for i, w in enumerate(writes):
            try:
                recs.append(validate_write(w))
            except ProtocolError as e:
                core.counters.error(e.code)
                host.client.send([*envelope, error_reply(req.id, e.code, f"writes[{i}]: {e}; nothing was written",
                                                         written=False)])
                return
        token = next(self._batch_tokens).to_bytes(8, "big")
        self._batches[token] = BatchReplies(envelope, req.id, [w.id for w in writes], {})
        marker = [BATCH_MARK, token]
        for w, rec in zip(writes, recs):
            self._perform(core.admit_write(w, marker, now, rec))

    def _batch_part(self, token: bytes, body: bytes) -> None:
        b = self._batches.get(token)
        if b is None:
            return
        r = msgpack.unpackb(body, raw=False)
        b.results[r["id"]] = r
        if len(b.results) == len(b.ids):
            del self._batches[token]
            self.host.client.send([*b.envelope, batch_reply(b.rid, [b.results[i] for i in b.ids])])

    # -- a switchover (etcd mode; docs/failover.md, "Switchover") --------------------------------

    def _handoff_begin(self, envelope: list[bytes], req: Request, now: float) -> None:
        """`zwal promote NAME` in etcd mode: stop taking writes, wait until NAME holds all of this log, then put
        the handoff in etcd and give the lease up; the election then picks NAME if the copies allow it."""
        host, core = self.host, self.core
        args = req.args or {}
        to, timeout = args.get("to"), args.get("timeout", 10.0)

        def refuse(msg: str) -> None:
            host.events.warn("admin_refused", op=req.op, code=Err.REFUSED, reason=msg)
            host.client.send([*envelope, error_reply(req.id, Err.REFUSED, msg)])

        if not host.coord.enabled:
            return refuse(f"{host.name}'s cluster fails over by 'zwal promote' (fence and promote), not through "
                          "etcd: there is no lease to hand off")
        if type(timeout) not in (int, float) or not 0.1 <= timeout <= 600:
            return refuse("args.timeout must be a number of seconds in 0.1..600")
        if to == host.name:
            return refuse(f"{host.name} already leads epoch {core.epoch}")
        if not isinstance(to, str) or to not in core.followers:
            return refuse(f"{to!r} is not a follower of {host.name} (nodes: {', '.join(self.cfg.names)})")
        if self._handoff is not None:
            return refuse(f"a handoff to {self._handoff.to} is already under way")
        if self._fencing or not self._lease_holds():
            return refuse(f"{host.name} does not hold its lease now; the election picks the leader")
        f = core.followers[to]
        if now - f.last_seen > core.timeout:
            return refuse(f"{to} is not in sync with {host.name} (last heard {now - f.last_seen:.1f} s ago); "
                          "nothing changed. 'zwal status' shows when it is, then retry")
        self._handoff = Handoff(to, envelope, req.id, now, now + float(timeout))
        host.events.event("handoff_started", epoch=core.epoch, to=to, end=core.end, acked=f.acked,
                          reason="writes wait until it holds all of this log")

    def _handoff_step(self, now: float) -> None:
        h = self._handoff
        if h is None:
            return
        host, core = self.host, self.core
        f = core.followers[h.to]
        caught_up = (f.acked >= core.end and core.commit >= core.end and not core.batch and not host.log.busy
                     and now - f.last_seen <= core.timeout)
        if caught_up and self._lease_holds():
            self._handoff = None
            reason = f"handed the leadership to {h.to}"
            host.events.event("handoff", epoch=core.epoch, to=h.to, end=core.end, seconds=round(now - h.t0, 3))
            host.coord.hand_off(h.to, core.epoch, reason)  # the main loop's lease ends first: no ok after this
            host.client.send([*h.envelope, ok_reply(h.rid, to=h.to, end=core.end, epoch=core.epoch,
                                                    **{"from": host.name})])
            self._step_down(core.epoch, None, reason)
        elif now >= h.deadline or not self._lease_holds():
            self._handoff = None
            msg = (f"{h.to} did not hold all of {host.name}'s log within {now - h.t0:.1f} s (acknowledged "
                   f"{f.acked} of {core.end}); nothing changed, {host.name} leads on")
            host.events.warn("handoff_abandoned", epoch=core.epoch, to=h.to, reason=msg)
            host.client.send([*h.envelope, error_reply(h.rid, Err.REFUSED, msg)])

    def _self_fence(self, reason: str) -> None:
        if self._fencing:
            return  # once: the step-down waits for the batch in flight
        self._fencing = True
        self.host.events.error("self_fenced", epoch=self.core.epoch, reason=reason,
                               action="nothing: the election picks a leader (zwal status shows it)")
        self.host.coord.release(reason, self_fence=True)
        self._step_down(self.core.epoch, None, reason, loud=True)

    def on_coordinator(self, ev: Any) -> None:
        from daemon.failover.coordinator import LeaderIs, LeaseGone, LeaseProven, Won

        match ev:
            case LeaseGone():
                if ev.epoch == self.core.epoch:
                    self._self_fence(ev.reason)
            case LeaseProven() | Won() | LeaderIs():
                pass
            case _:
                raise AssertionError(ev)

    def _lease_holds(self) -> bool:
        return self.host.coord.lease_ok(self.host.clock.now())

    def on_peer_status(self) -> None:
        self._check_peers()

    def on_leader(self, frames: list[bytes]) -> None:
        """A leader follows no one (its node has no leader link)."""

    def on_shutdown(self) -> Transition:
        """SIGTERM, after the driver let the batch in flight finish: tell waiters, stop."""
        self._fail_all(Err.SHUTTING_DOWN, f"{self.host.name} is shutting down; retry with the same request id")
        return Transition(None, "shutdown")

    def _fail_all(self, code: str, message: str) -> None:
        self._perform(self.core.fail_all(code, message))
        self._perform(self.watches.fail_all(code, message))

    # -- clients ------------------------------------------------------------------------

    def on_client(self, frames: list[bytes], who: Sender) -> None:
        host, core = self.host, self.core
        now = host.clock.now()
        decoded = decode_client(host.client, frames, core.counters, who, self.cfg.cluster_id, host.events, now)
        if decoded is None:
            return
        envelope, req = decoded
        if req.op == SNAPSHOT_OP:
            host.snapshots.request(host.client, envelope, req.id, host.kv)
            return
        if req.op == epochs.HANDOFF and self.transition is None:
            self._handoff_begin(envelope, req, now)
            return
        if req.op in ADMIN_OPS:
            # The batch in flight lands (or fails) first, so every client is
            # told the truth about `written` before the role changes.
            self._finish_in_flight(lambda: self._admin(envelope, req))
            return
        if req.epoch > core.epoch and now >= self._hint_at:
            # A client's epoch is a hint, never a command: ask the peers now;
            # a peer that holds the epoch makes us step down.
            self._hint_at = now + self.cfg.peer_probe_interval
            host.peers.ask_now()
        if self.transition is not None:
            host.client.send([*envelope, answers.not_leader(host, req.id)])
            return
        if req.op == BATCH_OP:
            if self._handoff is not None:
                host.client.send([*envelope, error_reply(
                    req.id, Err.NOT_LEADER, f"{host.name} is handing the leadership to {self._handoff.to}; retry "
                    "there shortly", leader=None, leader_endpoint=None, epoch=core.epoch)])
            else:
                self._admit_batch(envelope, req, now)
            return
        if req.op in WRITE_OPS and self._handoff is not None:
            host.client.send([*envelope, error_reply(
                req.id, Err.NOT_LEADER, f"{host.name} is handing the leadership to {self._handoff.to}; retry there "
                "shortly", leader=None, leader_endpoint=None, epoch=core.epoch)])
        elif req.op in WRITE_OPS:
            self._perform(core.admit_write(req, envelope, now))
        elif req.op == "status":
            host.client.send([*envelope, ok_reply(req.id, status=self._status(now))])
        elif req.op == "get":
            self._perform(core.admit_read(req, envelope, now))
        elif req.op == "watch":
            log = host.log
            self._perform(self.watches.admit(
                req, envelope, now, commit=core.commit, end=core.end, oldest=log.oldest,
                snapshot=host.snapshots.newest or None, epoch=core.epoch, waiting=host.client.waiting(envelope[0]),
                boundary=self._boundary))
        else:
            host.client.send([*envelope, answers.read_reply(host, req, stale=False)])

    def _admin(self, envelope: list[bytes], req: Request) -> None:
        body, t = answers.admin(self.host, req, self.transition)
        self.host.client.send([*envelope, body])
        if t is not None and self.transition is None:
            self._fail_all(Err.NOT_LEADER, f"{self.host.name} stopped leading: {t.reason}")
            self.transition = t

    # -- the disk -------------------------------------------------------------------------

    def _maybe_start_batch(self) -> None:
        if (self.core.batch and not self.host.log.busy and self.transition is None and not self._after_batch
                and not self.stopping):
            frames = self.core.take_batch()
            # The batch's own start: under steady load the next batch starts as this one lands, and a
            # clock kept from the first busy turn would call a healthy disk stuck (review, 2026-12-04).
            self._busy_since = self.host.clock.now()
            self.host.log.append(b"".join(frames), len(frames), self.on_batch_done)

    def on_batch_done(self, r: SyncResult) -> None:
        e = r.error
        if e is None:
            self.fsync_lat.add(r.fsync_s)
            self.batch_sizes.add(r.records)
            self.host.batch_metrics(r.records, r.nbytes, r.append_s, r.fsync_s)
            self._perform(self.core.batch_durable(r.end, self.host.clock.now()))
            self._wake_watches()
        elif isinstance(e, WalWriteError):
            code = Err.NO_SPACE if e.no_space else Err.WRITE_FAILED
            self.host.events.error("batch_failed", code=code, records=r.records, error=str(e))
            self._perform(self.core.batch_failed(code, str(e)))
        elif isinstance(e, (WalFsyncError, WalPoisoned)):
            # PostgreSQL's rule: never retry an fsync. Fail the batch, stop
            # writing, exit non-zero; recovery on restart re-reads the file.
            self._perform(self.core.batch_failed(Err.FSYNC_FAILED, str(e)))
            raise FsyncFailure(str(e)) from None
        else:
            raise e
        waiting, self._after_batch = self._after_batch, []
        for then in waiting:
            then()
        if not self._after_batch:
            self._maybe_start_batch()

    def _finish_in_flight(self, then: Callable[[], None]) -> None:
        """Run `then` once the batch on its way to disk has landed, and start no other meanwhile."""
        if self.host.log.busy or self._after_batch:
            self._after_batch.append(then)
        else:
            then()

    def _step_down(self, epoch: int, leader: str | None, reason: str, loud: bool = False) -> None:
        if self.transition is not None:
            return

        def go() -> None:
            if self.transition is not None:
                return
            (self.host.events.error if loud else self.host.events.warn)(
                "stepping_down", epoch=self.core.epoch, new_epoch=epoch, new_leader=leader, reason=reason)
            self._fail_all(Err.NOT_LEADER, f"{self.host.name} stepped down: epoch {epoch} exists ({reason})")
            st = self.host.state.follower_of(epoch, leader)
            self.host.save_state(st)
            self.transition = Transition(st, reason, reload=True)

        self._finish_in_flight(go)

    def _check_peers(self) -> None:
        view = self.host.peers.view
        newer = view.newer_epoch(self.core.epoch)
        if newer is not None:
            self._step_down(newer[0], newer[1], f"a peer reports epoch {newer[0]}")
            return
        rival = view.leader_at(self.core.epoch, exact=True)
        if rival is not None:
            # One leader per epoch is the rule every other rule rests on: stop
            # acknowledging at once and let an operator promote at a new epoch.
            self._step_down(self.core.epoch, None, f"{rival} also leads epoch {self.core.epoch}; "
                            "two leaders of one epoch: run 'zwal promote NAME' for the most advanced follower "
                            "('zwal status' shows each node's last_epoch and end)", loud=True)

    # -- followers ------------------------------------------------------------------------

    def on_fetch(self, frames: list[bytes], who: Sender) -> None:
        host = self.host
        now = host.clock.now()
        v = authorize_fetch(frames, who, self.cfg.names, self.cfg.cluster_id, self.core.counters, host.events, now,
                            repair_max=REPAIR_MAX_BYTES)
        if isinstance(v, Dropped):
            return
        if isinstance(v, RepairData):
            self._perform(self.core.on_repair(v, now))  # -- repair (daemon/node/repair.py)
            return
        if isinstance(v, OtherCluster):
            # A node of another cluster: never a follower here (it would be
            # told to truncate to our log). Refused; nothing changes.
            self._perform([SendControl(frames[:1], Refuse(0, f"this node leads cluster {v.ours}, "
                                                             f"not {v.theirs}: check the cluster file"))])
            return
        # -- snapshot transfer (daemon/node/transfer.py): what the core decides from --
        self.core.snap = host.snapshots.offer()
        self.core.oldest = host.log.oldest
        self.core.fetch_max = self.cfg.fetch_max_bytes
        if isinstance(v, FetchSnapshot):
            self._perform(self.core.on_fetch_snapshot(v, frames[:1], now))
            return
        self._perform(self.core.on_fetch(v, frames[:1], now))
        self._wake_watches()

    # -- watches (daemon/node/watch.py) ----------------------------------------------------

    def _wake_watches(self) -> None:
        if self.transition is None:
            self._perform(self.watches.committed(self.core.commit))

    def _boundary(self, offset: int) -> bool:
        """Does a whole, checksummed frame start at `offset` (below the end)?"""
        return any(True for _ in iter_frames_in(self.host.log.read_chunk(offset, self.core.end, 1), offset))

    def _serve_watch(self, a: ServeWatch) -> None:
        """Whole frames in [offset, upto) (upto: the commit point the core decided at), as records."""
        host, core = self.host, self.core
        if a.upto > core.commit:
            raise AssertionError(f"watch served to {a.upto}, past the commit point {core.commit}")
        data = host.log.read_chunk(a.offset, a.upto, a.max_bytes)
        records = []
        for fr in iter_frames_in(data, a.offset):
            rec = fr.record()
            records.append(WatchRecord(fr.offset, fr.end, fr.epoch, rec.op, rec.key, rec.value))
        if not records:
            host.client.send([*a.envelope, error_reply(
                a.request_id, Err.BAD_OFFSET, f"offset {a.offset} is not where a record starts: watch from 0, "
                "or from the `next` of a watch reply", commit=core.commit, end=core.end)])
            return
        body = watch_reply(a.request_id, records, records[-1].end, core.commit, core.epoch)
        if host.client.would_exceed(a.envelope[0], len(body)):
            host.client.send([*a.envelope, error_reply(
                a.request_id, Err.BUSY, f"{len(body)}-byte watch reply not sent: this connection has "
                f"{host.client.waiting(a.envelope[0])} bytes of unread replies; read them, then retry")])
            return
        host.client.send([*a.envelope, body])

    def _send_snapshot(self, a: SendSnapshot) -> None:
        host = self.host
        try:
            data = host.snapshots.port.read_at(a.offset, a.pos, a.n)
        except OSError as e:
            data, why = b"", str(e)
        else:
            why = f"read {len(data)} of {a.n} bytes"
        if len(data) != a.n:
            # Removed (KEEP) or cut short since it was described: the next fetch is offered the newest.
            host.events.warn("snapshot_chunk_not_sent", follower=a.follower, offset=a.offset, pos=a.pos, reason=why)
            host.repl.send(a.envelope, encode(Refuse(self.core.epoch, f"snapshot {a.offset} is unreadable here "
                                                                      f"({why}); fetch again")))
            return
        if a.pos == 0:
            host.events.event("snapshot_transfer_serving", follower=a.follower, offset=a.offset, bytes=a.size)
        host.repl.send(a.envelope, encode(SnapshotChunk(self.core.epoch, host.name, a.offset, a.crc, a.pos, a.size,
                                                        data)))

    def _send_chunk(self, a: SendChunk) -> None:
        host, core = self.host, self.core
        if a.offset < host.log.oldest:
            # Retention deleted the segments this follower still needs (it was
            # away, or this node pruned its log as a follower before it led).
            self.core.counters.error("below_oldest")
            _EMPTY_CHUNK_LOG.warn(host.events, host.clock.now(), "fetch_below_oldest_refused", error=True,
                                  follower=a.follower, offset=a.offset, oldest=host.log.oldest,
                                  action=f"{a.follower} needs records this leader no longer keeps: rebuild it "
                                         "(move its data directory aside and start it)")
            host.repl.send(a.envelope, encode(Refuse(core.epoch, f"offset {a.offset} is below the oldest offset "
                                                                 f"{host.log.oldest} the leader keeps")))
            return
        data = host.log.read_chunk(a.offset, core.end, self.cfg.fetch_max_bytes)
        if not data:
            # Below our end there is always a whole frame to send, unless the
            # offset falls inside one: the follower's log is not a prefix of
            # ours. Sending b"" would have it ask again at once, forever.
            self.core.counters.error("empty_chunk")
            _EMPTY_CHUNK_LOG.warn(host.events, host.clock.now(), "empty_chunk_refused", error=True,
                                  follower=a.follower, offset=a.offset, end=core.end,
                                  action=f"{a.follower}'s log is not a prefix of this leader's at {a.offset}: "
                                         "rebuild it from the leader (move its data directory aside)")
            host.repl.send(a.envelope, encode(Refuse(core.epoch, f"offset {a.offset} is not a frame boundary "
                                                                 f"of the leader's log (end {core.end})")))
            return
        host.repl.send(a.envelope, encode(core.chunk_msg(a.offset, data)))

    def _perform(self, actions: list[Any]) -> None:
        host = self.host
        for a in actions:
            act: Action = a
            match act:
                case Reply():
                    body = act.body
                    if act.acked is not None and not self._lease_holds():
                        # Durable here, perhaps on K followers, but this leader cannot prove
                        # it still leads: the outcome is unknown, a retry finds it out.
                        self.fenced += 1
                        rid, offset = act.acked
                        body = error_reply(
                            rid, Err.NOT_LEADER, f"{host.name}'s leader lease ran out before the write was "
                            "acknowledged; retry with the same request id", written=True, offset=offset)
                    if act.envelope[0] == BATCH_MARK:
                        self._batch_part(act.envelope[1], body)
                    else:
                        host.client.send([*act.envelope, body])
                case ServeRead():
                    if not self._lease_holds():
                        self.fenced += 1
                        host.client.send([*act.envelope, answers.not_leader(host, act.request.id)])
                        continue
                    host.client.send([*act.envelope, answers.read_reply(host, act.request, stale=False,
                                                                        linearizable=act.linearizable,
                                                                        envelope=act.envelope)])
                case SendChunk():
                    self._send_chunk(act)
                case SendSnapshot():
                    self._send_snapshot(act)
                case SendControl():
                    host.repl.send(act.envelope, encode(act.msg))
                case StepDown():
                    self._step_down(act.epoch, act.leader, act.reason, act.loud)
                case CheckPeers():
                    now = host.clock.now()
                    if now >= self._hint_at:
                        self._hint_at = now + self.cfg.peer_probe_interval
                        host.events.event("checking_peers", reason=act.reason)
                        host.peers.ask_now()
                case Confirmed():
                    host.events.event("log_confirmed", end=self.core.end, followers=",".join(act.followers),
                                      unheard=",".join(act.unheard) or "-")
                    host.save_state(host.state.with_(confirm_from=None, resume_at=act.end if act.unheard else None,
                                                     unheard=list(act.unheard)))
                # -- Protocol-Aware Recovery of a cut tail (daemon/node/repair.py) --
                case AppendRepair():
                    self._finish_in_flight(partial(self._append_repair, act))
                case RepairRefused():
                    host.events.warn("repair_refused", follower=act.source, reason=act.reason, end=self.core.end)
                case CompareOwn():
                    n = max(0, min(len(act.data), self.core.end - act.offset))
                    self.core.compared(act.follower, act.offset, act.data, host.log.read_raw(act.offset, n))
                case Answer():
                    host.client.send([*act.envelope, act.body])
                case ServeWatch():
                    self._serve_watch(act)
                case Heard():
                    left = [n for n in host.state.unheard if n != act.follower]
                    host.save_state(host.state.with_(unheard=left, resume_at=host.state.resume_at if left else None))
                case _:
                    assert_never(act)

    def _append_repair(self, a: AppendRepair) -> None:
        """Append frames of our epoch copied back from a follower (checked by the core); once durable, tell the core."""
        host = self.host
        st = host.state.before_append(host.log.end, [])
        if st is not None:
            host.save_state(st)

        def done(r: SyncResult) -> None:
            e = r.error
            if isinstance(e, (WalFsyncError, WalPoisoned)):
                raise FsyncFailure(str(e)) from None
            if isinstance(e, WalWriteError):
                host.events.error("repair_append_failed", offset=a.offset, bytes=len(a.data), error=str(e))
                self.core.repair_failed()
                return
            if e is not None:
                raise e
            host.events.event("repaired_from_follower", follower=a.source, offset=a.offset, end=r.end,
                              records=a.records)
            after = host.state.after_append(r.end)
            if after is not None:
                host.events.event("damage_repaired", end=r.end,
                                  reason="the log reached its end before recovery cut it again")
                host.save_state(after)
            self._perform(self.core.repaired(r.end, host.clock.now()))

        self._busy_since = host.clock.now()
        host.log.append(a.data, a.records, done)

    def _log_follower_changes(self, now: float) -> None:
        """One line when a follower starts or stops fetching: what an operator greps for."""
        for f in self.core.follower_status(now):
            name, ok = f["name"], f["in_sync"]
            if ok and name not in self._in_sync:
                self._in_sync.add(name)
                self.host.events.event("follower_connected", follower=name, acked=f["acked"],
                                       lag_bytes=f["lag_bytes"])
            elif not ok and name in self._in_sync:
                self._in_sync.discard(name)
                self.host.events.warn("follower_disconnected", follower=name, acked=f["acked"],
                                      silent_seconds=f["seconds_since_ack"], lag_bytes=f["lag_bytes"])

    def snapshot(self) -> dict[str, Any]:
        c = self.core.counters
        return {"role": "leader", "epoch": self.core.epoch, "end": self.core.end, "commit": self.core.commit,
                "records": self.host.kv.records, "acked": c.acked, "errors": dict(c.errors),
                "followers": self.core.follower_status(self.host.clock.now())}

    def _status(self, now: float) -> dict[str, Any]:
        c = self.core.counters
        return answers.status(self.host, {
            "commit": self.core.commit,
            "ack_replicas": self.core.k,
            "fsync_mode": self.cfg.fsync_mode,
            "followers": self.core.follower_status(now),
            "counters": {
                "appends": c.appends, "batches": c.batches, "bad_requests": c.bad_requests,
                "dedup_hits": c.dedup_hits, "retry_conflicts": c.retry_conflicts, "reads": c.reads,
                "read_rounds": self.core.round, "errors": dict(c.errors),
                "batch_size": self.batch_sizes.summary(),
                "fsync_seconds": self.fsync_lat.summary(),
            },
        })
