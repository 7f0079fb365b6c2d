"""The node's coordinator port: etcd calls off the main loop, their outcomes as events.

A thread talks to etcd (daemon/failover/etcd.py) and posts typed events;
the driver hands them to the role each turn. The thread decides nothing
that the pure rules in daemon/failover/lease.py do not: as leader it takes
or renews the leader key; as follower it watches for the key's absence
and, when `lease.candidate` says so, stands. Only the main loop changes
the node's state (it fences and promotes itself by daemon/node/epochs.py
when told it won), and only the main loop's `Lease` gates replies.

`NoCoordinator` is the port when [coordinator] kind = "none" (and in the
simulator): leases always hold, nothing is posted.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from daemon.failover import lease as rules
from daemon.failover.etcd import Compare, EtcdClient, EtcdError, EtcdUnavailable, Get, LeaseLost, Put
from daemon.ops import logs


@dataclass(frozen=True, slots=True)
class LeaseProven:
    """A grant or keepalive for the leadership of `epoch`, sent at `sent_at`, came back with `ttl`."""
    epoch: int
    sent_at: float
    ttl: int
    gen: int = 0  # the release generation the thread saw before it sent


@dataclass(frozen=True, slots=True)
class LeaseGone:
    """The leadership of `epoch` has no lease any more (expired, revoked, or the key names another)."""
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Won:
    """This node took the leader key for `epoch`; its status in the election had `end`."""
    epoch: int
    end: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeaderIs:
    """The leader key names `name` at `epoch` (a follower asks its peers at once)."""
    name: str
    epoch: int


Event = LeaseProven | LeaseGone | Won | LeaderIs


class NoCoordinator:
    """kind = "none": manual failover; every lease holds."""

    enabled = False
    ttl = 0.0

    def __init__(self) -> None:
        self.lease = rules.Lease()

    def lease_ok(self, now: float) -> bool:
        return True

    def take(self) -> list[Event]:
        return []

    def publish(self, role: str, epoch: int) -> None:
        pass

    def heartbeat(self, now: float, problem: str | None = None) -> None:
        pass

    def release(self, reason: str, self_fence: bool = False) -> None:
        pass

    def hand_off(self, to: str, epoch: int, reason: str) -> None:
        raise AssertionError("no lease to hand off without a coordinator")  # the leader refuses first

    def status(self, now: float) -> dict[str, Any]:
        return {"coordinator": "none"}

    def close(self) -> None:
        pass


class EtcdCoordinator:
    """kind = "etcd": the thread and the lease the main loop checks."""

    enabled = True

    def __init__(self, cfg: Any, name: str, statuses: Callable[[float], dict[str, dict[str, Any] | None]],
                 wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        c = cfg.coordinator
        self.name = name
        self.ttl = float(c.lease_ttl)
        self.prefix = c.prefix
        self.ack_replicas = cfg.ack_replicas
        self.allow_data_loss = c.allow_data_loss
        self.early_revoke_guard = c.early_revoke_guard
        self.etcd = EtcdClient(list(c.endpoints), timeout=min(1.0, max(0.2, self.ttl / 4)))
        self.statuses = statuses
        self.wake = wake
        self.clock = clock
        self.lease = rules.Lease()  # the main loop's; the thread never touches it
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._role: tuple[str, int] = ("follower", 0)  # published by the main loop
        self._release = threading.Event()
        # Each release() starts a new generation; a proof from an older one is ignored (a keepalive in
        # flight when the main loop gave the lease up must not bring it back: review finding 1).
        self._gen = 0
        # The main loop's last turn and what it said of its health (review finding 2: a leader whose loop
        # or disk is stuck, or which cannot commit, must not keep the lease by the thread's renewals).
        self._beat: tuple[float, str | None] = (clock(), None)
        self._not_renewing = ""
        self._stop = threading.Event()
        self._lease_id = 0  # the etcd lease this node holds, 0 if none
        self._led = 0  # the epoch that lease is for
        self._won_at = 0.0
        self._started = 0.0
        self._holder: rules.Holder | None = None
        self._last_error = ""
        self.renewals = 0
        self.elections = 0
        self.self_fences = 0
        self._step_gen = 0
        self._handoff: tuple[str, int] | None = None  # set by hand_off, put in etcd before the revoke
        self._told_at = -math.inf  # when LeaderIs was last posted
        self._thread = threading.Thread(target=self._run, name="zwal-coordinator", daemon=True)

    # -- the main loop's side ---------------------------------------------------------------

    def start(self, role: str, epoch: int) -> None:
        self._role = (role, epoch)
        self._started = self.clock()
        self._thread.start()

    def lease_ok(self, now: float) -> bool:
        return self.lease.valid(now)

    def take(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return out
            if isinstance(ev, LeaseProven):
                if ev.gen != self._gen:
                    continue  # sent before a release: that lease is given up for good
                if ev.epoch == self._role[1]:
                    self.lease.proven(ev.sent_at, ev.ttl)
            elif isinstance(ev, LeaseGone):
                self.lease.lost()
            out.append(ev)

    def publish(self, role: str, epoch: int) -> None:
        if (role, epoch) != self._role:
            if role != "leader" or epoch != self._role[1]:
                self.lease = rules.Lease()  # a new role proves its own lease
            self._role = (role, epoch)
        self._beat = (self.clock(), None)

    def heartbeat(self, now: float, problem: str | None = None) -> None:
        """The main loop turned at `now`; `problem` says why this leader should not keep its lease."""
        self._beat = (now, problem)

    def release(self, reason: str, self_fence: bool = False) -> None:
        """Give the lease back (a leader stepping down, or a won election the node refused)."""
        logs.event("lease_release", reason=reason)
        self.self_fences += self_fence
        self.lease.lost()
        self._release.set()  # first: a thread that sees the new generation sees the release too
        self._gen += 1

    def hand_off(self, to: str, epoch: int, reason: str) -> None:
        """A switchover: give the lease up (at once, as release) and, first in etcd, name `to` for the election."""
        self._handoff = (to, epoch)
        self.release(reason)

    def status(self, now: float) -> dict[str, Any]:
        h = self._holder
        return {"coordinator": "etcd", "lease_holder": h.name if h else None, "lease_epoch": h.epoch if h else None,
                "lease_remaining_s": round(self.lease.remaining(now), 3), "lease_ttl": self.ttl,
                "coordinator_error": self._last_error or None,
                "lease_renewals": self.renewals, "elections": self.elections, "self_fences": self.self_fences}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.ttl)
        if self._lease_id:
            try:
                self.etcd.revoke(self._lease_id)
            except (EtcdUnavailable, EtcdError):
                pass
        self.etcd.close()

    # -- the thread ---------------------------------------------------------------------------

    def _post(self, ev: Event) -> None:
        self._events.put(ev)
        self.wake()

    def _run(self) -> None:
        while not self._stop.is_set():
            pause = rules.renew_interval(self.ttl)
            try:
                pause = self._step() or pause
                self._last_error = ""
            except LeaseLost as e:
                self._drop(f"etcd says the lease is gone: {e}")
            except (EtcdUnavailable, EtcdError) as e:
                if str(e) != self._last_error:
                    logs.warn("coordinator_unavailable", reason=str(e),
                              action="a leader stops acknowledging when its lease runs out; check etcd")
                self._last_error = str(e)
            except Exception as e:  # a bug here must not kill the thread silently
                logs.error("coordinator_error", error=f"{type(e).__name__}: {e}")
                self._last_error = str(e)
            self._stop.wait(pause)

    def _drop(self, reason: str) -> None:
        if self._led:
            self._post(LeaseGone(self._led, reason))
        self._lease_id, self._led = 0, 0

    def _revoke(self) -> None:
        if self._lease_id:
            lid = self._lease_id
            self._lease_id, self._led = 0, 0
            self.etcd.revoke(lid)

    def _step(self) -> float | None:
        self._step_gen = self._gen  # before the release check (release() sets the flag, then the generation)
        role, epoch = self._role
        if self._release.is_set():
            self._release.clear()
            ho, self._handoff = self._handoff, None
            if ho is not None:
                # Before the revoke: the followers that find the key gone find the handoff too.
                self.etcd.put(rules.handoff_key(self.prefix), rules.encode_handoff(ho[0], self.name, ho[1]))
                logs.event("handoff_put", to=ho[0], epoch=ho[1])
            self._revoke()
            return None
        if self._lease_id and (role != "leader" or epoch != self._led):
            if role == "follower" and epoch < self._led and self.clock() - self._won_at < self.ttl:
                self._renew()  # won: the main loop is becoming leader
                return None
            self._revoke()  # stepped down (or never took the leadership it won)
            return None
        if role == "leader":
            why = self._unfit()
            if why:
                if why != self._not_renewing:
                    logs.warn("lease_not_renewed", epoch=epoch, reason=why,
                              action="nothing: the lease runs out, this leader steps down and the election "
                                     "picks another")
                self._not_renewing = why
                return None
            self._not_renewing = ""
            if self._lease_id:
                self._renew()
            else:
                self._acquire(epoch)
            return None
        return self._watch(epoch)

    def _outwait(self, lid: int, until: float) -> float | None:
        """Keep lease `lid` alive until `until`; the send time of the last keepalive, None if stopped."""
        sent = self.clock()
        while True:
            left = until - self.clock()
            if left <= 0:
                return sent
            if self._stop.wait(min(rules.renew_interval(self.ttl), left)):
                return None
            sent = self.clock()
            self.etcd.keepalive(lid)  # LeaseLost: _run drops the lease, and the next election runs

    def _unfit(self) -> str:
        """Why the leader's lease must not be renewed now ("" if it may)."""
        at, problem = self._beat
        silent = self.clock() - at
        if silent > rules.usable(self.ttl):
            return f"the main loop has not turned for {silent:.2f} s"
        return problem or ""

    def _renew(self) -> None:
        gen = self._step_gen
        sent = self.clock()
        ttl = self.etcd.keepalive(self._lease_id)
        self.renewals += 1
        self._post(LeaseProven(self._led, sent, ttl, gen))

    def _txn(self, epoch: int, expect_mod: int) -> tuple[bool, float, int, int]:
        sent = self.clock()
        lid, ttl = self.etcd.grant(int(self.ttl))
        h = rules.Holder(self.name, epoch)
        r = self.etcd.txn([Compare(rules.leader_key(self.prefix), "CREATE", 0),
                           Compare(rules.epoch_key(self.prefix), "MOD", expect_mod)],
                          [Put(rules.epoch_key(self.prefix), str(epoch).encode()),
                           Put(rules.leader_key(self.prefix), rules.encode_holder(h), lid)],
                          [Get(rules.leader_key(self.prefix))])
        if not r.succeeded:
            self.etcd.revoke(lid)
            return False, sent, 0, 0
        self._holder = h
        return True, sent, lid, ttl

    def _acquire(self, epoch: int) -> None:
        """A leader without a lease (a start, a restart, a promotion by hand) takes the key for its epoch."""
        kv = self.etcd.get(rules.leader_key(self.prefix))
        if kv is not None:
            h = rules.decode_holder(kv.value)
            self._holder = h
            if h == rules.Holder(self.name, epoch):
                self._lease_id, self._led = kv.lease, epoch  # our own key, from before a restart
                self._renew()
            elif h is None or h.epoch >= epoch:
                self._post(LeaseGone(epoch, f"the leader key names {h} (epoch {h.epoch if h else '?'}): this "
                                            f"node's epoch {epoch} is not the cluster's leadership"))
            # else: an older holder, fenced by the promotion that made us leader; its key goes soon
            return
        ek = self.etcd.get(rules.epoch_key(self.prefix))
        if rules.decode_epoch(ek.value if ek else None) > epoch:
            self._post(LeaseGone(epoch, f"etcd has allocated epoch {rules.decode_epoch(ek.value if ek else None)}"))
            return
        ok, sent, lid, ttl = self._txn(epoch, ek.mod_revision if ek else 0)
        if ok:
            self._lease_id, self._led = lid, epoch
            logs.event("lease_taken", epoch=epoch, ttl=ttl)
            self.renewals += 1
            self._post(LeaseProven(epoch, sent, ttl, self._step_gen))

    def _watch(self, epoch: int) -> float | None:
        """A follower: who holds the key; with none, the election's rules."""
        kv = self.etcd.get(rules.leader_key(self.prefix))
        if kv is not None:
            h = rules.decode_holder(kv.value)
            if h is not None and (h != self._holder or self.clock() - self._told_at >= self.ttl / 2):
                # Again every TTL/2: the main loop drops events while its role changes, and a follower
                # must have adopted the holder's epoch before the holder's second read of the copies.
                self._holder, self._told_at = h, self.clock()
                self._post(LeaderIs(h.name, h.epoch))
            return min(0.5, self.ttl / 4)
        self._holder = None
        if self.ack_replicas == 0 and not self.allow_data_loss:
            return None
        if self.clock() - self._started < self.ttl:
            return None  # a node just started: a leader restarting beside it takes its key back first
        sts = self.statuses(max(0.25, min(1.0, self.ttl / 4)))  # read after the key was found missing
        ek = self.etcd.get(rules.epoch_key(self.prefix))
        ho = self.etcd.get(rules.handoff_key(self.prefix))
        prefer = rules.handoff_for(ho.value if ho else None, rules.decode_epoch(ek.value if ek else None))
        d = rules.candidate(self.name, sts, self.ack_replicas, self.allow_data_loss,
                            rules.decode_epoch(ek.value if ek else None), prefer)
        if isinstance(d, rules.Wait):
            logs.event("election_wait", reason=d.reason)
            return min(0.5, self.ttl / 4)
        missing_at = self.clock()
        ok, sent, lid, ttl = self._txn(d.epoch, ek.mod_revision if ek else 0)
        if not ok:
            return 0.05
        self._lease_id, self._led, self._won_at = lid, d.epoch, self.clock()
        wait = rules.old_lease_wait(sts, max(self.ttl, float(ttl))) if self.early_revoke_guard else 0.0
        if wait > 0:
            down = sorted(n for n, s in sts.items() if s is None or s.get("role") == "leader")
            logs.event("election_grace", epoch=d.epoch, seconds=wait,
                       reason=f"{', '.join(down)} did not answer or answered as leader: waiting out any old "
                              "lease before reading the copies again (docs/failover.md)")
            last = self._outwait(lid, missing_at + wait)
            if last is None:
                return None
            sent = last
            sts = self.statuses(max(0.25, min(1.0, self.ttl / 4)))
            again = rules.candidate(self.name, sts, self.ack_replicas, self.allow_data_loss, d.epoch - 1, prefer)
            # Still this node; the others may already report d.epoch (a follower follows etcd's key).
            if not (isinstance(again, rules.Stand) and again.epoch <= d.epoch + 1):
                why = again.reason if isinstance(again, rules.Wait) else f"the epoch would be {again.epoch}"
                logs.event("election_abandoned", epoch=d.epoch, reason=why)
                self._revoke()
                return 0.05
            self._won_at = self.clock()
        self.elections += 1
        logs.event("election_won", epoch=d.epoch, ttl=ttl, reason=d.reason)
        me = sts.get(self.name) or {}
        self._post(Won(d.epoch, int(me.get("end") or 0), d.reason))
        self._post(LeaseProven(d.epoch, sent, ttl, self._step_gen))
        return None
