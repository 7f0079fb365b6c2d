"""The deterministic cluster simulator (tests/sim/): named fault scenarios, random seeds, exact replay.

Every step of every run checks the invariants of tests/sim/invariants.py;
a failure names the invariant and prints the seed's last events.
"""

from __future__ import annotations

import pytest

from sim.faults import FAULTS, parse_faults
from sim.run import report, run_seed
from sim.scenarios import (ALL, NEW, client_churn, concurrent_promotes, damaged_leader_tail, fence_during_batch,
                           resumed_leader_unheard,
                           lying_leader_disk, rebuild_bootstrap, rebuild_bootstrap_k0, two_promotes_at_once)
from sim.world import Violation

RANDOM_SEEDS = range(200)

# Seeds that once broke an invariant, kept as regressions: (seed, flips anywhere?) -> what was wrong.
FOUND_SEEDS = {
    (1605, False): "a follower kept an epoch start at its end; promoted, it cut a replica's acknowledged record",
    (4802, False): "a deposed leader that wrote nothing in its own epoch was ranked out of promotion, "
                   "though it held the only copy of a record acknowledged in the epoch before",
    (97, True): "a node whose log shrank after the promotion checked it was promoted",
    (164, True): "a follower that cut its only copy of an acknowledged record counted as a copy",
    (953, True): "a flipped length field made a damaged record look unfinished, and the cut was not marked",
    (500609, False): "a leader deferred a fence behind its batch in flight and stepped down meanwhile; the vote "
                     "it saved was undone by the step-down's older state, and it voted again: two leaders of epoch 3",
    (951233, False): "the chaos loop slept past the faults' end and still drew a fault; it landed in the "
                     "healed cluster, and the check found two leaders mid-handover (a bug of the world, not the node)",
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_scenario(name):
    ALL[name]()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("nodes", [3, 5])
def test_concurrent_promotes_many_interleavings(seed, nodes):
    concurrent_promotes(seed, nodes)


@pytest.mark.parametrize("open_records", [0, 1, 2, 4])
def test_fence_during_batch_tells_the_truth_about_written(open_records):
    fence_during_batch(open_records=open_records)


def test_random_seeds():
    for seed in RANDOM_SEEDS:
        try:
            run_seed(seed)
        except BaseException as e:
            pytest.fail(report(seed, e), pytrace=False)


@pytest.mark.parametrize("seed,all_flips", sorted(FOUND_SEEDS))
def test_seeds_that_found_bugs(seed, all_flips):
    try:
        run_seed(seed, all_flips=all_flips)
    except BaseException as e:
        pytest.fail(f"{FOUND_SEEDS[seed, all_flips]}\n{report(seed, e)}", pytrace=False)


def test_same_seed_same_trace():
    a = run_seed(7, full_trace=True)
    b = run_seed(7, full_trace=True)
    assert a.world.steps == b.world.steps
    assert a.world.trace() == b.world.trace()
    c = run_seed(8, full_trace=True)
    assert c.world.trace() != a.world.trace()


# -- issue 19 item 8: the faults the simulator learnt (tests/sim/faults.py, tests/sim/liveness.py) ----------


class TodaysBug(Exception):
    """The scenario failed with exactly the violation the issue describes (not some other failure)."""


def expect_bug(fn, invariant: str, detail: str, *args):
    """Run a scenario that fails on code without issue 19's fixes; only the named violation counts as expected.

    Marked xfail(strict=True, raises=TodaysBug): any other failure is a real
    failure, and once the fix lands the scenario passes and the mark must go.
    """
    try:
        fn(*args)
    except Violation as e:
        if e.invariant == invariant and detail in e.detail:
            raise TodaysBug(f"[{e.invariant}] {e.detail}") from e
        raise


def test_a_rebuilt_follower_catches_up_and_counts_again():
    NEW["i_rebuild_follower"]()


def test_a_rebuilt_bootstrap_node_follows_the_leader():
    expect_bug(rebuild_bootstrap, "acked-write", "n1 leads epoch 1 without the record acknowledged")


def test_a_rebuilt_bootstrap_node_acknowledges_no_write_that_is_lost():
    expect_bug(rebuild_bootstrap_k0, "acked-write", "acknowledged twice with different records")


@pytest.mark.parametrize("records", [1, 2])
def test_a_damaged_leader_tail_heals_by_itself(records):
    expect_bug(damaged_leader_tail, "liveness", "nobody promotes", 0, records)


def test_a_damaged_leader_tail_with_a_follower_gone_heals():
    expect_bug(NEW["j_damaged_leader_tail_one_gone"], "liveness", "operator actions: ")


def test_a_lying_leader_disk_heals_by_itself():
    expect_bug(lying_leader_disk, "liveness", "nobody promotes")


def test_a_lying_leader_disk_loses_no_acknowledged_write():
    expect_bug(lying_leader_disk, "acked-write", "acknowledged twice with different records", 0, True)


def test_a_retry_after_client_id_churn_is_answered_from_the_window():
    expect_bug(client_churn, "exactly-once", "the retry was written twice")


def test_two_promotes_at_once_resolve_the_split_vote():
    expect_bug(two_promotes_at_once, "liveness", "nobody promotes")


def test_no_provable_copy_left_is_a_needs_force_run_and_the_refusal_names_the_command():
    # Seed 79: K = 2; n1 and n3 cut their logs at recovery (garbage after the end), n2 was rebuilt
    # and casts no vote until it follows a leader. No log proves an acknowledged write survived, so
    # decide() refuses without --force: no wedge of the protocol, and the refusal names the one
    # command that works (not "bring n2 back": n2 is up).
    sim = run_seed(79, faults=parse_faults("damage,lying,promotes,rebuild"), liveness="operator", full_trace=True)
    assert sim.live.healed_by == "needs --force"
    refusals = [line for line in sim.world.trace() if "op promote" in line and "as docs/ say" in line]
    assert refusals and all("only 'zwal promote n1 --force' can promote now" in r for r in refusals), refusals[-1:]
    assert not any("bring n2 back" in r for r in refusals)


def test_the_fault_names_parse():
    assert parse_faults("all") == frozenset(FAULTS)
    assert parse_faults("damage, promotes") == {"damage", "promotes"}
    with pytest.raises(ValueError):
        parse_faults("rebuild,bogus")


def test_same_seed_same_trace_with_the_new_faults():
    every = frozenset(FAULTS) - {"churn"}  # churn is slow; it draws from the same RNG
    runs = []
    for _ in range(2):
        try:
            sim = run_seed(3, full_trace=True, faults=every, liveness="operator")
        except Violation as e:
            sim = e.sim  # type: ignore[attr-defined]
        runs.append(sim.world.trace())
    assert runs[0] == runs[1]


@pytest.mark.parametrize("seed", [0, 3])
def test_a_resumed_leader_never_rewrites_an_epoch_an_unheard_follower_holds(seed):
    """Seeds 505659 and 700545 of the long run: logs-agree before a restarted leader heard every follower."""
    resumed_leader_unheard(seed)
