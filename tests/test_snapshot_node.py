"""Snapshots on real processes: `zwal snapshot` on a running node, then a restart replays only the tail."""

from __future__ import annotations

import json
import os
import re

from harness import wait_until


def recovered_events(c, name: str) -> list[dict]:
    """The `recovered` lines of a node's log, as dicts of their key=value fields."""
    out = []
    with open(c.node_log(name), errors="replace") as f:
        for line in f:
            if " recovered " in line or line.startswith("recovered ") or "event=recovered" in line:
                out.append(dict(re.findall(r"(\w+)=(\S+)", line)))
    return out


def test_zwal_snapshot_then_restart_replays_only_the_tail(make_cluster):
    c = make_cluster(3, ack_replicas=1)
    c.start_all()
    cl = c.client()
    for i in range(300):
        cl.set(f"k{i % 50}", f"v{i}")
    r = c.zwal("snapshot", "--config", c.config, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "node1" and doc["offset"] > 0
    assert os.path.basename(doc["file"]) == f"snapshot-{doc['offset']:020d}"
    assert os.path.exists(doc["file"])
    plain = c.zwal("snapshot", "--config", c.config)
    assert plain.returncode == 0 and f"at offset {doc['offset']}: {doc['file']}" in plain.stdout  # nothing new
    for i in range(300, 320):
        cl.set(f"k{i % 50}", f"v{i}")
    cl.delete("k3")
    before = {f"k{i}": cl.get(f"k{i}") for i in range(50)}
    c.wait_converged()
    assert c.stop("node1") == 0
    c.start("node1")
    wait_until(lambda: c.leader() == "node1" and c.status("node1").get("records") == 321, 30, "node1 to lead again")
    ev = recovered_events(c, "node1")[-1]
    assert int(ev["snapshot"]) == doc["offset"], ev
    assert int(ev["replayed"]) == 21, ev  # 20 sets and a del after the snapshot
    assert int(ev["records"]) == 321
    cl2 = c.client()
    assert {f"k{i}": cl2.get(f"k{i}") for i in range(50)} == before
    # A follower snapshots too, on demand.
    r2 = c.zwal("snapshot", "--config", c.config, "--name", "node2", "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["offset"] == c.status("node1")["end"]
