"""A leader whose recovery cut its last record repairs it from a follower and
goes on leading: no step-down, no operator (issue 19, Protocol-Aware
Recovery). Real processes, sockets and files."""

from __future__ import annotations

import os

import pytest

from daemon.client.blocking import Client
from daemon.wal import CLEAN, scan_path
from harness import sha256, wait_until
from test_safety_regressions import FAST, divergent_files, log_text, records

pytestmark = pytest.mark.slow


def flip_last_byte(path: str, end: int) -> None:
    with open(path, "r+b") as f:
        f.seek(end - 1)
        b = f.read(1)
        f.seek(end - 1)
        f.write(bytes([b[0] ^ 0x01]))
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("node3_gone", [False, True], ids=["all-up", "node3-down-for-good"])
def test_a_damaged_leader_tail_is_repaired_from_a_follower_and_the_leader_keeps_leading(make_cluster, node3_gone):
    c = make_cluster(3, ack_replicas=1, **FAST)
    c.start_all()
    cl = c.client()
    for i in range(5):
        cl.set(f"acked{i}", f"value{i}")
    c.wait_converged()
    end = c.status("node1")["end"]
    if node3_gone:
        c.kill("node3")
    before = sha256(c.log_path("node2"))

    assert c.stop("node1") == 0
    flip_last_byte(c.log_path("node1"), end)  # the acknowledged record acked4 rots on the leader's disk
    c.start("node1")

    wait_until(lambda: "event=log_confirmed" in log_text(c, "node1"), 30, "node1 to confirm its log")
    text = log_text(c, "node1")
    assert "event=torn_tail_truncated" in text and "event=confirming_log" in text, text[-3000:]
    assert "event=repaired_from_follower" in text, text[-3000:]
    assert "event=stepping_down" not in text, text[-3000:]
    st = c.status("node1")
    assert st["role"] == "leader" and st["epoch"] == 1 and st["end"] == end and st["damaged_end"] is None
    # Nothing acknowledged was lost, nobody truncated, and it takes writes again.
    assert divergent_files(c, "node2") == [] and sha256(c.log_path("node2")) == before
    with Client(config=c.config, timeout=1.0, deadline=15.0) as again:
        assert again.get("acked4") == b"value4"
        assert again.set("after-repair", "x").epoch == 1
    live = ["node1", "node2"] if node3_gone else c.names
    c.wait_converged(live)
    assert scan_path(c.log_path("node1")).status == CLEAN
    assert (b"acked4", b"value4") in [(k, v) for _, _, k, v in records(c.log_path("node1"))]
