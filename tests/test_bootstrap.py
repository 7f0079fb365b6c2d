"""A node with no node-state.json never leads on its own word (issue 19): the pure
start decision, the join rule of a rebuilt node, and its vote."""

from __future__ import annotations

import pytest

from daemon.node import bootstrap, epochs
from daemon.node.bootstrap import Marker, RefuseStart, StartFresh, fresh_start, join_leader, join_quorum
from daemon.node.identity import FOLLOWER, LEADER, NodeState

M = Marker("c1", "node1")


def start(name="node1", log_empty=True, marker=M, cluster_id="c1"):
    return fresh_start(name=name, bootstrap_leader="node1", cluster_id=cluster_id, log_empty=log_empty, marker=marker)


def test_the_bootstrap_leader_leads_epoch_1_only_with_the_first_start_marker():
    d = start()
    assert isinstance(d, StartFresh)
    assert (d.state.role, d.state.epoch, d.state.leader, d.state.voted_for) == (LEADER, 1, "node1", "node1")
    assert not d.state.joining


def test_a_rebuilt_bootstrap_leader_without_a_marker_joins_as_a_follower_of_nobody():
    d = start(marker=None)
    assert isinstance(d, StartFresh)
    st = d.state
    assert (st.role, st.epoch, st.leader, st.voted_for, st.joining) == (FOLLOWER, 0, None, None, True)


def test_other_nodes_follow_the_bootstrap_leader_at_epoch_1_on_a_first_start_and_join_otherwise():
    d = start("node2")
    assert isinstance(d, StartFresh)
    assert (d.state.role, d.state.epoch, d.state.leader, d.state.voted_for) == (FOLLOWER, 1, "node1", "node1")
    d = start("node2", marker=None)
    assert isinstance(d, StartFresh) and d.state.joining and d.state.epoch == 0


@pytest.mark.parametrize("kw, text", [
    ({"log_empty": False}, "log holds records"),
    ({"marker": Marker("other", "node1")}, "another cluster"),
    ({"marker": Marker("c1", "node2")}, "names node2"),
])
def test_a_start_that_cannot_be_decided_safely_is_refused(kw, text):
    d = start(**kw)
    assert isinstance(d, RefuseStart) and text in d.message


def test_joining_is_saved_and_read_back(tmp_path):
    st = NodeState(FOLLOWER, 0, None, [], joining=True)
    assert NodeState.from_json(st.to_json(), "x").joining
    assert not NodeState.from_json(NodeState(FOLLOWER, 1, "node1", []).to_json(), "x").joining


def test_the_marker_is_written_read_and_removed(tmp_path):
    d = str(tmp_path / "n")
    bootstrap.write_marker(d, "c1", "node1")
    assert bootstrap.read_marker(d) == M
    bootstrap.remove_marker(d)
    assert bootstrap.read_marker(d) is None
    bootstrap.remove_marker(d)  # twice is fine


def test_a_joining_node_casts_no_vote_until_it_follows():
    st = NodeState(FOLLOWER, 0, None, [], joining=True)
    names = frozenset({"node1", "node2", "node3"})
    d = epochs.decide("fence", {"epoch": 3, "candidate": "node3"}, st, "node1", names, 0, 0)
    assert isinstance(d, epochs.Refusal) and d.code == "refused" and "casts no vote" in d.message
    d = epochs.decide("follow", {"epoch": 2, "leader": "node2"}, st, "node1", names, 0, 0)
    assert isinstance(d, epochs.Accept) and d.state is not None
    assert not d.state.joining and d.state.leader == "node2" and d.state.epoch == 2
    assert not st.follower_of(2, "node2").joining


def test_join_quorum():
    # 3 nodes: K = 0 needs one peer; K >= 1 needs both (a promotion may have
    # fenced only the joiner and the new leader).
    assert [join_quorum(3, k) for k in (0, 1, 2)] == [1, 2, 2]
    assert [join_quorum(5, k) for k in (0, 1, 2, 3, 4)] == [1, 2, 3, 3, 3]
    assert join_quorum(1, 0) == 1


def leader(e):
    return {"role": "leader", "epoch": e, "leader": None}


def follower(e, of):
    return {"role": "follower", "epoch": e, "leader": of}


def test_a_joining_node_follows_the_leader_of_the_highest_epoch_once_enough_peers_answered():
    # node1 rebuilt; node3 a deposed leader of epoch 1, node2 leads epoch 2.
    assert join_leader("node1", {"node3": leader(1)}, 3, 1) is None  # one peer is not enough with K = 1
    assert join_leader("node1", {"node3": leader(1), "node2": leader(2)}, 3, 1) == (2, "node2")
    assert join_leader("node1", {"node3": leader(1), "node2": follower(2, "node3")}, 3, 1) == (2, "node3")
    # The highest epoch has no leader yet (a promotion between fence and promote): wait.
    assert join_leader("node1", {"node3": leader(1), "node2": follower(2, None)}, 3, 1) is None
    # Peers that are themselves joining (epoch 0) name nobody.
    assert join_leader("node1", {"node2": follower(0, None), "node3": follower(0, None)}, 3, 1) is None
    # K = 0: one peer is enough.
    assert join_leader("node1", {"node2": leader(2)}, 3, 0) == (2, "node2")
    # Never itself.
    assert join_leader("node1", {"node2": follower(2, "node1"), "node3": follower(2, "node1")}, 3, 1) is None
