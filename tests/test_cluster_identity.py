"""Every request names its cluster (cluster_id); a node refuses another cluster's (docs/protocol.md)."""

from __future__ import annotations

import msgpack
import pytest

from daemon import config as config_mod
from daemon.client.blocking import Client, WrongCluster
from daemon.wire.replication import Fetch, decode_from_leader, encode_fetch, Refuse

pytestmark = pytest.mark.slow


def test_cluster_init_writes_a_random_cluster_id(tmp_path):
    from daemon.cli.cmd_cluster import render

    a, _ = render(str(tmp_path / "a"), 1, 7100, 0, "a")
    b, _ = render(str(tmp_path / "b"), 1, 7100, 0, "b")
    ida = config_mod.parse(__import__("tomllib").loads(a), str(tmp_path / "a" / "cluster.toml")).cluster_id
    idb = config_mod.parse(__import__("tomllib").loads(b), str(tmp_path / "b" / "cluster.toml")).cluster_id
    assert len(ida) == 16 and ida != idb


def test_a_request_for_another_cluster_gets_wrong_cluster_and_changes_nothing(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start_all()
    ours = config_mod.load(c.config).cluster_id
    assert ours
    ep = c.endpoint("node1")
    # The client library names the cluster of its cluster file: the right one is served...
    with Client(config=c.config, timeout=1.0) as cl:
        cl.set("k", "1")
    # ... and a client that means another cluster (a mixed-up cluster file) is refused.
    with Client([ep], creds=c.creds(), cluster_id="0123456789abcdef", timeout=1.0, deadline=2.0) as other:
        with pytest.raises(WrongCluster, match="belongs to cluster"):
            other.set("k", "2")
        with pytest.raises(WrongCluster):
            other.get("k")
    # An admin op for another cluster changes nothing either.
    s = c.dealer(ep, "admin")
    s.send(msgpack.packb({"id": 1, "op": "fence", "args": {"epoch": 9}, "cluster": "someone-else"}))
    assert s.poll(3000)
    r = msgpack.unpackb(s.recv(), raw=False)
    assert r["ok"] is False and r["error"] == "wrong_cluster"
    s.close()
    st = c.status("node1")
    assert st["epoch"] == 1 and st["role"] == "leader" and st["cluster_id"] == ours
    with c.client() as cl:
        assert cl.get("k") == b"1"
    assert "event=wrong_cluster" in open(c.node_log("node1")).read()


def test_a_fetch_from_another_clusters_node_is_refused(make_cluster):
    c = make_cluster(2, ack_replicas=1)
    c.start_all()
    with c.client() as cl:
        cl.set("k", "1")
    cfg = config_mod.load(c.config)
    leader = cfg.node("node1")
    s = c.dealer(leader.repl_endpoint, "node", "node2")
    # From offset 0 at epoch 0: a leader of this cluster would send bytes or a truncation.
    s.send(encode_fetch(Fetch("node2", 1, 0, 0, cluster="ffffffffffffffff")))
    assert s.poll(3000)
    msg = decode_from_leader(s.recv_multipart())
    assert isinstance(msg, Refuse) and "not ffffffffffffffff" in msg.message
    s.close()
    with c.client() as cl:  # replication goes on for the real node2
        cl.set("k", "2")


def test_status_names_the_cluster(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start_all()
    cfg = config_mod.load(c.config)
    r = c.zwal("status", "--config", c.config)
    assert r.returncode == 0, r.stderr
    assert f"cluster {cfg.name} (id {cfg.cluster_id})" in r.stdout


def test_a_follower_does_not_answer_another_clusters_fetch(make_cluster):
    """A follower used to answer any fetch with not_leader naming its leader:
    a node of another cluster would then follow a name it does not know."""
    c = make_cluster(2, ack_replicas=1)
    c.start_all()
    cfg = config_mod.load(c.config)
    ep = cfg.node("node2").repl_endpoint
    s = c.dealer(ep, "node", "node1")
    s.send(encode_fetch(Fetch("node1", 1, 0, 0, cluster="ffffffffffffffff")))
    assert not s.poll(1500), "a follower answered another cluster's fetch"
    s.send(encode_fetch(Fetch("node1", 1, 0, 0, cluster=cfg.cluster_id)))
    assert s.poll(3000), "a follower answers its own cluster's fetch (not_leader)"
    s.close()


def test_security_none_tools_name_the_cluster_too(make_cluster, tmp_path):
    """Without keys the cluster id is the only thing that tells two loopback
    clusters apart: status and promote from a cluster file with another id
    must change nothing (found by review: they sent no id at all)."""
    c = make_cluster(2, ack_replicas=1, security="none")
    c.start_all()
    text = open(c.config).read()
    ours = config_mod.load(c.config).cluster_id
    other = tmp_path / "other.toml"
    other.write_text(text.replace(f'cluster_id = "{ours}"', 'cluster_id = "someone-else"'))
    # Relative data dirs must still point somewhere harmless.
    r = c.zwal("status", "--config", str(other), "--check")
    assert r.returncode != 0
    r = c.zwal("promote", "node2", "--config", str(other), timeout=60)
    assert r.returncode != 0
    st = c.status("node2")
    assert st["epoch"] == 1 and st["role"] == "follower"
    assert c.leader() == "node1"
    assert "event=wrong_cluster" in open(c.node_log("node1")).read()
