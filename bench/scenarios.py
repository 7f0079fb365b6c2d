"""The scenarios of `make bench`: each is started once and then measured at
several client counts, several times over.

A scenario is a context manager that starts what it measures and yields a
`measure(clients, seconds) -> Sample` function; it raises `Missing` (with the
reason) when it cannot run here, so the suite can report it instead of
dropping it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from common import Sample, floor, measured_cpu, stop_all
from harness_ports import free_base_port
from load import run_load
from peers import Missing, etcd_peer, redis_peer, sqlite_peer, syncobj_peer

from daemon.client.blocking import Client
from daemon.auth.creds import for_config
from daemon.cli.cmd_cluster import create_keys, mark_first_start, render
from daemon.config import load as config_load

Measure = Callable[[int, float], Sample]


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str  # "floor", "zwal" or "peer": colours and the report's sections
    start: Callable[[str], "contextmanager[Measure]"]
    note: str = ""


def start_zwal(root: str, nodes: int, k: int, mode: str, curve: bool = True) -> tuple[list[subprocess.Popen], list[str], Any]:
    """Real `zwal node` processes, as `make run` starts them (without supervisord); node1 leads.
    With `curve` (the default, as `zwal cluster init`), CurveZMQ on every socket."""
    base = free_base_port(3 * nodes + 3)
    os.makedirs(root, exist_ok=True)
    cluster, _ = render(root, nodes, base, k, "bench", create_keys(root, nodes) if curve else None)
    assert 'fsync_mode = "group"' in cluster, "the cluster template changed: set fsync_mode another way"
    cluster = cluster.replace('fsync_mode = "group"', f'fsync_mode = "{mode}"')
    os.makedirs(root, exist_ok=True)
    cfg = os.path.join(root, "cluster.toml")
    with open(cfg, "w") as f:
        f.write(cluster)
    mark_first_start(config_load(cfg))  # a new cluster's first start, as `zwal cluster init` marks it
    procs = []
    for i in range(1, nodes + 1):
        with open(os.path.join(root, f"node{i}.log"), "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "daemon.cli", "node", "--config", cfg,
                                           "--name", f"node{i}"], stdout=log, stderr=subprocess.STDOUT))
    eps = [f"tcp://127.0.0.1:{base + 3 * i + 1}" for i in range(nodes)]
    creds = for_config(config_load(cfg), "client")
    c = Client(eps, timeout=0.5, deadline=20, creds=creds)
    try:
        c.set(b"warmup", b"x")
    except Exception as e:
        stop_zwal(procs)
        raise Missing(f"the zwal cluster did not take a write within 20 s ({e}); logs in {root}") from e
    finally:
        c.close()
    return procs, eps, creds


def stop_zwal(procs: list[subprocess.Popen]) -> None:
    stop_all(procs)


@contextmanager
def zwal_cluster(work: str, nodes: int, k: int, mode: str, curve: bool = True,
                 load_procs: int | None = None) -> Iterator[Measure]:
    name = f"zwal-{nodes}n-k{k}-{mode}{'' if curve else '-plain'}{'' if load_procs is None else f'-load{load_procs}'}"
    procs, eps, creds = start_zwal(os.path.join(work, name), nodes, k, mode, curve)
    try:  # node1 leads: its CPU is the server's
        yield lambda clients, seconds: measured_cpu(procs[0].pid, lambda: run_load(
            eps, clients, seconds, creds=creds, procs=None if load_procs is None else min(clients, load_procs)))
    finally:
        stop_zwal(procs)


@contextmanager
def transport_floor(work: str, curve: bool) -> Iterator[Measure]:
    """bench/transport_floor.py: a pyzmq ROUTER that appends and fdatasyncs what is ready, then answers."""
    import zmq

    port = free_base_port(1)
    d = os.path.join(work, "transport-floor" + ("" if curve else "-plain"))
    os.makedirs(d, exist_ok=True)
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "transport_floor.py"), str(port), d]
    creds: Any = None
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        public, secret = zmq.curve_keypair()
        from daemon.auth.creds import Credentials

        creds = Credentials(public, secret, default_server_key=server_public.decode())
        cmd += ["--curve", server_secret.decode()]
    proc = subprocess.Popen(cmd)
    ep = f"tcp://127.0.0.1:{port}"
    try:
        warm = run_load([ep], 1, 0.2, creds=creds)
        if not warm.count:
            raise Missing(f"the transport floor answered no write ({' '.join(warm.notes)})")
        yield lambda clients, seconds: measured_cpu(proc.pid, lambda: run_load([ep], clients, seconds, creds=creds))
    finally:
        stop_all([proc])


@contextmanager
def disk_floor(work: str, per_record: bool) -> Iterator[Measure]:
    if per_record:
        yield lambda clients, seconds: floor(work, seconds, threads=clients)
    else:
        yield lambda clients, seconds: floor(work, seconds, batch=clients)


def all_scenarios(quick: bool) -> list[Scenario]:
    s = [
        Scenario("disk floor, per record", "floor", lambda w: disk_floor(w, True),
                 "N threads, each its own write+fdatasync of one record on one O_APPEND file"),
        Scenario("disk floor, batched", "floor", lambda w: disk_floor(w, False),
                 "N records in one write+fdatasync (ideal group commit, no network)"),
        Scenario("transport floor, CURVE", "floor", lambda w: transport_floor(w, True),
                 "bench/transport_floor.py: a pyzmq ROUTER (CurveZMQ) that writes and fdatasyncs the messages that "
                 "are ready, then answers each with a 5-field msgpack map; no format, state or replication; the same "
                 "load generator as zwal"),
        Scenario("transport floor, no CURVE", "floor", lambda w: transport_floor(w, False),
                 "the same without CurveZMQ"),
        Scenario("zwal 1 node, group commit", "zwal", lambda w: zwal_cluster(w, 1, 0, "group"),
                 "one `zwal node`: every ready request goes in one write + one fdatasync, replies after it; "
                 "load from zwal's Python client library (daemon.pipeline) in 4 processes on the same cores; "
                 "CurveZMQ on, as every zwal scenario"),
        Scenario("zwal 1 node, group commit, no CURVE", "zwal", lambda w: zwal_cluster(w, 1, 0, "group", curve=False),
                 "the same with security = \"none\" (loopback only): the difference is what CurveZMQ costs"),
    ]
    s.append(Scenario("zwal 1 node, group commit, 8 load processes", "zwal",
                      lambda w: zwal_cluster(w, 1, 0, "group", load_procs=8),
                      "the first zwal scenario with twice the load processes: if it is not faster, the load generator "
                      "is not what caps zwal's figure"))
    if not quick:
        s.append(Scenario("zwal 1 node, per-record fsync", "zwal", lambda w: zwal_cluster(w, 1, 0, "per-record"),
                          "fsync_mode = \"per-record\": one write + one fdatasync per record, the lesson's way"))
    for k in ([1] if quick else [0, 1, 2]):
        s.append(Scenario(f"zwal 3 nodes, K={k}", "zwal", lambda w, k=k: zwal_cluster(w, 3, k, "group"),
                          "a leader and 2 followers on this machine; a write is answered after the leader's "
                          + ("fsync (followers copy it afterwards)" if k == 0 else
                             ("fsync and one follower's fsync" if k == 1 else f"fsync and {k} followers' fsyncs"))))
    s += [
        Scenario("Redis, appendfsync always + replica", "peer", redis_peer.running, redis_peer.NOTE),
        Scenario("Redis, appendfsync always + replica, redis-py load", "peer", redis_peer.running_py,
                 redis_peer.NOTE_PY),
        Scenario("SQLite WAL, synchronous=FULL", "peer", sqlite_peer.running, sqlite_peer.NOTE),
        Scenario("etcd, 3 members", "peer", etcd_peer.running, etcd_peer.NOTE),
        Scenario("pysyncobj, 3 nodes", "peer", syncobj_peer.running, syncobj_peer.NOTE),
    ]
    return s
