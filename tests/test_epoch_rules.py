"""The fence/follow/promote rules (daemon/node/epochs.py), pure: one leader per epoch."""

from __future__ import annotations

from daemon.node.epochs import MAX_EPOCH, Accept, Refusal, decide, may_follow
from daemon.node.identity import FOLLOWER, LEADER, NodeState
from daemon.wal.reader import CLEAN, TORN, ScanResult

NAMES = frozenset({"n1", "n2", "n3"})


def follower(epoch: int = 2, leader: str | None = "n1", voted: str | None = "n1") -> NodeState:
    return NodeState(FOLLOWER, epoch, leader, [(1, 0)], 0, voted)


def run(op: str, st: NodeState, me: str = "n2", **args) -> Accept | Refusal:
    return decide(op, args, st, me, NAMES, 100, 1)


def test_a_fence_is_a_vote_and_a_node_votes_once_per_epoch():
    st = follower()
    a = run("fence", st, epoch=3, candidate="n2")
    assert isinstance(a, Accept) and a.state.voted_for == "n2" and a.state.leader is None and a.transition
    again = run("fence", a.state, epoch=3, candidate="n2")
    assert isinstance(again, Accept) and again.state is None
    rival = run("fence", a.state, epoch=3, candidate="n3")
    assert isinstance(rival, Refusal) and rival.code == "refused" and "voted for n2" in rival.message


def test_promote_needs_the_nodes_own_vote_in_that_epoch():
    assert isinstance(run("promote", follower(), epoch=3), Refusal)  # never fenced at 3
    voted_other = run("fence", follower(), epoch=3, candidate="n3").state
    r = run("promote", voted_other, epoch=3)
    assert isinstance(r, Refusal) and "voted for n3" in r.message
    mine = run("fence", follower(), epoch=3, candidate="n2").state
    p = run("promote", mine, epoch=3)
    assert isinstance(p, Accept) and p.state.role == LEADER and p.state.epoch == 3 and p.state.voted_for == "n2"
    assert p.state.history[-1] == (3, 100)


def test_a_leader_refuses_a_rival_candidate_of_its_own_epoch():
    leader = NodeState(LEADER, 3, "n2", [(3, 0)], 3, "n2")
    assert isinstance(run("fence", leader, epoch=3, candidate="n3"), Refusal)
    assert isinstance(run("follow", leader, epoch=3, leader="n3"), Refusal)
    assert isinstance(run("promote", leader, epoch=3), Refusal)
    stepped = run("fence", leader, epoch=4, candidate="n3")
    assert isinstance(stepped, Accept) and stepped.reload and stepped.state.role == FOLLOWER


def test_a_node_that_voted_for_a_loser_still_follows_the_winner_and_keeps_its_vote():
    st = run("fence", follower(), epoch=3, candidate="n3").state
    a = run("follow", st, epoch=3, leader="n1")
    assert isinstance(a, Accept) and a.state.leader == "n1" and a.state.voted_for == "n3"
    assert may_follow(st, 3, "n1") and may_follow(st, 4, "n1") and not may_follow(st, 2, "n1")
    leader = NodeState(LEADER, 3, "n2", [(3, 0)], 3, "n2")
    assert not may_follow(leader, 3, "n1")


def test_epochs_outside_the_protocols_range_are_bad_requests():
    for bad in (-1, MAX_EPOCH + 1, "3", True, None):
        r = run("fence", follower(), epoch=bad)
        assert isinstance(r, Refusal) and r.code == "bad_request"
    assert isinstance(run("fence", follower(epoch=MAX_EPOCH - 1), epoch=MAX_EPOCH), Accept)


def test_one_packet_cannot_push_a_node_to_the_end_of_the_epoch_range():
    r = run("fence", follower(), epoch=MAX_EPOCH)
    assert isinstance(r, Refusal) and r.code == "bad_request" and "one at a time" in r.message
    assert isinstance(run("fence", follower(), epoch=3, candidate="n2"), Accept)


def test_older_epochs_are_stale():
    r = run("fence", follower(epoch=5), epoch=4, candidate="n2")
    assert isinstance(r, Refusal) and r.code == "stale_epoch" and r.fields["epoch"] == 5


def scan(status: str, valid_end: int, size: int, starts, last: int, reason: str = "") -> ScanResult:
    return ScanResult(status, valid_end, size, 3, last, starts, valid_end if status != CLEAN else None, reason)


def test_recovery_that_cut_a_leaders_log_makes_it_confirm_and_moves_later_epoch_starts_to_the_cut():
    leader = NodeState(LEADER, 5, "n2", [(4, 100), (5, 200)], 5, "n2")
    st = leader.recovered(scan(TORN, 150, 210, [(4, 100)], 4, "incomplete last record"))
    assert st.confirm_from == 150 and st.history == [(4, 100), (5, 150)] and st.damaged_end == 210
    assert leader.recovered(scan(CLEAN, 260, 260, [(4, 100), (5, 200)], 5)) == leader  # nothing cut
    fol = follower(epoch=5, leader="n2", voted="n2").recovered(scan(TORN, 90, 100, [(1, 0)], 1, "incomplete last record"))
    assert fol.confirm_from is None and fol.damaged_end == 100


def test_a_cut_marks_the_node_damaged_until_it_catches_up_past_its_old_end():
    fol = follower(epoch=5, leader="n2", voted="n2")
    # A flipped length field makes a damaged record look unfinished: every cut counts.
    st = fol.recovered(scan(TORN, 366, 427, [(1, 0)], 1, "incomplete last record"))
    assert st.damaged_end == 427
    fenced = run("fence", st, epoch=6, candidate="n3").state
    assert fenced.damaged_end == 427  # a change of epoch or role keeps the mark
    assert fenced.after_append(400) is None
    assert fenced.after_append(427).damaged_end is None


def test_promote_is_refused_when_the_log_shrank_below_what_the_promotion_checked():
    mine = run("fence", follower(), epoch=3, candidate="n2").state  # decide() sees end = 100
    r = run("promote", mine, epoch=3, end=160)
    assert isinstance(r, Refusal) and r.code == "refused" and "lost records" in r.message
    assert isinstance(run("promote", mine, epoch=3, end=100), Accept)
