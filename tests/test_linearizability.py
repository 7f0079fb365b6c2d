"""The simulator's linearizability checker (tests/sim/linearizability.py) accepts
histories one register could have produced and rejects the ones it could not.

Times in these histories are small integers; an op is [invoke, complete], and
complete=None marks an indeterminate op (timed out: may or may not have happened).
"""

from __future__ import annotations

import random
import time

import pytest

from daemon.failover.linearizability import Op, Verdict, check, check_key

K = b"k"


def s(value: bytes, invoke: float, complete: float | None, key: bytes = K, client: str = "") -> Op:
    return Op(key, "set", value, invoke, complete, client)


def d(invoke: float, complete: float | None, key: bytes = K, client: str = "") -> Op:
    return Op(key, "del", None, invoke, complete, client)


def g(value: bytes | None, invoke: float, complete: float | None, key: bytes = K, client: str = "") -> Op:
    return Op(key, "get", value, invoke, complete, client)


def ok(history, initial=None) -> bool:
    v = check(history, initial)
    assert not v.unknown, v.message
    return v.ok


# --- sequential histories -------------------------------------------------------------


def test_an_empty_history_is_linearizable():
    assert check([]) == Verdict(ok=True)
    assert check_key([]) == Verdict(ok=True)


def test_a_sequential_history_of_sets_and_gets_is_linearizable():
    assert ok([g(None, 0, 1), s(b"1", 2, 3), g(b"1", 4, 5), s(b"2", 6, 7), g(b"2", 8, 9), g(b"2", 10, 11)])


def test_a_stale_read_after_a_completed_write_is_not_linearizable():
    assert not ok([s(b"1", 0, 1), s(b"2", 2, 3), g(b"1", 4, 5)])


def test_a_read_of_a_value_never_written_is_not_linearizable():
    assert not ok([s(b"1", 0, 1), g(b"x", 2, 3)])
    assert not ok([g(b"x", 0, 1)])


def test_a_read_of_nothing_before_any_write_is_linearizable_and_a_read_of_something_is_not():
    assert ok([g(None, 0, 1)])
    assert not ok([g(b"1", 0, 1), s(b"1", 2, 3)])


def test_a_lost_acknowledged_write_is_not_linearizable():
    # The client was told the write of "new" succeeded; a later read still sees "old".
    history = [s(b"old", 0, 1, client="c1"), s(b"new", 2, 3, client="c1"), g(b"old", 10, 11, client="c2")]
    v = check(history)
    assert not v.ok and v.key == K
    assert "c2 get -> b'old' [10, 11]" in v.message


def test_a_lost_acknowledged_write_of_a_new_key_is_not_linearizable():
    assert not ok([s(b"v", 0, 1), g(None, 2, 3)])


# --- concurrency ----------------------------------------------------------------------


def test_a_read_concurrent_with_a_write_may_see_the_old_value():
    assert ok([s(b"1", 0, 1), s(b"2", 2, 6), g(b"1", 3, 4)])


def test_a_read_concurrent_with_a_write_may_see_the_new_value():
    assert ok([s(b"1", 0, 1), s(b"2", 2, 6), g(b"2", 3, 4)])


def test_a_read_that_begins_before_a_write_ends_may_see_it_even_if_it_ends_first():
    assert ok([s(b"2", 2, 6), g(b"2", 0, 3)])


def test_a_read_that_goes_back_to_an_older_value_after_a_newer_one_was_seen_is_not_linearizable():
    # Both reads overlap the write of "2", but the second starts after the first saw "2".
    history = [s(b"1", 0, 1), s(b"2", 2, 10), g(b"2", 3, 4, client="r1"), g(b"1", 5, 6, client="r2")]
    v = check(history)
    assert not v.ok
    assert "r2 get -> b'1' [5, 6]   <-- could not be placed" in v.message


def test_two_overlapping_reads_may_see_new_then_old_while_a_write_is_in_flight():
    assert ok([s(b"1", 0, 1), s(b"2", 2, 10), g(b"2", 3, 6), g(b"1", 5, 7)])


def test_concurrent_writes_may_take_effect_in_either_order():
    base = [s(b"a", 0, 5), s(b"b", 1, 4)]
    assert ok(base + [g(b"a", 6, 7)])
    assert ok(base + [g(b"b", 6, 7)])
    assert not ok(base + [g(b"a", 6, 7), g(b"b", 8, 9)])


def test_the_same_value_written_twice_may_be_read_again_after_a_different_one():
    assert ok([s(b"1", 0, 1), g(b"1", 2, 3), s(b"2", 4, 5), g(b"2", 6, 7), s(b"1", 8, 9), g(b"1", 10, 11)])


