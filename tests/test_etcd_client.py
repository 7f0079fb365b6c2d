"""The etcd client (daemon/failover/etcd.py) against a real 3-member etcd."""

import threading
import time

from daemon.failover.etcd import EtcdUnavailable, LeaseLost
from tests.harness import wait_until
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)


def test_lease_ttl_is_read_back_and_a_key_under_it_vanishes(etcd3):  # noqa: F811
    c = etcd3.client()
    lease, ttl = c.grant(1)
    assert ttl == 1  # the test etcd's election timeout lets a 1 s lease be real
    assert c.create("/t/k", b"v", lease)
    assert c.get("/t/k").lease == lease
    assert c.keepalive(lease) == 1
    time.sleep(2.2)
    assert c.get("/t/k") is None
    try:
        c.keepalive(lease)
        raise AssertionError("keepalive of an expired lease succeeded")
    except LeaseLost:
        pass


def test_create_is_exclusive_and_cas_checks_the_revision(etcd3):  # noqa: F811
    wins = []

    def race(i: int) -> None:
        if etcd3.client().create("/t/leader", str(i).encode()):
            wins.append(i)

    ts = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1
    c = etcd3.client()
    kv = c.get("/t/leader")
    assert kv.value == str(wins[0]).encode()
    assert not c.cas("/t/leader", kv.mod_revision - 1, b"x")
    assert c.cas("/t/leader", kv.mod_revision, b"y")
    assert c.get("/t/leader").value == b"y"
    assert c.cas("/t/new", 0, b"z") and not c.cas("/t/new", 0, b"w")


def test_a_killed_member_is_rotated_past_and_none_left_is_unavailable_in_bound(etcd3):  # noqa: F811
    c = etcd3.client(timeout=0.3)
    c.put("/t/a", b"1")
    etcd3.kill(etcd3.names[c._i])
    # Another member answers, once the two left have elected an etcd leader (election timeout 0.5 s).
    t0 = time.monotonic()
    wait_until(lambda: c.get("/t/a").value == b"1", 5, "a read from the members left")
    assert time.monotonic() - t0 < 3
    etcd3.stop_all()
    t0 = time.monotonic()
    try:
        c.get("/t/a")
        raise AssertionError("a read with every member down succeeded")
    except EtcdUnavailable:
        pass
    assert time.monotonic() - t0 <= 3 * 0.3 + 0.5
