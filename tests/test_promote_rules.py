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
    # n3 is behind n2, and n2 is no copy: the refusal names the node decide accepts.
    d = decide("n3", sts, 1, False)
    assert "promote n1 instead" in d.reason and d.instead == "n1"
    assert decide("n1", sts, 1, False).ok
    # Once n2 has caught up past its old end it is a copy again.
    sts["n2"]["end"] = 427
    assert decide("n2", sts, 1, False).ok


# -- a damaged node is covered by a log that reaches its damaged_end (issue 19) -------------------


def damaged_leader(end: int, damaged_end: int, last_epoch: int = 2, history=((1, 0), (2, 500))) -> dict:
    """node1 after its recovery cut its last record: stepped down, a follower of its own epoch 2."""
    return {**st("follower", 2, end, last_epoch), "led_epoch": 2, "damaged_end": damaged_end,
            "history": [list(h) for h in history]}


def test_a_follower_holding_the_damaged_leaders_whole_log_is_promoted_with_one_follower_down():
    # 3 nodes, K = 1, node3 down for good; node1's last record was damaged on its disk
    # (its log held 1062 bytes, recovery cut it to 1000); node2 holds all 1062 bytes.
    sts = {"node1": damaged_leader(1000, 1062), "node2": st("follower", 2, 1062), "node3": None}
    d = decide("node2", sts, 1, False)
    assert d.ok and d.epoch == 3, d.reason
    # node2 holds everything node1 ever held in epoch 2, and node1 held every acknowledged
    # write: the warning-free path, no --force.
    assert not d.warnings
    # The damaged node itself is never a copy.
    d = decide("node1", sts, 1, False)
    assert not d.ok and "behind node2" in d.reason and "promote node2 instead" in d.reason


def test_a_follower_short_of_the_damaged_end_is_no_proof_and_only_force_promotes():
    # node2 misses the damaged record: it may have been acknowledged by node3 (down).
    sts = {"node1": damaged_leader(1000, 1062), "node2": st("follower", 2, 1061), "node3": None}
    d = decide("node2", sts, 1, False)
    assert not d.ok and d.instead is None
    assert "only 1 of 2 follower(s)" in d.reason and "node1 lost records at recovery" in d.reason
    assert "bring node3 back, or use --force and accept possible loss" in d.reason
    d = decide("node2", sts, 1, True)
    assert d.ok and any("only 1 of 2" in w for w in d.warnings)


def test_a_node_that_refused_the_vote_is_not_sent_back_and_the_force_command_is_named():
    # Seed 79 of the opt-in fault mix: K = 2, node1 and node3 cut their logs at recovery, node2 was
    # rebuilt (it votes only once it follows a leader, and nobody leads). After fencing node2 counts
    # as no answer, but it is up: "bring node2 back" would send the operator nowhere.
    sts = {"node1": damaged_leader(0, 220, 0, ((1, 0),)), "node2": None, "node3": damaged_leader(0, 277, 0, ())}
    d = decide("node1", sts, 2, False, no_vote=frozenset({"node2"}))
    assert not d.ok and d.instead is None
    assert "bring node2 back" not in d.reason
    assert "node2 answered but cast no vote" in d.reason and "only 'zwal promote node1 --force'" in d.reason
    assert decide("node1", sts, 2, True, no_vote=frozenset({"node2"})).ok  # the named command works
    # A node that is really down is still to be brought back.
    assert "bring node2 back" in decide("node1", sts, 2, False).reason


def test_covering_the_damaged_end_needs_the_damaged_nodes_last_epoch_too():
    # node2 has more bytes, but of epoch 1: the cut epoch-2 bytes are not its bytes.
    sts = {"node1": damaged_leader(1000, 1062), "node2": st("follower", 2, 2000, last_epoch=1), "node3": None}
    assert not decide("node2", sts, 1, False).ok
    # The cut took every epoch-2 record (last_epoch 1 now): the history still names epoch 2.
    sts["node1"] = damaged_leader(500, 1062, last_epoch=1, history=((1, 0), (2, 500)))
    assert not decide("node2", sts, 1, False).ok
    sts["node2"] = st("follower", 2, 1062, last_epoch=2)
    assert decide("node2", sts, 1, False).ok
    # A log of a newer epoch holds every record acknowledged before that epoch began.
    sts["node2"] = st("follower", 4, 700, last_epoch=3)
    assert decide("node2", sts, 1, False).ok


