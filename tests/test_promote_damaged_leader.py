"""Issue 19: a damaged leader tail with one follower gone heals, and promotes without --force.

Real 3-node cluster, K = 1. node3 goes down for good; node1 (the leader)
is stopped and the bytes of its last record (acknowledged: node2 holds it)
are flipped on its disk; it restarts and its recovery cuts the record
(`damaged_end`). It used to step down, and `zwal promote node2` then
refused ("only 1 of 2 follower(s) answered with an intact log") though
node2's log reaches node1's damaged_end. Now node1 repairs the record from
node2 and leads on by itself (daemon/node/repair.py); a switchover to
node2 afterwards needs no --force, and nothing acknowledged is lost. The
promotion rule for a node still damaged is covered by
tests/test_promote_rules.py (a damaged node is a copy of a candidate that
reaches its damaged_end).
"""

from __future__ import annotations

import pytest

from daemon.client.blocking import Client
from daemon.failover.drill import damage_last_record
from daemon.wal import iter_frames
from harness import wait_until

pytestmark = pytest.mark.slow

FAST = dict(replication_timeout=1.5, heartbeat_interval=0.2, peer_probe_interval=0.5)


def test_a_damaged_leader_with_a_follower_gone_heals_and_a_switchover_needs_no_force(make_cluster):
    c = make_cluster(3, ack_replicas=1, **FAST)
    c.start_all()
    cl = c.client()
    for i in range(5):
        cl.set(f"k{i}", f"v{i}")
    c.wait_converged()
    c.kill("node3")  # down for good
    acked = {f"k{i}": f"v{i}" for i in range(5)}
    for i in range(5, 10):
        assert cl.set(f"k{i}", f"v{i}").offset >= 0  # acknowledged: node2 holds it
        acked[f"k{i}"] = f"v{i}"
    c.wait_converged(["node1", "node2"])
    end = c.status("node2")["end"]
    c.kill("node1")
    last = list(iter_frames(c.log_path("node1")))[-1]
    assert last.end == end
    damage_last_record(c.log_path("node1"), last.offset, last.size)
    c.start("node1")
    def healed():
        s = c.status("node1")
        return s if s["role"] == "leader" and s["end"] >= end and not s.get("damaged_end") else None

    wait_until(healed, 60, "node1 to repair its cut record from node2 and lead on, with no operator")
    assert "event=repaired_from_follower" in open(c.node_log("node1")).read()
    r = c.zwal("promote", "node2", "--config", c.config, "--timeout", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr  # provably safe: nothing to warn about
    with Client([c.endpoint("node2")], config=c.config, timeout=1.0, deadline=15.0) as c2:
        assert c2.set("after", "1").offset >= end
        for k, v in acked.items():
            assert c2.get(k) == v.encode(), k
    # node1 follows node2 and converges byte-identically.
    c.wait_converged(["node1", "node2"], timeout=30)