def test_an_op_invoked_at_the_instant_another_completes_is_concurrent_with_it():
    # Closed intervals: both may take effect at t=1, in either order.
    assert ok([s(b"1", 0, 1), g(None, 1, 2)])
    assert not ok([s(b"1", 0, 1), g(None, 1.5, 2)])


# --- indeterminate operations ---------------------------------------------------------


def test_an_indeterminate_write_whose_value_is_later_read_is_linearizable():
    assert ok([s(b"1", 0, 1), s(b"2", 2, None), g(b"2", 50, 51), g(b"2", 60, 61)])


def test_an_indeterminate_write_never_read_is_linearizable():
    assert ok([s(b"1", 0, 1), s(b"2", 2, None), g(b"1", 50, 51), g(b"1", 60, 61)])
    assert ok([s(b"1", 0, 1), d(2, None), g(b"1", 50, 51)])


def test_an_indeterminate_write_read_and_then_undone_by_a_later_read_is_not_linearizable():
    v = check([s(b"1", 0, 1), s(b"2", 2, None), g(b"2", 50, 51), g(b"1", 60, 61, client="late")])
    assert not v.ok
    assert "late get -> b'1' [60, 61]   <-- could not be placed" in v.message


def test_an_indeterminate_write_may_not_take_effect_before_it_was_invoked():
    assert not ok([s(b"1", 0, 1), g(b"2", 2, 3), s(b"2", 4, None)])


def test_an_indeterminate_write_may_take_effect_long_after_a_later_completed_write():
    assert ok([s(b"1", 0, None), s(b"2", 2, 3), g(b"2", 4, 5), g(b"1", 6, 7)])


def test_an_indeterminate_get_carries_no_information():
    assert ok([s(b"1", 0, 1), g(b"nonsense", 2, None), g(b"1", 3, 4)])


def test_an_indeterminate_delete_may_explain_a_missing_key():
    assert ok([s(b"1", 0, 1), d(2, None), g(None, 5, 6)])
    assert not ok([s(b"1", 0, 1), d(2, None), g(None, 5, 6), g(b"1", 7, 8)])


# --- del and initial state ------------------------------------------------------------


def test_a_read_after_a_delete_finds_nothing():
    assert ok([s(b"1", 0, 1), d(2, 3), g(None, 4, 5), s(b"2", 6, 7), g(b"2", 8, 9)])
    assert not ok([s(b"1", 0, 1), d(2, 3), g(b"1", 4, 5)])


def test_a_delete_of_a_missing_key_is_allowed():
    assert ok([d(0, 1), g(None, 2, 3)])


def test_the_initial_state_is_what_reads_see_before_any_write():
    initial = {K: b"v0"}
    assert ok([g(b"v0", 0, 1)], initial)
    assert not ok([g(None, 0, 1)], initial)
    assert ok([g(None, 0, 1, key=b"other")], initial)
    assert check_key([g(b"v0", 0, 1)], initial=b"v0").ok
    assert not check_key([g(b"v0", 0, 1)]).ok


# --- keys -----------------------------------------------------------------------------


def test_each_key_is_checked_on_its_own_and_the_bad_key_is_reported():
    history = [
        s(b"1", 0, 1, key=b"a", client="w"),
        s(b"1", 0, 1, key=b"b", client="w"),
        g(b"1", 2, 3, key=b"a", client="ra"),
        s(b"2", 4, 5, key=b"b", client="w"),
        g(b"1", 6, 7, key=b"b", client="rb"),
        g(b"1", 8, 9, key=b"c", client="rc"),  # a read of c never written: also bad
    ]
    v = check(history)
    assert not v.ok and not v.unknown
    assert v.key == b"b"
    assert "rb get -> b'1' [6, 7]   <-- could not be placed" in v.message
    assert "key b'b'" in v.message
    assert "ra" not in v.message  # only the bad key's ops are listed
    assert check([o for o in history if o.key == b"a"]).ok


def test_a_write_to_one_key_cannot_explain_a_read_of_another():
    assert not ok([s(b"1", 0, 1, key=b"a"), g(b"1", 2, 3, key=b"b")])


def test_the_message_lists_the_ops_of_the_bad_key_sorted_by_invoke():
    history = [g(b"1", 4, 5, client="third"), s(b"2", 2, 3, client="second"), s(b"1", 0, 1, client="first")]
    v = check(history)
    assert not v.ok
    lines = v.message.splitlines()
    listed = [ln.strip().split()[0] for ln in lines if ln.startswith("  ")]
    assert listed == ["first", "second", "third"]
    assert "register held b'2'" in v.message