def test_a_damaged_node_does_not_count_for_itself_even_when_others_answer():
    # F = 3, K = 1: 3 copies needed; node4 is damaged and not covered by node2.
    sts = {"node1": None, "node2": st("follower", 2, 900), "node3": st("follower", 2, 800),
           "node4": {**st("follower", 2, 700), "damaged_end": 950}}
    d = decide("node2", sts, 1, False)
    assert not d.ok and "only 2 of 3" in d.reason
    sts["node4"]["damaged_end"] = 900
    assert decide("node2", sts, 1, False).ok


# -- a former leader truncated to a prefix is a copy (issue 19) -----------------------------------


def test_a_former_leader_truncated_to_a_prefix_counts_as_a_copy():
    # node1 led epoch 2, was deposed, and truncated its divergent tail: its log (ending in
    # its own epoch 2) is now a prefix of node2's. node3 is down.
    sts = {"node1": {**st("follower", 3, 900, last_epoch=2), "led_epoch": 2},
           "node2": st("follower", 3, 900, last_epoch=2), "node3": None}
    d = decide("node2", sts, 1, False)
    assert d.ok, d.reason
    # Still holding a tail beyond node2 (not truncated): its tail may hold a record
    # node3 acknowledged, so it is no copy of node2.
    sts["node1"]["end"] = 901
    d = decide("node2", sts, 1, False)
    assert not d.ok and "node1 led epoch 2 and holds records beyond node2's end" in d.reason
    assert d.instead == "node1"  # node1 holds everything: promoting it is safe
    assert decide("node1", sts, 1, False).ok


def test_a_former_leaders_records_of_a_newer_epoch_are_not_covered_by_more_bytes_of_an_older_one():
    sts = {"node1": {**st("follower", 3, 900, last_epoch=2), "led_epoch": 2},
           "node2": st("follower", 3, 950, last_epoch=1), "node3": None}
    assert not decide("node2", sts, 1, False).ok
    # A former leader of an older epoch is covered by any log of a newer one.
    sts = {"node1": {**st("follower", 3, 5000, last_epoch=2), "led_epoch": 2},
           "node2": st("follower", 3, 100, last_epoch=3), "node3": None}
    assert decide("node2", sts, 1, False).ok


# -- ties, suggestions ----------------------------------------------------------------------------


def test_ties_resolve_by_name_whatever_order_the_statuses_come_in():
    a = {"n1": None, "n2": st("follower", 2, 900), "n3": st("follower", 2, 900), "n4": st("follower", 2, 100)}
    b = dict(reversed(list(a.items())))
    assert most_advanced(a) == most_advanced(b) == "n2"
    # Both tied nodes may be promoted; the lagging one is pointed at the same one every time.
    assert decide("n2", a, 1, False).ok and decide("n3", b, 1, False).ok
    assert decide("n4", a, 1, False).instead == decide("n4", b, 1, False).instead == "n2"


def test_no_refusal_names_a_node_that_decide_would_refuse():
    from itertools import product

    from daemon.failover.promote import promotable

    # Every small cluster shape: each suggestion is accepted, and a refusal
    # without one means no node is accepted.
    shapes = [None, st("follower", 2, 900), st("follower", 2, 1000), st("follower", 2, 1100, last_epoch=1),
              {**st("follower", 2, 1000), "led_epoch": 2}, {**st("follower", 2, 900), "damaged_end": 1000},
              {**st("follower", 2, 800), "damaged_end": 1000, "led_epoch": 2}]
    for combo in product(shapes, repeat=3):
        sts = {f"n{i + 1}": s for i, s in enumerate(combo)}
        for k in (1, 2):
            ok = promotable(sts, k)
            for n in sts:
                d = decide(n, sts, k, False)
                if d.instead is not None:
                    assert decide(d.instead, sts, k, False).ok, (sts, n, d)
                    assert "promote " + d.instead + " instead" in d.reason
                elif not d.ok and "already leads" not in d.reason:
                    assert "instead" not in d.reason, (sts, n, d)
                    assert promotable(sts, k, exclude=n) is None, (sts, n, d)
            assert ok is None or decide(ok, sts, k, False).ok


# -- a split vote: the retry decision (pure) --------------------------------------------------------


