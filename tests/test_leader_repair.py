"""A restarted leader that cut its tail: F - K + 1 answers decide, and it repairs
records of its own epoch from a follower (Protocol-Aware Recovery, issue 19).
Driven directly: no sockets, files or sleeps."""

from __future__ import annotations

import msgpack
import pytest

from daemon.node.kv import KVState
from daemon.node.leader_core import (AppendRepair, CompareOwn, Confirmed, Heard, InvariantViolation, LeaderCore, RepairRefused,
                                     SendControl, StepDown)
from daemon.node.repair import MAX_REPAIR_FAILURES, confirm_quorum, repair_reply, verify_repair
from daemon.wal.format import OP_SET, Record, encode_frame
from daemon.wire.replication import (BadMessage, Fetch, RepairData, RepairRequest, Truncate, decode_from_leader,
                                     decode_to_leader, encode, encode_repair_data)


def frames(n: int, epoch: int = 1, start: int = 0, tag: str = "r") -> bytes:
    return b"".join(encode_frame(Record(OP_SET, f"{tag}{start + i}".encode(), b"v" * 10), epoch) for i in range(n))


ONE = len(frames(1))
LOG = frames(6)  # the leader's log before the cut: 6 records of epoch 1


def core(end: int, k: int = 1, followers=("n2", "n3"), epoch: int = 1, history=None, **kw) -> LeaderCore:
    return LeaderCore(
        name="n1", epoch=epoch, end=end, kv=KVState(), history=history or [(1, 0)], followers=list(followers),
        ack_replicas=k, replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20,
        batch_max_records=64, batch_max_bytes=1 << 20, confirming=True, repair_max_bytes=1 << 20, **kw)


def fetch(name: str, offset: int, last_epoch: int = 1, epoch: int = 1) -> Fetch:
    return Fetch(name, epoch, offset, last_epoch)


def of(out: list, cls: type) -> list:
    return [a for a in out if isinstance(a, cls)]


def repair_requests(out: list) -> list[RepairRequest]:
    return [a.msg for a in of(out, SendControl) if isinstance(a.msg, RepairRequest)]


def test_confirm_quorum_is_every_follower():
    # F - K + 1 found every acknowledged record, but resuming in the same epoch with a follower
    # unheard let two logs differ after a promotion (simulator scenario resumed_leader_unheard).
    assert confirm_quorum(2, 1) == 2 and confirm_quorum(2, 2) == 2
    assert confirm_quorum(4, 1) == 4 and confirm_quorum(4, 2) == 4 and confirm_quorum(4, 4) == 4
    assert confirm_quorum(2, 0) == 2
    assert confirm_quorum(0, 0) == 0


def test_with_one_follower_gone_three_answers_of_four_do_not_decide():
    # 5 nodes (F = 4), K = 2: n5 may hold bytes of this epoch beyond the cut; wait for it.
    c = core(4 * ONE, k=2, followers=("n2", "n3", "n4", "n5"))
    assert c.confirm_need == 4
    assert of(c.on_fetch(fetch("n2", 4 * ONE), [b"n2"], 0.0), Confirmed) == []
    assert of(c.on_fetch(fetch("n3", 2 * ONE), [b"n3"], 0.0), Confirmed) == []
    assert of(c.on_fetch(fetch("n4", 4 * ONE), [b"n4"], 0.0), Confirmed) == []
    [done] = of(c.on_fetch(fetch("n5", 4 * ONE), [b"n5"], 0.0), Confirmed)
    assert c.confirming is None and done.end == 4 * ONE and done.unheard == []


def test_the_leader_repairs_its_own_epoch_from_a_follower_and_leads_on():
    c = core(4 * ONE)  # the cut took records 5 and 6; n2 holds them
    out = c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0)
    [req] = repair_requests(out)
    assert (req.offset, req.upto, req.epoch) == (4 * ONE, 6 * ONE, 1)
    assert not of(out, StepDown) and c.confirming is not None
    [app] = of(c.on_repair(RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:]), 0.0), AppendRepair)
    assert (app.source, app.offset, app.data, app.records) == ("n2", 4 * ONE, LOG[4 * ONE:], 2)
    assert c.repaired(6 * ONE, 0.0) == []  # n3 has not answered yet
    assert c.end == 6 * ONE and c.kv.get(b"r5") == b"v" * 10
    c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0)
    [done] = of(c.on_fetch(fetch("n3", 3 * ONE), [b"n3"], 0.0), Confirmed)
    assert done.end == 6 * ONE and c.confirming is None and c.stepped_down is None


