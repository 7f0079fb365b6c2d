"""The follower role's I/O loop around `FollowerCore`.

Pull replication: the follower asks the leader for bytes from its durable
end; the leader answers at once when it has them, or parks the fetch until
its next fsync (a long poll, answered with a heartbeat when idle). Because
the follower fsyncs before it asks again, every fetch is also an
acknowledgement of its end, and a slow follower costs the leader nothing:
it is sent only what it asked for.
"""

from __future__ import annotations

import os
import dataclasses
import time
from typing import Any

import zmq

from daemon.ops import logs
from daemon.auth import policy
from daemon.node.node import REVOKED, FsyncFailure, Node, Transition, decode_client
from daemon.node.peers import PeerProbe
from daemon.wire.client import WRITE_OPS, ok_reply
from daemon.node.bootstrap import join_leader
from daemon.node.epochs import may_follow
from daemon.node.leader_core import Counters
from daemon.wire.replication import (BadMessage, NotLeader, RepairRequest, decode_fetch, decode_from_leader, encode,
                                     encode_fetch, encode_repair_data)
from daemon.node.repair import repair_reply
from daemon.wal.reader import read_chunk
from daemon.node.kv import Placed
from daemon.wal import WalFsyncError, WalPoisoned, WalWriteError

from .core import AdoptEpoch, Append, FollowerCore, Redirect, Refetch, Truncate