def test_a_lost_vote_is_retried_once_at_a_higher_epoch_of_its_own():
    from daemon.failover.promote import RETRY, STOP, after_lost_vote

    names = ["node1", "node2", "node3"]
    # Both followers lost epoch 4 (node1, the old leader, is down): each retries at its own epoch.
    sts = {"node1": None, "node2": st("follower", 4, 900), "node3": st("follower", 4, 900)}
    a = after_lost_vote("node2", names, 4, sts, retried=0)
    b = after_lost_vote("node3", names, 4, sts, retried=0)
    assert (a.action, b.action) == (RETRY, RETRY)
    assert a.epoch > 4 and b.epoch > 4 and a.epoch != b.epoch
    # Once only.
    assert after_lost_vote("node2", names, 4, sts, retried=1).action == STOP
    assert after_lost_vote("node2", names, 4, sts, retried=0, retries=0).action == STOP


def test_a_loser_stops_when_the_other_promotion_won_and_waits_while_it_runs():
    from daemon.failover.promote import RETRY, STOP, WATCH, after_lost_vote

    names = ["node1", "node2", "node3"]
    sts = {"node1": None, "node2": st("leader", 5, 900), "node3": st("follower", 5, 900)}
    p = after_lost_vote("node3", names, 4, sts, retried=0)
    assert p.action == STOP and "node2 leads epoch 5" in p.reason
    # A leader of an older epoch than the one lost is no winner of this race.
    sts["node2"], sts["node3"] = st("leader", 3, 900), st("follower", 4, 900)
    assert after_lost_vote("node3", names, 4, sts, retried=0).action == RETRY
    # A node at a newer epoch than the one lost: another retry is under way; stand back.
    sts = {"node1": None, "node2": st("follower", 5, 900), "node3": st("follower", 5, 900)}
    assert after_lost_vote("node3", names, 4, sts, retried=0).action == WATCH
    # If that promotion never leads, retry above it.
    p = after_lost_vote("node3", names, 4, sts, retried=0, watched=True)
    assert p.action == RETRY and p.epoch > 5


def test_retry_pauses_are_random_within_disjoint_windows_per_candidate():
    from daemon.failover.promote import RETRY_BASE_S, retry_bounds, retry_pause

    names = ["node3", "node1", "node2"]
    for timeout in (0.0, 1.0, 2.0):
        windows = [retry_bounds(n, names, timeout) for n in sorted(names)]
        assert windows[0][0] == RETRY_BASE_S > 0
        for (lo, hi), (lo2, _) in zip(windows, windows[1:]):
            # a window, and the next candidate's starts after it ends plus a full status round
            assert lo < hi and hi + timeout < lo2
    assert retry_bounds("node3", names)[1] < 1.5  # short, like Raft's election timeouts
    for u in (0.0, 0.3, 0.999, 1.5, -1):
        lo, hi = retry_bounds("node2", names)
        assert lo <= retry_pause("node2", names, u) <= hi
    assert retry_pause("node2", names, 0.1) != retry_pause("node2", names, 0.9)


def test_a_loser_whose_rival_won_a_majority_of_votes_stands_back():
    from daemon.failover.promote import RETRY, WATCH, after_lost_vote

    names = ["node1", "node2", "node3"]
    sts = {"node1": st("follower", 4, 900), "node2": None, "node3": st("follower", 4, 900)}
    # node3 got node1's vote and its own: it won epoch 4 and is about to lead.
    p = after_lost_vote("node1", names, 4, sts, retried=0, votes={"node1": "node3", "node3": "node3"})
    assert p.action == WATCH and "node3 won the votes of epoch 4" in p.reason
    # A split (one vote each) is retried.
    assert after_lost_vote("node1", names, 4, sts, 0, votes={"node1": "node1", "node3": "node3"}).action == RETRY
    # If the winner never leads, retry after watching.
    assert after_lost_vote("node1", names, 4, sts, 0, watched=True,
                           votes={"node1": "node3", "node3": "node3"}).action == RETRY


def test_a_switchover_with_a_follower_gone_counts_the_live_leader_as_a_copy():
    # 3 nodes, K = 1, n3 gone for good: n2 has all of the live leader n1's log. n1 and n2 are
    # the two copies N - K needs (the check after fencing decides again, when n1 can
    # acknowledge nothing more). A leader ahead of n2 is no copy of it.
    sts = {"n1": st("leader", 2, 900), "n2": st("follower", 2, 900), "n3": None}
    assert decide("n2", sts, ack_replicas=1, force=False).ok
    sts["n1"] = st("leader", 2, 950)
    assert not decide("n2", sts, ack_replicas=1, force=False).ok
