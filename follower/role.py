"""The follower role: a reactor around `FollowerCore`, with no loop of its own.

Pull replication: the follower asks the leader for bytes from its durable
end; the leader answers at once when it has them, or parks the fetch until
its next fsync (a long poll, answered with a heartbeat when idle). Because
the follower fsyncs before it asks again, every fetch is also an
acknowledgement of its end, and a slow follower costs the leader nothing:
it is sent only what it asked for.

The driver hands it `on_leader` (the leader's messages), `on_client`,
`on_peer_fetch` (another node fetching from us), `on_peer_status`, then
`on_tick` each turn; it sleeps until `next_deadline`.

Invariants:
- a fetch (an acknowledgement of our end) is sent only after the append's
  completion said our bytes are durable;
- a newer epoch is saved before its data is taken;
- no refusal is asked again at once: a standing one is asked later and
  later (FollowerCore), and a full disk backs off on a timer, logged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, assert_never

from daemon.node import answers
from daemon.node.admission import Sender, authorize_fetch, decode_client
from daemon.node.bootstrap import join_leader
from daemon.node.repair import repair_reply
from daemon.node import epochs
from daemon.node.epochs import may_follow
from daemon.node.kv import Placed
from daemon.node.leader_core import Counters
from daemon.node.ports import FsyncFailure, Host, NoSpace, SyncResult, Transition
from daemon.node.snapshotting import SNAPSHOT_OP
from daemon.wal import WalFsyncError, WalPoisoned, WalWriteError
from daemon.wire.client import BATCH_OP, WRITE_OPS, ok_reply
from daemon.wire.replication import (BadMessage, Fetch, NotLeader, RepairRequest, decode_from_leader, encode,
                                     encode_fetch, encode_fetch_snapshot, encode_repair_data)

from .core import (AdoptEpoch, Append, Decision, FollowerCore, Redirect, Refetch, StartTransfer, Truncate,
                   WriteChunk)

NO_SPACE_BACKOFF_MIN = 0.2  # seconds before asking again when the disk is full (doubling up to the max)
NO_SPACE_BACKOFF_MAX = 1.0
REDIRECT_RETRY_S = 0.1  # seconds before fetching again from a node that answered not_leader


class FollowerRole:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.cfg = host.cfg
        end = host.log.end
        self.core = FollowerCore(
            host.name, host.state.epoch, end, answers.last_log_epoch(host), host.kv.records,
            self.cfg.fetch_max_bytes, [h for h in host.state.history if h[1] < end],
            max_backoff=self.cfg.heartbeat_interval,
        )
        self.counters = Counters()
        self.leader = host.state.leader
        self.last_heard = host.clock.now()
        # No word from the leader for this long: reconnect and ask again (Lazy Pirate).
        self.silence_limit = max(3 * self.cfg.heartbeat_interval, 1.0)
        self.transition: Transition | None = None
        self._refetch_at: float | None = None  # a paced fetch after a refusal or a full disk
        self.no_space: str | None = None  # why the disk refused us, while it does
        self._no_space_times = 0
        self.stopping = False
        # A snapshot transfer a stopped process left: resumed if the leader offers the same file.
        self.core.transfer = host.transfer.partial()
        self._transfer_t0 = 0.0

    # -- what the driver asks ---------------------------------------------------------

    def start(self) -> None:
        self._connect()
        self.on_tick(self.host.clock.now())

    def accepting(self) -> bool:
        return True

    def wants_clients(self) -> bool:
        return self.transition is None

    def next_deadline(self, now: float) -> float:
        peers = self.host.peers
        t = min(self.last_heard + self.silence_limit, peers.next_at if not self.host.link.connected else now + 1.0)
        if self._refetch_at is not None:
            t = min(t, self._refetch_at)
        return t

    def on_tick(self, now: float) -> None:
        host = self.host
        if now - self.last_heard > self.silence_limit and self._refetch_at is None:  # not while backing off
            if host.link.connected:
                host.events.warn("leader_silent", leader=self.leader, seconds=round(now - self.last_heard, 2))
            self.last_heard = now
            host.peers.ask_now()
            self._connect()
        if not host.link.connected or now - self.last_heard > self.cfg.heartbeat_interval * 2:
            host.peers.maybe_send(now, self.core.epoch)
        if self._refetch_at is not None and now >= self._refetch_at:
            self._refetch_at = None
            self._fetch()
        self._check_peers()
        host.snapshots.step(host.kv, self.core.leader_commit, host.log, now)

    def on_peer_status(self) -> None:
        self._check_peers()

    def on_shutdown(self) -> Transition:
        return Transition(None, "shutdown")

    # -- the election (daemon/failover/coordinator.py, lease.py) ----------------------------

    def on_coordinator(self, ev: Any) -> None:
        from daemon.failover.coordinator import LeaderIs, LeaseGone, LeaseProven, Won

        match ev:
            case Won():
                self._won(ev)
            case LeaderIs():
                # etcd allocated that epoch to that node by compare-and-swap: follow it now (durably first).
                # The epoch also fences an old leader this node still fetched from. The new leader may not
                # lead yet (it is waiting out an old lease): the fetches are refused until it does.
                if ev.name != self.host.name and (ev.epoch > self.core.epoch
                                                  or (ev.epoch == self.core.epoch and self.leader is None)):
                    self._follow(ev.epoch, ev.name, f"etcd's leader key names {ev.name} at epoch {ev.epoch}")
                    self.host.peers.ask_now()  # find it now rather than at the next probe
            case LeaseProven() | LeaseGone():
                pass
            case _:
                raise AssertionError(ev)

    def _won(self, ev: Any) -> None:
        """etcd gave this node `ev.epoch`: vote for itself and lead by the epoch rules, as `zwal promote` would."""
        host = self.host
        names = frozenset(self.cfg.names)
        d: epochs.Accept | epochs.Refusal | None = None
        for op, args in ((epochs.FENCE, {"epoch": ev.epoch, "candidate": host.name}),
                         (epochs.PROMOTE, {"epoch": ev.epoch, "end": ev.end})):
            d = epochs.decide(op, args, host.state, host.name, names, host.log.end, answers.last_log_epoch(host))
            if isinstance(d, epochs.Refusal):
                host.events.warn("election_refused", epoch=ev.epoch, reason=d.message)
                host.coord.release(f"the epoch rules refused: {d.message}")
                return
            if d.state is not None:
                try:
                    host.save_state(d.state)
                except NoSpace as e:
                    host.coord.release(str(e))
                    self._disk_full(str(e))
                    return
        assert isinstance(d, epochs.Accept)
        host.events.event("promoted", epoch=ev.epoch, start_offset=host.log.end, by="election", reason=ev.reason)
        self.transition = Transition(host.state, d.transition or "won the election", reload=d.reload)

    def snapshot(self) -> dict[str, Any]:
        return {"role": "follower", "epoch": self.core.epoch, "end": self.core.end, "records": self.host.kv.records,
                "errors": dict(self.counters.errors)}

    # -- connection to the leader -------------------------------------------------

    def _connect(self) -> None:
        leader = self.leader if self.leader != self.host.name else None
        if self.host.link.connect(leader):
            self._fetch()

    def _fetch(self) -> None:
        if self.host.link.connected:
            self.host.link.send(encode_fetch(dataclasses.replace(self.core.fetch_msg(), cluster=self.cfg.cluster_id)))

    def _backoff(self, delay: float) -> None:
        self._refetch_at = self.host.clock.now() + delay

    def _follow(self, epoch: int, leader: str | None, why: str) -> bool:
        """Adopt a newer epoch (durably first) and, if named, a new leader. False: not adopted."""
        host = self.host
        st = host.state
        if leader == host.name:
            # A peer names this node leader of an epoch it does not lead (a follower of etcd's key while this
            # node waits out an old lease): it leads that epoch only by its own promotion, never as a follower.
            return True
        if epoch < st.epoch or (epoch == st.epoch and leader == st.leader):
            return True
        if not may_follow(st, epoch, leader):
            host.events.error("refusing_leader", epoch=epoch, leader=leader,
                              reason=f"{why}; this node leads epoch {epoch}")
            return True
        new = st.follower_of(epoch, leader or (st.leader if epoch == st.epoch else None))
        try:
            host.save_state(new)
        except NoSpace as e:
            self._disk_full(str(e))
            return False
        self.core.epoch = epoch
        host.events.event("following", epoch=epoch, leader=new.leader, reason=why)
        if new.leader != self.leader:
            self.leader = new.leader
            self._connect()
        return True

    def _check_peers(self) -> None:
        view = self.host.peers.view
        if self.host.state.joining:
            # -- a rebuilt node (daemon/node/bootstrap.py): only the highest epoch a quorum of peers reports --
            found = join_leader(self.host.name, view.latest, len(self.cfg.names), self.cfg.ack_replicas)
            if found is not None:
                self._follow(found[0], found[1], "joined: found the leader by asking peers")
            return
        newer = view.newer_epoch(self.core.epoch)
        if newer is not None and newer[1] is not None:
            self._follow(newer[0], newer[1], f"a peer reports epoch {newer[0]} led by {newer[1]}")
        elif self.leader is None:
            leader = view.leader_at(self.core.epoch)
            if leader is not None and leader != self.host.name:
                self._follow(view.latest[leader]["epoch"], leader, "found the leader by asking peers")

    # -- the leader's messages --------------------------------------------------------

    def on_leader(self, frames: list[bytes]) -> None:
        self.last_heard = self.host.clock.now()
        try:
            msg = decode_from_leader(frames)
        except BadMessage as e:
            self._act(self.core.on_message(e))
            return
        if isinstance(msg, RepairRequest):
            self._repair(msg)  # -- Protocol-Aware Recovery (daemon/node/repair.py); never FollowerCore's
            return
        self._act(self.core.on_message(msg))

    def _repair(self, req: RepairRequest) -> None:
        """Our leader (of our epoch) lost records of its epoch that we hold: send them back, then fetch."""
        host = self.host
        reply = None
        if req.epoch == self.core.epoch and req.leader == self.leader:
            reply = repair_reply(req, host.name, self.core.end, self.core.history, host.log.read_chunk)
        if reply is not None:
            host.events.event("repair_sent", leader=req.leader, offset=req.offset, bytes=len(reply.data))
            host.link.send_parts(encode_repair_data(reply))
        else:
            host.events.warn("repair_not_sent", leader=req.leader, epoch=req.epoch, offset=req.offset,
                             upto=req.upto, our_end=self.core.end,
                             reason="not our leader or epoch, or we hold no frames of that epoch there")
        self._fetch()

    def _act(self, d: Decision) -> None:
        host = self.host
        match d:
            case Append():
                self._append(d)
            case Refetch():
                if d.loud:
                    self.counters.dropped += 1
                    if d.times <= 3 or d.times % 100 == 0:
                        host.events.warn("refetch", reason=d.reason, offset=self.core.end, leader=self.leader,
                                         times=d.times)
                if d.delay:
                    self._backoff(d.delay)
                else:
                    self._fetch()
            case AdoptEpoch():
                if self._follow(d.epoch, d.leader or self.leader, f"leader {d.leader} is at epoch {d.epoch}"):
                    self._fetch()
            case Redirect():
                self._redirect(d)
            case Truncate():
                self._truncate(d)
            case StartTransfer():
                self._start_transfer(d)
            case WriteChunk():
                self._write_chunk(d)
            case _:
                assert_never(d)

    # -- snapshot transfer (daemon/node/transfer.py decides; daemon/node/install.py on disk) --------

    def _start_transfer(self, d: StartTransfer) -> None:
        host = self.host
        st = host.state
        if st.damaged_end is None or st.damaged_end < d.catch_up_to:
            # Durably first: from now until our log reaches the leader's end,
            # this node counts as no copy for promotion (daemon/failover/promote.py).
            try:
                host.save_state(st.with_(damaged_end=d.catch_up_to))
            except NoSpace as e:
                self._disk_full(str(e))
                return
        try:
            host.transfer.begin(d.offset, d.crc, d.pos)
        except OSError as e:
            self._transfer_failed(f"cannot open the transfer's temp file: {e}", e)
            return
        self._transfer_t0 = host.clock.now()
        host.events.event("snapshot_transfer_resumed" if d.pos else "snapshot_transfer_started", offset=d.offset,
                          bytes=d.size, pos=d.pos, leader=self.leader, our_end=self.core.end,
                          catch_up_to=d.catch_up_to)
        if d.pos == d.size:
            self._install()
        else:
            self._fetch_snapshot()

    def _fetch_snapshot(self) -> None:
        if self.host.link.connected:
            self.host.link.send(encode_fetch_snapshot(self.core.fetch_snapshot_msg()))

    def _write_chunk(self, d: WriteChunk) -> None:
        try:
            self.host.transfer.write(d.pos, d.data)
        except OSError as e:
            self._transfer_failed(f"writing the snapshot's temp file failed: {e}", e)
            return
        if self.core.chunk_written(len(d.data)):
            self._install()
        else:
            self._fetch_snapshot()

    def _transfer_failed(self, why: str, e: OSError) -> None:
        host = self.host
        host.events.error("snapshot_transfer_failed", reason=why, leader=self.leader,
                          action="free space on this node's disk if it is full; the transfer is tried again")
        self.core.transfer = None
        try:
            host.transfer.abort()
        except OSError:
            pass
        self._backoff(NO_SPACE_BACKOFF_MAX)

    def _install(self) -> None:
        host = self.host
        t = self.core.transfer
        assert t is not None and t.size is not None
        host.snapshots.cancel("a snapshot from the leader is being installed")
        try:
            why = host.transfer.install(t.offset, t.crc, t.size)
        except OSError as e:
            raise FsyncFailure(f"installing the snapshot at {t.offset} failed on the disk: {e}") from None
        self.core.transfer = None
        if why:
            host.events.error("snapshot_transfer_failed", offset=t.offset, reason=f"failed its checks: {why}",
                              leader=self.leader, action="nothing to do: it is fetched again from the start")
            self._backoff(NO_SPACE_BACKOFF_MIN)
            return
        host.events.event("snapshot_installed", offset=t.offset, bytes=t.size, leader=self.leader,
                          seconds=round(host.clock.now() - self._transfer_t0, 3),
                          first_segment=t.offset, reason="the leader's log below it is gone or larger than it")
        # Recovery loads the snapshot and the (empty) log that starts at its offset; we fetch from there.
        self.transition = Transition(host.state, "installed a snapshot from the leader", reload=True)

    def _redirect(self, d: Redirect) -> None:
        if d.leader and d.leader not in self.cfg.names:
            # Not a node of this cluster (a node of another one answered):
            # following it would save a leader we cannot even reach.
            self.host.events.warn("redirect_ignored", leader=d.leader, epoch=d.epoch,
                                  reason="not a node of this cluster")
            self.host.peers.ask_now()
        elif d.epoch >= self.core.epoch and d.leader and d.leader != self.leader:
            self._follow(d.epoch, d.leader, f"{self.leader} redirected us")
        else:
            self.host.peers.ask_now()
            # Ask again soon rather than after the leader's silence: the node we follow may be about to lead
            # (an election's winner waiting out an old lease answers not_leader until it does).
            self._backoff(REDIRECT_RETRY_S)

    def _append(self, d: Append) -> None:
        host = self.host
        if self._refetch_at is not None and self.no_space is not None:
            return  # backing off a full disk: this answer to an older fetch is asked again later
        if self.core.transfer is not None:
            # The leader sends log bytes from our end now (another leader, or retention kept them): no transfer.
            host.events.event("snapshot_transfer_dropped", offset=self.core.transfer.offset, our_end=self.core.end,
                              reason="the leader sends log bytes from our end")
            self.core.transfer = None
            host.transfer.abort()
        st = host.state.before_append(self.core.end, d.epoch_starts)
        if st is not None:
            try:
                host.save_state(st)
            except NoSpace as e:
                self._disk_full(str(e))
                return
        host.log.append(d.data, len(d.frames), lambda r: self._appended(d, r))

    def _appended(self, d: Append, r: SyncResult) -> None:
        host = self.host
        e = r.error
        if isinstance(e, (WalFsyncError, WalPoisoned)):
            raise FsyncFailure(str(e)) from None
        if isinstance(e, WalWriteError):
            host.events.error("append_failed", offset=self.core.end, bytes=len(d.data), error=str(e))
            if e.no_space:
                self._disk_full(str(e))
            else:
                self._backoff(NO_SPACE_BACKOFF_MIN)  # ask again from our (unchanged) end, not at once
            return
        if e is not None:
            raise e
        end = r.end
        host.batch_metrics(len(d.frames), len(d.data), r.append_s, r.fsync_s)
        self.core.appended(end, d.frames[-1][0].epoch, len(d.frames), d.epoch_starts)
        if self.no_space is not None:
            host.events.event("disk_has_room", offset=end, after_refusals=self._no_space_times)
            self.no_space, self._no_space_times = None, 0
        st = host.state.after_append(end)
        if st is not None:
            try:
                host.save_state(st)
                host.events.event("damage_repaired", end=end,
                                  reason="the log reached its end before recovery cut it again")
            except NoSpace as e2:
                self._disk_full(str(e2))  # the marks stay: the next append tries again
        # Acknowledge first (the fetch carries our durable end): the leader's
        # commit does not wait for our in-memory state.
        self._fetch()
        # Before the new frames are applied the state is the one at our old
        # end, which the leader's commit (sent with them) may cover.
        host.snapshots.step(host.kv, self.core.leader_commit, host.log, host.clock.now())
        for frame, rec in d.frames:
            host.kv.apply(rec, Placed(frame.offset, frame.end, frame.epoch))

    def _disk_full(self, why: str) -> None:
        """The disk refused us: stay up, stop fetching for a while, say so in `status`, try again."""
        self._no_space_times += 1
        n = self._no_space_times
        if n <= 3 or n % 50 == 0:
            self.host.events.error("no_space", offset=self.core.end, times=n, error=why,
                                   action="free space on this node's disk; it resumes by itself")
        self.no_space = why
        self._backoff(min(NO_SPACE_BACKOFF_MAX, NO_SPACE_BACKOFF_MIN * 2 ** min(n - 1, 4)))

    def _truncate(self, d: Truncate) -> None:
        host = self.host
        last = self.core.last_epoch
        host.snapshots.truncating(d.offset)  # no snapshot may describe bytes the cut removes
        try:
            n, saved = host.log.truncate_suffix(d.offset, last)
        except (WalFsyncError, WalPoisoned, OSError) as e:
            raise FsyncFailure(f"truncating the divergent suffix failed: {e}") from None
        host.events.warn("divergent_suffix_truncated", offset=d.offset, bytes=n, last_epoch=last,
                         leader=self.leader, leader_epoch=d.leader_epoch, saved_to=saved)
        st = host.state
        st.trim_history(d.offset)
        host.save_state(st)
        # Replay the shortened log into a fresh state, then follow again.
        self.transition = Transition(host.state, "truncated a divergent suffix", reload=True)

    # -- requests from clients and other followers ----------------------------------

    def on_client(self, frames: list[bytes], who: Sender) -> None:
        host = self.host
        now = host.clock.now()
        decoded = decode_client(host.client, frames, self.counters, who, self.cfg.cluster_id, host.events, now)
        if decoded is None:
            return
        envelope, req = decoded
        if req.op in WRITE_OPS or req.op in ("watch", BATCH_OP):
            # A watch streams committed records: only the leader knows the commit point.
            host.client.send([*envelope, answers.not_leader(host, req.id)])
        elif req.op == "status":
            host.client.send([*envelope, ok_reply(req.id, status=answers.status(host, {
                "leader_end": self.core.leader_end, "leader_commit": self.core.leader_commit,
                "connected": host.link.connected and now - self.last_heard < self.silence_limit,
                "no_space": self.no_space,
            }))])
        elif req.op in ("get", "ping"):
            host.client.send([*envelope, answers.read_reply(host, req, stale=True, envelope=envelope)])
        elif req.op == SNAPSHOT_OP:
            host.snapshots.request(host.client, envelope, req.id, host.kv)
        else:
            body, t = answers.admin(host, req, self.transition)
            host.client.send([*envelope, body])
            if t is not None:
                self.transition = t

    def on_peer_fetch(self, frames: list[bytes], who: Sender) -> None:
        """Another follower fetching from us: we do not lead; say who does."""
        host = self.host
        v = authorize_fetch(frames, who, self.cfg.names, self.cfg.cluster_id, self.counters, host.events,
                            host.clock.now())
        if not isinstance(v, Fetch):
            return  # dropped, or another cluster's node: it learns nothing from us, and we nothing from it
        if v.epoch > self.core.epoch:
            host.peers.ask_now()
        host.repl.send(frames[:1], encode(NotLeader(self.core.epoch, host.state.leader)))

    on_fetch = on_peer_fetch
