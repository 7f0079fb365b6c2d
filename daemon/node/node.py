"""A zwal node: one process, one log, one role at a time.

The node owns what outlives a role: the cluster config, the open log and
its replayed state, the node-state file, the bound sockets and the signal
handling. A role (leader or follower) is looked up by name through the
`zwal.roles` entry points, so `daemon` never imports `follower`.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

import zmq

from daemon import config as config_mod
from daemon.auth import policy
from daemon.auth.creds import Credentials, for_config
from daemon.auth.keys import KeyError_, secret_path
from daemon.auth import zap
from daemon.auth.zap import Gate
from daemon.ops import logs
from daemon.node import identity as nodestate
from daemon.node import bootstrap, epochs
from daemon.node.repair import REPAIR_MAX_BYTES
from daemon.wal.format import MAX_FRAME
from daemon.node.identity import LEADER, NodeState
from daemon.wire.client import MAX_MESSAGE, Err, ProtocolError, Request, decode_request, error_reply, ok_reply, split_envelope
from daemon.node.kv import KVState
from daemon.node.outbox import Outbox
from daemon.node import outbox as outbox_mod
from daemon.wal import LogCorrupt, WalError, WalFsyncError, WalPoisoned, open_log
from daemon.ops.metrics import Metrics
from daemon.ops.sdnotify import Notifier
from daemon.wal.reader import ScanResult

EXIT_FSYNC = 3  # the supervisor restarts us; recovery runs on the next start
EXIT_FATAL = 2
# Descriptors kept back from client connections: peers' and admins'
# connections, the log, node-state.json, evidence files, ZeroMQ's own.
FD_HEADROOM = 256
# The largest message a node's replication socket takes: a repair's frames
# (daemon/node/repair.py: REPAIR_MAX_BYTES, or one frame of up to MAX_FRAME).
REPL_MESSAGE_MAX = REPAIR_MAX_BYTES + MAX_FRAME + 4096
STATE_SAVE_PATIENCE = 15.0  # seconds a role change waits for a file descriptor to save node-state.json


@dataclass
class Transition:
    """What a role returns when it ends: the next state, or None to stop."""

    state: NodeState | None
    reason: str
    reload: bool = True  # replay the log into a fresh state before the next role


class Role(Protocol):
    def __init__(self, node: "Node") -> None: ...
    def run(self) -> Transition: ...


def load_role(name: str) -> type[Role]:
    for ep in entry_points(group="zwal.roles"):
        if ep.name == name:
            return ep.load()
    raise RuntimeError(f"role {name!r} is not installed (entry point group zwal.roles); reinstall zwal")


class Node:
    def __init__(self, cfg: config_mod.ClusterConfig, name: str) -> None:
        self.cfg = cfg
        self.me = cfg.node(name)
        self.name = name
        self.stopping = False
        self.ctx = zmq.Context.instance()
        os.makedirs(self.me.data_dir, exist_ok=True)
        st = nodestate.load(self.me.state_path)
        if st is None:
            # -- bootstrap (daemon/node/bootstrap.py decides; issue 19) --
            st = self._fresh_state()
        else:
            bootstrap.remove_marker(self.me.data_dir)  # a first start that crashed before removing it
        self.state = st
        self.writer = None  # type: ignore[assignment]
        self.kv = KVState(cfg.retry_window_seconds)
        self.scan: ScanResult | None = None
        self.started = time.monotonic()
        self.fsync_lat: list[float] = []
        self.notifier = Notifier()
        self.metrics = Metrics(name, self.me.metrics_port, cfg.metrics_bind)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # CurveZMQ (docs/security.md): the gate guards this node's sockets;
        # `creds` is what it shows other nodes (its own certificate).
        self.gate: Gate | None = None
        self.creds: Credentials | None = None
        self._reload_keys = False
        self.keys_generation = 0  # bumped on each SIGHUP reload: roles drop what revoked keys left parked
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
        log_empty = not (os.path.exists(self.me.log_path) and os.path.getsize(self.me.log_path) > 0)
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
            raise FsyncFailure(f"{self.me.log_path}: recovery failed on the disk: {e}") from None

    def _open_log(self) -> None:
        if self.writer is not None:
            if self.writer.poisoned:
                # A reload must never clear the poison: only a new process,
                # whose recovery reads the disk, may append again.
                raise WalPoisoned(f"{self.me.log_path}: the log is poisoned ({self.writer.poisoned}); restarting")
            self.writer.close()
            self.writer = None
        kv = KVState(self.cfg.retry_window_seconds)
        t0 = time.monotonic()

        def progress(pos: int, size: int) -> None:
            logs.event("recovery_progress", offset=pos, size=size, pct=round(100 * pos / max(size, 1), 1))

        def before_cut(scan: ScanResult) -> None:
            # The damage marks are durable before the bytes go: a crash
            # between the cut and the save must not forget the cut.
            self.save_state(self.state.recovered(scan))

        self.writer, scan = open_log(self.me.log_path, on_frame=kv.apply_frame, progress=progress,
                                     before_cut=before_cut)
        self.kv = kv
        self.scan = scan
        st = self.state.recovered(scan)
        if st != self.state:
            self.save_state(st)
        logs.event(
            "recovered", path=self.me.log_path, status=scan.status, records=scan.records,
            bytes=scan.valid_end, torn_bytes_dropped=scan.dropped, last_epoch=scan.last_epoch,
            seconds=round(time.monotonic() - t0, 3),
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
        r.setsockopt(zmq.LINGER, 0)
        r.bind(self.me.repl_endpoint)
        self.client_sock = c
        self.repl_sock = r
        self.outbox = Outbox(c)

    def reply(self, frames: list[bytes]) -> None:
        """Send a reply to a client (through the outbox: never dropped while its connection lives)."""
        self.outbox.send(frames)

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload_keys = True
        self._wake()

    def _wake(self) -> None:
        """Make the role loop's poll return (from a signal handler)."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def recv(self, sock: zmq.Socket) -> tuple[list[bytes], Sender]:
        """One message from a server socket, and who sent it (raises zmq.Again).

        With CURVE on, the sender is the identity of the key ZAP accepted
        for the connection, looked up in the current allow-list (REVOKED if
        it has been removed since)."""
        if self.gate is None:
            return sock.recv_multipart(zmq.NOBLOCK), None
        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        try:
            uid = frames[-1].get("User-Id")
        except zmq.ZMQError:
            uid = None
        who = self.gate.who(uid)
        return [f.bytes for f in frames], (who if who is not None else REVOKED)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        self._wake()

    def wake_fd(self) -> socket.socket:
        return self._wake_r

    def drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def run(self) -> int:
        self.fd_limit = raise_fd_limit()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            self.open_log()
        except LogCorrupt as e:
            logs.error("refusing_to_start", reason=str(e))
            return EXIT_FATAL
        except FsyncFailure as e:
            logs.error("stopping_after_fsync_failure", reason=str(e))
            return EXIT_FSYNC
        except WalError as e:
            logs.error("cannot_open_log", reason=str(e))
            return EXIT_FATAL
        try:
            self._bind()
        except zmq.ZMQError as e:
            logs.error("cannot_bind", endpoint=self.me.client_endpoint, reason=str(e))
            return EXIT_FATAL
        try:
            self.metrics.start()
        except OSError as e:
            logs.error("metrics_unavailable", port=self.me.metrics_port, reason=str(e))
        logs.event("ready", role=self.state.role, epoch=self.state.epoch, end=self.writer.end,
                   client=self.me.client_endpoint, repl=self.me.repl_endpoint, metrics_port=self.me.metrics_port,
                   pid=os.getpid(), max_client_connections=self.gate.max_clients if self.gate else "-")
        # READY only now: recovery has finished and the sockets are bound.
        self.notifier.ready(self.status_line())
        code = 0
        try:
            while not self.stopping:
                role_cls = load_role(self.state.role)
                logs.event("role_start", role=self.state.role, epoch=self.state.epoch, leader=self.state.leader)
                t = role_cls(self).run()
                if t.state is None:
                    break
                logs.event("role_change", to=t.state.role, epoch=t.state.epoch, leader=t.state.leader, reason=t.reason)
                if t.state != self.state:
                    self.save_state(t.state)
                if t.reload and not self.stopping:
                    self.open_log()
        except FsyncFailure as e:
            logs.error("stopping_after_fsync_failure", reason=str(e))
            code = EXIT_FSYNC
        except Exception as e:
            # A broken invariant or a bug: say exactly what, then exit non-zero
            # (the supervisor restarts us and recovery runs), never half-running.
            import traceback

            logs.error("internal_error", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc().replace("\n", " | "))
            code = EXIT_FATAL
        finally:
            self.notifier.stopping()
            self.close(fsync=code == 0)
        logs.event("stopped", code=code)
        return code

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
            self.metrics.publish(snapshot())
            self.notifier.status(self.status_line())

    def close(self, fsync: bool = True) -> None:
        if self.writer is not None:
            try:
                if fsync:
                    self.writer.close()
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

    # -- requests every role answers the same way ----------------------------------

    def leader_endpoint(self) -> str | None:
        if self.state.leader is None:
            return None
        try:
            return self.cfg.node(self.state.leader).client_endpoint
        except config_mod.ConfigError:
            return None

    def not_leader(self, req_id: int | None) -> bytes:
        leader = self.state.leader if self.state.leader != self.name else None
        return error_reply(
            req_id, Err.NOT_LEADER,
            f"{self.name} is a {self.state.role} (epoch {self.state.epoch}); "
            + (f"send writes to {leader} at {self.leader_endpoint()}" if leader else "the leader is not known yet"),
            leader=leader, leader_endpoint=self.leader_endpoint() if leader else None, epoch=self.state.epoch,
        )

    def status(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        w = self.writer
        st: dict[str, Any] = {
            "name": self.name,
            "role": self.state.role,
            "epoch": self.state.epoch,
            "leader": self.state.leader,
            "end": w.end if w else None,
            "last_epoch": self.last_log_epoch(),
            "led_epoch": self.state.led_epoch,
            "damaged_end": self.state.damaged_end,
            "joining": self.state.joining,
            "records": self.kv.records,
            "keys": len(self.kv.data),
            "pid": os.getpid(),
            "cluster": self.cfg.name,
            "cluster_id": self.cfg.cluster_id,
            "client_connections": self.gate.open_connections() if self.gate is not None else None,
            "connections_refused_at_cap": self.gate.capped if self.gate is not None else 0,
            **(self.outbox.stats() if getattr(self, "outbox", None) is not None else {}),
            "uptime": round(time.monotonic() - self.started, 3),
            "history": [list(h) for h in self.state.history],
        }
        if extra:
            st.update(extra)
        return st

    def last_log_epoch(self) -> int:
        """Epoch of the last record in the local log (0 for an empty log)."""
        end = self.writer.end if self.writer else 0
        last = 0
        for e, start in self.state.history:
            if start < end:
                last = e
        return last

    def read_reply(self, req: Request, stale: bool, linearizable: bool = False,
                   envelope: list[bytes] | None = None) -> bytes:
        if req.op == "ping":
            return ok_reply(req.id, name=self.name, role=self.state.role, epoch=self.state.epoch)
        if req.op == "get":
            v = self.kv.get(req.key)  # type: ignore[arg-type]
            if v is not None and envelope and self.outbox.would_exceed(envelope[0], len(v)):
                # The connection is not reading what it already has: a read
                # is safe to refuse (nothing changes), and `busy` is a few
                # bytes where the value could be a MiB.
                return error_reply(req.id, Err.BUSY, f"{len(v)}-byte value not sent: this connection has "
                                   f"{self.outbox.waiting(envelope[0])} bytes of unread replies; read them, "
                                   "then retry")
            return ok_reply(req.id, found=v is not None, value=v, offset=self.kv.end, stale=stale,
                            linearizable=linearizable and not stale, node=self.name, epoch=self.state.epoch,
                            leader_endpoint=self.leader_endpoint() if stale else None)
        raise AssertionError(req.op)

    # -- admin: the only ways a node's role changes -------------------------------

    def admin(self, req: Request) -> tuple[bytes, Transition | None]:
        """Carry out promote/follow/fence by the rules of daemon/node/epochs.py.

        The new state is saved before the reply: a crash after the reply
        restarts the node in the state the reply announced.
        """
        d = epochs.decide(req.op, req.args or {}, self.state, self.name, frozenset(self.cfg.names),
                          self.writer.end, self.last_log_epoch())
        if isinstance(d, epochs.Refusal):
            logs.warn("admin_refused", op=req.op, epoch=(req.args or {}).get("epoch"), code=d.code, reason=d.message)
            return error_reply(req.id, d.code, d.message, **d.fields), None
        if d.state is not None:
            try:
                self.save_state(d.state, patience=0.0)
            except StateNotSaved as e:
                return error_reply(req.id, Err.REFUSED, str(e)), None
            if d.state.role == LEADER:
                logs.event("promoted", epoch=d.state.epoch, start_offset=self.writer.end)
        t = Transition(self.state, d.transition, reload=d.reload) if d.transition else None
        return ok_reply(req.id, **d.fields), t


class FsyncFailure(Exception):
    """Raised out of a role loop: the node must exit non-zero and be restarted."""


class StateNotSaved(FsyncFailure):
    """The node state could not be saved for want of a file descriptor. An
    admin op is refused (nothing changed); anywhere else it still restarts."""


_FORBIDDEN_LOG = logs.Limited(burst=20)
_WRONG_CLUSTER_LOG = logs.Limited(burst=20)


def decode_client(out: Outbox, frames: list[bytes], counters: Any,
                  who: "Sender" = None, cluster_id: str = "") -> tuple[list[bytes], Request] | None:
    """Decode a client message; bad input gets an error reply and None.

    With CURVE on, `who` is the sender's identity (or REVOKED): a revoked
    key's message is dropped unanswered, and a known key whose role may not
    send the op gets `forbidden`; either way nothing changes. A connection
    that does not read its replies (daemon/node/outbox.py) has its requests
    dropped unread: nothing is executed, so a retry is safe."""
    if who is REVOKED:
        counters.error("revoked")
        return None
    if frames and out.congested(frames[0]):
        counters.error("slow_reader")
        out.refuse(frames[0])
        return None
    envelope, body, problem = split_envelope(frames)
    if body is None:
        counters.bad_requests += 1
        counters.error(Err.BAD_REQUEST)
        if envelope and envelope[0]:
            out.send([*envelope, error_reply(None, Err.BAD_REQUEST, problem or "bad message")])
        return None
    try:
        req = decode_request(body)
    except ProtocolError as e:
        counters.bad_requests += 1
        counters.error(e.code)
        out.send([*envelope, error_reply(e.request_id, e.code, str(e))])
        return None
    if req.cluster is not None and cluster_id and req.cluster != cluster_id:
        # Two clusters mixed up (a config for one, ports of the other):
        # refuse before anything else, whatever the op.
        counters.error(Err.WRONG_CLUSTER)
        _WRONG_CLUSTER_LOG.warn("wrong_cluster", op=req.op, theirs=req.cluster, ours=cluster_id)
        out.send([*envelope, error_reply(req.id, Err.WRONG_CLUSTER,
                                         f"this node belongs to cluster {cluster_id}, not {req.cluster}: "
                                         "the cluster file you used points at another cluster's endpoints")])
        return None
    if who is not None and not policy.allowed(who.role, req.op):
        counters.error(Err.FORBIDDEN)
        _FORBIDDEN_LOG.warn("forbidden", key=str(who), op=req.op)
        out.send([*envelope, error_reply(req.id, Err.FORBIDDEN,
                                         f"key {who} (role {who.role}) may not send {req.op!r}")])
        return None
    return envelope, req


class _Revoked:
    """The sender's key is no longer in the allow-list (revoked since it connected)."""


REVOKED: Any = _Revoked()
Sender = Any  # Identity | REVOKED | None (security = "none")


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
    cfg = config_mod.load(config_path)
    logs.setup(node=name)
    try:
        node = Node(cfg, name)
    except (KeyError_, nodestate.StateError) as e:
        # A damaged node-state.json (a disk that lost a write it reported
        # done) holds this node's votes: guessing them could let it vote
        # twice in one epoch. Refuse, say how to restore.
        logs.error("refusing_to_start", reason=str(e))
        return EXIT_FATAL
    except OSError as e:
        # node-state.json could not be read back from the disk or saved.
        logs.error("stopping_after_fsync_failure", reason=f"node state: {e}")
        return EXIT_FSYNC
    return node.run()


if __name__ == "__main__":
    sys.exit(main_node(sys.argv[1], sys.argv[2]))
