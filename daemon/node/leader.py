"""The leader role's I/O loop: sockets and the file around `LeaderCore`.

One thread. Each turn: take every ready request (up to the batch limits),
append the batch with one write and one fdatasync, then answer and ship.
While the disk is busy, new requests queue in ZeroMQ; the next turn takes
them all, which is what makes group commit free.
"""

from __future__ import annotations

import os
import time
from typing import Any

import zmq

from daemon.ops import logs
from daemon.auth import policy
from daemon.node.node import REVOKED, FsyncFailure, Node, Transition, decode_client
from daemon.node.peers import PeerProbe
from daemon.wire.client import ADMIN_OPS, WRITE_OPS, Err, ok_reply
from daemon.node.leader_core import (AppendRepair, CheckPeers, CompareOwn, Confirmed, Heard, LeaderCore,
                                     RepairRefused, Reply, SendChunk, SendControl, ServeRead, StepDown)
from daemon.node.repair import REPAIR_MAX_BYTES
from daemon.wal.format import MAX_FRAME
from daemon.wire.replication import BadMessage, Refuse, RepairData, decode_to_leader, encode
from daemon.wal import WalFsyncError, WalPoisoned, WalWriteError
from daemon.wal.reader import read_chunk
from daemon.ops.stats import LatencyWindow
from daemon.node.syncer import SyncResult, Syncer

# Requests taken from the socket per turn beyond a full batch, so reads and
# replication are served even while writes flood in.
MAX_DRAIN = 4096
_WRONG_CLUSTER_LOG = logs.Limited(burst=20)


