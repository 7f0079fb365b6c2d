"""A 3-member etcd cluster on loopback; puts through its gRPC-JSON gateway (/v3/kv/put)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import threadload
from common import stop_all
from harness_ports import free_base_port

from . import Missing

NOTE = ("3 members, Raft: a put is answered after a majority (2 of 3) has fsynced it; "
        "puts go to one member over HTTP/JSON (the gateway), each client its own keep-alive connection")


def make_op(port: int, client: int):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    value = base64.b64encode(os.urandom(50).hex().encode()).decode()

    def op(i: int) -> None:
        key = base64.b64encode(f"c{client}-{i % 1000}".encode()).decode()
        try:
            conn.request("POST", "/v3/kv/put", json.dumps({"key": key, "value": value}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
        except Exception:
            conn.close()  # the next request opens a fresh connection
            raise
        if r.status != 200:
            raise RuntimeError(f"etcd put: HTTP {r.status}")

    return op


@contextmanager
def running(work: str) -> Iterator:
    if not shutil.which("etcd"):
        raise Missing("etcd is not installed: run bench/setup_peers.sh (as root; Debian's etcd-server)")
    base = free_base_port(8)
    names = ["e1", "e2", "e3"]
    cluster = ",".join(f"{n}=http://127.0.0.1:{base + 2 * i + 2}" for i, n in enumerate(names))
    procs = []
    try:
        for i, n in enumerate(names):
            client, peer = base + 2 * i + 1, base + 2 * i + 2
            procs.append(subprocess.Popen(
                ["etcd", "--name", n, "--data-dir", os.path.join(work, f"etcd-{n}"),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"bench{base}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        port = base + 1
        for _ in range(150):
            try:
                make_op(port, 0)(0)
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise Missing("the etcd cluster did not take a put within 30 s")
        yield lambda clients, seconds: threadload.run("peers.etcd_peer:make_op", (port,), clients, seconds)
    finally:
        stop_all(procs)
