"""Replication with real processes: identical logs, crashes, late joiners, pauses, K."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from daemon.client.blocking import Client, NotEnoughReplicas, NotLeader
from daemon.client.pipeline import Pipeline
from daemon.wal import CLEAN, iter_frames, scan_path
from harness import wait_until

pytestmark = pytest.mark.slow


class Load:
    """`clients` concurrent writers (one request in flight each) in the background."""

    def __init__(self, c, clients: int, total: int, tag: str) -> None:
        self.acked: list[tuple[bytes, int]] = []
        self.failed: list = []
        eps = [c.endpoint(n) for n in c.names]
        per = total // clients

        def run(i: int) -> None:
            p = Pipeline(eps, timeout=2.0, deadline=60.0, creds=c.creds())
            items = iter([("set", f"{tag}-{i}-{n}".encode(), os.urandom(30)) for n in range(per)])
            r = p.run_writes(items, 1, on_ack=lambda k, v, rep: self.acked.append((k, rep["offset"])))
            self.failed.extend(r.failed)
            p.close()

        self.threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in self.threads:
            t.start()

    def wait(self, timeout: float = 120) -> None:
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads)


def check_all(c, acked: list[tuple[bytes, int]]) -> None:
    c.wait_converged(timeout=60)
    for n in c.names:
        assert scan_path(c.log_path(n)).status == CLEAN
    disk = {f.offset: r.key for f in iter_frames(c.log_path("node1")) for r in [f.record()]}
    missing = [(k, o) for k, o in acked if disk.get(o) != k]
    assert missing == [], missing[:5]


def test_twenty_thousand_writes_k1_three_identical_logs(make_cluster):
    c = make_cluster(3, ack_replicas=1)
    c.start_all()
    load = Load(c, 8, 20000, "a")
    load.wait()
    assert len(load.acked) == 20000 and load.failed == []
    check_all(c, load.acked)


def test_follower_killed_mid_load_recovers_and_converges(make_cluster):
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    c.start_all()
    load = Load(c, 8, 6000, "b")
    wait_until(lambda: len(load.acked) > 1500, 30, "load to be under way")
    c.kill("node2")
    time.sleep(0.5)
    c.start("node2")
    load.wait()
    assert load.failed == []
    check_all(c, load.acked)
    assert "event=recovered" in open(c.node_log("node2")).read()


def test_late_follower_catches_up_from_zero_under_load(make_cluster):
    c = make_cluster(3, ack_replicas=1, fetch_max_bytes=65536)
    c.start("node1")
    c.start("node2")
    first = Load(c, 8, 10000, "c")
    first.wait()
    assert len(first.acked) == 10000
    load = Load(c, 4, 4000, "d")
    c.start("node3")  # an empty log: it catches up in 64 KiB chunks while writes go on
    load.wait()
    check_all(c, first.acked + load.acked)


def test_paused_follower_catches_up_and_leader_memory_stays_bounded(make_cluster):
    c = make_cluster(3, ack_replicas=1, replication_timeout=1.0, heartbeat_interval=0.2)
    c.start_all()
    warm = Load(c, 8, 3000, "e")
    warm.wait()
    leader = psutil.Process(c.procs["node1"].pid)
    rss_before = leader.memory_info().rss
    load = Load(c, 8, 8000, "f")
    wait_until(lambda: len(load.acked) > 500, 30, "load")
    c.signal("node3", signal.SIGSTOP)
    time.sleep(3)
    lag = next(f for f in c.status("node1")["followers"] if f["name"] == "node3")
    assert lag["lag_bytes"] > 0 and not lag["in_sync"]
    c.signal("node3", signal.SIGCONT)
    load.wait()
    rss_after = leader.memory_info().rss
    assert rss_after - rss_before < 50 * 2**20, (rss_before, rss_after)
    check_all(c, warm.acked + load.acked)


def test_k2_with_a_follower_down_refuses_and_k1_goes_on(make_cluster):
    c2 = make_cluster(3, ack_replicas=2, replication_timeout=1.0, heartbeat_interval=0.2)
    c2.start_all()
    cl = c2.client(timeout=3.0, deadline=3.0)
    cl.set("ok-before", "v")
    c2.kill("node3")
    wait_until(lambda: not next(f for f in c2.status("node1")["followers"] if f["name"] == "node3")["in_sync"],
               10, "node3 to drop out of sync")
    end_before = c2.status("node1")["commit"]
    for i in range(5):
        t0 = time.monotonic()
        with pytest.raises(NotEnoughReplicas):
            cl.set(f"refused{i}", "v")
        assert time.monotonic() - t0 <= 3.5
    assert c2.status("node1")["commit"] == end_before  # nothing was acknowledged
    # No leader can confirm a read under K = 2 with one follower down: ask the follower, stale by choice.
    assert c2.client().read("refused0", endpoint=c2.endpoint("node2"), stale=True).value is None

    c1 = make_cluster(3, ack_replicas=1, replication_timeout=1.0)
    c1.start_all()
    c1.kill("node3")
    cl1 = c1.client(deadline=5.0)
    for i in range(20):
        assert cl1.set(f"fine{i}", "v").epoch == 1


def test_status_stale_reads_and_not_leader(make_cluster):
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client()
    for i in range(10):
        cl.set(f"k{i}", f"v{i}")
    c.wait_converged()
    out = c.zwal("status", "--config", c.config)
    assert out.returncode == 0
    end = c.status("node1")["end"]
    for f in ("node2", "node3"):
        assert f"follower {f}: acked {end}, lag 0 B / 0 records" in out.stdout, out.stdout
    follower = Client([c.endpoint("node2")], config=c.config, timeout=1.0, deadline=2.0)
    r = follower.request("get", key=b"k3", endpoint=c.endpoint("node2"))
    assert r["stale"] is True and r["value"] == b"v3" and r["offset"] == end and r["node"] == "node2"
    with pytest.raises(NotLeader) as e:
        follower.request("set", key=b"x", value=b"y", endpoint=c.endpoint("node2"))
    assert e.value.reply["leader"] == "node1" and e.value.reply["leader_endpoint"] == c.endpoint("node1")
    follower.close()
