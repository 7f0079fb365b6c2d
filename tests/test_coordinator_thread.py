"""The coordinator thread's guards (daemon/failover/coordinator.py), driven step by step over a scripted etcd:
a release is final for the lease it gives up, a leader whose loop or disk is stuck stops renewing, and the
winner of an election waits out an old lease that etcd may have ended early (etcd#15247)."""

from types import SimpleNamespace

from daemon.failover.coordinator import EtcdCoordinator, LeaseProven, Won
from daemon.failover.etcd import KV, TxnResult


class ScriptedEtcd:
    """Records the calls; a keepalive's answer can be held back to model a renewal in flight."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.during_keepalive = None

    def keepalive(self, lease_id: int) -> int:
        self.calls.append(("keepalive", lease_id))
        if self.during_keepalive is not None:
            self.during_keepalive()
        return 1

    def revoke(self, lease_id: int) -> None:
        self.calls.append(("revoke", lease_id))

    # An election's calls: no leader key, the epoch key at epoch 1, every grant and txn succeeds.
    def get(self, key: str) -> KV | None:
        return KV(b"1", 5, 5, 0) if key.endswith("/epoch") else None

    def grant(self, ttl: int) -> tuple[int, int]:
        self.calls.append(("grant", ttl))
        return 77, ttl

    def txn(self, compare, success, failure=None) -> TxnResult:
        self.calls.append(("txn",))
        return TxnResult(True, 6)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def coordinator(ttl: int = 1) -> tuple[EtcdCoordinator, ScriptedEtcd, Clock]:
    cfg = SimpleNamespace(ack_replicas=1, coordinator=SimpleNamespace(
        lease_ttl=ttl, prefix="/zwal/t", allow_data_loss=False, early_revoke_guard=True, endpoints=("http://127.0.0.1:1",)))
    clock = Clock()
    c = EtcdCoordinator(cfg, "node1", lambda timeout: {}, lambda: None, clock=clock)
    etcd = ScriptedEtcd()
    c.etcd = etcd  # the thread is never started: each _step is called by the test
    c.publish("leader", 3)
    c._lease_id, c._led = 42, 3
    return c, etcd, clock


def test_a_renewal_in_flight_when_the_lease_is_released_does_not_bring_it_back():
    c, etcd, clock = coordinator()
    c.heartbeat(clock.t)
    c._step()  # a renewal: the main loop's lease holds
    c.take()
    assert c.lease_ok(clock.t) and etcd.calls == [("keepalive", 42)]
    # The next keepalive is on its way when the main loop gives the lease up (a self-fence).
    etcd.during_keepalive = lambda: c.release("self-fence", self_fence=True)
    clock.t += 0.1
    c._step()
    etcd.during_keepalive = None
    assert etcd.calls == [("keepalive", 42)] * 2 and not c._events.empty()  # the proof came back ...
    evs = c.take()
    assert not any(isinstance(e, LeaseProven) for e in evs)  # ... and is dropped:
    assert not c.lease_ok(clock.t)  # the lease stays given up
    c._step()  # the thread's next step revokes it
    assert etcd.calls[-1] == ("revoke", 42) and not c.lease_ok(clock.t)


def test_a_leader_whose_main_loop_is_silent_stops_renewing():
    c, etcd, clock = coordinator()
    c.heartbeat(clock.t)
    clock.t += 0.5
    c._step()
    assert etcd.calls == [("keepalive", 42)]
    clock.t += 0.4  # 0.9 s since the loop turned: more than the usable 0.8 s of a 1 s lease
    c._step()
    assert etcd.calls == [("keepalive", 42)], "renewed for a main loop that could not use the lease"
    c.heartbeat(clock.t)  # the loop turns again: renewals resume
    c._step()
    assert etcd.calls == [("keepalive", 42), ("keepalive", 42)]


def test_a_leader_that_reports_a_problem_stops_renewing():
    c, etcd, clock = coordinator()
    c.heartbeat(clock.t, "a batch has been on its way to disk for 0.90 s")
    c._step()
    assert etcd.calls == []
    c.heartbeat(clock.t, None)
    c._step()
    assert etcd.calls == [("keepalive", 42)]


def leader(end: int) -> dict:
    return {"role": "leader", "epoch": 1, "last_epoch": 1, "end": end}


def follower(end: int, **kw) -> dict:
    return {"role": "follower", "epoch": 1, "last_epoch": 1, "end": end, **kw}


class Stop:
    """The thread's stop flag; each wait moves the scripted clock on instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def wait(self, t: float) -> bool:
        self.clock.t += t
        return False

    def is_set(self) -> bool:
        return False


