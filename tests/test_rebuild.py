"""Rebuilding a node as the README says (move its data directory aside, start
it) loses no write, with real processes (issue 19)."""

from __future__ import annotations

import os
import time

import msgpack
import pytest

from daemon.wal import CLEAN, scan_path
from harness import wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("k", [0, 1])
def test_a_rebuilt_bootstrap_node_never_leads_epoch_1_again_and_rejoins_the_real_leader(make_cluster, k):
    """node1 is the bootstrap leader; node2 leads epoch 2. node1 is rebuilt
    from an empty data directory while 50 writes wait for it in its socket.
    Before the fix it led epoch 1 a second time, acknowledged all 50 (lost),
    and its log was no prefix of node2's. With K = 1 it joins once both
    peers answered (a promotion may have fenced only it and node2)."""
    c = make_cluster(3, ack_replicas=k, heartbeat_interval=0.2, peer_probe_interval=0.3)
    c.start_all()
    cl = c.client()
    for i in range(10):
        cl.set(f"before{i}", "x")
    c.wait_converged()
    forced = c.zwal("promote", "node2", "--config", c.config, "--force", "--timeout", "1")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    wait_until(lambda: c.status("node1")["role"] == "follower" and c.status("node1")["epoch"] == 2, 20,
               "node1 to follow node2")
    new = c.client()
    for i in range(10):
        assert new.set(f"epoch2-{i}", "y").epoch == 2
    c.wait_converged()

    c.stop("node1")
    data_dir = c.data_dir("node1")
    os.rename(data_dir, data_dir + ".aside")  # the documented rebuild

    # Writes queued for node1 before it is up: ZeroMQ delivers them the moment it binds.
    s = c.dealer(c.endpoint("node1"))
    try:
        for i in range(50):
            s.send(msgpack.packb({"id": i + 1, "op": "set", "key": f"queued{i}".encode(), "value": b"q",
                                  "cluster": c.status("node2")["cluster_id"]}))
        c.start("node1")
        replies = []
        deadline = time.monotonic() + 20
        while len(replies) < 50 and time.monotonic() < deadline:
            if s.poll(200):
                replies.append(msgpack.unpackb(s.recv(), raw=False))
    finally:
        s.close(linger=0)
    assert len(replies) == 50, replies[:3]
    acked = [r for r in replies if r.get("ok")]
    assert acked == [], f"the rebuilt node acknowledged {len(acked)} write(s): {acked[:3]}"
    assert {r["error"] for r in replies} == {"not_leader"}, replies[:3]

    # It follows the real leader, and its log becomes a byte-identical copy.
    wait_until(lambda: (lambda st: st["role"] == "follower" and st["epoch"] == 2 and st["leader"] == "node2"
                        and not st["joining"])(c.status("node1")), 30, "node1 to follow node2 at epoch 2")
    assert c.status("node2")["role"] == "leader" and c.status("node2")["epoch"] == 2
    assert new.set("after", "z").epoch == 2
    c.wait_converged()
    assert scan_path(c.log_path("node1")).status == CLEAN
    assert not os.path.exists(os.path.join(data_dir, "first-start.json"))
