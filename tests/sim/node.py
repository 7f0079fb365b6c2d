"""A simulated zwal node: the production roles over simulated ports.

The roles (daemon/node/leader.py LeaderRole, follower/role.py FollowerRole)
run unchanged, with every decision they make: admission, fetch
authorization, peer verdicts, following, step-down, the admin ops. This
file keeps only the world they react to: the ports of daemon/node/ports.py
over the simulated network and disk, and the process model (a loop that
blocks on an inline fsync, pauses, crashes, restarts).
"""

from __future__ import annotations

import errno
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgpack

from daemon.auth.keys import Identity
from daemon.node.admission import REVOKED, Sender
from daemon.node.bootstrap import Marker, StartFresh, fresh_start
from daemon.node.identity import LEADER, NodeState, StateRegression, merge_history, regression
from daemon.failover.coordinator import NoCoordinator
from daemon.node import snapshot as snap
from daemon.node import snapshot_load
from daemon.node.kv import KVState
from daemon.node.snapshotting import Snapshotter, Written
from daemon.node.transfer import SnapInfo
from daemon.node.leader import LeaderRole
from daemon.node.leader_core import InvariantViolation
from daemon.node.peers import PeerView, status_probe
from daemon.node.ports import Done, FsyncFailure, NoSpace, StateNotSaved, SyncResult
from daemon.wal import WalFsyncError, WalWriteError
from daemon.wal.format import MAX_FRAME, frame_sizes
from daemon.wal.reader import CORRUPT, TORN, scan_buffer
from daemon.wal import retention
from daemon.wal.segments import OffsetCompacted, chunk_stop, plan_roll
from daemon.wire.replication import BadMessage, Data, RepairData, decode_from_leader, decode_to_leader
from follower.role import FollowerRole

from .world import Disk, Violation

if TYPE_CHECKING:
    from .cluster import Sim


# -- messages on the simulated network ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToClientSock:
    """A request to a node's client socket (ROUTER): identity + msgpack body."""

    ident: bytes
    body: bytes

    def describe(self) -> str:
        try:
            m = msgpack.unpackb(self.body, raw=False)
        except Exception:
            return f"req (undecodable, {len(self.body)} bytes)"
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
                return f"repair_data {f.name} off={f.offset} ep={f.epoch} bytes={len(f.data)}"
            return f"fetch {f.name} off={f.offset} ep={f.epoch} last_ep={f.last_epoch} round={f.round}"
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
        data = getattr(m, "data", None)
        if data:
            d["bytes"] = len(data)
        return f"{type(m).__name__} {d}"


class Refused(Exception):
    """Recovery found corruption: the node refuses to start (daemon/wal/recovery.py LogCorrupt)."""


# -- the ports ------------------------------------------------------------------------


class SimClock:
    def __init__(self, node: "SimNode") -> None:
        self.w = node.w

    def now(self) -> float:
        return self.w.now

    def wall(self) -> float:
        # Simulated wall time: records' ts (retry windows) are the same on every run of a seed.
        return 1_700_000_000.0 + self.w.now