def test_a_fetch_that_arrives_while_the_repair_is_on_its_way_to_disk_changes_nothing():
    # The append of a repair completes later (the syncer thread, or the simulator's disk): the
    # follower's next fetch, sent right after its repair data, may come first. Found by the
    # simulator (j_damaged_leader_tail_one_gone) once the role's append became asynchronous.
    c = core(4 * ONE)
    c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0)
    [app] = of(c.on_repair(RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:]), 0.0), AppendRepair)
    assert repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.01)) == []  # no second request
    c.repaired(6 * ONE, 0.02)  # and the one on disk is still accounted for
    assert c.end == 6 * ONE and c.repair_failures.get("n2") is None


def test_with_node3_down_for_good_the_leader_repairs_from_node2_up_to_its_old_end_and_leads_on():
    # 3 nodes, K = 1 (F - K + 1 = 2 = both followers) and node3 never answers.
    # node2 holds everything up to the end the log had before the cut: once
    # repaired there the log is whole, and no quorum is needed.
    c = core(4 * ONE, k=1, followers=("n2", "n3"), damaged_end=6 * ONE)
    [req] = repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0))
    c.on_repair(RepairData("n2", 1, req.offset, LOG[req.offset:req.upto]), 0.0)
    [done] = of(c.repaired(6 * ONE, 0.0), Confirmed)
    assert done.unheard == [] and c.end == 6 * ONE and c.confirming is None


def test_with_node3_down_for_good_and_node2_short_of_the_old_end_the_leader_waits():
    # node3 may hold the only copy of an acknowledged record: not safe to lead on.
    c = core(4 * ONE, k=1, followers=("n2", "n3"), damaged_end=6 * ONE)
    [req] = repair_requests(c.on_fetch(fetch("n2", 5 * ONE), [b"n2"], 0.0))
    c.on_repair(RepairData("n2", 1, req.offset, LOG[req.offset:req.upto]), 0.0)
    assert c.repaired(5 * ONE, 0.0) == [] and c.confirming == {"n2"}
    assert of(c.on_fetch(fetch("n2", 5 * ONE), [b"n2"], 0.0), Confirmed) == []
    [done] = of(c.on_fetch(fetch("n3", 3 * ONE), [b"n3"], 0.0), Confirmed)  # node3 is back: both answered
    assert done.end == 5 * ONE


def test_k_equal_f_the_repair_waits_for_the_other_follower_too():
    c = core(4 * ONE, k=2, followers=("n2", "n3"))
    assert c.confirm_need == 2
    [req] = repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0))
    c.on_repair(RepairData("n2", 1, req.offset, LOG[req.offset:req.upto]), 0.0)
    assert of(c.repaired(6 * ONE, 0.0), Confirmed) == [] and c.end == 6 * ONE
    [done] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), Confirmed)
    assert done.unheard == [] and done.end == 6 * ONE


def test_repair_comes_in_bounded_pieces_and_goes_on_until_the_follower_holds_no_more():
    c = core(2 * ONE, k=1, followers=("n2",))
    c.repair_max = 2 * ONE
    [req] = repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0))
    assert req.max == 2 * ONE
    too_much = RepairData("n2", 1, 2 * ONE, LOG[2 * ONE:5 * ONE])
    assert of(c.on_repair(too_much, 0.0), RepairRefused) and c.end == 2 * ONE
    [req] = repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0))
    c.on_repair(RepairData("n2", 1, 2 * ONE, LOG[2 * ONE:4 * ONE]), 0.0)
    assert c.repaired(4 * ONE, 0.0) == []  # still behind n2, and n2's fetch is not parked: wait for it
    [req] = repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0))
    assert req.offset == 4 * ONE
    c.on_repair(RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:]), 0.0)
    assert of(c.repaired(6 * ONE, 0.0), Confirmed)


@pytest.mark.parametrize("why, msg", [
    ("another epoch", RepairData("n2", 1, 4 * ONE, frames(2, epoch=2, start=4))),
    ("a flipped byte", RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:-1] + bytes([LOG[-1] ^ 1]))),
    ("a short frame", RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:-3])),
    ("not contiguous", RepairData("n2", 1, 5 * ONE, LOG[5 * ONE:])),
    ("past its claim", RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:] + frames(1, start=6))),
    ("another epoch's header", RepairData("n2", 2, 4 * ONE, LOG[4 * ONE:])),
    ("garbage", RepairData("n2", 1, 4 * ONE, b"\x00" * 40)),
])
def test_bad_repair_data_changes_nothing(why, msg):
    c = core(4 * ONE)
    c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0)
    out = c.on_repair(msg, 0.0)
    assert [type(a) for a in out] == [RepairRefused], why
    assert c.end == 4 * ONE and c.kv.get(b"r4") is None and c.confirming is not None
    assert c.counters.errors["repair_refused"] == 1
    with pytest.raises(InvariantViolation):
        c.repaired(6 * ONE, 0.0)


