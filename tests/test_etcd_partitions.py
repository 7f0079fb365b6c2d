"""Automatic failover through etcd under real network faults (issue 21, item 8): each node in its own network
namespace (tests/netns.py), a real 3-member etcd on the bridge's second address, so that one node can lose etcd
and nothing else. The verdicts come from the drill's ledger and the linearizability checker (as in
tests/test_partitions.py): no acknowledged write lost, no stale read marked fresh, and no two leaders
acknowledging at overlapping times (daemon/failover/drill.py, check_leaders)."""

from __future__ import annotations

import time

import pytest

from daemon.failover.drill import Ledger, check_leaders
from harness import Cluster, wait_until
from netns import make_net
from tests.etcd_cluster import EtcdCluster
from tests.test_partitions import load_on, verify

pytestmark = pytest.mark.slow

NAMES = ["node1", "node2", "node3"]


@pytest.fixture
def world(tmp_path, make_cluster):
    net = make_net(NAMES)
    etcd = EtcdCluster(str(tmp_path / "etcd"), host=net.service_ip)
    try:
        etcd.start()
        etcd.wait_ready()
        c = make_cluster(3, ack_replicas=1, hosts=net.ip, wraps=net.wraps(),
                         coordinator={"kind": "etcd", "endpoints": etcd.endpoints, "lease_ttl": 1})
        c.start_all()
        wait_until(lambda: (st := c.status("node1"))["role"] == "leader" and st.get("lease_remaining_s", 0) > 0,
                   20, "node1 holding the leader lease")
        yield c, net, etcd
    finally:
        etcd.stop_all()
        net.down()


def leader_of_newer_epoch(c: Cluster, old: str) -> str | None:
    for n in c.names:
        try:
            st = c.status(n, 0.5)
        except Exception:
            continue
        if n != old and st["role"] == "leader" and st["epoch"] >= 2 and st.get("lease_holder") == n:
            return n
    return None


def test_a_leader_cut_off_from_etcd_self_fences_and_another_is_elected(world):
    c, net, _ = world
    ledger = Ledger()
    load = load_on(c, ledger, "etcd-cut")
    try:
        wait_until(lambda: len(ledger.acked) >= 30, 20, "writes flowing")
        t0 = time.monotonic()
        net.cut_from_service("node1")  # node1 still reaches its followers and its clients
        new = wait_until(lambda: leader_of_newer_epoch(c, "node1"), 20, "a leader elected without node1")
        took = time.monotonic() - t0
        wait_until(lambda: c.status("node1", 1.0)["role"] == "follower", 10, "node1 stepping down")
        n = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) > n + 20, 20, f"writes acknowledged by {new}")
        net.heal_service("node1")
        time.sleep(1.0)
    finally:
        load.finish()
    assert took < 10, took
    log = open(c.node_log("node1")).read()
    assert "event=self_fenced" in log
    assert not check_leaders(ledger.acked)
    out = verify(c, ledger)
    assert out["leader"] in ("node1", "node2", "node3")


def test_a_follower_cut_off_from_etcd_changes_nothing(world):
    c, net, _ = world
    ledger = Ledger()
    load = load_on(c, ledger, "follower-cut")
    try:
        wait_until(lambda: len(ledger.acked) >= 30, 20, "writes flowing")
        net.cut_from_service("node3")
        time.sleep(4.0)  # four lease TTLs: node1 renews, node3 keeps fetching
        st = c.status("node1", 1.0)
        assert st["role"] == "leader" and st["epoch"] == 1 and st["lease_holder"] == "node1"
        assert c.status("node3", 1.0)["role"] == "follower"
        net.heal_service("node3")
    finally:
        load.finish()
    assert not check_leaders(ledger.acked)
    assert {a.epoch for a in ledger.acked} == {1}
    verify(c, ledger)


def test_a_leader_cut_off_from_its_followers_but_not_from_etcd_lets_its_lease_go(world):
    """It cannot commit (K = 1), so it stops renewing after 2 x TTL and the followers elect one of them."""
    c, net, _ = world
    ledger = Ledger()
    load = load_on(c, ledger, "leader-partitioned")
    try:
        wait_until(lambda: len(ledger.acked) >= 30, 20, "writes flowing")
        net.isolate("node1", ["node2", "node3"])
        new = wait_until(lambda: leader_of_newer_epoch(c, "node1"), 25, "a leader elected on the majority side")
        n = len(ledger.acked)
        wait_until(lambda: len(ledger.acked) > n + 20, 20, f"writes acknowledged by {new}")
        net.heal_all()
        time.sleep(1.0)
    finally:
        load.finish()
    assert "lease_not_renewed" in open(c.node_log("node1")).read()
    assert not check_leaders(ledger.acked)
    verify(c, ledger)