def test_check_key_refuses_ops_of_different_keys_and_malformed_ops():
    with pytest.raises(ValueError):
        check_key([g(None, 0, 1, key=b"a"), g(None, 0, 1, key=b"b")])
    with pytest.raises(ValueError):
        check([Op(K, "set", None, 0, 1)])
    with pytest.raises(ValueError):
        check([Op(K, "del", b"x", 0, 1)])
    with pytest.raises(ValueError):
        check([Op(K, "cas", b"x", 0, 1)])
    with pytest.raises(ValueError):
        check([g(None, 2, 1)])


# --- randomized -----------------------------------------------------------------------


def sequential_history(rng: random.Random, n: int, keys: list[bytes]) -> tuple[list[Op], dict[bytes, bytes]]:
    """n non-overlapping ops run against a real dict; reads record what the dict held."""
    initial = {keys[0]: b"init"}
    model = dict(initial)
    ops = []
    for i in range(n):
        key = rng.choice(keys)
        kind = rng.choices(["set", "del", "get"], weights=[4, 1, 5])[0]
        if kind == "set":
            value = b"v%d" % rng.randrange(6)
            model[key] = value
        elif kind == "del":
            model.pop(key, None)
            value = None
        else:
            value = model.get(key)
        ops.append(Op(key, kind, value, 2 * i, 2 * i + 1, f"c{i % 3}"))
    return ops, initial


@pytest.mark.parametrize("seed", range(6))
def test_a_random_sequential_history_from_a_dict_is_linearizable_and_one_corrupt_read_is_not(seed):
    rng = random.Random(seed)
    keys = [b"a", b"b", b"c"]
    ops, initial = sequential_history(rng, 600, keys)
    assert check(ops, initial) == Verdict(ok=True)

    reads = [i for i, o in enumerate(ops) if o.kind == "get"]
    i = rng.choice(reads)
    bad = ops[i]
    wrong = rng.choice([v for v in [None, b"v0", b"v1", b"v2", b"never"] if v != bad.value])
    ops[i] = Op(bad.key, "get", wrong, bad.invoke, bad.complete, "corrupt")
    v = check(ops, initial)
    assert not v.ok and not v.unknown
    assert v.key == bad.key
    assert f"corrupt get -> {wrong!r}" in v.message


def concurrent_history(rng: random.Random, n: int) -> list[Op]:
    """A linearizable history with overlapping ops and timeouts: each op takes effect at
    its own instant t (applied to a real dict in order of t) inside [invoke, complete]."""
    state: bytes | None = None
    ops = []
    for i in range(n):
        t = 10.0 * i
        invoke, complete = t - rng.uniform(0, 25), t + rng.uniform(0, 25)
        kind = rng.choices(["set", "del", "get"], weights=[4, 1, 5])[0]
        if kind == "get":
            ops.append(Op(K, "get", state, invoke, complete))
            continue
        value = b"v%d" % i if kind == "set" else None
        if rng.random() < 0.05:  # timed out: it happened, or (if invoked after t) it may not have
            if rng.random() < 0.5:
                ops.append(Op(K, kind, value, invoke, None))
            else:
                ops.append(Op(K, kind, value, t + 1, None))
                continue
        else:
            ops.append(Op(K, kind, value, invoke, complete))
        state = value
    return ops


@pytest.mark.parametrize("seed", range(4))
def test_a_random_concurrent_history_with_timeouts_is_linearizable_and_checked_quickly(seed):
    ops = concurrent_history(random.Random(seed), 400)
    start = time.perf_counter()
    v = check_key(ops)
    elapsed = time.perf_counter() - start
    assert v == Verdict(ok=True), v.message
    assert elapsed < 2.0


# --- budget ---------------------------------------------------------------------------


def test_a_search_that_runs_out_of_budget_reports_unknown_not_a_verdict():
    # Twelve concurrent writes then a read of a value none wrote: proving it bad means
    # trying every order of the writes, far more than 100 steps.
    writes = [s(b"w%d" % i, 0, 100) for i in range(12)]
    history = writes + [g(b"w0", 0, 100), g(b"zzz", 200, 201)]
    v = check(history, budget=100)
    assert v.ok and v.unknown
    assert v.key == K
    assert "budget" in v.message
    small = check(writes[:6] + [g(b"zzz", 200, 201)])
    assert not small.ok and not small.unknown


def test_a_bad_key_is_reported_even_if_another_key_ran_out_of_budget():
    hard = [s(b"w%d" % i, 0, 100, key=b"a") for i in range(12)] + [g(b"zzz", 200, 201, key=b"a")]
    bad = [s(b"1", 0, 1, key=b"b"), g(None, 2, 3, key=b"b")]
    v = check(hard + bad, budget=100)
    assert not v.ok and v.key == b"b"