def candidate_node2(reads: list[dict]) -> tuple[EtcdCoordinator, ScriptedEtcd, Clock, list[float]]:
    """node2, a follower that finds the leader key gone; `reads` are the statuses it gets, one per read."""
    cfg = SimpleNamespace(ack_replicas=1, coordinator=SimpleNamespace(
        lease_ttl=1, prefix="/zwal/t", allow_data_loss=False, early_revoke_guard=True, endpoints=("http://127.0.0.1:1",)))
    clock = Clock()
    read_at: list[float] = []

    def statuses(timeout: float) -> dict:
        read_at.append(clock.t)
        return reads.pop(0)

    c = EtcdCoordinator(cfg, "node2", statuses, lambda: None, clock=clock)
    etcd = ScriptedEtcd()
    c.etcd, c._stop = etcd, Stop(clock)
    c._started = clock.t - 10
    c.publish("follower", 1)
    return c, etcd, clock, read_at


def test_an_old_leader_that_still_answers_as_leader_is_waited_out_before_the_copies_are_read_again():
    # etcd let node1's key go while node1 still says it leads (an early revoke): node1 may acknowledge until
    # its own deadline, so node2 keeps its new lease alive for a TTL and decides on what the copies say then.
    c, etcd, clock, read_at = candidate_node2([
        {"node1": leader(500), "node2": follower(400), "node3": follower(300)},
        # node3 already follows etcd's key: it reports the epoch node2 won.
        {"node1": follower(500, led_epoch=1), "node2": follower(520), "node3": {**follower(520), "epoch": 2}},
    ])
    c._step()
    assert len(read_at) == 2 and read_at[1] - read_at[0] >= 1.0, read_at  # a whole TTL between the reads
    assert etcd.calls.count(("keepalive", 77)) >= 2  # its own lease kept alive meanwhile
    won = [e for e in c.take() if isinstance(e, Won)]
    assert won and won[0].epoch == 2 and won[0].end == 520  # the end it has now, with what node1 acked since


def test_an_election_is_abandoned_when_the_copies_read_after_the_wait_name_another():
    c, etcd, clock, read_at = candidate_node2([
        {"node1": None, "node2": follower(400), "node3": follower(300)},
        {"node1": follower(600, led_epoch=1), "node2": follower(400), "node3": follower(600)},
    ])
    c._step()
    assert len(read_at) == 2 and read_at[1] - read_at[0] >= 1.0
    assert not [e for e in c.take() if isinstance(e, Won)]
    assert etcd.calls[-1] == ("revoke", 77) and c._lease_id == 0  # the key goes back for the right node


def test_no_wait_when_every_node_answered_and_none_as_leader():
    c, etcd, clock, read_at = candidate_node2([
        {"node1": follower(300, led_epoch=1), "node2": follower(400), "node3": follower(300)},
    ])
    c._step()
    assert len(read_at) == 1 and ("keepalive", 77) not in etcd.calls
    assert [e.epoch for e in c.take() if isinstance(e, Won)] == [2]


def test_with_the_guard_off_the_winner_does_not_wait():
    # [coordinator] early_revoke_guard = false: for an etcd with the fix for etcd#15247 only.
    c, etcd, clock, read_at = candidate_node2([
        {"node1": None, "node2": follower(400), "node3": follower(300)},
    ])
    c.early_revoke_guard = False
    c._step()
    assert len(read_at) == 1 and ("keepalive", 77) not in etcd.calls
    assert [e.epoch for e in c.take() if isinstance(e, Won)] == [2]