class SimEvents:
    """The production event names, in the trace."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node

    def _log(self, level: str, name: str, kv: dict[str, Any]) -> None:
        self.node.trace(f"{level}{name} " + " ".join(f"{k}={v}" for k, v in kv.items()))

    def event(self, name: str, **kv: Any) -> None:
        self._log("", name, kv)

    def warn(self, name: str, **kv: Any) -> None:
        self._log("WARN ", name, kv)

    def error(self, name: str, **kv: Any) -> None:
        self._log("ERROR ", name, kv)


class SimLog:
    """The log file on the simulated disk; write + fsync take a random time.

    Like the syncer, a leader's batch of several records leaves the loop
    free; a lone record (and every follower append) blocks the loop."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.inflight: int | None = None  # the batch id on its way to disk
        self.overlap = True  # a leader's multi-record batches run beside the loop

    @property
    def end(self) -> int:
        return self.node.end

    @property
    def busy(self) -> bool:
        return self.inflight is not None

    def read_chunk(self, offset: int, end: int, max_bytes: int) -> bytes:
        """daemon/wal/segments.py read_chunk over the simulated file: stops at a segment's end."""
        if offset < self.node.disk.oldest:
            raise OffsetCompacted(offset, self.node.disk.oldest)
        end = chunk_stop(self.node.disk.bases, offset, end)
        want = min(end - offset, max(max_bytes, MAX_FRAME))
        if want <= 0:
            return b""
        data = bytes(self.node.disk.cache[offset:offset + want])
        total = 0
        for s in frame_sizes(data):
            if total + s > max_bytes and total > 0:
                break
            total += s
        return data[:total]

    def read_raw(self, offset: int, n: int) -> bytes:
        if offset < self.node.disk.oldest:
            raise OffsetCompacted(offset, self.node.disk.oldest)
        return bytes(self.node.disk.cache[offset:offset + max(0, n)])

    def append(self, data: bytes, records: int, done: Done) -> None:
        node = self.node
        rng = node.w.rng
        assert self.inflight is None, "one append in flight at a time"
        if self.overlap and node.cfg.fsync_mode == "per-record" and records != 1:
            raise Violation("per-record", f"{node.name} appends {records} records in one fsync in per-record mode")
        if node.disk_full or (self.overlap or node.sim.p_enospc) and rng.random() < node.sim.p_enospc:
            node.trace(f"append of {records} records: write fails (ENOSPC), rolled back")
            done(SyncResult(0, WalWriteError("No space left on device", errno.ENOSPC), 0.0, records))
            return
        if plan_roll(node.disk.bases[-1], node.end, node.cfg.segment_bytes):
            node.disk.bases.append(node.end)
            node.trace(f"segment rolls at {node.end}")
        end = node.disk.write(data)
        bid = node.w.next_id()
        self.inflight = bid
        node.trace(f"append {bid}: {records} records, write {end - len(data)}..{end}")
        lat = rng.uniform(0.0005, 0.004)
        if self.overlap:  # a leader's disk has latency spikes (or the scenario's fixed latency)
            lat += rng.uniform(0.02, 0.2) if rng.random() < 0.03 else 0.0
            lat = node.sim.disk_latency if node.sim.disk_latency is not None else lat
        if records == 1 or not self.overlap:
            node.blocked = True  # the loop itself writes and fsyncs
        node.timer(lat, self._done, bid, end, records, len(data), done, system=True)

    def _done(self, bid: int, end: int, records: int, nbytes: int, done: Done) -> None:
        node = self.node
        if self.inflight != bid:
            return
        self.inflight = None
        node.blocked = False
        if node.fail_fsync:
            node.fail_fsync = False
            node.trace(f"append {bid}: FSYNC FAILS")
            done(SyncResult(0, WalFsyncError("fsync failed: EIO"), 0.0, records))
            return
        node.disk.fsync()
        node.end = end
        done(SyncResult(end, None, 0.0, records, nbytes))
        if not node.blocked:
            node.drain_stash()

    @property
    def oldest(self) -> int:
        return self.node.disk.oldest

    def segments_view(self) -> list[retention.Segment]:
        bases = self.node.disk.bases
        ends = bases[1:] + [self.node.end]
        return [retention.Segment(b, e, i < len(bases) - 1) for i, (b, e) in enumerate(zip(bases, ends))]

    def retire(self, upto: int, reason: str) -> tuple[int, int]:
        """SegmentedLog.retire in the world: the oldest offset is durable at once, the files go."""
        node = self.node
        if self.busy:
            raise Violation("retention", f"{node.name} retires segments while a batch is on its way to disk")
        disk = node.disk
        if upto not in disk.bases or upto > disk.bases[-1]:
            raise Violation("retention", f"{node.name} retires up to {upto}, not a sealed segment's end")
        node.sim.inv.on_retire(node, upto)
        gone = [b for b in disk.bases if b < upto]
        size = upto - gone[0] if gone else 0
        disk.oldest = upto
        disk.bases = [b for b in disk.bases if b >= upto]
        node.trace(f"retention: segments below {upto} deleted ({reason})")
        return len(gone), size

    def truncate_suffix(self, offset: int, last_epoch: int) -> tuple[int, str]:
        node = self.node
        n = node.end - offset
        node.sim.inv.on_truncate(node, offset)
        node.disk.truncate(offset)
        node.end = offset
        return n, f"divergent-{last_epoch}-{offset}.wal"


