"""Failover stories with real processes: promote, fencing, rejoin, the drill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from daemon.client.blocking import Client, NotEnoughReplicas, NotLeader, Unavailable, ZwalError
from daemon.wal import CLEAN, iter_frames, scan_path
from harness import free_base_port, wait_until

pytestmark = pytest.mark.slow


def records(path: str) -> dict[bytes, bytes | None]:
    return {r.key: r.value for f in iter_frames(path) for r in [f.record()]}


def test_drill_three_rounds_under_real_supervisord(tmp_path):
    d = str(tmp_path / "c")
    bin_dir = os.path.dirname(sys.executable)
    zwal = [sys.executable, "-m", "daemon.cli"]
    init = subprocess.run([*zwal, "cluster", "init", d, "--nodes", "3", "--base-port", str(free_base_port(12))],
                          capture_output=True, text=True, timeout=30)
    assert init.returncode == 0, init.stderr
    conf = os.path.join(d, "supervisord.conf")
    subprocess.run([os.path.join(bin_dir, "supervisord"), "-c", conf], check=True, timeout=30)
    try:
        st = subprocess.run([*zwal, "status", "--config", f"{d}/cluster.toml", "--wait", "30"],
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stdout + st.stderr
        drill = subprocess.run([*zwal, "drill", "--config", f"{d}/cluster.toml", "--rounds", "3", "--seconds", "1.5",
                                "--clients", "4"], capture_output=True, text=True, timeout=300)
        out = drill.stdout + drill.stderr
        assert drill.returncode == 0, out
        assert "drill PASSED: 3 round(s)" in out, out
        assert out.count("acknowledged but lost:          0") == 3, out
        assert out.count("logs byte-identical:            yes") == 3, out
        acked = [int(x.split()[-1]) for x in out.splitlines() if "writes acknowledged:" in x]
        assert len(acked) == 3 and all(a > 50 for a in acked), out
        # Leadership moved each round: three different promoted nodes in a row.
        promoted = [line.split(" promoted to")[0].split(", ")[-1] for line in out.splitlines() if "promoted to epoch" in line and line.startswith("round")]
        assert len(promoted) == 3 and promoted[0] != promoted[1] != promoted[2], out
        # A second drill on the same cluster passes too: its records are its
        # own (the promotion probe once reused a key and read as a retry
        # written twice).
        again = subprocess.run([*zwal, "drill", "--config", f"{d}/cluster.toml", "--rounds", "1", "--seconds", "1",
                                "--clients", "2", "--json"], capture_output=True, text=True, timeout=300)
        doc = json.loads(again.stdout)
        assert again.returncode == 0 and doc["ok"] and "error" not in doc, again.stdout + again.stderr
    finally:
        subprocess.run([os.path.join(bin_dir, "supervisorctl"), "-c", conf, "shutdown"], capture_output=True, timeout=60)


def test_paused_old_leader_never_acknowledges_after_promotion(make_cluster):
    c = make_cluster(3, ack_replicas=1, replication_timeout=1.0, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client()
    for i in range(20):
        cl.set(f"before{i}", "x")
    c.wait_converged()

    c.signal("node1", signal.SIGSTOP)
    promote = c.zwal("promote", "node2", "--config", c.config, "--timeout", "1")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    promoted_at = time.monotonic()

    # A client that only knows the old leader keeps writing to it while it is paused.
    acks_from_old: list[tuple[str, int]] = []
    errors: list[str] = []

    def pinned_writer() -> None:
        old = Client([c.endpoint("node1")], config=c.config, timeout=3.0, deadline=3.0)
        for i in range(10):
            try:
                r = old.request("set", endpoint=c.endpoint("node1"), deadline=3.0, key=f"stale{i}".encode(), value=b"v")
                acks_from_old.append((f"stale{i}", r["epoch"]))
            except ZwalError as e:
                errors.append(e.code)
        old.close()

    t = threading.Thread(target=pinned_writer)
    t.start()
    time.sleep(0.5)
    c.signal("node1", signal.SIGCONT)
    t.join(60)
    assert acks_from_old == [], f"old leader acknowledged after the promotion: {acks_from_old}"
    assert errors and set(errors) <= {NotEnoughReplicas.code, NotLeader.code, Unavailable.code}, errors

    # It steps down and rejoins as a follower of epoch 2; the new leader takes writes.
    new = c.client()
    for i in range(10):
        assert new.set(f"after{i}", "y").epoch == 2
    wait_until(lambda: c.status("node1")["role"] == "follower" and c.status("node1")["epoch"] == 2, 20, "node1 to step down")
    c.wait_converged()
    keys = records(c.log_path("node2"))
    assert all(f"before{i}".encode() in keys and f"after{i}".encode() in keys for i in range(10))
    assert scan_path(c.log_path("node1")).status == CLEAN
    assert time.monotonic() - promoted_at < 120


def test_divergent_suffix_is_saved_and_removed_on_rejoin(make_cluster):
    c = make_cluster(3, ack_replicas=0, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client()
    for i in range(10):
        cl.set(f"common{i}", "x")
    c.wait_converged()
    common_end = c.status("node1")["end"]
    for n in ("node2", "node3"):
        c.kill(n)
    for i in range(5):  # acknowledged by the leader alone (K = 0)
        cl.set(f"lonely{i}", "z")
    c.kill("node1")
    for n in ("node2", "node3"):
        c.start(n)
    refused = c.zwal("promote", "node2", "--config", c.config, "--timeout", "1")
    assert refused.returncode != 0 and "ack_replicas = 0" in refused.stderr
    forced = c.zwal("promote", "node2", "--config", c.config, "--force", "--timeout", "1")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    c.client().set("new-epoch", "w")

    c.start("node1")
    wait_until(lambda: c.status("node1")["role"] == "follower", 20, "node1 to step down and follow")
    c.wait_converged()
    data_dir = c.data_dir("node1")
    saved = [f for f in os.listdir(data_dir) if f.startswith("divergent-")]
    assert len(saved) == 1, os.listdir(data_dir)
    assert saved[0] == f"divergent-1-{common_end}.wal"
    dump = c.zwal("log", "dump", os.path.join(data_dir, saved[0]))
    assert dump.returncode == 0
    assert [f"lonely{i}" in dump.stdout for i in range(5)] == [True] * 5
    kept = records(c.log_path("node1"))
    assert not any(k.startswith(b"lonely") for k in kept) and b"new-epoch" in kept
    assert "event=divergent_suffix_truncated" in open(c.node_log("node1")).read()


def test_promote_refuses_a_lagging_follower_and_a_small_quorum(make_cluster):
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2, replication_timeout=1.0)
    c.start_all()
    cl = c.client()
    for i in range(10):
        cl.set(f"a{i}", "x")
    c.wait_converged()
    c.signal("node3", signal.SIGSTOP)
    for i in range(10):
        cl.set(f"b{i}", "y")
    c.kill("node1")
    c.signal("node3", signal.SIGCONT)
    wait_until(lambda: c.status("node3")["end"] < c.status("node2")["end"], 10, "node3 to be behind")

    lag = c.zwal("promote", "node3", "--config", c.config, "--timeout", "1")
    assert lag.returncode != 0
    assert "node3 is behind node2" in lag.stderr and "promote node2 instead" in lag.stderr

    c.kill("node2")
    small = c.zwal("promote", "node3", "--config", c.config, "--timeout", "1")
    assert small.returncode != 0
    assert "only 1 of 2 follower(s) answered" in small.stderr and "at least 2 must answer" in small.stderr
    # Refusals change nothing: node3 is still a follower of epoch 1.
    st = c.status("node3")
    assert (st["role"], st["epoch"]) == ("follower", 1)
