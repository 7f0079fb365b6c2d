"""The promotion rules, decided without any node running."""

from __future__ import annotations

from daemon.failover.promote import decide, most_advanced


def st(role: str, epoch: int, end: int, last_epoch: int | None = None) -> dict:
    return {"role": role, "epoch": epoch, "end": end, "last_epoch": epoch if last_epoch is None else last_epoch}


def test_most_advanced_follower_is_promoted_to_next_epoch():
    sts = {"n1": None, "n2": st("follower", 3, 900), "n3": st("follower", 3, 800)}
    d = decide("n2", sts, ack_replicas=1, force=False)
    assert d.ok and d.epoch == 4


def test_lagging_follower_is_refused_and_the_better_one_named():
    sts = {"n1": None, "n2": st("follower", 3, 900), "n3": st("follower", 3, 800)}
    d = decide("n3", sts, ack_replicas=1, force=False)
    assert not d.ok
    assert "behind n2" in d.reason and "promote n2 instead" in d.reason


def test_last_epoch_ranks_before_end_offset():
    # n3 has fewer bytes but newer records: n2's extra bytes are from an older epoch.
    sts = {"n1": None, "n2": st("follower", 3, 900, last_epoch=1), "n3": st("follower", 3, 800, last_epoch=2)}
    assert not decide("n2", sts, 1, False).ok
    assert decide("n3", sts, 1, False).ok


def test_too_few_followers_answering_is_refused():
    # F = 3 followers, K = 1: any 3 - 1 + 1 = 3 must answer; only 2 do.
    sts = {"n1": None, "n2": st("follower", 1, 10), "n3": st("follower", 1, 10), "n4": None}
    d = decide("n2", sts, ack_replicas=1, force=False)
    assert not d.ok and "at least 3 must answer" in d.reason
    # K = 2: 3 - 2 + 1 = 2 hold every acknowledged write, but 2 of 4 is no
    # majority: a second promotion could win the other half's votes.
    d = decide("n2", sts, ack_replicas=2, force=False)
    assert not d.ok and "majority (3)" in d.reason
    sts["n4"] = st("follower", 1, 10)
    assert decide("n2", sts, ack_replicas=2, force=False).ok


def test_without_a_majority_only_force_promotes_and_it_warns():
    sts = {"n1": None, "n2": st("follower", 1, 10)}
    d = decide("n2", sts, 1, False)
    assert not d.ok and "majority (2)" in d.reason
    d = decide("n2", sts, 1, True)
    assert d.ok and any("majority" in w for w in d.warnings)


def test_force_overrides_with_a_warning():
    sts = {"n1": None, "n2": st("follower", 1, 10), "n3": st("follower", 1, 50)}
    d = decide("n2", sts, ack_replicas=1, force=True)
    assert d.ok and any("behind n3" in w for w in d.warnings)


def test_k0_is_refused_without_force():
    sts = {"n1": None, "n2": st("follower", 1, 10)}
    assert not decide("n2", sts, 0, False).ok
    assert decide("n2", sts, 0, True).ok


def test_unreachable_or_leader_cannot_be_promoted():
    sts = {"n1": st("leader", 1, 10), "n2": None, "n3": st("follower", 1, 10)}
    assert "does not answer" in decide("n2", sts, 1, False).reason
    assert "already leads" in decide("n1", sts, 1, False).reason
    assert "not a node" in decide("n9", sts, 1, False).reason


def test_old_leader_after_fencing_does_not_set_the_bar():
    # After fencing, the old leader is a follower with unacknowledged extra records.
    sts = {"n1": st("follower", 2, 5000), "n2": st("follower", 2, 900), "n3": st("follower", 2, 900)}
    assert not decide("n2", sts, 1, False).ok
    assert decide("n2", sts, 1, False, old_leaders=frozenset({"n1"})).ok


def test_most_advanced_ignores_unreachable_and_leaders():
    sts = {"n1": st("leader", 2, 9999), "n2": st("follower", 2, 10), "n3": None, "n4": st("follower", 2, 20)}
    assert most_advanced(sts) == "n4"
    assert most_advanced({"n1": None}) is None


def test_a_fenced_former_leader_does_not_set_the_bar():
    # Found by the drill: the killed leader (node2) was restarted by the supervisor,
    # fenced as a follower, and its unreplicated tail made it look most advanced.
    def fol(end: int, led: int = 0) -> dict:
        return {"role": "follower", "epoch": 3, "end": end, "last_epoch": 2, "led_epoch": led}

    sts = {"node1": fol(975928, led=1), "node2": fol(976388, led=2), "node3": fol(961438)}
    assert decide("node1", sts, 1, False).ok
    assert most_advanced(sts) == "node1"
    # Promoting the former leader itself is also safe: it holds everything.
    assert decide("node2", sts, 1, False).ok
    # A node behind another plain follower is still refused.
    assert not decide("node3", sts, 1, False).ok


def test_node_state_round_trips_led_epoch(tmp_path):
    from daemon.node import identity as nodestate

    p = str(tmp_path / "node-state.json")
    st = nodestate.NodeState("leader", 4, "n1", [(1, 0), (4, 99)], led_epoch=4)
    nodestate.save(p, st)
    back = nodestate.load(p)
    assert back == st
    f = back.follower_of(5, "n2")
    assert (f.role, f.epoch, f.leader, f.history, f.led_epoch) == ("follower", 5, "n2", st.history, 4)


def test_a_deposed_leader_that_wrote_nothing_in_its_epoch_keeps_its_rank():
    from daemon.failover.promote import deposed_leaders

    # n3 led epoch 3 but holds only epoch-2 records, one more than anyone (acknowledged
    # in epoch 2 by n2, whose copy was later cut). It must not be ranked out.
    before = {"n1": st("follower", 3, 1435, last_epoch=2), "n2": st("follower", 3, 1497, last_epoch=2),
              "n3": {**st("leader", 3, 1559, last_epoch=2)}}
    assert deposed_leaders(before) == frozenset()
    after = {n: {**s, "role": "follower", "epoch": 4} for n, s in before.items()}
    assert not decide("n2", after, 1, False, deposed_leaders(before)).ok
    # A leader whose tail is of its own epoch is ranked out, as before.
    before["n3"] = st("leader", 3, 1600, last_epoch=3)
    assert deposed_leaders(before) == frozenset({"n3"})


def test_a_damaged_follower_is_no_copy_and_former_leaders_count_again():
    # n2 lost a record it acknowledged (its recovery cut it, damaged_end 427); the
    # former leader n1 holds it; n3 is down. Neither may be trusted alone: refuse.
    sts = {"n1": {**st("follower", 3, 427, last_epoch=1), "led_epoch": 1},
           "n2": {**st("follower", 3, 366, last_epoch=1), "damaged_end": 427}, "n3": None}
    d = decide("n2", sts, 1, False)
    assert not d.ok and "lost records at recovery" in d.reason
    # With n3 back (intact, behind n1), n1's tail sets the bar: n2 and n3 are behind it.
    sts["n3"] = st("follower", 3, 300, last_epoch=1)
    assert not decide("n2", sts, 1, False).ok and not decide("n3", sts, 1, False).ok
    assert "behind n1" in decide("n3", sts, 1, False).reason
    assert decide("n1", sts, 1, False).ok
    # Once n2 has caught up past its old end it is a copy again.
    sts["n2"]["end"] = 427
    assert decide("n2", sts, 1, False).ok