class SimSnapshots:
    """The SnapshotPort (daemon/node/snapshotting.py) in the simulated world.

    As the forked child does, `start` freezes the state at once (encodes it)
    and the file appears, durable, a random time later; a crash before that
    leaves only a temp file, which is never a snapshot. The files outlive
    the process (a restart reads them), not a rebuild (a new SimNode)."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.files: dict[int, bytes] = {}  # offset -> the durable snapshot file
        self.aside: list[tuple[int, str]] = []
        self._pending: tuple[int, int, bytes] | None = None  # (write id, offset, bytes)
        self._done: Written | None = None
        self.offer_transfers = False

    @property
    def busy(self) -> bool:
        return self._pending is not None or self._done is not None

    def start(self, kv: KVState, last_crc: int) -> None:
        node = self.node
        wid = node.w.next_id()
        self._pending = (wid, kv.end, b"".join(snap.encode(kv, last_crc)))
        node.timer(node.w.rng.uniform(0.001, 0.05), self._finish, wid, system=True)

    def _finish(self, wid: int) -> None:
        if self._pending is None or self._pending[0] != wid:
            return
        _, offset, data = self._pending
        self._pending = None
        self.files[offset] = data
        self.node.sim.stats["snapshots_written"] += 1
        self._done = Written(offset, snap.name_for(offset), None, 0.0, len(data))

    def poll(self) -> Written | None:
        d, self._done = self._done, None
        return d

    def cancel(self) -> None:
        self._pending = None
        self._done = None

    def crashed(self) -> None:
        self.cancel()  # the child dies with its parent's data directory untouched: a temp file at most

    def offsets(self) -> list[int]:
        return sorted(self.files, reverse=True)

    def remove(self, offset: int) -> str:
        del self.files[offset]
        return snap.name_for(offset)

    def describe(self, offset: int) -> SnapInfo | None:
        # Snapshot transfer is not modelled yet: the simulated log cannot start
        # at a snapshot's offset, so this world's leaders offer no snapshot
        # (LeaderCore then sends log bytes from 0, as before).
        if not self.offer_transfers:
            return None
        data = self.files.get(offset)
        return SnapInfo(offset, len(data), snap.header_crc(data)) if data is not None else None

    def read_at(self, offset: int, pos: int, n: int) -> bytes:
        data = self.files.get(offset)
        if data is None:
            raise FileNotFoundError(snap.name_for(offset))
        return data[pos:pos + n]

    def move_aside(self, offset: int, why: str) -> str:
        del self.files[offset]
        self.aside.append((offset, why))
        self.node.sim.stats[f"snapshots_{why}"] += 1
        return f"{snap.name_for(offset)}.{why}"


class SimTransfer:
    """The TransferPort: not modelled yet (the simulator's leaders offer no snapshot, SimSnapshots.describe)."""

    def partial(self) -> None:
        return None

    def begin(self, offset: int, crc: int, pos: int) -> None:
        raise AssertionError("snapshot transfer is not modelled in the simulator")

    def write(self, pos: int, data: bytes) -> None:
        raise AssertionError("snapshot transfer is not modelled in the simulator")

    def abort(self) -> None:
        pass

    def install(self, offset: int, crc: int, size: int) -> str:
        raise AssertionError("snapshot transfer is not modelled in the simulator")


class SimClientPort:
    """The client ROUTER + outbox: replies go back over the network (never refused: readers keep up)."""

    budget = 4 * 1024 * 1024

    def __init__(self, node: "SimNode") -> None:
        self.node = node

    def send(self, frames: list[bytes]) -> None:
        node = self.node
        ident, body = frames[0], frames[-1]
        kind, who, _ = ident.decode().split(":")
        m = msgpack.unpackb(body, raw=False)
        if m.get("ok") and "end" in m and "offset" in m and "found" not in m:
            node.sim.inv.on_write_ack(node, m)
        if m.get("ok") and "records" in m and "next" in m:
            node.sim.inv.on_streamed(node, m)
        if m.get("ok") and m.get("linearizable") and isinstance(node.role, LeaderRole):
            node.sim.inv.on_fresh_read(node, node.role.core)
        node.send(who, ClientReply(ident, body))

    def congested(self, peer: bytes) -> bool:
        return False

    def refuse(self, peer: bytes) -> None:
        pass

    def waiting(self, peer: bytes) -> int:
        return 0

    def would_exceed(self, peer: bytes, size: int) -> bool:
        return False

    def stats(self) -> dict[str, int]:
        return {}


class SimRepl:
    def __init__(self, node: "SimNode") -> None:
        self.node = node

    def send(self, envelope: list[bytes], frames: list[bytes]) -> None:
        node = self.node
        _, who, _ = envelope[0].decode().split(":")
        if who in node.revoked and len(frames) > 1:
            m = decode_from_leader(frames)
            if isinstance(m, Data) and m.data:
                raise Violation("revoked-key", f"{node.name} sent log bytes to {who}, whose key it has revoked")
        node.send(who, ToDealer(envelope[0], frames))


class SimProbe:
    """The peer probes: status requests over the network; the replies go to the shared PeerView."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.interval = node.cfg.peer_probe_interval
        self.next_at = 0.0
        self.view = PeerView(set(node.sim.names))
        self.tag = node.w.next_id()
        self._ids = 0

    def ask_now(self) -> None:
        self.next_at = 0.0

    def maybe_send(self, now: float, my_epoch: int) -> None:
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        self._ids += 1
        body = status_probe(self._ids, my_epoch, "")
        for p in self.node.sim.names:
            if p != self.node.name:
                self.node.send(p, ToClientSock(f"p:{self.node.name}:{self.tag}".encode(), body))


class SimLink:
    """A follower's DEALER: a connection id; replies to an older one are dropped."""

    def __init__(self, node: "SimNode") -> None:
        self.node = node
        self.conn: bytes | None = None
        self.leader: str | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self, leader: str | None) -> bool:
        self.leader = leader
        self.conn = None if leader is None else f"f:{self.node.name}:{self.node.w.next_id()}".encode()
        return self.conn is not None

    def send(self, body: bytes) -> None:
        self.send_parts([body])

    def send_parts(self, frames: list[bytes]) -> None:
        if self.conn is not None and self.leader is not None:
            self.node.send(self.leader, ToReplSock([self.conn, *frames]))


