"""A zwal node: one process, one log, one role at a time.

The node owns what outlives a role: the cluster config, the open log and
its replayed state, the node-state file, the bound sockets, and the ports
a role reacts through (daemon/node/ports.py; production ones in
zmq_ports.py). A role (leader or follower) is looked up by name through the
`zwal.roles` entry points, so `daemon` never imports `follower`; the loop
that drives it is daemon/node/driver.py.
"""

from __future__ import annotations

import errno
import os
import time
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol

import zmq

from daemon import config as config_mod
from daemon.auth.creds import Credentials, Plain, for_config
from daemon.auth.keys import KeyError_, secret_path
from daemon.auth import zap
from daemon.auth.zap import Gate
from daemon.ops import logs
from daemon.node import identity as nodestate
from daemon.node import answers, bootstrap
from daemon.node.repair import REPAIR_MAX_BYTES
from daemon.wal.format import MAX_FRAME
from daemon.node.admission import REVOKED, Sender, decode_client  # noqa: F401  (re-exported)
from daemon.node.identity import LEADER, NodeState
from daemon.node.kv import KVState
from daemon.node.outbox import Outbox
from daemon.node import outbox as outbox_mod
from daemon.node.peers import PeerProbe
from daemon.node.ports import FsyncFailure, Host, NoSpace, StateNotSaved, Transition  # noqa: F401
from daemon.node.zmq_ports import REPL_SNDHWM, LogEvents, MonotonicClock, NoLink, WalLog, ZmqLeaderLink, ZmqRepl
from daemon.node.syncer import Syncer
from daemon.failover.coordinator import NoCoordinator
from daemon.node import snapshot_load
from daemon.node.identity import merge_history
from daemon.node.snapshot import name_for, snapshot_dir
from daemon.node.snapshot_writer import production as snapshot_port
from daemon.node.snapshotting import Snapshotter
from daemon.node import install
from daemon.wal import LogCorrupt, WalFsyncError, WalPoisoned
from daemon.wal.segments import ReplayPointMissing, log_size, open_segments
from daemon.wire.client import MAX_MESSAGE
from daemon.ops.metrics import Metrics
from daemon.ops.sdnotify import Notifier
from daemon.wal.reader import ScanResult

# Descriptors kept back from client connections: peers' and admins'
# connections, the log, node-state.json, evidence files, ZeroMQ's own.
FD_HEADROOM = 256
# The largest message a node's replication socket takes: a repair's frames
# (daemon/node/repair.py: REPAIR_MAX_BYTES, or one frame of up to MAX_FRAME).
REPL_MESSAGE_MAX = REPAIR_MAX_BYTES + MAX_FRAME + 4096
STATE_SAVE_PATIENCE = 15.0  # seconds a role change waits for a file descriptor to save node-state.json


class Role(Protocol):
    """A reactor (daemon/node/leader.py, follower/role.py): no loop of its own."""

    transition: Transition | None
    stopping: bool

    def __init__(self, host: Host) -> None: ...
    def start(self) -> None: ...
    def accepting(self) -> bool: ...
    def wants_clients(self) -> bool: ...
    def next_deadline(self, now: float) -> float: ...
    def on_tick(self, now: float) -> None: ...
    def on_client(self, frames: list[bytes], who: Sender) -> None: ...
    def on_fetch(self, frames: list[bytes], who: Sender) -> None: ...
    def on_leader(self, frames: list[bytes]) -> None: ...
    def on_peer_status(self) -> None: ...
    def on_coordinator(self, ev: Any) -> None: ...
    def on_shutdown(self) -> Transition: ...
    def snapshot(self) -> dict[str, Any]: ...


def load_role(name: str) -> Callable[[Host], Role]:
    for ep in entry_points(group="zwal.roles"):
        if ep.name == name:
            cls: Callable[[Host], Role] = ep.load()
            return cls
    raise RuntimeError(f"role {name!r} is not installed (entry point group zwal.roles); reinstall zwal")


