"""A connection that does not read its replies (docs/security.md, "Bounded resources").

ZeroMQ bounds a connection's send queue in messages, not bytes, and a plain
ROUTER drops what does not fit. The node's outbox (daemon/node/outbox.py)
bounds what a connection pins in bytes and never drops a reply to a live
connection; these tests hold it to both.
"""

from __future__ import annotations

import time

import msgpack
import psutil
import pytest
import zmq

from daemon.client.blocking import Client
from daemon.client.pipeline import Pipeline
from daemon.node import outbox
from daemon.wire.client import RETRY_WINDOW
from harness import wait_until

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def raw_client(c, name: str = "node1") -> zmq.Socket:
    """A DEALER that buffers almost nothing on its own side, as a stuck client does."""
    return c.dealer(c.endpoint(name), opts={zmq.RCVHWM: 1, zmq.RCVBUF: 64 * 1024, zmq.SNDHWM: 100000})


def rss(c, name: str = "node1") -> int:
    return psutil.Process(c.procs[name].pid).memory_info().rss


def drain(s: zmq.Socket, quiet: float = 1.0) -> list[dict]:
    got = []
    while s.poll(int(quiet * 1000)):
        got.append(msgpack.unpackb(s.recv(), raw=False))
    return got


def test_a_client_that_never_reads_pins_bounded_memory_and_cannot_write(make_cluster):
    c = make_cluster(nodes=1, ack_replicas=0)
    c.start_all()
    with c.client() as cl:
        cl.set(b"big", b"x" * MIB)
    before = rss(c)
    s = raw_client(c)
    n = 2000
    for i in range(n):
        s.send(msgpack.packb({"id": i + 1, "op": "get", "key": b"big"}))
    # Reads it cannot take get `busy`; small replies still queue, until the
    # connection is past its budget and its requests are dropped unread.
    nid = n
    for _ in range(100):
        if c.status("node1")["counters"]["errors"].get("slow_reader", 0) > 0:
            break
        for _ in range(2000):
            nid += 1
            s.send(msgpack.packb({"id": nid, "op": "ping"}))
        time.sleep(0.2)
    assert c.status("node1")["counters"]["errors"].get("slow_reader", 0) > 0, "the stuck connection was never refused"
    late = nid + 1
    s.send(msgpack.packb({"id": late, "op": "set", "key": b"late", "value": b"v", "cid": b"stuck-client"}))
    time.sleep(1.0)
    grown = rss(c) - before
    # Before the outbox this was about 1.9 GB (every reply queued in ZeroMQ).
    bound = outbox.SNDHWM * (MIB + 4096) + outbox.REPLY_BUDGET + MIB
    assert grown < bound + 64 * MIB, f"the leader grew {grown / MIB:.0f} MiB for one stuck connection"
    # Good clients are served meanwhile, and the stuck connection's write did not happen.
    with c.client() as good:
        good.set(b"other", b"fine")
        assert good.get(b"other") == b"fine"
        assert good.get(b"late") is None
    # Once it reads, it gets the replies the node took on, in order, then nothing
    # for what was dropped: its retry (same id) is then written once.
    got = drain(s)
    assert got, "the replies the node admitted were lost"
    ids = [g["id"] for g in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert late not in ids
    served = [g for g in got if g.get("ok") and "value" in g]
    assert served and all(len(g["value"]) == MIB for g in served)
    assert any(g.get("error") == "busy" for g in got)
    assert all(g.get("ok") or g["error"] == "busy" for g in got)
    s.send(msgpack.packb({"id": late, "op": "set", "key": b"late", "value": b"v", "cid": b"stuck-client"}))
    assert s.poll(5000), "a connection that reads again is served again"
    assert msgpack.unpackb(s.recv(), raw=False)["ok"]
    with c.client() as good:
        assert good.get(b"late") == b"v"
    s.close()


def test_replies_to_a_slow_pipelined_writer_are_never_dropped(make_cluster):
    """More replies than ZeroMQ will queue for one connection: they wait, none is lost.

    With a plain ROUTER and this SNDHWM the excess replies were dropped, and a
    client that resent its window wrote some records twice."""
    c = make_cluster(nodes=1, ack_replicas=0)
    c.start_all()
    s = raw_client(c)
    n = outbox.SNDHWM * 20
    for i in range(n):
        s.send(msgpack.packb({"id": i + 1, "op": "set", "key": b"k%d" % i, "value": b"v" * 100, "cid": b"slow"}))
    wait_until(lambda: c.status("node1")["records"] >= n, 30, "every write to land")
    time.sleep(0.5)
    got = drain(s)
    assert [g["id"] for g in got] == list(range(1, n + 1))
    assert all(g["ok"] for g in got)
    s.close()


def test_a_pipeline_window_beyond_the_retry_window_is_refused():
    """Ids outside the node's retry window could be written twice on a resend."""
    p = Pipeline(["tcp://127.0.0.1:9"])
    try:
        with pytest.raises(ValueError, match="retry window"):
            p.run_writes(iter([("set", b"k", b"v")]), window=RETRY_WINDOW // 2 + 1)
    finally:
        p.close()


def test_client_connections_are_capped_but_admins_and_nodes_still_get_in(make_cluster):
    c = make_cluster(nodes=2, ack_replicas=1, max_client_connections=12)
    c.start_all()
    ep = c.endpoint("node1")

    def connect(role: str = "client") -> zmq.Socket:
        return c.dealer(ep, role)

    def answers(s: zmq.Socket, i: int, wait_ms: int = 3000) -> bool:
        # A DEALER whose handshake was refused has no peer to queue to.
        if not s.poll(300, zmq.POLLOUT):
            return False
        try:  # writable before the handshake is decided; a refusal then tears the pipe down
            s.send(msgpack.packb({"id": i, "op": "ping"}), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return bool(s.poll(wait_ms))

    crowd = []
    try:
        for i in range(30):
            crowd.append(connect())
        time.sleep(1.0)  # every handshake decided
        served = sum(answers(s, i + 1) for i, s in enumerate(crowd))
        # The cap counts every connection on the client socket (the follower's
        # probes, and handshakes of this burst still undecided), so fewer than
        # 12 may get in; never more.
        assert 1 <= served <= 12, f"{served} of 30 client connections were served under a cap of 12"
        assert "event=connection_limit" in open(c.node_log("node1")).read()
        # An admin still gets in, and replication goes on.
        adm = connect("admin")
        assert answers(adm, 1)
        adm.close()
        with Client([ep], config=c.config, role="admin", timeout=2.0) as a:
            st = a.status(endpoint=ep)
        assert st["client_connections"] >= served
    finally:
        for s in crowd:
            s.close()
    # Once the crowd leaves, clients get in again and the count falls back.
    wait_until(lambda: c.status("node1")["client_connections"] <= 4, 15, "the connections to be counted closed")
    with c.client() as cl:
        cl.set(b"after", b"the crowd")
        assert cl.get(b"after") == b"the crowd"



def test_a_pipeline_issues_no_id_far_past_an_unanswered_one():
    """While one reply is lost, the others keep completing; a pipeline that kept
    issuing ids would let the lost one fall out of the node's retry window and
    its resend be written twice (found by review). A server that never
    answers id 1 (the fault) must see no id >= 1 + RETRY_WINDOW // 2 until
    the pipeline gives id 1 up at its deadline."""
    import threading

    ctx = zmq.Context.instance()
    srv = ctx.socket(zmq.ROUTER)
    srv.setsockopt(zmq.LINGER, 0)
    port = srv.bind_to_random_port("tcp://127.0.0.1")
    seen: list[tuple[float, int]] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            if not srv.poll(50):
                continue
            env, body = srv.recv_multipart()
            m = msgpack.unpackb(body, raw=False)
            seen.append((time.monotonic(), m["id"]))
            if m["id"] != 1:
                srv.send_multipart([env, msgpack.packb({"id": m["id"], "ok": True, "offset": 0, "epoch": 1})])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = Pipeline([f"tcp://127.0.0.1:{port}"], timeout=30.0, deadline=1.5)
    t0 = time.monotonic()
    try:
        r = p.run_writes((("set", b"k%d" % i, b"v") for i in range(3000)), window=64)
    finally:
        p.close()
        done.set()
        t.join(2)
        srv.close()
    assert [f[2] for f in r.failed] == ["deadline"] and len(r.acked) == 2999
    far = [at - t0 for at, i in seen if i >= 1 + RETRY_WINDOW // 2]
    assert far and min(far) >= 1.4, f"id {1 + RETRY_WINDOW // 2} was issued {min(far):.2f}s in, before id 1 was given up"


def test_a_watcher_that_never_reads_pins_bounded_memory(make_cluster):
    """Thousands of watches of a large log, never read: each reply is served or `busy`, parked ones are
    bounded by the connection's budget, and the leader's memory stays within the outbox's bound."""
    from daemon.wire.client import WATCH_MAX_BYTES

    c = make_cluster(nodes=1, ack_replicas=0)
    c.start_all()
    with c.client() as cl:
        for i in range(8):
            cl.set(f"big{i}".encode(), bytes([65 + i]) * (MIB // 2))
        end = cl.set(b"last", b"v").end
    before = rss(c)
    s = raw_client(c)
    n = 3000
    for i in range(n):  # half from 0 (served at once: 512 KiB each), half parked at the end
        frm = 0 if i % 2 == 0 else end
        s.send(msgpack.packb({"id": i + 1, "op": "watch", "from": frm, "max_bytes": WATCH_MAX_BYTES,
                              "wait_ms": 60_000}))
    time.sleep(2.0)
    grown = rss(c) - before
    bound = outbox.SNDHWM * (MIB + 4096) + outbox.REPLY_BUDGET + MIB
    assert grown < bound + 64 * MIB, f"the leader grew {grown / MIB:.0f} MiB for one watcher that does not read"
    with c.client() as good:  # others are served meanwhile
        good.set(b"other", b"fine")
    got = drain(s)
    assert got and all(g.get("ok") or g["error"] == "busy" for g in got)
    assert any(g.get("error") == "busy" for g in got)
    s.close()