# -- the node: the Host the roles see, and the process model ---------------------------


class SimNode:
    def __init__(self, sim: "Sim", name: str, first_start: bool = True) -> None:
        self.sim = sim
        self.w = sim.world
        self.name = name
        self.cfg = sim.cfg
        self.disk = Disk()
        # node-state.json: saved atomically, so it is always durable. Its first
        # value is what the production bootstrap rule gives an empty data
        # directory: with cluster init's first-start marker (a new cluster), or
        # without it (a rebuilt node, which joins).
        d = fresh_start(name=name, bootstrap_leader=sim.names[0], cluster_id="", log_empty=True,
                        marker=Marker("", sim.names[0]) if first_start else None)
        assert isinstance(d, StartFresh), d
        self.stored = d.state
        self.state = self.stored.with_()
        self.up = False
        self.refused: str | None = None
        self.inc = 0  # process incarnation: timers of a dead process never fire
        self.paused = False
        self.blocked = False  # the loop waits on the disk (inline write + fsync)
        self.stash: deque[tuple[Callable[..., Any], tuple[Any, ...], bool]] = deque()
        self.role: LeaderRole | FollowerRole | None = None
        self.kv = KVState(self.cfg.retry_window_seconds)
        self.end = 0
        self.fail_fsync = False
        self.disk_full = False  # every write and state save fails with ENOSPC
        self.internal_errors = 0
        self.keys_generation = 0
        self.revoked: set[str] = set()  # node keys this process's allow-list lacks
        self.clock = SimClock(self)
        self.events = SimEvents(self)
        self.log = SimLog(self)
        self.client = SimClientPort(self)
        self.repl = SimRepl(self)
        self.peers = SimProbe(self)
        self.link = SimLink(self)
        self.snapshot_files = SimSnapshots(self)
        self.snapshots = Snapshotter(self.snapshot_files, self.events, self.cfg.snapshot_bytes, self.cfg.retain_bytes)
        self.transfer = SimTransfer()
        self.coord = NoCoordinator()  # [coordinator] kind = "none": the simulator models no etcd (yet)
        # What waits in the sockets until the role reads it.
        self.client_q: deque[tuple[list[bytes], Sender]] = deque()
        self.repl_q: deque[tuple[list[bytes], Sender]] = deque()
        self.tick_at = float("inf")
        self._recovering = False
        self.w.net.handlers[name] = self.on_net

    def trace(self, what: str) -> None:
        self.w.log(self.name, what)

    # -- Host -----------------------------------------------------------------------

    def save_state(self, st: NodeState, patience: float = 15.0) -> None:
        why = regression(self.state, st)
        if why:
            raise StateRegression(f"{self.name}: refusing to save the node state: {why}")
        if not self._recovering and self.role is not None:
            rng = self.w.rng
            if self.disk_full:
                self.trace("saving node-state.json fails (ENOSPC: disk full)")
                raise NoSpace("node-state.json: No space left on device")
            if self.sim.p_enospc and rng.random() < self.sim.p_enospc:
                self.trace("saving node-state.json fails (ENOSPC)")
                raise NoSpace("node-state.json: No space left on device")
            if patience == 0.0 and self.sim.p_emfile and rng.random() < self.sim.p_emfile:
                self.trace("saving node-state.json fails (EMFILE)")
                raise StateNotSaved("node-state.json: Too many open files: nothing changed")
        self.state = st
        self.stored = st.with_()

    def endpoint_of(self, name: str) -> str | None:
        return name

    def incarnation(self) -> int:
        return self.w.rng.getrandbits(56)

    def node_keys(self) -> set[str] | None:
        return set(self.sim.names) - self.revoked

    def extra_status(self) -> dict[str, Any]:
        return {"pid": self.inc, "uptime": 0.0}

    def batch_metrics(self, records: int, nbytes: int, append_s: float, fsync_s: float) -> None:
        pass

    def who(self, src: str) -> Sender:
        """The identity ZAP would report for a message from `src` (REVOKED: not in our allow-list)."""
        if src in self.sim.names:
            return REVOKED if src in self.revoked else Identity(src, "node", "")
        return Identity(src, "admin" if src.startswith(("op", "x")) else "client", "")

    def reload_keys(self, revoked: set[str]) -> None:
        """SIGHUP after the allow-list changed."""
        self.post(self._reload, set(revoked))

    def _reload(self, revoked: set[str]) -> None:
        self.revoked = revoked
        self.keys_generation += 1
        self.trace(f"keys reloaded: revoked {sorted(revoked)}")

    # -- process lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self.restart_pending = self.inc > 0  # the first start of a new data directory has nothing to lose
        self.revoked = set(self.sim.revoked)  # a new process reads the allow-list as it is now
        self.inc += 1
        self.up, self.paused, self.blocked = True, False, False
        self.stash.clear()
        self.client_q.clear()
        self.repl_q.clear()
        self.state = self.stored.with_()
        self.role = None
        self.log.inflight = None
        self.tick_at = float("inf")
        self.trace(f"start ({self.state.role} epoch={self.state.epoch} leader={self.state.leader})")
        try:
            self.open_log()
        except Refused as e:
            self._refuse(str(e))
            return
        self._run(self._start_role, ())

    def _refuse(self, why: str) -> None:
        self.up = False
        self.inc += 1
        self.role = None
        self.refused = why
        self.trace(f"REFUSES TO START: {why}")

    def crash(self, why: str, lose_unsynced: bool = False) -> None:
        if not self.up:
            return
        self.up = False
        self.inc += 1
        self.role = None
        self.stash.clear()
        self.snapshot_files.crashed()
        note = self.disk.crash(self.w.rng, lose_unsynced)
        self.trace(f"CRASH ({why}); disk: {note}, durable end {len(self.disk.durable)}")

    def pause(self) -> None:
        if self.up and not self.paused:
            self.paused = True
            self.trace("pause")

    def resume(self) -> None:
        if self.up and self.paused:
            self.paused = False
            self.trace("resume")
            self.drain_stash()

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
            if turn and self.up and self.inc == inc and not self.blocked:
                self._after_event()
        except InvariantViolation as e:
            # The real node logs internal_error and exits; the supervisor restarts it.
            self.internal_errors += 1
            self.sim.stats["internal_errors"] += 1
            self.crash(f"internal_error: InvariantViolation: {e}")
            self.sim.schedule_restart(self)
        except FsyncFailure as e:
            # Exit 3 (daemon/node/driver.py); the supervisor restarts it; what was not fsynced may be gone.
            self.crash(f"stopping_after_fsync_failure: {e}", lose_unsynced=True)
            self.sim.schedule_restart(self)

    def drain_stash(self) -> None:
        # Everything that queued while the loop was busy is read in one turn.
        inc = self.inc
        ran = False
        while self.stash and self.up and self.inc == inc and not self.paused:
            if self.blocked:
                # Only the disk's completion can unblock the loop: it may have
                # queued behind other events while the process was paused.
                i = next((i for i, e in enumerate(self.stash) if e[2]), None)
                if i is None:
                    break
                fn, args, _ = self.stash[i]
                del self.stash[i]
            else:
                fn, args, _ = self.stash.popleft()
            self._run(fn, args, turn=False)
            ran = True
        if ran and self.up and self.inc == inc and not self.blocked:
            self._run(lambda: None, ())

    def timer(self, delay: float, fn: Callable[..., Any], *args: Any, system: bool = False) -> None:
        self.w.after(delay, self._timer, self.inc, fn, args, system)

    def _timer(self, inc: int, fn: Callable[..., Any], args: tuple[Any, ...], system: bool) -> None:
        if inc == self.inc:
            self.post(fn, *args, system=system)

    def on_net(self, src: str, msg: Any) -> None:
        self.post(self._recv, src, msg)

    def _recv(self, src: str, msg: Any) -> None:
        if isinstance(msg, ToClientSock):
            self.client_q.append(([msg.ident, msg.body], self.who(src)))
        elif isinstance(msg, ToReplSock):
            self.repl_q.append((msg.frames, self.who(src)))
        elif isinstance(msg, ToDealer):
            if self.role is not None and msg.ident == self.link.conn and self.role.accepting():
                self.role.on_leader(msg.frames)
        elif isinstance(msg, ClientReply) and msg.ident.decode().endswith(f":{self.peers.tag}"):
            if self.peers.view.heard(src, msg.body) and self.role is not None:
                self.role.on_peer_status()
        self._drain_sockets()

    def _drain_sockets(self) -> None:
        r = self.role
        while r is not None and self.role is r and self.up and not self.blocked and (self.repl_q or self.client_q):
            if self.repl_q and r.accepting():
                r.on_fetch(*self.repl_q.popleft())
            elif self.client_q and r.wants_clients():
                r.on_client(*self.client_q.popleft())
            else:
                return

    def _after_event(self) -> None:
        """The rest of a loop turn, then any role change (daemon/node/driver.py)."""
        for _ in range(20):
            r = self.role
            if r is None or not self.up:
                return
            if r.transition is None:
                self._drain_sockets()
                if self.blocked or self.role is not r:
                    return
                r.on_tick(self.w.now)
            if not self.up or self.role is not r or self.blocked:
                return
            t = r.transition
            if t is None:
                self._arm(r)
                return
            if self.log.busy:
                return  # the driver waits for the batch in flight; its completion ends this turn
            self.trace(f"role change: {t.reason} -> {t.state.role if t.state else None}")
            if t.state is not None and t.state != self.state:
                self.save_state(t.state)
            if t.reload:
                try:
                    self.open_log()
                except Refused as e:
                    self._refuse(str(e))
                    return
            self._start_role()
        raise AssertionError("role changes do not settle")

    def _arm(self, r: LeaderRole | FollowerRole) -> None:
        now = self.w.now
        wake = max(r.next_deadline(now), now + 1e-3)
        if wake < self.tick_at or self.tick_at <= now:
            self.tick_at = wake
            self.timer(wake - now, self._on_tick)

    def _on_tick(self) -> None:
        if self.tick_at <= self.w.now:
            self.tick_at = float("inf")

    def _start_role(self) -> None:
        self.peers = SimProbe(self)
        self.link = SimLink(self)
        self.tick_at = float("inf")
        leading = self.state.role == LEADER
        self.log.overlap = leading
        if leading:
            self.sim.note_leader(self.state.epoch, self.name)
        self.role = LeaderRole(self) if leading else FollowerRole(self)
        self.trace(f"role {self.state.role} epoch={self.state.epoch} leader={self.state.leader} end={self.end} "
                   f"history={self.state.history}" + (f" confirm_from={self.state.confirm_from}"
                                                      if self.state.confirm_from is not None else ""))
        self.role.start()

    # -- sending ------------------------------------------------------------------------

    def send(self, dst: str, msg: Any) -> None:
        self.w.log(self.name, f"-> {dst}", msg)
        self.w.net.send(self.name, dst, msg)

    # -- recovery (daemon/node/node.py open_log over the simulated file) ---------------

    def open_log(self) -> None:
        self._recovering = True
        try:
            self.snapshots.cancel("the log is being recovered again")
            buf = bytes(self.disk.cache)
            files = self.snapshot_files
            start = 0
            while True:
                # daemon/node/snapshot_load.py over the simulated files: the newest that passes its checks.
                # Those below the oldest offset retention kept cannot start a replay (ReplayPointMissing).
                offs = [o for o in files.offsets() if o >= self.disk.oldest]
                loaded = None
                for off in offs:
                    try:
                        loaded = snap.decode(files.files[off], self.cfg.retry_window_seconds)
                        break
                    except snap.SnapshotError as e:
                        files.move_aside(off, "broken")
                        self.events.error("snapshot_broken", offset=off, reason=str(e))
                kv = loaded.kv if loaded is not None else KVState(self.cfg.retry_window_seconds)
                start = loaded.header.offset if loaded is not None else 0
                scan = scan_buffer(buf, on_frame=kv.apply_frame, replay_from=start)
                if loaded is None:
                    if self.disk.oldest > 0:
                        raise Refused(f"the log starts at {self.disk.oldest} and no snapshot at or above it is "
                                      "usable (open_segments: SegmentGap)")
                    break
                why = snapshot_load.check_prefix(loaded.header, scan, self.log.read_raw, self.disk.oldest)
                if not why:
                    scan.epoch_starts = merge_history(loaded.epoch_starts, scan.epoch_starts)
                    break
                files.move_aside(start, "beyond-end" if scan.valid_end < start else "broken")
                self.events.warn("snapshot_not_used", offset=start, reason=why)
            self.sim.inv.on_recovered(self, kv, start, buf)
            if scan.status == CORRUPT:
                raise Refused(scan.describe())
            if scan.status == TORN and scan.valid_end < self.disk.bases[-1]:
                # open_segments: only the last segment may be torn; a sealed one is damaged
                raise Refused(f"sealed segment damaged: {scan.describe()}")
            if scan.status == TORN:
                self.trace(f"recovery: {scan.describe()}; cut")
                self.save_state(self.state.recovered(scan))  # as Node.open_log's before_cut: the marks first
                self.disk.truncate(scan.valid_end)
                self.sim.inv.on_cut(self, scan.valid_end)
            self.snapshots.recovered(start, snap.name_for(start))
            self.kv = kv
            self.end = scan.valid_end
            st = self.state.recovered(scan)
            if self.restart_pending:
                # Node.open_log's first recovery of a process on old data: every simulated
                # stop is a crash (no clean-stop note), so a leader confirms its log.
                self.restart_pending = False
                st = st.restarted(self.end, self.cfg.ack_replicas, None)
            if st != self.state:
                self.save_state(st)
        finally:
            self._recovering = False
