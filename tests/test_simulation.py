"""The deterministic cluster simulator (tests/sim/): named fault scenarios, random seeds, exact replay.

Every step of every run checks the invariants of tests/sim/invariants.py;
a failure names the invariant and prints the seed's last events.
"""

from __future__ import annotations

import pytest

from sim.run import report, run_seed
from sim.scenarios import ALL, concurrent_promotes, fence_during_batch

RANDOM_SEEDS = range(200)

# Seeds that once broke an invariant, kept as regressions: (seed, flips anywhere?) -> what was wrong.
FOUND_SEEDS = {
    (1605, False): "a follower kept an epoch start at its end; promoted, it cut a replica's acknowledged record",
    (4802, False): "a deposed leader that wrote nothing in its own epoch was ranked out of promotion, "
                   "though it held the only copy of a record acknowledged in the epoch before",
    (97, True): "a node whose log shrank after the promotion checked it was promoted",
    (164, True): "a follower that cut its only copy of an acknowledged record counted as a copy",
    (953, True): "a flipped length field made a damaged record look unfinished, and the cut was not marked",
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
