"""A leader that did not stop cleanly confirms its log with its followers (docs/protocol.md,
"A restarted leader that lost part of its log"): the rule, and the clean-stop note."""

from __future__ import annotations

from daemon.node.identity import FOLLOWER, LEADER, NodeState, save_clean_stop, take_clean_stop


def leader() -> NodeState:
    return NodeState(LEADER, 2, "n1", [(1, 0), (2, 500)], led_epoch=2, voted_for="n1")


def test_a_crashed_leader_confirms_and_a_clean_stop_at_the_same_end_does_not():
    assert leader().restarted(900, ack_replicas=1, clean_end=None).confirm_from == 900
    assert leader().restarted(900, ack_replicas=1, clean_end=900).confirm_from is None
    # K = 0: nothing to confirm with (no follower is guaranteed to hold anything).
    assert leader().restarted(900, ack_replicas=0, clean_end=None).confirm_from is None
    # A follower never confirms: it takes the leader's log.
    f = NodeState(FOLLOWER, 2, "n2", [(1, 0)], voted_for="n2")
    assert f.restarted(900, ack_replicas=1, clean_end=None) == f


def test_a_clean_stop_is_trusted_only_at_its_own_end():
    # The log is shorter than the clean stop said: the disk lost bytes after the stop.
    assert leader().restarted(800, ack_replicas=1, clean_end=900).confirm_from == 800


def test_the_clean_stop_note_is_read_once_and_removed(tmp_path):
    d = str(tmp_path)
    assert take_clean_stop(d) is None
    save_clean_stop(d, 1234)
    assert take_clean_stop(d) == 1234
    assert take_clean_stop(d) is None  # a crash of this process is never taken for a clean stop
    (tmp_path / "clean-stop.json").write_bytes(b"{damaged")
    assert take_clean_stop(d) is None and not (tmp_path / "clean-stop.json").exists()


# -- real processes ---------------------------------------------------------------------------

import pytest  # noqa: E402

from daemon.client.blocking import NotEnoughReplicas, Unavailable  # noqa: E402
from harness import wait_until  # noqa: E402

FAST = dict(replication_timeout=1.0, heartbeat_interval=0.2, peer_probe_interval=0.5)


@pytest.mark.slow
def test_a_crashed_leader_waits_for_its_followers_and_a_cleanly_stopped_one_does_not(make_cluster):
    """3 nodes, K = 1, node3 down for good. After a clean stop node1 leads on at once with node2
    alone; after kill -9 it may have lost fsynced bytes to a lying disk, and takes no write until
    F - K + 1 = 2 followers have shown their logs, then leads on with nothing lost."""
    c = make_cluster(3, ack_replicas=1, **FAST)
    c.start_all()
    cl = c.client()
    for i in range(3):
        cl.set(f"k{i}", "v")
    c.wait_converged()
    c.kill("node3")
    assert c.stop("node1") == 0
    c.start("node1")
    wait_until(lambda: c.status("node1")["role"] == "leader", 30, "node1 to lead again")
    assert cl.set("after-clean", "1").offset > 0  # node2's acknowledgement is enough
    assert "event=unclean_restart" not in open(c.node_log("node1")).read()

    c.kill("node1")
    c.start("node1")
    wait_until(lambda: "event=unclean_restart" in open(c.node_log("node1")).read(), 30, "node1's unclean_restart")
    with c.client(deadline=3.0) as quick:
        with pytest.raises((NotEnoughReplicas, Unavailable)):
            quick.set("after-crash", "1")
    c.start("node3")
    assert cl.set("after-crash", "1").offset > 0  # both followers answered: it leads on
    for k in ("k0", "k1", "k2", "after-clean"):
        assert cl.get(k) is not None, k
    c.wait_converged()