def test_repair_data_nobody_asked_for_is_refused():
    c = core(4 * ONE)
    assert of(c.on_repair(RepairData("n2", 1, 4 * ONE, LOG[4 * ONE:]), 0.0), RepairRefused)
    c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0)
    assert of(c.on_repair(RepairData("n3", 1, 4 * ONE, LOG[4 * ONE:]), 0.0), RepairRefused)  # asked n2, not n3
    assert c.end == 4 * ONE


def test_a_follower_that_keeps_sending_bad_repairs_makes_the_leader_step_down_naming_a_promotable_follower():
    c = core(4 * ONE)
    c.on_fetch(fetch("n3", 4 * ONE), [b"n3"], 0.0)
    out: list = []
    for _ in range(MAX_REPAIR_FAILURES):
        assert repair_requests(c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0))
        c.on_repair(RepairData("n2", 1, 4 * ONE, b"\x00" * 40), 0.0)
    out = c.on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0)
    [sd] = of(out, StepDown)
    assert sd.loud and "zwal promote n2" in sd.reason and "2 of 2 followers answered, 2 needed" in sd.reason
    assert not any(isinstance(a, SendControl) and isinstance(a.msg, Truncate) for a in out)


def test_records_of_another_epoch_beyond_the_leader_are_not_repaired_the_leader_steps_down_once_enough_answered():
    # Leader of epoch 3 from offset 2*ONE... its cut went below: history moved to the new end.
    c = core(2 * ONE, epoch=3, history=[(1, 0), (3, 2 * ONE)])
    out = c.on_fetch(fetch("n2", 4 * ONE, last_epoch=1, epoch=3), [b"n2"], 0.0)
    assert repair_requests(out) == [] and of(out, StepDown) == []  # n3 not heard yet: F - K + 1 = 2
    [sd] = of(c.on_fetch(fetch("n3", 2 * ONE, last_epoch=1, epoch=3), [b"n3"], 0.0), StepDown)
    assert "zwal promote n2" in sd.reason


def test_a_follower_that_did_not_answer_is_truncated_to_where_the_leader_resumed():
    # A leader that resumed with n3 unheard (state saved by an older version: resume_at, unheard).
    c = resumed(4 * ONE)
    # n3 comes back holding the old epoch-1 bytes up to 6*ONE (never acknowledged: n2 did not have them).
    [ctl] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), SendControl)
    assert isinstance(ctl.msg, Truncate) and (ctl.msg.offset, ctl.msg.last_epoch) == (4 * ONE, 1)
    # Its next fetch, from the cut, is a prefix: heard.
    assert of(c.on_fetch(fetch("n3", 4 * ONE), [b"n3"], 0.0), Heard) == [Heard("n3")]
    assert c.unheard == set()


def resumed(end: int = 8 * ONE) -> LeaderCore:
    """A leader that resumed at 4*ONE with n3 unheard, and has written up to `end` since (restart included)."""
    return LeaderCore(name="n1", epoch=1, end=end, kv=KVState(), history=[(1, 0)], followers=["n2", "n3"],
                      ack_replicas=1, replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20,
                      batch_max_records=64, batch_max_bytes=1 << 20, resume_at=4 * ONE, unheard=frozenset({"n3"}))


NEW = LOG[:4 * ONE] + frames(4, start=4, tag="n")  # what the leader wrote after resuming at 4*ONE


def test_an_unheard_follower_beyond_resume_at_is_compared_and_cut_where_its_bytes_differ():
    c = resumed()
    [ctl] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), SendControl)
    assert isinstance(ctl.msg, RepairRequest) and (ctl.msg.offset, ctl.msg.upto) == (4 * ONE, 6 * ONE)
    [cmp] = c.on_repair(RepairData("n3", 1, 4 * ONE, LOG[4 * ONE:6 * ONE]), 0.0)  # the old, never-acked bytes
    assert isinstance(cmp, CompareOwn)
    c.compared("n3", 4 * ONE, cmp.data, NEW[4 * ONE:6 * ONE])
    [ctl] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), SendControl)
    assert isinstance(ctl.msg, Truncate) and ctl.msg.offset == 4 * ONE
    assert of(c.on_fetch(fetch("n3", 4 * ONE), [b"n3"], 0.0), Heard) == [Heard("n3")]  # cut: a prefix now


