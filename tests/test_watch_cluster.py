"""The watch op with real processes: order and offsets, only committed records, redirects, keys, `zwal tail`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from daemon.client.blocking import Client, Forbidden
from harness import wait_until

pytestmark = pytest.mark.slow


def test_watch_streams_committed_writes_in_order_and_k1_hides_uncommitted(make_cluster):
    c = make_cluster(3, ack_replicas=1, replication_timeout=1.0, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client(deadline=10.0)
    acks = [cl.set(f"k{i}", f"v{i}") for i in range(20)]
    got = list(c.client().watch(0, follow=False))
    assert [(r.offset, r.end, r.key, r.value) for r in got] == [
        (a.offset, a.end, f"k{i}".encode(), f"v{i}".encode()) for i, a in enumerate(acks)]
    end = acks[-1].end
    # Both followers gone: a write reaches the leader's disk but is never committed, and no watch shows it.
    c.kill("node2")
    c.kill("node3")
    wait_until(lambda: c.status("node1")["end"] == end and not any(
        f["in_sync"] for f in c.status("node1")["followers"]), 10, "followers to drop out")
    try:
        Client([c.endpoint("node1")], timeout=1.0, deadline=1.0, creds=c.creds()).request(
            "set", key=b"lost", value=b"x", deadline=0.5)
    except Exception:
        pass
    w = c.client(deadline=5.0)
    assert list(w.watch(end, follow=False)) == []
    r = w.request("watch", attempt=3.0, **{"from": end, "wait_ms": 1000})
    assert r["records"] == [] and r["next"] == end


def test_follower_redirects_forbidden_key_refused_and_tail_follow_prints_lines(make_cluster):
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client(deadline=10.0)
    a = cl.set("first", "1")
    # A follower answers not_leader naming the leader; the client follows it.
    f = Client([c.endpoint("node2")], timeout=1.0, deadline=5.0, creds=c.creds())
    assert [r.key for r in f.watch(0, follow=False)] == [b"first"]
    with pytest.raises(Exception) as e:
        f.request("watch", endpoint=c.endpoint("node2"), **{"from": 0})
    assert getattr(e.value, "code", None) == "not_leader"
    # A node key may not watch (docs/security.md): the same refusal as for get.
    n = Client([c.endpoint("node1")], timeout=1.0, deadline=2.0, creds=c.creds("node", "node2"))
    with pytest.raises(Forbidden):
        n.request("get", key=b"first")
    with pytest.raises(Forbidden):
        n.request("watch", **{"from": 0})
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "tail", "--config", c.config, "--follow"],
                         stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        b = cl.set("second", "2")
        cl.set("third", bytes([0xff, 0x00]))
        lines = [json.loads(p.stdout.readline()) for _ in range(2)]
    finally:
        p.terminate()
        p.wait(5)
    assert lines[0] == {"offset": b.offset, "end": b.end, "epoch": 1, "op": "set", "key": "second", "value": "2"}
    assert lines[1]["key"] == "third" and lines[1]["value"] == {"base64": "/wA="}
    assert a.end <= b.offset  # --follow starts at the commit point: "first" was not printed


def test_client_watch_across_a_failover_has_no_gap_and_no_duplicate(make_cluster):
    import threading

    c = make_cluster(3, ack_replicas=1, replication_timeout=1.0, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client(deadline=15.0)
    acked = [cl.set(f"a{i}", "x").offset for i in range(30)]
    seen: list[tuple[int, int]] = []
    stop = threading.Event()
    w = Client([c.endpoint(n) for n in c.names], timeout=1.0, deadline=3.0, creds=c.creds())

    def run() -> None:
        for r in w.watch(0, wait=0.5):
            seen.append((r.offset, r.end))
            if stop.is_set() and len(seen) >= want[0]:
                return

    want = [10**9]
    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: len(seen) >= 30, 10, "the watcher to read the first writes")
    c.wait_converged()
    c.kill("node1")
    promote = c.zwal("promote", "node2", "--config", c.config, "--timeout", "2")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    acked += [cl.set(f"b{i}", "y").offset for i in range(30)]
    want[0] = len(acked)
    stop.set()
    wait_until(lambda: len(seen) >= len(acked), 20, "the watcher to follow the new leader")
    offs = [o for o, _ in seen]
    assert offs == sorted(set(offs)), "a record twice or out of order"
    assert all(seen[i][1] == seen[i + 1][0] for i in range(len(seen) - 1)), "a gap in the stream"
    assert set(acked) <= set(offs)
