"""node-state.json only moves forward (daemon/node/identity.regression)."""

import pytest

from daemon.node.identity import FOLLOWER, LEADER, NodeState, StateRegression, regression


def st(epoch, vote, role=FOLLOWER, leader=None):
    return NodeState(role, epoch, leader, [(1, 0)], voted_for=vote)


def test_a_vote_once_given_never_changes_within_its_epoch():
    assert regression(st(3, "n1"), st(3, None)).startswith("the vote of epoch 3 would change from n1 to nobody")
    assert "from n1 to n3" in regression(st(3, "n1"), st(3, "n3"))
    assert regression(st(3, "n1"), st(3, "n1", leader="n1")) == ""  # following the winner keeps the vote
    assert regression(st(3, None), st(3, "n2")) == ""  # a first vote
    assert regression(st(3, "n1"), st(4, None)) == ""  # a new epoch, a new vote
    assert regression(None, st(1, "n1", LEADER)) == ""


def test_the_epoch_never_goes_back():
    assert regression(st(4, None), st(3, "n1")) == "the epoch would go back from 4 to 3"


def test_the_simulated_node_refuses_a_save_that_undoes_a_vote():
    from sim.cluster import Sim  # noqa: F401  (the simulator's world; imported to fail loudly if it moved)
    from sim.node import SimNode

    class Stub:  # only what save_state reads
        state = st(3, "n1")
        name = "n2"

    with pytest.raises(StateRegression, match="vote of epoch 3"):
        SimNode.save_state(Stub(), st(3, None))  # type: ignore[arg-type]