def test_an_unheard_follower_holding_our_own_bytes_is_never_truncated():
    # Its old bytes are byte-identical to records we wrote again (a retry, say): they may be acknowledged copies.
    c = resumed()
    old = NEW[:5 * ONE] + LOG[5 * ONE:6 * ONE]  # the first frame after resume_at is identical, the next is not
    c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0)
    [cmp] = c.on_repair(RepairData("n3", 1, 4 * ONE, old[4 * ONE:]), 0.0)
    c.compared("n3", 4 * ONE, cmp.data, NEW[4 * ONE:6 * ONE])
    [ctl] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), SendControl)
    assert isinstance(ctl.msg, Truncate) and ctl.msg.offset == 5 * ONE  # only from where they differ
    c2 = resumed()
    c2.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0)
    [cmp] = c2.on_repair(RepairData("n3", 1, 4 * ONE, NEW[4 * ONE:6 * ONE]), 0.0)
    c2.compared("n3", 4 * ONE, cmp.data, NEW[4 * ONE:6 * ONE])
    out = c2.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0)
    assert Heard("n3") in out and not any(isinstance(a, SendControl) and isinstance(a.msg, Truncate) for a in out)


def test_an_unheard_follower_that_sends_nothing_is_cut_at_resume_at_and_one_beyond_our_end_too():
    c = resumed()
    c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0)
    [ctl] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), SendControl)  # fetched again, sent no frames
    assert isinstance(ctl.msg, Truncate) and ctl.msg.offset == 4 * ONE
    c = resumed(end=4 * ONE)  # nothing written since resuming: its bytes beyond are not ours at all
    [ctl] = of(c.on_fetch(fetch("n3", 6 * ONE), [b"n3"], 0.0), SendControl)
    assert isinstance(ctl.msg, Truncate) and ctl.msg.offset == 4 * ONE
    assert not of(resumed().on_fetch(fetch("n2", 6 * ONE), [b"n2"], 0.0), SendControl)  # n2 was heard: a prefix


def test_verify_repair_rules():
    assert isinstance(verify_repair(LOG[:2 * ONE], 0, 1, 2 * ONE, 1 << 20), list)
    assert "past the end" in verify_repair(LOG[:2 * ONE], 0, 1, ONE, 1 << 20)
    assert "epoch" in verify_repair(frames(1, epoch=2), 0, 1, ONE, 1 << 20)
    assert "epoch" in verify_repair(frames(1, epoch=1), 0, 2, ONE, 1 << 20)  # an older epoch is not ours either
    assert verify_repair(b"", 0, 1, ONE, 1 << 20) == "no bytes"
    assert isinstance(verify_repair(LOG[:ONE], 0, 1, ONE, 1), list)  # one frame may exceed the budget


def test_the_followers_reply_holds_only_frames_of_the_asked_epoch():
    log = frames(3, epoch=1) + frames(2, epoch=2, start=3)
    hist = [(1, 0), (2, 3 * ONE)]

    def read(offset: int, end: int, most: int) -> bytes:
        return log[offset:end][:most]

    r = repair_reply(RepairRequest(1, "n1", ONE, 5 * ONE, 1 << 20), "n2", 5 * ONE, hist, read)
    assert r == RepairData("n2", 1, ONE, log[ONE:3 * ONE])  # stops where epoch 1 ends
    r = repair_reply(RepairRequest(2, "n1", 4 * ONE, 5 * ONE, 1 << 20), "n2", 5 * ONE, hist, read)
    assert r == RepairData("n2", 2, 4 * ONE, log[4 * ONE:])
    assert repair_reply(RepairRequest(2, "n1", ONE, 5 * ONE, 1 << 20), "n2", 5 * ONE, hist, read) is None
    assert repair_reply(RepairRequest(3, "n1", 4 * ONE, 5 * ONE, 1 << 20), "n2", 5 * ONE, hist, read) is None
    assert repair_reply(RepairRequest(2, "n1", 5 * ONE, 6 * ONE, 1 << 20), "n2", 5 * ONE, hist, read) is None


def test_repair_messages_round_trip_and_bad_ones_are_refused():
    req = RepairRequest(3, "n1", 10, 20, 100)
    assert decode_from_leader(encode(req)) == req
    data = RepairData("n2", 3, 10, b"abc")
    assert decode_to_leader([b"id", *encode_repair_data(data)], 100) == data
    with pytest.raises(BadMessage):
        decode_to_leader([b"id", *encode_repair_data(data)], 2)  # over the budget
    with pytest.raises(BadMessage):
        decode_to_leader([b"id", encode_repair_data(data)[0], b""], 100)
    with pytest.raises(BadMessage):
        decode_from_leader([msgpack.packb({"t": "repair", "epoch": 1, "leader": "n1", "offset": 5, "upto": 5,
                                           "max": 1})])
    assert isinstance(decode_to_leader([b"id", msgpack.packb({"t": "fetch", "name": "n2", "epoch": 1, "offset": 0,
                                                                 "last_epoch": 0})], 100), Fetch)