class Node:
    def __init__(self, cfg: config_mod.ClusterConfig, name: str) -> None:
        self.cfg = cfg
        self.me = cfg.node(name)
        self.name = name
        self.stopping = False
        self.ctx: zmq.Context[Any] = zmq.Context.instance()
        self.fd_limit = 1 << 20  # raise_fd_limit() sets it before the sockets are bound
        self.clock = MonotonicClock()
        self.events = LogEvents()
        os.makedirs(self.me.data_dir, exist_ok=True)
        st = nodestate.load(self.me.state_path)
        # The end the last process stopped cleanly at (None after a crash):
        # a leader that crashed confirms its log (NodeState.restarted).
        self.clean_end = nodestate.take_clean_stop(self.me.data_dir)
        self._restart_checked = False
        if st is None:
            # -- bootstrap (daemon/node/bootstrap.py decides; issue 19) --
            st = self._fresh_state()
            self._restart_checked = True  # a first start: nothing to lose yet
        else:
            bootstrap.remove_marker(self.me.data_dir)  # a first start that crashed before removing it
        self.state = st
        self.writer: Any = None
        self.log: WalLog = None  # type: ignore[assignment]  # set by open_log
        self.kv = KVState(cfg.retry_window_seconds)
        self.scan: ScanResult | None = None
        self.snapshots = Snapshotter(snapshot_port(snapshot_dir(self.me.data_dir)), self.events, cfg.snapshot_bytes,
                                     cfg.retain_bytes)
        self.transfer = install.FileTransfer(self.me.data_dir, cfg.retry_window_seconds)
        self.started = time.monotonic()
        self.notifier = Notifier()
        self.metrics = Metrics(name, self.me.metrics_port, cfg.metrics_bind)
        # CurveZMQ (docs/security.md): the gate guards this node's sockets;
        # `creds` is what it shows other nodes (its own certificate).
        self.gate: Gate | None = None
        self.creds: Credentials | Plain | None = None
        self._reload_keys = False
        self.keys_generation = 0  # bumped on each SIGHUP reload: roles drop what revoked keys left parked
        self.peers: PeerProbe = None  # type: ignore[assignment]  # per role: begin_role
        self.link: ZmqLeaderLink | NoLink = NoLink()
        self.coord: Any = NoCoordinator()  # the driver starts an EtcdCoordinator once the sockets are bound
        if cfg.security == "curve":
            self.gate = Gate(self.ctx, cfg.keys_dir, secret_path(cfg.keys_dir, "node", name), me=name)
            if self.me.public_key != self.gate.public.decode("ascii"):
                raise KeyError_(f"{cfg.path}: {name}'s public_key is {self.me.public_key} but its secret key "
                                f"belongs to {self.gate.public.decode('ascii')}: clients would never reach it. "
                                f"Copy keys/nodes/{name}.key's public key into its [[node]] section")
            self.creds = for_config(cfg, "node", name)

    # -- lifecycle -------------------------------------------------------------

    def _fresh_state(self) -> NodeState:
        """No node-state.json: the first state as daemon/node/bootstrap.py decides it, saved, marker removed."""
        log_empty = log_size(self.me.data_dir) == 0
        d = bootstrap.fresh_start(name=self.name, bootstrap_leader=self.cfg.bootstrap_leader,
                                  cluster_id=self.cfg.cluster_id, log_empty=log_empty,
                                  marker=bootstrap.read_marker(self.me.data_dir))
        if isinstance(d, bootstrap.RefuseStart):
            raise nodestate.StateError(f"{self.me.data_dir}: {d.message}")
        nodestate.save(self.me.state_path, d.state)
        bootstrap.remove_marker(self.me.data_dir)
        logs.event("bootstrapped", role=d.state.role, epoch=d.state.epoch, leader=d.state.leader,
                   joining=d.state.joining, reason=d.why)
        return d.state

    def save_state(self, st: NodeState, patience: float = STATE_SAVE_PATIENCE) -> None:
        """Save the node state durably, then adopt it.

        Out of descriptors, it tries again for up to `patience` seconds
        (connections that never finish their handshake are dropped after
        5 s and give theirs back), so a role change does not restart the
        node; nothing is acknowledged or answered meanwhile. Admin ops pass
        0: they are refused at once instead."""
        why = nodestate.regression(getattr(self, "state", None), st)
        if why:
            logs.error("state_regression_refused", path=self.me.state_path, reason=why)
            raise nodestate.StateRegression(f"{self.me.state_path}: refusing to save the node state: {why}")
        t0 = time.monotonic()
        waited = False
        while True:
            try:
                self._save_state(st)
                if waited:
                    logs.event("state_saved", path=self.me.state_path, waited_s=round(time.monotonic() - t0, 2))
                return
            except StateNotSaved as e:
                if not waited:
                    logs.error("state_not_saved", path=self.me.state_path, error=str(e.__cause__ or e),
                               retrying_for_s=patience)
                    waited = True
                if time.monotonic() - t0 >= patience:
                    raise
                self.notifier.tick(time.monotonic())  # the watchdog must not take the wait for a wedged loop
                time.sleep(0.1)

    def _save_state(self, st: NodeState) -> None:
        try:
            nodestate.save(self.me.state_path, st)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                # The disk is full: the new file never replaced the old one
                # (nodestate.save writes a temporary file, fsyncs, renames),
                # so the old state still holds. A follower backs off.
                raise NoSpace(f"{self.me.state_path}: cannot save the node state: {e.strerror}; "
                              "free space on this disk") from None
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # Out of file descriptors (connections that have not finished
                # their handshake; client keys are capped below the limit):
                # nothing about the disk is in doubt, so this is not a reason
                # to die. The caller refuses what it was doing; the state stays.
                raise StateNotSaved(f"{self.me.state_path}: cannot save the node state now ({e.strerror}): "
                                    "nothing changed; retry when fewer connections are open") from None
            # Whether the new state reached the disk is unknown: the same
            # rule as a failed fsync of the log (exit 3, restart, re-read).
            raise FsyncFailure(f"{self.me.state_path}: saving the node state failed: {e}") from None
        self.state = st

    def open_log(self) -> None:
        """Recover the log and replay it into a fresh state (exit 3 on any disk failure)."""
        try:
            self._open_log()
        except (WalFsyncError, WalPoisoned) as e:
            raise FsyncFailure(str(e)) from None
        except LogCorrupt:
            raise
        except OSError as e:
            raise FsyncFailure(f"{self.me.log_dir}: recovery failed on the disk: {e}") from None

    def _open_log(self) -> None:
        if self.writer is not None:
            if self.writer.poisoned:
                # A reload must never clear the poison: only a new process,
                # whose recovery reads the disk, may append again.
                raise WalPoisoned(f"{self.me.log_dir}: the log is poisoned ({self.writer.poisoned}); restarting")
            self.writer.close()
            self.writer = None
        t0 = time.monotonic()

        def progress(pos: int, size: int) -> None:
            logs.event("recovery_progress", offset=pos, size=size, pct=round(100 * pos / max(size, 1), 1))

        def before_cut(scan: ScanResult) -> None:
            # The damage marks are durable before the bytes go: a crash
            # between the cut and the save must not forget the cut.
            self.save_state(self.state.recovered(scan))

        # -- the newest valid snapshot, then the log after it (daemon/node/snapshot_load.py) --
        self.snapshots.cancel("the log is being recovered again")  # a reload: its temp file is removed below
        self.transfer.close()
        install.finish(self.me.data_dir, self.events)  # an interrupted snapshot install: back or forward
        snaps = snapshot_load.candidates(snapshot_dir(self.me.data_dir), self.cfg.retry_window_seconds, self.events)
        while True:
            loaded = next(snaps, None)
            kv = loaded.kv if loaded is not None else KVState(self.cfg.retry_window_seconds)
            start = loaded.header.offset if loaded is not None else 0
            path = os.path.join(snapshot_dir(self.me.data_dir), name_for(start))
            try:
                self.writer, scan = open_segments(self.me.log_dir, on_frame=kv.apply_frame, progress=progress,
                                                  before_cut=before_cut, segment_bytes=self.cfg.segment_bytes,
                                                  replay_from=start)
            except ReplayPointMissing as e:
                if loaded is None:
                    raise
                if e.below_oldest:
                    # A valid snapshot retention has left behind: kept as it is, not used.
                    self.events.warn("snapshot_not_used", path=path, reason=str(e),
                                     action="nothing to do: a newer snapshot or the log is used")
                else:
                    snapshot_load.set_aside(path, str(e), True, self.events)
                continue
            if loaded is None:
                break
            why = snapshot_load.check_prefix(loaded.header, scan, self.writer.read_raw, self.writer.oldest)
            if not why:
                # The log's epochs below the snapshot (a log that was not read there has none).
                scan.epoch_starts = merge_history(loaded.epoch_starts, scan.epoch_starts)
                break
            self.writer.close()
            self.writer = None
            snapshot_load.set_aside(path, why, scan.valid_end < start, self.events)
        self.snapshots.recovered(start, os.path.join(snapshot_dir(self.me.data_dir), name_for(start)))
        self.kv = kv
        self.scan = scan
        self.log = WalLog(self.writer, self.me.data_dir)
        st = self.state.recovered(scan)
        if not self._restart_checked:
            self._restart_checked = True
            st = st.restarted(self.writer.end, self.cfg.ack_replicas, self.clean_end)
            if st.confirm_from is not None and self.state.confirm_from is None and not scan.dropped:
                logs.warn("unclean_restart", end=self.writer.end, clean_end=self.clean_end,
                          reason="the last process did not stop cleanly at this end: the leader confirms its "
                                 "log with its followers before it takes writes (a disk may lose fsynced bytes)")
        if st != self.state:
            self.save_state(st)
        logs.event(
            "recovered", path=self.me.log_dir, status=scan.status, records=kv.records,
            bytes=scan.valid_end, torn_bytes_dropped=scan.dropped, last_epoch=scan.last_epoch,
            snapshot=start, replayed=scan.replayed, seconds=round(time.monotonic() - t0, 3),
        )

    def _bind(self) -> None:
        if self.gate is not None:
            self.gate.start()
        c = self.ctx.socket(zmq.ROUTER)
        if self.gate is not None:
            self.gate.serve(c)
        c.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        c.setsockopt(zmq.RCVHWM, 256)  # requests ZeroMQ buffers per connection (about 256 MiB at most); then TCP pushes back
        outbox_mod.configure(c)  # ROUTER_MANDATORY, a small SNDHWM: replies wait in the outbox
        c.setsockopt(zmq.LINGER, 500)
        c.bind(self.me.client_endpoint)
        if self.gate is not None:
            self.gate.watch(c, self.cfg.max_client_connections or max(16, self.fd_limit - FD_HEADROOM))
        r = self.ctx.socket(zmq.ROUTER)
        if self.gate is not None:
            self.gate.serve(r, zap.REPL_DOMAIN)
        r.setsockopt(zmq.MAXMSGSIZE, REPL_MESSAGE_MAX)  # fetches are tiny; repair data (daemon/node/repair.py) is not
        r.setsockopt(zmq.SNDHWM, REPL_SNDHWM)  # answers to fetches nobody reads are dropped, not kept
        r.setsockopt(zmq.LINGER, 0)
        r.bind(self.me.repl_endpoint)
        self.client_sock = c
        self.repl_sock = r
        self.outbox = Outbox(c)
        self.client = self.outbox
        self.repl = ZmqRepl(r)

    def recv(self, sock: zmq.Socket) -> tuple[list[bytes], Sender]:
        """One message from a server socket, and who sent it (raises zmq.Again).

        With CURVE on, the sender is the identity of the key ZAP accepted
        for the connection, looked up in the current allow-list (REVOKED if
        it has been removed since)."""
        if self.gate is None:
            return sock.recv_multipart(zmq.NOBLOCK), None
        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        uid: str | None = None
        try:
            got = frames[-1].get("User-Id")
            uid = got if isinstance(got, str) else None
        except zmq.ZMQError:
            pass
        who = self.gate.who(uid)
        return [f.bytes for f in frames], (who if who is not None else REVOKED)

    # -- the ports a role sees (daemon/node/ports.py Host) ------------------------------

    def begin_role(self, role: str) -> None:
        """Open the per-role ports: the probes, the leader link (a follower), the syncer (a leader)."""
        self.peers = PeerProbe(self.ctx, self.cfg.peers(self.name), self.cfg.peer_probe_interval, self.creds,
                               self.cfg.cluster_id, set(self.cfg.names))
        if role == LEADER:
            self.log = WalLog(self.writer, self.me.data_dir, Syncer(self.writer))
            self.link = NoLink()
        else:
            self.log = WalLog(self.writer, self.me.data_dir)
            self.link = ZmqLeaderLink(self.ctx, self.cfg, self.creds)

    def end_role(self) -> None:
        self.log.close()
        self.peers.close()
        self.link.close()

    def endpoint_of(self, name: str) -> str | None:
        try:
            return self.cfg.node(name).client_endpoint
        except config_mod.ConfigError:
            return None

    def incarnation(self) -> int:
        return int.from_bytes(os.urandom(7), "big")

    def node_keys(self) -> set[str] | None:
        return self.gate.node_names() if self.gate is not None else None

    def extra_status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "cluster": self.cfg.name,
            "cluster_id": self.cfg.cluster_id,
            "client_connections": self.gate.open_connections() if self.gate is not None else None,
            "connections_refused_at_cap": self.gate.capped if self.gate is not None else 0,
            **(self.outbox.stats() if getattr(self, "outbox", None) is not None else {}),
            "uptime": round(time.monotonic() - self.started, 3),
            **self.snapshots.status(),
            **self.coord.status(time.monotonic()),
        }

    def batch_metrics(self, records: int, nbytes: int, append_s: float, fsync_s: float) -> None:
        self.metrics.batch(records, nbytes, append_s, fsync_s)

    def status(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return answers.status(self, extra)

    def status_line(self) -> str:
        end = self.writer.end if self.writer else "-"
        return f"{self.state.role} epoch={self.state.epoch} end={end} leader={self.state.leader or '-'}"

    def service_tick(self, now: float, snapshot: Any) -> None:
        """Called by every role loop each turn: watchdog, STATUS=, metrics snapshot, SIGHUP."""
        self.notifier.tick(now)
        if self.gate is not None and not self.gate.alive():
            raise FsyncFailure("the ZAP authenticator thread stopped: no client could connect; restarting")
        if self._reload_keys:
            self._reload_keys = False
            if self.gate is None:
                logs.event("keys_reloaded", keys=0, reason="security = none: no allow-list")
            elif self.gate.reload() >= 0:
                self.keys_generation += 1
        if self.gate is not None:
            self.gate.open_connections()  # drain the monitor every turn: its queue stays short
        if self.metrics.due(now):
            d = self.state.damaged_end
            damaged = int(d is not None and self.writer is not None and self.writer.end < d)
            self.metrics.publish({**snapshot(), **self.coord.status(now), "damaged": damaged})
            self.notifier.status(self.status_line())

    def start_coordinator(self, wake: Callable[[], None]) -> None:
        """[coordinator] kind = "etcd": the lease and election thread (daemon/failover/coordinator.py)."""
        if not self.cfg.coordinator.enabled:
            return
        from daemon.client.blocking import fetch_statuses
        from daemon.failover.coordinator import EtcdCoordinator

        targets = [(n.name, n.client_endpoint) for n in self.cfg.nodes]

        def statuses(timeout: float) -> dict[str, dict[str, Any] | None]:
            return fetch_statuses(targets, timeout, self.creds, self.cfg.cluster_id)

        self.coord = EtcdCoordinator(self.cfg, self.name, statuses, wake)
        self.coord.start(self.state.role, self.state.epoch)
        logs.event("coordinator", kind="etcd", endpoints=",".join(self.cfg.coordinator.endpoints),
                   lease_ttl=self.cfg.coordinator.lease_ttl, prefix=self.cfg.coordinator.prefix)

    def close(self, fsync: bool = True) -> None:
        try:
            self.coord.close()
        except Exception:
            pass
        try:
            # A child left writing would hold on to a temp file the next start removes.
            self.snapshots.cancel("the node is stopping")
        except OSError:
            pass
        if self.writer is not None:
            try:
                if fsync:
                    end, poisoned = self.writer.end, self.writer.poisoned
                    self.writer.close()
                    if not poisoned:
                        nodestate.save_clean_stop(self.me.data_dir, end)  # fsynced and closed at this end
                # else: the process is exiting after a failure, perhaps with
                # the syncer thread still inside fdatasync on these fds:
                # leave them to the kernel rather than close them under it.
            except OSError:
                pass
            self.writer = None
        out = getattr(self, "outbox", None)
        deadline = time.monotonic() + 0.2
        while out is not None and out.pending and time.monotonic() < deadline:
            out.flush()  # the last answers (shutting_down, ...) to clients that read slowly
            time.sleep(0.002)
        for s in (getattr(self, "client_sock", None), getattr(self, "repl_sock", None)):
            if s is not None:
                s.close(linger=200)
        if self.gate is not None:
            self.gate.stop()


def raise_fd_limit() -> int:
    """Every connection costs a file descriptor; the log, the state file and
    the evidence files need some too. Take the hard limit the supervisor
    allows (systemd: LimitNOFILE) so a crowd of connections meets the
    handshake limit and ZAP long before the node cannot open a file."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    logs.event("fd_limit", nofile=soft)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def main_node(config_path: str, name: str) -> int:
    from daemon.node.driver import main_node as main

    return main(config_path, name)
