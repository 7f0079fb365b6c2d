"""`zwal cluster init` as an operator runs it: multi-host layouts (--hosts,
--data-root) and the refusal to create a local cluster on ports already taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from daemon import config as config_mod
from harness import free_base_port, wait_until

ZWAL = [sys.executable, "-m", "daemon.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ZWAL, *args], capture_output=True, text=True, timeout=timeout)


def test_hosts_and_data_root_place_each_node_on_its_host(tmp_path):
    d = str(tmp_path / "c")
    r = run("cluster", "init", d, "--hosts", "db1.example.net,db2.example.net,10.0.0.3",
            "--data-root", "/var/lib/zwal", "--base-port", "7100")
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(os.path.join(d, "cluster.toml"))
    assert cfg.names == ["node1", "node2", "node3"]
    assert cfg.security == "curve" and all(n.public_key for n in cfg.nodes)
    assert [n.client_endpoint for n in cfg.nodes] == [
        "tcp://db1.example.net:7101", "tcp://db2.example.net:7101", "tcp://10.0.0.3:7101"]
    assert [n.repl_endpoint for n in cfg.nodes] == [
        "tcp://db1.example.net:7102", "tcp://db2.example.net:7102", "tcp://10.0.0.3:7102"]
    assert [n.metrics_port for n in cfg.nodes] == [7103, 7103, 7103]
    assert [n.data_dir for n in cfg.nodes] == ["/var/lib/zwal/node1", "/var/lib/zwal/node2", "/var/lib/zwal/node3"]
    # Each host runs its own node (systemd): no single supervisord.conf for all of them.
    assert not os.path.exists(os.path.join(d, "supervisord.conf"))
    assert "systemctl enable --now zwal@<node>" in r.stdout


def test_two_nodes_on_one_host_get_different_ports(tmp_path):
    d = str(tmp_path / "c")
    r = run("cluster", "init", d, "--hosts", "a.example,b.example,a.example", "--base-port", "9000")
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(os.path.join(d, "cluster.toml"))
    assert [n.client_endpoint for n in cfg.nodes] == [
        "tcp://a.example:9001", "tcp://b.example:9001", "tcp://a.example:9004"]
    assert [n.metrics_port for n in cfg.nodes] == [9003, 9003, 9006]
    # Without --data-root the data stays beside the cluster file, as for a local cluster.
    assert [n.data_dir for n in cfg.nodes] == [os.path.join(d, f"node{i}") for i in (1, 2, 3)]


@pytest.mark.parametrize("args, message", [
    (("--hosts", "a,b", "--nodes", "3"), "one host per node"),
    (("--hosts", "a,,c"), "is not a host name"),
    (("--data-root", "var/lib/zwal"), "--data-root must be an absolute path"),
])
def test_bad_host_options_are_refused_before_anything_is_written(tmp_path, args, message):
    d = str(tmp_path / "c")
    r = run("cluster", "init", d, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(d)


def test_a_taken_port_is_named_and_nothing_is_written(tmp_path):
    base = free_base_port(12)
    taken = base + 5  # node2's replication port
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        d = str(tmp_path / "c")
        r = run("cluster", "init", d, "--nodes", "3", "--base-port", str(base))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"port {taken} (node2's repl port) is already in use" in r.stderr
        assert "--base-port" in r.stderr and "Traceback" not in r.stderr
        assert not os.path.exists(d)  # no cluster file, no keys: the operator just picks other ports
    # Once the port is free the same command works.
    r = run("cluster", "init", d, "--nodes", "3", "--base-port", str(base))
    assert r.returncode == 0, r.stderr


def test_a_port_held_by_a_running_node_is_refused(make_cluster, tmp_path):
    """The mix-up of issue 14: a second cluster initialised on the ports of one that is up."""
    c = make_cluster(nodes=1)
    c.start("node1")
    r = run("cluster", "init", str(tmp_path / "second"), "--nodes", "1", "--base-port", str(c.base_port))
    assert r.returncode == 1 and f"port {c.base_port + 1} (node1's client port) is already in use" in r.stderr, \
        r.stderr


@pytest.mark.slow
def test_a_two_host_cluster_with_a_data_root_replicates(tmp_path):
    """Two "hosts" on one machine (127.0.0.1 and 127.0.0.2, both loopback) use the same ports,
    and each node keeps its data in <data-root>/<node>."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("127.0.0.2 is not usable on this machine")
    base = free_base_port(6)
    d, root = str(tmp_path / "c"), str(tmp_path / "data")
    r = run("cluster", "init", d, "--hosts", "127.0.0.1,127.0.0.2", "--data-root", root, "--base-port", str(base))
    assert r.returncode == 0, r.stderr
    cfg_path = os.path.join(d, "cluster.toml")
    cfg = config_mod.load(cfg_path)
    assert cfg.ack_replicas == 1
    # The operator's first-start step on the bootstrap node's host (init cannot reach it).
    assert "zwal cluster bootstrap --config" in r.stdout, r.stdout
    b = run("cluster", "bootstrap", "--config", cfg_path, "--timeout", "0.5")
    assert b.returncode == 0, b.stdout + b.stderr
    assert os.path.exists(os.path.join(root, "node1", "first-start.json"))
    assert not os.path.exists(os.path.join(root, "node2", "first-start.json"))
    os.makedirs(os.path.join(d, "log"), exist_ok=True)
    procs = []
    try:
        for n in cfg.names:
            out = open(os.path.join(d, "log", f"{n}.log"), "ab")
            procs.append(subprocess.Popen([*ZWAL, "node", "--config", cfg_path, "--name", n], cwd=d,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            out.close()
        from daemon.client import Client

        with Client(config=cfg_path, deadline=20) as c:
            w = wait_until(lambda: c.set("k", "v"), 30, "the cluster to take a write")
            assert w.offset == 0
            assert c.get("k") == b"v"
        for n in cfg.names:  # acknowledged with K = 1: on both nodes' disks, under the data root
            log = os.path.join(root, n, "log", "00000000000000000000.seg")
            wait_until(lambda log=log: os.path.getsize(log) >= w.end, 10, f"{log} to hold the write")
        assert sorted(os.listdir(root)) == ["node1", "node2"]
        assert not os.path.exists(os.path.join(d, "node1"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
