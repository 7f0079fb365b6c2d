"""A simulated zwal node: a disk, a node-state file and the role glue around the real cores.

The glue mirrors daemon/node/node.py (open_log, admin, status, read_reply),
daemon/node/leader.py (LeaderRole) and follower/role.py (FollowerRole), with
sockets, files and threads replaced by the simulated network and disk. The
decisions are all made by the real code: LeaderCore, FollowerCore,
daemon.node.epochs, the wire codecs, scan_buffer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgpack

from daemon.node import epochs
from daemon.node.identity import FOLLOWER, LEADER, NodeState
from daemon.node.kv import KVState, Placed
from daemon.node.leader_core import (CheckPeers, Confirmed, InvariantViolation, LeaderCore, Reply, SendChunk,
                                     SendControl, ServeRead, StepDown)
from daemon.node.epochs import may_follow
from daemon.node.peers import PeerProbe
from daemon.wal.format import MAX_FRAME, frame_sizes
from daemon.wal.reader import CORRUPT, TORN, scan_buffer
from daemon.wire.client import (ADMIN_OPS, WRITE_OPS, Err, ProtocolError, Request, decode_request, error_reply,
                                ok_reply)
from daemon.wire.replication import (BadMessage, NotLeader, RepairData, RepairRequest, decode_fetch,
                                     decode_from_leader, decode_to_leader, encode, encode_fetch, encode_repair_data)
from daemon.node.leader_core import AppendRepair, CompareOwn, Heard, RepairRefused
from daemon.node.repair import REPAIR_MAX_BYTES, repair_reply
from follower.core import AdoptEpoch, Append, FollowerCore, Redirect, Refetch, Truncate

from .world import Disk

if TYPE_CHECKING:
    from .cluster import Sim


# -- messages on the simulated network ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToClientSock:
    """A request to a node's client socket (ROUTER): identity + msgpack body."""

    ident: bytes
    body: bytes

    def describe(self) -> str:
        m = msgpack.unpackb(self.body, raw=False)
        extra = " ".join(f"{k}={m[k]!r}" for k in ("key", "value", "epoch", "args") if m.get(k))
        return f"req {m.get('op')} id={m.get('id')} {extra}".rstrip()


@dataclass(frozen=True, slots=True)
class ClientReply:
    ident: bytes
    body: bytes

    def describe(self) -> str:
        m = msgpack.unpackb(self.body, raw=False)
        if m.get("ok"):
            keep = {k: v for k, v in m.items() if k in ("offset", "end", "epoch", "value", "found", "linearizable")}
            if "status" in m:
                s = m["status"]
                keep = {k: s.get(k) for k in ("role", "epoch", "end", "last_epoch", "leader")}
            return f"ok id={m.get('id')} {keep}"
        return f"err id={m.get('id')} {m.get('error')} written={m.get('written')} {str(m.get('message'))[:70]}"


@dataclass(frozen=True, slots=True)
class ToReplSock:
    """A fetch to a node's replication socket (ROUTER)."""

    frames: list[bytes]

    def describe(self) -> str:
        try:
            f = decode_to_leader(self.frames, 1 << 30)
            if isinstance(f, RepairData):
                return f"repair_data off={f.offset} ep={f.epoch} bytes={len(f.data)}"
            return f"fetch off={f.offset} ep={f.epoch} last_ep={f.last_epoch} round={f.round}"
        except BadMessage as e:
            return f"fetch (bad: {e})"


@dataclass(frozen=True, slots=True)
class ToDealer:
    """A leader's message to a follower's DEALER (identified by its connection)."""

    ident: bytes
    frames: list[bytes]

    def describe(self) -> str:
        try:
            m = decode_from_leader(self.frames)
        except BadMessage as e:
            return f"bad {e}"
        d = {k: getattr(m, k) for k in m.__slots__ if k != "data"}  # type: ignore[attr-defined]
        if getattr(m, "data", None):
            d["bytes"] = len(m.data)  # type: ignore[union-attr]
        return f"{type(m).__name__} {d}"


class Refused(Exception):
    """Recovery found corruption: the node refuses to start (daemon/wal/recovery.py LogCorrupt)."""


