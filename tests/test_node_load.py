"""A single leader under concurrent load, kill -9, and SIGTERM: nothing acknowledged is lost."""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from daemon.client.blocking import Client, ZwalError
from daemon.wal import CLEAN, iter_frames, scan_path


def on_disk(path: str) -> dict[int, tuple[bytes, bytes | None]]:
    return {f.offset: (r.key, r.value) for f in iter_frames(path) for r in [f.record()]}


def push(c, clients: int, total: int, acked: list, keyspace: int = 300) -> None:
    def run(i: int) -> None:
        cl = Client([c.endpoint("node1")], config=c.config, timeout=2.0, deadline=30.0)
        for n in range(total // clients + (1 if i < total % clients else 0)):
            key, value = f"key{(i * 1000 + n) % keyspace}".encode(), f"c{i}-n{n}".encode()
            r = cl.set(key, value)
            acked.append((key, value, r.offset, time.monotonic()))
        cl.close()

    ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)


@pytest.mark.slow
def test_sixteen_clients_five_thousand_writes(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start_all()
    acked: list = []
    push(c, 16, 5000, acked)
    assert len(acked) == 5000
    cl = c.client()
    # The last acknowledged value of each key (by log offset, the commit order) is what get returns.
    last: dict[bytes, tuple[int, bytes]] = {}
    for k, v, off, _ in acked:
        if k not in last or off > last[k][0]:
            last[k] = (off, v)
    for k, (_, v) in last.items():
        assert cl.get(k) == v
    st = c.status("node1")
    assert st["counters"]["batches"] < st["counters"]["appends"]  # group commit did batch
    assert c.stop("node1") == 0
    disk = on_disk(c.log_path("node1"))
    assert all(disk.get(off) == (k, v) for k, v, off, _ in acked)
    assert len(disk) == 5000 and scan_path(c.log_path("node1")).status == CLEAN


@pytest.mark.slow
def test_sigkill_under_load_at_random_moments(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    rnd = random.Random(7)
    acked: list[tuple[bytes, bytes, int]] = []
    for round_ in range(10):
        c.start("node1")
        stop = threading.Event()

        def writer(i: int) -> None:
            cl = Client([c.endpoint("node1")], config=c.config, timeout=0.5, deadline=0.5)
            n = 0
            while not stop.is_set():
                key, value = f"r{round_}-w{i}-{n}".encode(), b"x" * rnd.randrange(1, 200)
                n += 1
                try:
                    r = cl.set(key, value)
                    acked.append((key, value, r.offset))
                except ZwalError:
                    return  # the node is gone
            cl.close()

        ts = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.2 + rnd.random() * 0.4)
        c.kill("node1")
        stop.set()
        for t in ts:
            t.join(10)
    c.start("node1")  # recovery
    assert len(acked) > 500
    assert scan_path(c.log_path("node1")).status == CLEAN
    disk = on_disk(c.log_path("node1"))
    missing = [(k, off) for k, v, off in acked if disk.get(off) != (k, v)]
    assert missing == []
    cl = c.client()
    for k, v, _ in acked[:: max(1, len(acked) // 50)]:
        assert cl.get(k) == v


def test_sigterm_under_load_exits_zero_quickly_and_keeps_everything(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    acked: list = []
    stop = threading.Event()

    def writer(i: int) -> None:
        cl = Client([c.endpoint("node1")], config=c.config, timeout=1.0, deadline=1.0)
        n = 0
        while not stop.is_set():
            try:
                r = cl.set(f"t{i}-{n}", "v")
                acked.append((f"t{i}-{n}".encode(), b"v", r.offset))
            except ZwalError:
                return
            n += 1
        cl.close()

    ts = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    c.signal("node1", signal.SIGTERM)
    code = c.procs["node1"].wait(60)
    took = time.monotonic() - t0
    stop.set()
    for t in ts:
        t.join(10)
    assert code == 0 and took < 5.0, (code, took)
    assert "event=stopped code=0" in open(c.node_log("node1")).read()
    assert scan_path(c.log_path("node1")).status == CLEAN
    disk = on_disk(c.log_path("node1"))
    assert acked and all(disk.get(off) == (k, v) for k, v, off in acked)
    c.start("node1")
    assert c.status("node1")["records"] == len(disk)  # the restart replayed every record
