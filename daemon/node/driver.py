"""The production driver: the poller, signals, the wake socketpair, exit codes and `main_node`.

It runs one role at a time (a reactor: daemon/node/leader.py,
follower/role.py) over the node's ports. Each turn: poll; hand the role
what arrived (a finished batch, the leader's messages, fetches, client
requests, peer statuses); `on_tick`; flush replies; the node's service
tick. It decides nothing: while the role is not `accepting` (work waits for
the batch in flight) it delivers only the batch's completion, and the only
blocking wait is for that batch when the role ends or the node stops.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

import zmq

from daemon import config as config_mod
from daemon.auth.keys import KeyError_
from daemon.node import identity as nodestate
from daemon.node.node import Node, Role, load_role, raise_fd_limit
from daemon.node.ports import FsyncFailure, Transition
from daemon.node.zmq_ports import ZmqLeaderLink
from daemon.ops import logs
from daemon.wal import LogCorrupt, WalError

EXIT_FSYNC = 3  # the supervisor restarts us; recovery runs on the next start
EXIT_FATAL = 2
# Messages taken from one socket per turn, so reads and replication are
# served even while writes flood in.
MAX_DRAIN = 4096
BATCH_WAIT_S = 30.0  # the disk must answer the batch in flight within this when a role ends


class Driver:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- signals ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.node.stopping = True
        self._wake()

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.node._reload_keys = True
        self._wake()

    def _wake(self) -> None:
        """Make the poll return (from a signal handler)."""
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- the node's life ---------------------------------------------------------------

    def run(self) -> int:
        node = self.node
        node.fd_limit = raise_fd_limit()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            node.open_log()
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
            node._bind()
        except zmq.ZMQError as e:
            logs.error("cannot_bind", endpoint=node.me.client_endpoint, reason=str(e))
            return EXIT_FATAL
        node.start_coordinator(self._wake)
        try:
            node.metrics.start()
        except OSError as e:
            logs.error("metrics_unavailable", port=node.me.metrics_port, reason=str(e))
        logs.event("ready", role=node.state.role, epoch=node.state.epoch, end=node.writer.end,
                   client=node.me.client_endpoint, repl=node.me.repl_endpoint, metrics_port=node.me.metrics_port,
                   pid=os.getpid(), max_client_connections=node.gate.max_clients if node.gate else "-")
        # READY only now: recovery has finished and the sockets are bound.
        node.notifier.ready(node.status_line())
        code = 0
        try:
            while not node.stopping:
                logs.event("role_start", role=node.state.role, epoch=node.state.epoch, leader=node.state.leader)
                role_cls = load_role(node.state.role)
                node.begin_role(node.state.role)
                try:
                    t = self.run_role(role_cls(node))
                finally:
                    node.end_role()
                if t.state is None:
                    break
                logs.event("role_change", to=t.state.role, epoch=t.state.epoch, leader=t.state.leader, reason=t.reason)
                if t.state != node.state:
                    node.save_state(t.state)
                if t.reload and not node.stopping:
                    node.open_log()
        except FsyncFailure as e:
            logs.error("stopping_after_fsync_failure", reason=str(e))
            self._flush_replies()
            code = EXIT_FSYNC
        except Exception as e:
            # A broken invariant or a bug: say exactly what, then exit non-zero
            # (the supervisor restarts us and recovery runs), never half-running.
            logs.error("internal_error", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc().replace("\n", " | "))
            code = EXIT_FATAL
        finally:
            node.notifier.stopping()
            node.close(fsync=code == 0)
        logs.event("stopped", code=code)
        return code

    def _flush_replies(self) -> None:
        # Let queued error replies leave before the process exits.
        out = getattr(self.node, "outbox", None)
        for _ in range(10):
            if out is None:
                return
            out.flush()
            time.sleep(0.005)

    # -- one role ----------------------------------------------------------------------

    def run_role(self, role: Role) -> Transition:
        node = self.node
        log, peers = node.log, node.peers
        poller = zmq.Poller()
        poller.register(node.client_sock, zmq.POLLIN)
        poller.register(node.repl_sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if log.sock is not None:
            poller.register(log.sock, zmq.POLLIN)
        for s in peers.socks:
            poller.register(s, zmq.POLLIN)
        link = node.link if isinstance(node.link, ZmqLeaderLink) else None
        polled: Any = None  # the leader link's socket, as registered
        node.coord.publish(node.state.role, node.state.epoch)
        role.start()
        while role.transition is None:
            if node.stopping:
                role.stopping = True
                log.wait(BATCH_WAIT_S)  # the batch in flight reaches the disk; its clients are answered
                return role.on_shutdown()
            if link is not None and link.sock is not polled:
                if polled is not None:
                    poller.unregister(polled)
                polled = link.sock
                if polled is not None:
                    poller.register(polled, zmq.POLLIN)
            now = node.clock.now()
            wake_at = min(role.next_deadline(now), node.notifier.next_due(now))
            timeout_ms = max(0.0, wake_at - now) * 1000 + 1
            timeout_ms = node.outbox.poll_timeout(timeout_ms)  # replies waiting: retry them soon
            events = dict(poller.poll(int(timeout_ms)))
            if self._wake_r.fileno() in events:
                self._drain_wake()
            for ev in node.coord.take():  # the lease and the election (daemon/failover/coordinator.py)
                if role.transition is None:
                    role.on_coordinator(ev)
            if log.sock is not None and log.busy and log.sock.fileno() in events:
                log.collect()
            if polled is not None and polled in events:
                sock: zmq.Socket[Any] = polled
                while role.transition is None and role.accepting() and link is not None and link.sock is sock:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    role.on_leader(frames)
            if node.repl_sock in events:
                for _ in range(MAX_DRAIN):
                    if not role.accepting():
                        break
                    try:
                        frames, who = node.recv(node.repl_sock)
                    except zmq.Again:
                        break
                    role.on_fetch(frames, who)
            if node.client_sock in events:
                for _ in range(MAX_DRAIN):
                    if not role.wants_clients():
                        break
                    try:
                        frames, who = node.recv(node.client_sock)
                    except zmq.Again:
                        break
                    role.on_client(frames, who)
            heard = 0
            for s in peers.socks:
                if s in events:
                    heard += peers.read(s)
            if heard:
                role.on_peer_status()
            now = node.clock.now()
            node.service_tick(now, role.snapshot)  # a SIGHUP's reload first: on_tick drops what revoked keys parked
            if role.transition is None:  # a role that is ending (an install swapped its log) does no more work
                role.on_tick(now)
            node.outbox.flush()
        # The role is changing: what is on its way to disk lands (and is answered) first.
        log.wait(BATCH_WAIT_S)
        return role.transition


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
    return Driver(node).run()


if __name__ == "__main__":
    sys.exit(main_node(sys.argv[1], sys.argv[2]))
