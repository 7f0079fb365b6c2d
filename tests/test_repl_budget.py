"""The replication socket's output budget (issue 19): a node key that sends
fetches and never reads its answers pins a bounded number of bytes on the
leader, not one chunk per fetch."""

from __future__ import annotations

import time

import psutil
import pytest
import zmq

from daemon import config as config_mod

from daemon.node.zmq_ports import REPL_SNDHWM
from daemon.wire.replication import Fetch, encode_fetch

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def rss(c, name: str) -> int:
    return psutil.Process(c.procs[name].pid).memory_info().rss


def test_fetches_nobody_reads_pin_bounded_memory_on_the_leader(make_cluster):
    c = make_cluster(nodes=2, ack_replicas=0, fetch_max_bytes=4 * MIB)
    c.start("node1")
    with c.client() as cl:
        for i in range(5):
            cl.set(f"big{i}".encode(), bytes([65 + i]) * MIB)  # more than one chunk of log
    time.sleep(0.5)
    before = rss(c, "node1")
    repl = config_mod.load(c.config).node("node1").repl_endpoint
    s = c.dealer(repl, "node", "node2", opts={zmq.RCVHWM: 1, zmq.RCVBUF: 64 * 1024, zmq.SNDHWM: 100000})
    fetch = encode_fetch(Fetch("node2", 1, 0, 0, 0, 4 * MIB))
    for _ in range(150):
        s.send(fetch)
    time.sleep(3.0)
    grown = rss(c, "node1") - before
    # Without a send budget this was about 150 chunks of 4 MiB (ZeroMQ's
    # default queue is 1,000 messages per connection).
    bound = (REPL_SNDHWM + 4) * 4 * MIB + 64 * MIB
    assert grown < bound, f"the leader grew {grown / MIB:.0f} MiB for 150 unread fetches"
    # The leader still serves: a write and a read.
    with c.client() as cl:
        cl.set(b"after", b"ok")
        assert cl.get(b"after") == b"ok"
    # A fetch that is read is answered with the log's first chunk.
    s.close()
    r = c.dealer(repl, "node", "node2")
    r.send(fetch)
    assert r.poll(5000), "a fetch that is read gets its answer"
    frames = r.recv_multipart()
    assert len(frames) == 2 and len(frames[1]) > MIB, [len(f) for f in frames]
    r.close()