class LeaderRole:
    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.cfg
        self.cfg = cfg
        batch_records = 1 if cfg.fsync_mode == "per-record" else cfg.batch_max_records
        self.core = LeaderCore(
            name=node.name,
            epoch=node.state.epoch,
            end=node.writer.end,
            kv=node.kv,
            history=node.state.history,
            followers=[p.name for p in cfg.peers(node.name)],
            ack_replicas=cfg.ack_replicas,
            replication_timeout=cfg.replication_timeout,
            heartbeat_interval=cfg.heartbeat_interval,
            max_uncommitted_bytes=cfg.max_uncommitted_bytes,
            batch_max_records=batch_records,
            batch_max_bytes=cfg.batch_max_bytes,
            confirming=node.state.confirm_from is not None,
            incarnation=int.from_bytes(os.urandom(7), "big"),
            retry_budget_bytes=cfg.retry_budget_bytes,
            # -- Protocol-Aware Recovery of a cut tail (daemon/node/repair.py) --
            repair_max_bytes=min(cfg.fetch_max_bytes, REPAIR_MAX_BYTES),
            resume_at=node.state.resume_at,
            unheard=frozenset(node.state.unheard),
            damaged_end=node.state.damaged_end,
        )
        if self.core.confirming is not None:
            logs.warn("confirming_log", end=node.writer.end, cut_at=node.state.confirm_from,
                      followers_needed=self.core.confirm_need,
                      reason="recovery cut this leader's log; no writes until followers show they hold nothing it lost")
        self.fsync_lat = LatencyWindow()
        self.batch_sizes = LatencyWindow()
        self.probe = PeerProbe(node.ctx, cfg.peers(node.name), cfg.peer_probe_interval, node.creds, cfg.cluster_id,
                               set(cfg.names))
        self.syncer = Syncer(node.writer)
        self.transition: Transition | None = None
        self._in_sync: set[str] = set()
        self._hint_at = 0.0
        self._draining = False
        self._keys_seen = node.keys_generation

    # -- the loop -----------------------------------------------------------------

    def run(self) -> Transition:
        node = self.node
        poller = zmq.Poller()
        poller.register(node.client_sock, zmq.POLLIN)
        poller.register(node.repl_sock, zmq.POLLIN)
        poller.register(node.wake_fd(), zmq.POLLIN)
        poller.register(self.syncer.sock, zmq.POLLIN)
        self.probe.register(poller)
        try:
            while self.transition is None:
                if node.stopping:
                    return self._shutdown()
                now = time.monotonic()
                self.probe.maybe_send(now, self.core.epoch)
                wake_at = min(self.core.next_deadline(now), self.probe.next_at, node.notifier.next_due(now))
                timeout_ms = max(0.0, wake_at - now) * 1000
                timeout_ms = node.outbox.poll_timeout(timeout_ms)  # replies waiting: retry them soon
                events = dict(poller.poll(timeout_ms))
                if node.wake_fd().fileno() in events:
                    node.drain_wake()
                if self.syncer.busy and self.syncer.fileno() in events:
                    self._batch_done(self.syncer.collect())
                if node.repl_sock in events:
                    self._drain_repl()
                if node.client_sock in events:
                    self._drain_clients()
                if self.core.batch and not self.syncer.busy:
                    self._start_batch()
                for s in self.probe.socks:
                    if s in events:
                        self.probe.read(s)
                self._check_peers()
                now = time.monotonic()
                self._perform(self.core.tick(now))
                self._log_follower_changes(now)
                node.outbox.flush()
                node.service_tick(now, self._snapshot)
                if node.keys_generation != self._keys_seen and node.gate is not None:
                    self._keys_seen = node.keys_generation
                    self.core.revoke(set(self.cfg.names) - node.gate.node_names())
            self._finish_in_flight()
            return self.transition
        finally:
            self._finish_in_flight()
            self.syncer.close()
            self.probe.close()

    def _shutdown(self) -> Transition:
        """SIGTERM: let the batch in flight reach the disk, answer, tell waiters, stop."""
        self._finish_in_flight()
        self._perform(self.core.fail_all(Err.SHUTTING_DOWN, f"{self.node.name} is shutting down; retry with the same request id"))
        return Transition(None, "shutdown")

    def _finish_in_flight(self) -> None:
        """Wait for the batch on its way to disk, and start no other (the caller is changing course)."""
        self._draining = True
        try:
            if self.syncer.busy:
                self._batch_done(self.syncer.wait(30.0))
        finally:
            self._draining = False

    def _step_down(self, epoch: int, leader: str | None, reason: str, loud: bool = False) -> None:
        if self.transition is not None:
            return
        (logs.error if loud else logs.warn)("stepping_down", epoch=self.core.epoch, new_epoch=epoch,
                                            new_leader=leader, reason=reason)
        self._finish_in_flight()
        self._perform(self.core.fail_all(
            Err.NOT_LEADER, f"{self.node.name} stepped down: epoch {epoch} exists ({reason})"))
        st = self.node.state.follower_of(epoch, leader)
        self.node.save_state(st)
        self.transition = Transition(st, reason, reload=True)

    def _check_peers(self) -> None:
        newer = self.probe.newer_epoch(self.core.epoch)
        if newer is not None:
            self._step_down(newer[0], newer[1], f"a peer reports epoch {newer[0]}")
            return
        rival = self.probe.leader_at(self.core.epoch, exact=True)
        if rival is not None:
            # One leader per epoch is the rule every other rule rests on: stop
            # acknowledging at once and let an operator promote at a new epoch.
            self._step_down(self.core.epoch, None, f"{rival} also leads epoch {self.core.epoch}; "
                            "two leaders of one epoch: run 'zwal promote NAME' for the most advanced follower "
                            "('zwal status' shows each node's last_epoch and end)", loud=True)

    # -- clients --------------------------------------------------------------------

    def _drain_clients(self) -> None:
        sock = self.node.client_sock
        core = self.core
        now = time.monotonic()
        for _ in range(MAX_DRAIN):
            if core.batch_full():
                return
            try:
                frames, who = self.node.recv(sock)
            except zmq.Again:
                return
            decoded = decode_client(self.node.outbox, frames, core.counters, who, self.node.cfg.cluster_id)
            if decoded is None:
                continue
            envelope, req = decoded
            if req.op in ADMIN_OPS:
                # The batch in flight lands (or fails) first, so every client
                # is told the truth about `written` before the role changes.
                self._finish_in_flight()
                body, t = self.node.admin(req)
                self.node.reply([*envelope, body])
                if t is not None and self.transition is None:
                    self._perform(core.fail_all(Err.NOT_LEADER, f"{self.node.name} stopped leading: {t.reason}"))
                    self.transition = t
                continue
            if req.epoch > core.epoch and now >= self._hint_at:
                # A client's epoch is a hint, never a command: ask the peers
                # now; a peer that holds the epoch makes us step down.
                self._hint_at = now + self.cfg.peer_probe_interval
                self.probe.next_at = 0.0
            if self.transition is not None:
                self.node.reply([*envelope, self.node.not_leader(req.id)])
                continue
            if req.op in WRITE_OPS:
                self._perform(core.admit_write(req, envelope, now))
            elif req.op == "status":
                self.node.reply([*envelope, ok_reply(req.id, status=self._status(now))])
            elif req.op == "get":
                self._perform(core.admit_read(req, envelope, now))
            else:
                self.node.reply([*envelope, self.node.read_reply(req, stale=False)])

    def _start_batch(self) -> None:
        frames = self.core.take_batch()
        if len(frames) == 1:
            # A lone record gains nothing from overlap; skip the two thread
            # hand-offs that would add to its latency.
            self._batch_done(self.syncer.run_inline(frames[0], 1))
        else:
            self.syncer.submit(b"".join(frames), len(frames))

    def _batch_done(self, r: SyncResult | None) -> None:
        if r is None:
            # The disk did not answer within the shutdown wait: nothing can be
            # claimed about the batch, so nobody is told it is durable.
            raise FsyncFailure("the batch in flight did not complete")
        e = r.error
        if e is None:
            self.fsync_lat.add(r.fsync_s)
            self.batch_sizes.add(r.records)
            self.node.metrics.batch(r.records, r.nbytes, r.append_s, r.fsync_s)
            self._perform(self.core.batch_durable(r.end, time.monotonic()))
            if (self.core.batch and not self.syncer.busy and self.transition is None and not self.node.stopping
                    and not self._draining):
                self._start_batch()
            return
        if isinstance(e, WalWriteError):
            code = Err.NO_SPACE if e.no_space else Err.WRITE_FAILED
            logs.error("batch_failed", code=code, records=r.records, error=str(e))
            self._perform(self.core.batch_failed(code, str(e)))
            return
        if isinstance(e, (WalFsyncError, WalPoisoned)):
            # PostgreSQL's rule: never retry an fsync. Fail the batch, stop
            # writing, exit non-zero; recovery on restart re-reads the file.
            self._perform(self.core.batch_failed(Err.FSYNC_FAILED, str(e)))
            self._flush_replies()
            raise FsyncFailure(str(e)) from None
        raise e

    def _flush_replies(self) -> None:
        # Let queued error replies leave before the process exits.
        for _ in range(10):
            self.node.outbox.flush()
            time.sleep(0.005)

    # -- followers ------------------------------------------------------------------

    def _drain_repl(self) -> None:
        sock = self.node.repl_sock
        for _ in range(MAX_DRAIN):
            try:
                frames, who = self.node.recv(sock)
            except zmq.Again:
                return
            if who is not None and (who is REVOKED or not policy.may_replicate(who.role)):
                # Only node keys replicate: a client or admin key, or a
                # revoked one, gets no log bytes and changes nothing.
                self.core.counters.dropped += 1
                continue
            try:
                fetch = decode_to_leader(frames, REPAIR_MAX_BYTES + MAX_FRAME)
            except BadMessage:
                self.core.counters.dropped += 1
                continue
            if who is not None and (fetch.name != who.name or fetch.name not in self.node.cfg.names):
                # A node key speaks only for its own node: a fetch in another
                # node's name would be a forged acknowledgement.
                self.core.counters.dropped += 1
                logs.warn("forbidden", key=str(who), op="fetch", reason=f"fetch in the name of {fetch.name!r}")
                continue
            if isinstance(fetch, RepairData):
                self._perform(self.core.on_repair(fetch, time.monotonic()))  # -- repair (daemon/node/repair.py)
                continue
            ours = self.cfg.cluster_id
            if fetch.cluster and ours and fetch.cluster != ours:
                # A node of another cluster: never a follower here (it would
                # be told to truncate to our log). Refused; nothing changes.
                self.core.counters.error(Err.WRONG_CLUSTER)
                _WRONG_CLUSTER_LOG.warn("wrong_cluster", op="fetch", node=fetch.name, theirs=fetch.cluster, ours=ours)
                self._perform([SendControl(frames[:1], Refuse(0, f"this node leads cluster {ours}, "
                                                              f"not {fetch.cluster}: check the cluster file"))])
                continue
            self._perform(self.core.on_fetch(fetch, frames[:1], time.monotonic()))

    def _perform(self, actions: list[Any]) -> None:
        node = self.node
        for a in actions:
            if isinstance(a, Reply):
                node.reply([*a.envelope, a.body])
            elif isinstance(a, ServeRead):
                node.reply([*a.envelope, node.read_reply(a.request, stale=False, linearizable=a.linearizable,
                                                         envelope=a.envelope)])
            elif isinstance(a, SendChunk):
                data = read_chunk(node.writer.read_fd, a.offset, self.core.end, self.cfg.fetch_max_bytes)
                node.repl_sock.send_multipart([*a.envelope, *encode(self.core.chunk_msg(a.offset, data))])
            elif isinstance(a, SendControl):
                node.repl_sock.send_multipart([*a.envelope, *encode(a.msg)])
            elif isinstance(a, StepDown):
                self._step_down(a.epoch, a.leader, a.reason, a.loud)
            elif isinstance(a, CheckPeers):
                if time.monotonic() >= self._hint_at:
                    self._hint_at = time.monotonic() + self.cfg.peer_probe_interval
                    logs.event("checking_peers", reason=a.reason)
                    self.probe.next_at = 0.0
            elif isinstance(a, Confirmed):
                logs.event("log_confirmed", end=self.core.end, followers=",".join(a.followers),
                           unheard=",".join(a.unheard) or "-")
                node.save_state(node.state.with_(confirm_from=None, resume_at=a.end if a.unheard else None,
                                                 unheard=list(a.unheard)))
            # -- Protocol-Aware Recovery of a cut tail (daemon/node/repair.py) --
            elif isinstance(a, AppendRepair):
                self._append_repair(a)
            elif isinstance(a, RepairRefused):
                logs.warn("repair_refused", follower=a.source, reason=a.reason, end=self.core.end)
            elif isinstance(a, CompareOwn):
                n = max(0, min(len(a.data), self.core.end - a.offset))
                self.core.compared(a.follower, a.offset, a.data, os.pread(node.writer.read_fd, n, a.offset))
            elif isinstance(a, Heard):
                left = [n for n in node.state.unheard if n != a.follower]
                node.save_state(node.state.with_(unheard=left, resume_at=node.state.resume_at if left else None))

    def _append_repair(self, a: AppendRepair) -> None:
        """Append frames of our epoch copied back from a follower (checked by the core), fsynced, then tell the core."""
        node = self.node
        st = node.state.before_append(node.writer.end, [])
        if st is not None:
            node.save_state(st)
        try:
            _, end = node.writer.append_frames(a.data)
        except (WalFsyncError, WalPoisoned) as e:
            raise FsyncFailure(str(e)) from None
        except WalWriteError as e:
            logs.error("repair_append_failed", offset=a.offset, bytes=len(a.data), error=str(e))
            self.core.repair_failed()
            return
        logs.event("repaired_from_follower", follower=a.source, offset=a.offset, end=end, records=a.records)
        st = node.state.after_append(end)
        if st is not None:
            logs.event("damage_repaired", end=end, reason="the log reached its end before recovery cut it again")
            node.save_state(st)
        self._perform(self.core.repaired(end, time.monotonic()))

    def _log_follower_changes(self, now: float) -> None:
        """One line when a follower starts or stops fetching: what an operator greps for."""
        for f in self.core.follower_status(now):
            name, ok = f["name"], f["in_sync"]
            if ok and name not in self._in_sync:
                self._in_sync.add(name)
                logs.event("follower_connected", follower=name, acked=f["acked"], lag_bytes=f["lag_bytes"])
            elif not ok and name in self._in_sync:
                self._in_sync.discard(name)
                logs.warn("follower_disconnected", follower=name, acked=f["acked"],
                          silent_seconds=f["seconds_since_ack"], lag_bytes=f["lag_bytes"])

    def _snapshot(self) -> dict[str, Any]:
        c = self.core.counters
        return {"role": "leader", "epoch": self.core.epoch, "end": self.core.end, "commit": self.core.commit,
                "records": self.node.kv.records, "acked": c.acked, "errors": dict(c.errors),
                "followers": self.core.follower_status(time.monotonic())}

    def _status(self, now: float) -> dict[str, Any]:
        c = self.core.counters
        return self.node.status({
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