@dataclass
class Transition:
    state: NodeState | None
    reason: str
    reload: bool = True


class SimProbe:
    """daemon/node/peers.py PeerProbe with the simulated network; its decisions are the real methods."""

    newer_epoch = PeerProbe.newer_epoch
    leader_at = PeerProbe.leader_at

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.interval = node.sim.cfg.peer_probe_interval
        self.next_at = 0.0
        self.latest: dict[str, dict[str, Any]] = {}
        self.tag = node.w.next_id()
        self._ids = 0

    def maybe_send(self, now: float, my_epoch: int) -> None:
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        self._ids += 1
        body = msgpack.packb({"id": self._ids, "op": "status", "epoch": my_epoch})
        for p in self.node.sim.names:
            if p != self.node.name:
                self.node.send(p, ToClientSock(f"p:{self.node.name}:{self.tag}".encode(), body))

    def read(self, src: str, body: bytes) -> None:
        try:
            st = msgpack.unpackb(body, raw=False)["status"]
            if isinstance(st.get("epoch"), int) and isinstance(st.get("role"), str):
                self.latest[src] = st
        except Exception:
            pass


# -- the node -------------------------------------------------------------------------------


class SimNode:
    def __init__(self, sim: "Sim", name: str) -> None:
        self.sim = sim
        self.w = sim.world
        self.name = name
        self.cfg = sim.cfg
        self.disk = Disk()
        # node-state.json: saved atomically, so it is always durable.
        if name == sim.names[0]:
            self.stored = NodeState(LEADER, 1, name, [(1, 0)], led_epoch=1, voted_for=name)
        else:
            self.stored = NodeState(FOLLOWER, 1, sim.names[0], [], voted_for=sim.names[0])
        self.state = self.stored.with_()
        self.up = False
        self.refused: str | None = None
        self.inc = 0  # process incarnation: timers of a dead process never fire
        self.paused = False
        self.blocked = False  # the loop waits on the disk (inline write + fsync)
        self.stash: deque[tuple[Callable[..., Any], tuple[Any, ...], bool]] = deque()
        self.role: SimLeader | SimFollower | None = None
        self.kv = KVState()
        self.end = 0
        self.fail_fsync = False
        self.internal_errors = 0
        self.w.net.handlers[name] = self.on_net

    # -- process lifecycle ----------------------------------------------------------

    def log(self, what: str) -> None:
        self.w.log(self.name, what)

    def start(self) -> None:
        self.inc += 1
        self.up, self.paused, self.blocked = True, False, False
        self.stash.clear()
        self.state = self.stored.with_()
        self.role = None
        self.log(f"start ({self.state.role} epoch={self.state.epoch} leader={self.state.leader})")
        try:
            self.open_log()
        except Refused as e:
            self._refuse(str(e))
            return
        self._start_role()
        self._after_event()

    def _refuse(self, why: str) -> None:
        self.up = False
        self.inc += 1
        self.role = None
        self.refused = why
        self.log(f"REFUSES TO START: {why}")

    def crash(self, why: str, lose_unsynced: bool = False) -> None:
        if not self.up:
            return
        self.up = False
        self.inc += 1
        self.role = None
        self.stash.clear()
        note = self.disk.crash(self.w.rng, lose_unsynced)
        self.log(f"CRASH ({why}); disk: {note}, durable end {len(self.disk.durable)}")

    def pause(self) -> None:
        if self.up and not self.paused:
            self.paused = True
            self.log("pause")

    def resume(self) -> None:
        if self.up and self.paused:
            self.paused = False
            self.log("resume")
            self._drain_stash()

    # -- events: everything that reaches the process goes through post() ----------------

    def post(self, fn: Callable[..., Any], *args: Any, system: bool = False) -> None:
        if not self.up:
            return
        if self.paused or ((self.blocked or self.stash) and not system):
            self.stash.append((fn, args, system))
            return
        self._run(fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], turn: bool = True) -> None:
        inc = self.inc
        try:
            fn(*args)
            if not turn:
                return
        except InvariantViolation as e:
            # The real node logs internal_error and exits; the supervisor restarts it.
            self.internal_errors += 1
            self.sim.stats["internal_errors"] += 1
            self.crash(f"internal_error: InvariantViolation: {e}")
            self.sim.schedule_restart(self)
            return
        if self.up and self.inc == inc:
            self._after_event()

    def _drain_stash(self) -> None:
        # Everything that queued while the loop was busy is read in one turn
        # (the leader drains its sockets before it starts the next batch).
        inc = self.inc
        ran = False
        while self.stash and self.up and self.inc == inc and not self.paused and not self.blocked:
            fn, args, _ = self.stash.popleft()
            self._run(fn, args, turn=False)
            ran = True
        if ran and self.up and self.inc == inc:
            self._run(lambda: None, ())

    def unblock(self) -> None:
        self.blocked = False
        self._drain_stash()

    def timer(self, delay: float, fn: Callable[..., Any], *args: Any, system: bool = False) -> None:
        self.w.after(delay, self._timer, self.inc, fn, args, system)

    def _timer(self, inc: int, fn: Callable[..., Any], args: tuple[Any, ...], system: bool) -> None:
        if inc == self.inc:
            self.post(fn, *args, system=system)

    def on_net(self, src: str, msg: Any) -> None:
        self.post(self._recv, src, msg)

    def _recv(self, src: str, msg: Any) -> None:
        if self.role is not None:
            self.role.recv(src, msg)

    def _after_event(self) -> None:
        """The rest of a loop turn, then any role change (node.py Node.run)."""
        for _ in range(20):
            r = self.role
            if r is None or not self.up:
                return
            if r.transition is None:
                r.turn()
            if not self.up or self.role is not r or r.transition is None:
                return
            t = r.transition
            self.log(f"role change: {t.reason} -> {t.state.role if t.state else None}")
            if t.state is not None and t.state != self.state:
                self.save_state(t.state)
            if t.reload:
                try:
                    self.open_log()
                except Refused as e:
                    self._refuse(str(e))
                    return
            self._start_role()
            # Requests still queued in the client socket meet the next role.
            for m in getattr(r, "backlog", ()):
                self.role.recv("", m)  # type: ignore[union-attr]
        raise AssertionError("role changes do not settle")

    def _start_role(self) -> None:
        if self.state.role == LEADER:
            self.sim.note_leader(self.state.epoch, self.name)
            self.role = SimLeader(self)
        else:
            self.role = SimFollower(self)
        self.log(f"role {self.state.role} epoch={self.state.epoch} leader={self.state.leader} end={self.end} "
                 f"history={self.state.history}" + (f" confirm_from={self.state.confirm_from}"
                                                    if self.state.confirm_from is not None else ""))

    # -- sending ------------------------------------------------------------------------

    def send(self, dst: str, msg: Any) -> None:
        self.w.log(self.name, f"-> {dst}", msg)
        self.w.net.send(self.name, dst, msg)

    def reply(self, envelope: list[bytes], body: bytes) -> None:
        """To whoever sent a request on the client socket: an actor, or a peer's probe."""
        kind, who, _ = envelope[0].decode().split(":")
        m = msgpack.unpackb(body, raw=False)
        if m.get("ok") and "end" in m and "offset" in m and "found" not in m:
            self.sim.inv.on_write_ack(self, m)
        self.send(who, ClientReply(envelope[0], body))

    def send_repl(self, envelope: list[bytes], frames: list[bytes]) -> None:
        _, who, _ = envelope[0].decode().split(":")
        self.send(who, ToDealer(envelope[0], frames))

    # -- node.py: the log, the state file, requests every role answers alike -------------

    def save_state(self, st: NodeState) -> None:
        self.state = st
        self.stored = st.with_()

    def open_log(self) -> None:
        kv = KVState()
        scan = scan_buffer(bytes(self.disk.cache), on_frame=kv.apply_frame)
        if scan.status == CORRUPT:
            raise Refused(scan.describe())
        if scan.status == TORN:
            self.log(f"recovery: {scan.describe()}; cut")
            self.save_state(self.state.recovered(scan))  # as Node.open_log's before_cut: the marks first
            self.disk.truncate(scan.valid_end)
            self.sim.inv.on_cut(self, scan.valid_end)
        self.kv = kv
        self.end = scan.valid_end
        st = self.state.recovered(scan)
        if st != self.state:
            self.save_state(st)

    def last_log_epoch(self) -> int:
        last = 0
        for e, start in self.state.history:
            if start < self.end:
                last = e
        return last

    def decode_client(self, msg: ToClientSock) -> tuple[list[bytes], Request] | None:
        envelope = [msg.ident]
        try:
            return envelope, decode_request(msg.body)
        except ProtocolError as e:
            self.reply(envelope, error_reply(e.request_id, e.code, str(e)))
            return None

    def not_leader(self, req_id: int | None) -> bytes:
        leader = self.state.leader if self.state.leader != self.name else None
        return error_reply(req_id, Err.NOT_LEADER, f"{self.name} is a {self.state.role} (epoch {self.state.epoch})",
                           leader=leader, leader_endpoint=leader, epoch=self.state.epoch)

    def status(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        st: dict[str, Any] = {
            "name": self.name, "role": self.state.role, "epoch": self.state.epoch, "leader": self.state.leader,
            "end": self.end, "last_epoch": self.last_log_epoch(), "led_epoch": self.state.led_epoch, "damaged_end": self.state.damaged_end,
            "records": self.kv.records, "keys": len(self.kv.data), "pid": self.inc, "uptime": 0.0,
            "history": [list(h) for h in self.state.history],
        }
        if extra:
            st.update(extra)
        return st

    def read_reply(self, req: Request, stale: bool, linearizable: bool = False) -> bytes:
        if req.op == "ping":
            return ok_reply(req.id, name=self.name, role=self.state.role, epoch=self.state.epoch)
        v = self.kv.get(req.key)  # type: ignore[arg-type]
        return ok_reply(req.id, found=v is not None, value=v, offset=self.kv.end, stale=stale,
                        linearizable=linearizable and not stale, node=self.name, epoch=self.state.epoch,
                        leader_endpoint=self.state.leader if stale else None)

    def admin(self, req: Request) -> tuple[bytes, Transition | None]:
        d = epochs.decide(req.op, req.args or {}, self.state, self.name, frozenset(self.sim.names),
                          self.end, self.last_log_epoch())
        if isinstance(d, epochs.Refusal):
            return error_reply(req.id, d.code, d.message, **d.fields), None
        if d.state is not None:
            self.save_state(d.state)
        t = Transition(self.state, d.transition, reload=d.reload) if d.transition else None
        return ok_reply(req.id, **d.fields), t


# -- the leader role (daemon/node/leader.py) --------------------------------------------------


class SimLeader:
    def __init__(self, node: SimNode) -> None:
        self.node = node
        cfg = node.cfg
        self.core = LeaderCore(
            name=node.name, epoch=node.state.epoch, end=node.end, kv=node.kv, history=node.state.history,
            followers=[n for n in node.sim.names if n != node.name], ack_replicas=cfg.ack_replicas,
            replication_timeout=cfg.replication_timeout, heartbeat_interval=cfg.heartbeat_interval,
            max_uncommitted_bytes=cfg.max_uncommitted_bytes, batch_max_records=cfg.batch_max_records,
            batch_max_bytes=cfg.batch_max_bytes, confirming=node.state.confirm_from is not None,
            incarnation=node.w.rng.getrandbits(56),
            wall_clock=lambda: 1_700_000_000.0 + node.w.now,  # simulated time: the records (their ts) are the same on every run
            # -- Protocol-Aware Recovery of a cut tail (daemon/node/repair.py) --
            repair_max_bytes=min(cfg.fetch_max_bytes, REPAIR_MAX_BYTES), resume_at=node.state.resume_at,
            unheard=frozenset(node.state.unheard), damaged_end=node.state.damaged_end)
        self.probe = SimProbe(node)
        self.transition: Transition | None = None
        # (batch id, end after it, run inline) while a batch is on its way to disk
        self.busy: tuple[int, int, bool] | None = None
        self.waiting: list[Callable[[], None]] = []  # work behind _finish_in_flight
        self.backlog: deque[ToClientSock] = deque()
        self.hint_at = 0.0
        self.tick_at = float("inf")

    def recv(self, src: str, msg: Any) -> None:
        if isinstance(msg, ToClientSock):
            self.backlog.append(msg)
            self._drain_clients()
        elif isinstance(msg, ToReplSock):
            try:
                fetch = decode_to_leader(msg.frames, REPAIR_MAX_BYTES + MAX_FRAME)
            except BadMessage:
                return
            if isinstance(fetch, RepairData):
                self.perform(self.core.on_repair(fetch, self.node.w.now))
                return
            self.perform(self.core.on_fetch(fetch, msg.frames[:1], self.node.w.now))
        elif isinstance(msg, ClientReply) and msg.ident.decode().endswith(f":{self.probe.tag}"):
            self.probe.read(src, msg.body)

    def turn(self) -> None:
        node, core = self.node, self.core
        now = node.w.now
        self.probe.maybe_send(now, core.epoch)
        self._drain_clients()
        if core.batch and self.busy is None and self.transition is None and not node.blocked:
            self._start_batch()
        self._check_peers()
        if self.transition is not None:
            return
        self.perform(core.tick(now))
        wake = max(min(core.next_deadline(now), self.probe.next_at), now + 1e-4)
        if wake < self.tick_at or self.tick_at <= now:
            self.tick_at = wake
            node.timer(wake - now, self._on_tick)

    def _on_tick(self) -> None:
        if self.node.role is self and self.tick_at <= self.node.w.now:
            self.tick_at = float("inf")

    # -- clients (LeaderRole._drain_clients) --------------------------------------------

    def _drain_clients(self) -> None:
        node, core = self.node, self.core
        while self.backlog and not node.blocked and self.transition is None:
            if core.batch_full():
                return
            decoded = node.decode_client(self.backlog.popleft())
            if decoded is None:
                continue
            envelope, req = decoded
            now = node.w.now
            if req.op in ADMIN_OPS:
                self._finish_in_flight(lambda: self._admin(envelope, req))
                continue
            if req.epoch > core.epoch and now >= self.hint_at:
                self.hint_at = now + node.cfg.peer_probe_interval
                self.probe.next_at = 0.0
            if req.op in WRITE_OPS:
                self.perform(core.admit_write(req, envelope, now))
            elif req.op == "status":
                node.reply(envelope, ok_reply(req.id, status=node.status({"commit": core.commit})))
            elif req.op == "get":
                self.perform(core.admit_read(req, envelope, now))
            else:
                node.reply(envelope, node.read_reply(req, stale=False))

    def _admin(self, envelope: list[bytes], req: Request) -> None:
        body, t = self.node.admin(req)
        self.node.reply(envelope, body)
        if t is not None and self.transition is None:
            self.perform(self.core.fail_all(Err.NOT_LEADER, f"{self.node.name} stopped leading: {t.reason}"))
            self.transition = t

    # -- the disk (LeaderRole._start_batch / _batch_done, Syncer) -------------------------

    def _start_batch(self) -> None:
        node = self.node
        frames = self.core.take_batch()
        data = b"".join(frames)
        rng = node.w.rng
        if rng.random() < node.sim.p_enospc:
            node.log(f"batch of {len(frames)} records: write fails (ENOSPC), rolled back")
            self.perform(self.core.batch_failed(Err.NO_SPACE, "No space left on device"))
            return
        end = node.disk.write(data)
        bid = node.w.next_id()
        self.busy = (bid, end, len(frames) == 1)
        node.log(f"batch {bid}: {len(frames)} records, write {self.core.end}..{end}")
        lat = rng.uniform(0.0005, 0.004) + (rng.uniform(0.02, 0.2) if rng.random() < 0.03 else 0.0)
        lat = node.sim.disk_latency if node.sim.disk_latency is not None else lat
        if len(frames) == 1:
            node.blocked = True  # Syncer.run_inline: the loop itself writes and fsyncs
        node.timer(lat, self._batch_done, bid, system=True)

    def _batch_done(self, bid: int) -> None:
        node = self.node
        if node.role is not self or self.busy is None or self.busy[0] != bid:
            return
        _, end, _ = self.busy
        self.busy = None
        if node.fail_fsync:
            node.fail_fsync = False
            node.log(f"batch {bid}: FSYNC FAILS")
            self.perform(self.core.batch_failed(Err.FSYNC_FAILED, "fsync failed: EIO"))
            node.crash("fsync failed", lose_unsynced=True)
            node.sim.schedule_restart(node)
            return
        node.disk.fsync()
        node.end = end
        self.perform(self.core.batch_durable(end, node.w.now))
        # leader.py _batch_done starts the next batch at once, unless a
        # step-down or an admin op waits behind this one (_draining).
        if self.core.batch and self.busy is None and self.transition is None and not self.waiting:
            self._start_batch()
        waiting, self.waiting = self.waiting, []
        node.blocked = False
        for fn in waiting:
            fn()
        node.unblock()

    def _finish_in_flight(self, then: Callable[[], None]) -> None:
        if self.busy is None:
            then()
            return
        self.waiting.append(then)
        self.node.blocked = True

    # -- actions (LeaderRole._perform) ----------------------------------------------------

    def perform(self, actions: list[Any]) -> None:
        node, core = self.node, self.core
        for a in actions:
            if isinstance(a, Reply):
                node.reply(a.envelope, a.body)
            elif isinstance(a, ServeRead):
                if a.linearizable:
                    node.sim.inv.on_fresh_read(node, core)
                node.reply(a.envelope, node.read_reply(a.request, stale=False, linearizable=a.linearizable))
            elif isinstance(a, SendChunk):
                data = read_chunk(node.disk.cache, a.offset, core.end, node.cfg.fetch_max_bytes)
                node.send_repl(a.envelope, encode(core.chunk_msg(a.offset, data)))
            elif isinstance(a, SendControl):
                node.send_repl(a.envelope, encode(a.msg))
            elif isinstance(a, StepDown):
                self._step_down(a.epoch, a.leader, a.reason)
            elif isinstance(a, CheckPeers):
                if node.w.now >= self.hint_at:
                    self.hint_at = node.w.now + node.cfg.peer_probe_interval
                    self.probe.next_at = 0.0
            elif isinstance(a, Confirmed):
                node.log(f"log confirmed by {a.followers}, unheard {a.unheard}")
                node.save_state(node.state.with_(confirm_from=None, resume_at=a.end if a.unheard else None,
                                                 unheard=list(a.unheard)))
            # -- Protocol-Aware Recovery of a cut tail (daemon/node/repair.py) --
            elif isinstance(a, AppendRepair):
                st = node.state.before_append(node.end, [])
                if st is not None:
                    node.save_state(st)
                end = node.disk.write(a.data)
                node.disk.fsync()  # WalWriter.append_frames: write + fdatasync in the loop
                node.end = end
                node.log(f"repaired {a.records} record(s) from {a.source}: end {end}")
                st = node.state.after_append(end)
                if st is not None:
                    node.save_state(st)
                self.perform(core.repaired(end, node.w.now))
            elif isinstance(a, RepairRefused):
                node.log(f"repair from {a.source} refused: {a.reason}")
            elif isinstance(a, CompareOwn):
                n = max(0, min(len(a.data), core.end - a.offset))
                core.compared(a.follower, a.offset, a.data, bytes(node.disk.cache[a.offset:a.offset + n]))
            elif isinstance(a, Heard):
                left = [n for n in node.state.unheard if n != a.follower]
                node.save_state(node.state.with_(unheard=left, resume_at=node.state.resume_at if left else None))

    def _step_down(self, epoch: int, leader: str | None, reason: str) -> None:
        if self.transition is not None:
            return

        def go() -> None:
            if self.transition is not None:
                return
            self.node.log(f"stepping down: {reason}")
            self.perform(self.core.fail_all(Err.NOT_LEADER, f"{self.node.name} stepped down: epoch {epoch} exists"))
            st = self.node.state.follower_of(epoch, leader)
            self.node.save_state(st)
            self.transition = Transition(st, reason, reload=True)

        self._finish_in_flight(go)

    def _check_peers(self) -> None:
        newer = self.probe.newer_epoch(self.core.epoch)
        if newer is not None:
            self._step_down(newer[0], newer[1], f"a peer reports epoch {newer[0]}")
            return
        rival = self.probe.leader_at(self.core.epoch, exact=True)
        if rival is not None:
            self._step_down(self.core.epoch, None, f"{rival} also leads epoch {self.core.epoch}")


def read_chunk(log: bytearray, offset: int, end: int, max_bytes: int) -> bytes:
    """daemon/wal/reader.py read_chunk over the simulated file."""
    want = min(end - offset, max(max_bytes, MAX_FRAME))
    if want <= 0:
        return b""
    data = bytes(log[offset:offset + want])
    total = 0
    for s in frame_sizes(data):
        if total + s > max_bytes and total > 0:
            break
        total += s
    return data[:total]


# -- the follower role (follower/role.py) -------------------------------------------------------


class SimFollower:
    def __init__(self, node: SimNode) -> None:
        self.node = node
        st = node.state
        self.core = FollowerCore(node.name, st.epoch, node.end, node.last_log_epoch(), node.kv.records,
                                 node.cfg.fetch_max_bytes, [h for h in st.history if h[1] < node.end],
                                 max_backoff=node.cfg.heartbeat_interval)
        self.probe = SimProbe(node)
        self.leader = st.leader
        self.conn: bytes | None = None
        self.last_heard = node.w.now
        self.silence = max(3 * node.cfg.heartbeat_interval, 1.0)
        self.transition: Transition | None = None
        self.tick_at = float("inf")
        self._refetch_at: float | None = None
        self._connect()

    def _connect(self) -> None:
        self.conn = None
        if self.leader is None or self.leader == self.node.name:
            return
        self.conn = f"f:{self.node.name}:{self.node.w.next_id()}".encode()
        self._fetch()

    def _fetch(self) -> None:
        if self.conn is not None and self.leader is not None:
            self.node.send(self.leader, ToReplSock([self.conn, encode_fetch(self.core.fetch_msg())]))

    def _follow(self, epoch: int, leader: str | None, why: str) -> None:
        node = self.node
        st = node.state
        if epoch < st.epoch or (epoch == st.epoch and leader == st.leader):
            return
        if not may_follow(st, epoch, leader):
            node.log(f"refusing leader {leader} at epoch {epoch}: voted for {st.voted_for}")
            return
        new = st.follower_of(epoch, leader or (st.leader if epoch == st.epoch else None))
        node.save_state(new)
        self.core.epoch = epoch
        node.log(f"following {new.leader} at epoch {epoch}: {why}")
        if new.leader != self.leader:
            self.leader = new.leader
            self._connect()

    def turn(self) -> None:
        node = self.node
        now = node.w.now
        if now - self.last_heard > self.silence:
            self.last_heard = now
            self.probe.next_at = 0.0
            self._connect()
        if self._refetch_at is not None and now >= self._refetch_at:
            self._refetch_at = None
            self._fetch()
        if self.conn is None or now - self.last_heard > node.cfg.heartbeat_interval * 2:
            self.probe.maybe_send(now, self.core.epoch)
        self._check_peers()
        if self.transition is not None:
            return
        wake = min(self.last_heard + self.silence, self.probe.next_at if self.conn is None else now + 1.0)
        if self._refetch_at is not None:
            wake = min(wake, self._refetch_at)
        wake = max(wake, now + 1e-3)
        if wake < self.tick_at or self.tick_at <= now:
            self.tick_at = wake
            node.timer(wake - now, self._on_tick)

    def _on_tick(self) -> None:
        if self.node.role is self and self.tick_at <= self.node.w.now:
            self.tick_at = float("inf")

    def _check_peers(self) -> None:
        newer = self.probe.newer_epoch(self.core.epoch)
        if newer is not None and newer[1] is not None:
            self._follow(newer[0], newer[1], f"a peer reports epoch {newer[0]} led by {newer[1]}")
        elif self.leader is None:
            leader = self.probe.leader_at(self.core.epoch)
            if leader is not None and leader != self.node.name:
                self._follow(self.probe.latest[leader]["epoch"], leader, "found the leader by asking peers")

    def recv(self, src: str, msg: Any) -> None:
        node = self.node
        if isinstance(msg, ToDealer):
            if msg.ident != self.conn:
                return  # for a closed DEALER
            self.last_heard = node.w.now
            try:
                m = decode_from_leader(msg.frames)
            except BadMessage as e:
                self._act(self.core.on_message(e))
                return
            if isinstance(m, RepairRequest):  # -- Protocol-Aware Recovery (daemon/node/repair.py) --
                reply = None
                if m.epoch == self.core.epoch and m.leader == self.leader:
                    reply = repair_reply(m, node.name, self.core.end, self.core.history,
                                         lambda o, e, n: read_chunk(node.disk.cache, o, e, n))
                if reply is not None and self.conn is not None and self.leader is not None:
                    node.send(self.leader, ToReplSock([self.conn, *encode_repair_data(reply)]))
                self._fetch()
                return
            self._act(self.core.on_message(m))
        elif isinstance(msg, ToClientSock):
            self._client(msg)
        elif isinstance(msg, ToReplSock):
            try:
                fetch = decode_fetch(msg.frames)
            except BadMessage:
                return
            if fetch.epoch > self.core.epoch:
                self.probe.next_at = 0.0
            node.send_repl(msg.frames[:1], encode(NotLeader(self.core.epoch, node.state.leader)))
        elif isinstance(msg, ClientReply) and msg.ident.decode().endswith(f":{self.probe.tag}"):
            self.probe.read(src, msg.body)

    def _act(self, d: Any) -> None:
        node = self.node
        if isinstance(d, Append):
            st = node.state.before_append(self.core.end, d.epoch_starts)
            if st is not None:
                node.save_state(st)
            end = node.disk.write(d.data)
            node.blocked = True  # WalWriter.append_frames: write + fdatasync in the loop
            lat = node.w.rng.uniform(0.0005, 0.004)
            node.timer(lat, self._appended, d, end, system=True)
        elif isinstance(d, Refetch):
            if d.delay:
                self._refetch_at = node.w.now + d.delay
            else:
                self._fetch()
        elif isinstance(d, AdoptEpoch):
            self._follow(d.epoch, d.leader or self.leader, f"leader {d.leader} is at epoch {d.epoch}")
            self._fetch()
        elif isinstance(d, Redirect):
            if d.epoch >= self.core.epoch and d.leader and d.leader != self.leader:
                self._follow(d.epoch, d.leader, f"{self.leader} redirected us")
            else:
                self.probe.next_at = 0.0
        elif isinstance(d, Truncate):
            self._truncate(d)

    def _appended(self, d: Append, end: int) -> None:
        node = self.node
        if node.role is not self:
            return
        if node.fail_fsync:
            node.fail_fsync = False
            node.crash("fsync failed", lose_unsynced=True)
            node.sim.schedule_restart(node)
            return
        node.disk.fsync()
        node.end = end
        self.core.appended(end, d.frames[-1][0].epoch, len(d.frames), d.epoch_starts)
        st = node.state.after_append(end)
        if st is not None:
            node.save_state(st)
        self._fetch()
        for frame, rec in d.frames:
            node.kv.apply(rec, Placed(frame.offset, frame.end, frame.epoch))
        node.unblock()

    def _truncate(self, d: Truncate) -> None:
        node = self.node
        node.log(f"truncating divergent suffix at {d.offset} (end {node.end}, leader epoch {d.leader_epoch})")
        node.sim.inv.on_truncate(node, d.offset)
        node.disk.truncate(d.offset)
        node.end = d.offset
        st = node.state
        st.trim_history(d.offset)
        node.save_state(st)
        self.transition = Transition(node.state, "truncated a divergent suffix", reload=True)

    def _client(self, msg: ToClientSock) -> None:
        node = self.node
        decoded = node.decode_client(msg)
        if decoded is None:
            return
        envelope, req = decoded
        if req.op in WRITE_OPS:
            node.reply(envelope, node.not_leader(req.id))
        elif req.op == "status":
            node.reply(envelope, ok_reply(req.id, status=node.status({
                "leader_end": self.core.leader_end, "leader_commit": self.core.leader_commit,
                "connected": self.conn is not None and node.w.now - self.last_heard < self.silence})))
        elif req.op in ("get", "ping"):
            node.reply(envelope, node.read_reply(req, stale=True))
        else:
            body, t = node.admin(req)
            node.reply(envelope, body)
            if t is not None:
                self.transition = t