class FollowerRole:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        self.core = FollowerCore(
            node.name, node.state.epoch, node.writer.end, node.last_log_epoch(), node.kv.records,
            node.cfg.fetch_max_bytes, [h for h in node.state.history if h[1] < node.writer.end],
            max_backoff=node.cfg.heartbeat_interval,
        )
        self.counters = Counters()
        self.probe = PeerProbe(node.ctx, node.cfg.peers(node.name), node.cfg.peer_probe_interval, node.creds,
                               node.cfg.cluster_id, set(node.cfg.names))
        self.dealer: zmq.Socket | None = None
        self.leader = node.state.leader
        self.last_heard = time.monotonic()
        # No word from the leader for this long: reconnect and ask again (Lazy Pirate).
        self.silence_limit = max(3 * self.cfg.heartbeat_interval, 1.0)
        self.transition: Transition | None = None
        self._refetch_at: float | None = None  # a paced fetch after a refusal (FollowerCore decides the delay)
        self.poller = zmq.Poller()

    # -- connection to the leader -------------------------------------------------

    def _connect(self) -> None:
        if self.dealer is not None:
            self.poller.unregister(self.dealer)
            self.dealer.close(linger=0)
            self.dealer = None
        if self.leader is None or self.leader == self.node.name:
            return
        ep = self.cfg.node(self.leader).repl_endpoint
        s = self.node.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.fetch_max_bytes + 2 * (1 << 20))
        if self.node.creds is not None:
            self.node.creds.apply(s, ep)  # our node key; only the leader's own key is accepted back
        s.connect(ep)
        self.dealer = s
        self.poller.register(s, zmq.POLLIN)
        self._fetch()

    def _fetch(self) -> None:
        if self.dealer is not None:
            self.dealer.send(encode_fetch(dataclasses.replace(self.core.fetch_msg(), cluster=self.cfg.cluster_id)),
                             zmq.NOBLOCK)

    def _follow(self, epoch: int, leader: str | None, why: str) -> None:
        """Adopt a newer epoch (durably first) and, if named, a new leader."""
        st = self.node.state
        if epoch < st.epoch or (epoch == st.epoch and leader == st.leader):
            return
        if not may_follow(st, epoch, leader):
            logs.error("refusing_leader", epoch=epoch, leader=leader, reason=f"{why}; this node leads epoch {epoch}")
            return
        new = st.follower_of(epoch, leader or (st.leader if epoch == st.epoch else None))
        self.node.save_state(new)
        self.core.epoch = epoch
        logs.event("following", epoch=epoch, leader=new.leader, reason=why)
        if new.leader != self.leader:
            self.leader = new.leader
            self._connect()

    # -- the loop -------------------------------------------------------------------

    def run(self) -> Transition:
        node = self.node
        p = self.poller
        p.register(node.client_sock, zmq.POLLIN)
        p.register(node.repl_sock, zmq.POLLIN)
        p.register(node.wake_fd(), zmq.POLLIN)
        self.probe.register(p)
        self._connect()
        try:
            while self.transition is None:
                if node.stopping:
                    return Transition(None, "shutdown")
                now = time.monotonic()
                if now - self.last_heard > self.silence_limit:
                    if self.dealer is not None:
                        logs.warn("leader_silent", leader=self.leader, seconds=round(now - self.last_heard, 2))
                    self.last_heard = now
                    self.probe.next_at = 0.0
                    self._connect()
                if self.dealer is None or now - self.last_heard > self.cfg.heartbeat_interval * 2:
                    self.probe.maybe_send(now, self.core.epoch)
                if self._refetch_at is not None and now >= self._refetch_at:
                    self._refetch_at = None
                    self._fetch()
                wait = min(self.last_heard + self.silence_limit, self.probe.next_at if self.dealer is None else now + 1.0,
                           node.notifier.next_due(now),
                           self._refetch_at if self._refetch_at is not None else now + 1.0) - now
                timeout_ms = max(0.0, wait) * 1000 + 1
                timeout_ms = node.outbox.poll_timeout(timeout_ms)  # replies waiting: retry them soon
                events = dict(p.poll(timeout_ms))
                if node.wake_fd().fileno() in events:
                    node.drain_wake()
                if self.dealer is not None and self.dealer in events:
                    self._drain_leader()
                if node.client_sock in events:
                    self._drain_clients()
                if node.repl_sock in events:
                    self._drain_repl()
                for s in self.probe.socks:
                    if s in events:
                        self.probe.read(s)
                self._check_peers()
                node.outbox.flush()
                node.service_tick(time.monotonic(), self._snapshot)
            return self.transition
        finally:
            self.probe.close()
            if self.dealer is not None:
                self.dealer.close(linger=0)

    def _snapshot(self) -> dict[str, Any]:
        return {"role": "follower", "epoch": self.core.epoch, "end": self.core.end, "records": self.node.kv.records,
                "errors": dict(self.counters.errors)}

    def _check_peers(self) -> None:
        if self.node.state.joining:
            # -- a rebuilt node (daemon/node/bootstrap.py): only the highest epoch a quorum of peers reports --
            found = join_leader(self.node.name, self.probe.latest, len(self.cfg.names), self.cfg.ack_replicas)
            if found is not None:
                self._follow(found[0], found[1], "joined: found the leader by asking peers")
            return
        newer = self.probe.newer_epoch(self.core.epoch)
        if newer is not None and newer[1] is not None:
            self._follow(newer[0], newer[1], f"a peer reports epoch {newer[0]} led by {newer[1]}")
        elif self.leader is None:
            leader = self.probe.leader_at(self.core.epoch)
            if leader is not None and leader != self.node.name:
                self._follow(self.probe.latest[leader]["epoch"], leader, "found the leader by asking peers")

    def _drain_leader(self) -> None:
        assert self.dealer is not None
        while self.transition is None:
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                msg = decode_from_leader(frames)
            except BadMessage as e:
                self._act(self.core.on_message(e))
                continue
            if isinstance(msg, RepairRequest):
                self._repair(msg)  # -- Protocol-Aware Recovery (daemon/node/repair.py) --
                continue
            self._act(self.core.on_message(msg))

    def _repair(self, req: RepairRequest) -> None:
        """Our leader (of our epoch) lost records of its epoch that we hold: send them back, then fetch."""
        assert self.dealer is not None
        node = self.node
        reply = None
        if req.epoch == self.core.epoch and req.leader == self.leader:
            reply = repair_reply(req, node.name, self.core.end, self.core.history,
                                 lambda o, e, m: read_chunk(node.writer.read_fd, o, e, m))
        if reply is not None:
            logs.event("repair_sent", leader=req.leader, offset=req.offset, bytes=len(reply.data))
            self.dealer.send_multipart(encode_repair_data(reply), zmq.NOBLOCK)
        else:
            logs.warn("repair_not_sent", leader=req.leader, epoch=req.epoch, offset=req.offset, upto=req.upto,
                      our_end=self.core.end, reason="not our leader or epoch, or we hold no frames of that epoch there")
        self._fetch()

    def _act(self, d: Any) -> None:
        node = self.node
        if isinstance(d, Append):
            st = node.state.before_append(self.core.end, d.epoch_starts)
            if st is not None:
                node.save_state(st)
            try:
                _, end = node.writer.append_frames(d.data)
                node.metrics.batch(len(d.frames), len(d.data), node.writer.last_append_s, node.writer.last_fsync_s)
            except (WalFsyncError, WalPoisoned) as e:
                raise FsyncFailure(str(e)) from None
            except WalWriteError as e:
                logs.error("append_failed", offset=self.core.end, bytes=len(d.data), error=str(e))
                time.sleep(0.2)  # disk full: back off, then ask again from our (unchanged) end
                self._fetch()
                return
            self.core.appended(end, d.frames[-1][0].epoch, len(d.frames), d.epoch_starts)
            st = node.state.after_append(end)
            if st is not None:
                logs.event("damage_repaired", end=end, reason="the log reached its end before recovery cut it again")
                node.save_state(st)
            # Acknowledge first (the fetch carries our durable end): the leader's
            # commit does not wait for our in-memory state.
            self._fetch()
            for frame, rec in d.frames:
                node.kv.apply(rec, Placed(frame.offset, frame.end, frame.epoch))
        elif isinstance(d, Refetch):
            if d.loud:
                self.counters.dropped += 1
                if d.times <= 3 or d.times % 100 == 0:
                    logs.warn("refetch", reason=d.reason, offset=self.core.end, leader=self.leader, times=d.times)
            if d.delay:
                self._refetch_at = time.monotonic() + d.delay
            else:
                self._fetch()
        elif isinstance(d, AdoptEpoch):
            self._follow(d.epoch, d.leader or self.leader, f"leader {d.leader} is at epoch {d.epoch}")
            self._fetch()
        elif isinstance(d, Redirect):
            if d.leader and d.leader not in self.cfg.names:
                # Not a node of this cluster (a node of another one answered):
                # following it would save a leader we cannot even reach.
                logs.warn("redirect_ignored", leader=d.leader, epoch=d.epoch, reason="not a node of this cluster")
                self.probe.next_at = 0.0
            elif d.epoch >= self.core.epoch and d.leader and d.leader != self.leader:
                self._follow(d.epoch, d.leader, f"{self.leader} redirected us")
            else:
                self.probe.next_at = 0.0
        elif isinstance(d, Truncate):
            self._truncate(d)

    def _truncate(self, d: Truncate) -> None:
        node = self.node
        w = node.writer
        last = self.core.last_epoch
        save = os.path.join(node.me.data_dir, f"divergent-{last}-{d.offset}.wal")
        if os.path.exists(save):
            save = f"{save[:-4]}-{int(time.time())}.wal"
        try:
            n = w.truncate_suffix(d.offset, save)
        except (WalFsyncError, WalPoisoned, OSError) as e:
            raise FsyncFailure(f"truncating the divergent suffix failed: {e}") from None
        logs.warn("divergent_suffix_truncated", offset=d.offset, bytes=n, last_epoch=last,
                  leader=self.leader, leader_epoch=d.leader_epoch, saved_to=save)
        st = node.state
        st.trim_history(d.offset)
        node.save_state(st)
        # Replay the shortened log into a fresh state, then follow again.
        self.transition = Transition(node.state, "truncated a divergent suffix", reload=True)

    # -- requests from clients and other followers ----------------------------------

    def _drain_clients(self) -> None:
        node = self.node
        sock = node.client_sock
        for _ in range(1024):
            try:
                frames, who = node.recv(sock)
            except zmq.Again:
                return
            decoded = decode_client(node.outbox, frames, self.counters, who, node.cfg.cluster_id)
            if decoded is None:
                continue
            envelope, req = decoded
            if req.op in WRITE_OPS:
                node.reply([*envelope, node.not_leader(req.id)])
            elif req.op == "status":
                node.reply([*envelope, ok_reply(req.id, status=node.status({
                    "leader_end": self.core.leader_end, "leader_commit": self.core.leader_commit,
                    "connected": self.dealer is not None and time.monotonic() - self.last_heard < self.silence_limit,
                }))])
            elif req.op in ("get", "ping"):
                node.reply([*envelope, node.read_reply(req, stale=True, envelope=envelope)])
            else:
                body, t = node.admin(req)
                node.reply([*envelope, body])
                if t is not None:
                    self.transition = t
                    return

    def _drain_repl(self) -> None:
        """Another follower fetching from us: we do not lead; say who does."""
        node = self.node
        for _ in range(256):
            try:
                frames, who = node.recv(node.repl_sock)
            except zmq.Again:
                return
            if who is not None and (who is REVOKED or not policy.may_replicate(who.role)):
                continue
            try:
                fetch = decode_fetch(frames)
            except BadMessage:
                continue
            if who is not None and fetch.name != who.name:
                continue  # a node key speaks only for its own node
            if fetch.cluster and node.cfg.cluster_id and fetch.cluster != node.cfg.cluster_id:
                continue  # another cluster's node: it learns nothing from us, and we nothing from it
            if fetch.epoch > self.core.epoch:
                self.probe.next_at = 0.0
            node.repl_sock.send_multipart([frames[0], *encode(NotLeader(self.core.epoch, node.state.leader))])
