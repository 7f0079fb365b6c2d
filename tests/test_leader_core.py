"""The leader's decisions, driven directly: no sockets, files or sleeps."""

from __future__ import annotations

import msgpack
import pytest

from daemon.node.kv import KVState
from daemon.node.leader_core import (CheckPeers, Confirmed, InvariantViolation, LeaderCore, Reply, SendChunk,
                                     SendControl, ServeRead)
from daemon.wire.client import Request
from daemon.wire.replication import Data, Fetch, Refuse, RepairRequest, Truncate

CID = b"client-1"


def core(end: int = 0, k: int = 1, followers=("n2", "n3"), history=None, confirming: bool = False,
         epoch: int = 1) -> LeaderCore:
    return LeaderCore(
        name="n1", epoch=epoch, end=end, kv=KVState(), history=history or [(1, 0)], followers=list(followers),
        ack_replicas=k, replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20,
        batch_max_records=64, batch_max_bytes=1 << 20, confirming=confirming,
    )


def fetch(name: str, offset: int, last_epoch: int = 1, epoch: int = 1, rnd: int = 0) -> Fetch:
    return Fetch(name, epoch, offset, last_epoch, round=rnd)


def body(r: Reply) -> dict:
    return msgpack.unpackb(r.body, raw=False)


def write(c: LeaderCore, rid: int, key: bytes = b"k", value: bytes = b"v", now: float = 0.0) -> list:
    return c.admit_write(Request(rid, "set", key, value, CID), [b"client"], now)


def commit_one(c: LeaderCore, rid: int, key: bytes = b"k", value: bytes = b"v") -> int:
    """Write, make durable, and have both followers fetch past it: the record's end."""
    for f in c.followers:
        c.on_fetch(fetch(f, c.end), [f.encode()], 0.0)
    assert write(c, rid, key, value) == []
    frames = c.take_batch()
    c.batch_durable(c.end + sum(map(len, frames)), 0.0)
    for f in c.followers:
        c.on_fetch(fetch(f, c.end), [f.encode()], 0.0)
    assert c.commit == c.end
    return c.end


def test_a_follower_ahead_in_the_leaders_own_epoch_is_refused_never_truncated():
    c = core(end=100)
    out = c.on_fetch(fetch("n2", 154), [b"n2"], 0.0)
    assert len(out) == 1 and isinstance(out[0], SendControl) and isinstance(out[0].msg, Refuse)
    assert c.followers["n2"].acked == 0 and c.commit == 0


def test_a_restarted_leader_that_lost_its_tail_asks_a_follower_that_holds_more_for_it_never_truncates_it():
    # Issue 19: it used to step down and wait for an operator; it repairs now (tests/test_leader_repair.py).
    c = core(end=100, confirming=True)
    out = c.on_fetch(fetch("n2", 154), [b"n2"], 0.0)
    assert len(out) == 1 and isinstance(out[0], SendControl) and isinstance(out[0].msg, RepairRequest)
    assert (out[0].msg.offset, out[0].msg.upto) == (100, 154) and c.stepped_down is None
    assert not any(isinstance(a, SendControl) and isinstance(a.msg, Truncate) for a in out)


def test_a_confirming_leader_takes_no_writes_until_enough_followers_show_they_hold_nothing_more():
    c = core(end=100, confirming=True)  # F = 2, K = 1: both followers must answer
    [r] = write(c, 1)
    assert body(r)["error"] == "not_enough_replicas" and body(r)["written"] is False
    assert not any(isinstance(a, Confirmed) for a in c.on_fetch(fetch("n2", 100), [b"n2"], 0.0))
    out = c.on_fetch(fetch("n3", 60), [b"n3"], 0.0)
    assert any(isinstance(a, Confirmed) for a in out) and c.confirming is None
    assert write(c, 2) == []


def test_kip_279_a_suffix_from_an_epoch_the_leader_never_had_is_truncated_and_never_acknowledges():
    # Leader: epoch 1 from 0, epoch 3 from 120 (R1 of epoch 1 ends at 120).
    # Follower: R2 of epoch 2 at 79..120, the same length: its fetch at 120 is no ack.
    c = core(end=200, history=[(1, 0), (3, 120)], epoch=3)
    out = c.on_fetch(fetch("n2", 120, last_epoch=2, epoch=3), [b"n2"], 0.0)
    assert len(out) == 1 and isinstance(out[0].msg, Truncate)
    assert (out[0].msg.offset, out[0].msg.last_epoch) == (120, 1)
    assert c.followers["n2"].acked == 0 and c.in_sync(0.0) == 0


def test_a_fetch_whose_log_is_a_prefix_acknowledges_and_gets_the_next_chunk():
    c = core(end=200, history=[(1, 0), (3, 120)], epoch=3)
    out = c.on_fetch(fetch("n2", 100, last_epoch=1, epoch=3), [b"n2"], 0.0)
    assert c.followers["n2"].acked == 100 and c.commit == 100
    assert any(isinstance(a, SendChunk) and a.offset == 100 for a in out)


def test_a_retry_with_other_content_gets_bad_request_and_changes_nothing():
    c = core()
    end = commit_one(c, 7, b"balance", b"100")
    for key, value in ((b"balance", b"0"), (b"other-key", b"zzz")):
        [r] = write(c, 7, key, value)
        assert body(r)["ok"] is False and body(r)["error"] == "bad_request"
    [r] = write(c, 7, b"balance", b"100")
    assert body(r)["ok"] is True and body(r)["end"] == end
    assert c.end == end and c.kv.get(b"balance") == b"100" and c.kv.get(b"other-key") is None


def test_a_retry_with_other_content_while_the_original_is_in_the_batch_is_refused():
    c = core()
    for f in c.followers:
        c.on_fetch(fetch(f, 0), [f.encode()], 0.0)
    assert write(c, 1, b"a", b"1") == []
    [r] = write(c, 1, b"a", b"2")
    assert body(r)["error"] == "bad_request"
    assert write(c, 1, b"a", b"1") == []  # the same content joins the original
    assert len(c.take_batch()) == 1


def test_a_read_waits_for_followers_to_confirm_a_round_started_after_it_arrived():
    c = core()
    commit_one(c, 1)
    get = Request(9, "get", b"k")
    assert c.admit_read(get, [b"reader"], 0.0) == []
    # A fetch that carries no round sent after the read proves nothing.
    assert not any(isinstance(a, ServeRead) for a in c.on_fetch(fetch("n2", c.end), [b"n2"], 0.0))
    c.tick(0.0)  # the round starts: parked followers are sent it
    assert c.round == 1
    out = c.on_fetch(fetch("n3", c.end, rnd=1), [b"n3"], 0.0)
    assert [a for a in out if isinstance(a, ServeRead)] == [ServeRead([b"reader"], get, True)]


def test_reads_are_not_served_before_the_commit_point_covers_what_a_restarted_leader_holds():
    c = core(end=300)  # restarted: 300 bytes in the log, none known committed
    c.admit_read(Request(1, "get", b"k"), [b"r"], 0.0)
    c.tick(0.0)
    out = c.on_fetch(fetch("n2", 0, rnd=1), [b"n2"], 0.0)
    assert not any(isinstance(a, ServeRead) for a in out)
    [r] = [a for a in c.tick(5.0) if isinstance(a, Reply)]
    assert body(r)["error"] == "not_enough_replicas" and "commit point" in body(r)["message"]


def test_with_k0_reads_are_answered_at_once_and_say_they_are_not_linearizable():
    c = core(k=0)
    [a] = c.admit_read(Request(1, "get", b"k"), [b"r"], 0.0)
    assert a.linearizable is False


def test_a_higher_epoch_in_a_fetch_is_a_hint_to_ask_the_peers_not_a_step_down():
    c = core()
    out = c.on_fetch(fetch("n2", 0, epoch=2**63 - 1), [b"n2"], 0.0)
    assert len(out) == 1 and isinstance(out[0], CheckPeers)
    assert c.epoch == 1 and c.stepped_down is None


def test_fail_all_refuses_to_run_while_a_batch_is_on_its_way_to_disk():
    c = core(k=0)
    write(c, 1)
    c.take_batch()
    with pytest.raises(InvariantViolation):
        c.fail_all("not_leader", "stepping down")


def test_heartbeats_carry_the_read_round():
    c = core()
    c.on_fetch(fetch("n2", 0), [b"n2"], 0.0)  # parked
    c.admit_read(Request(1, "get", b"k"), [b"r"], 0.0)
    out = c.tick(0.0)
    msgs = [a.msg for a in out if isinstance(a, SendControl)]
    assert msgs and all(isinstance(m, Data) and m.offset is None and m.round == 1 for m in msgs)


def test_a_confirming_leader_serves_no_fresh_read_even_with_a_confirmed_round():
    c = core(end=100, confirming=True)
    c.admit_read(Request(1, "get", b"k"), [b"r"], 0.0)
    c.tick(0.0)
    out = c.on_fetch(fetch("n2", 100, rnd=1), [b"n2"], 0.0)  # n3, which may hold more, is unheard
    assert c.commit == 100 and not any(isinstance(a, ServeRead) for a in out)


def test_rounds_echoed_from_another_leader_incarnation_confirm_nothing():
    c = LeaderCore(name="n1", epoch=5, end=0, kv=KVState(), history=[(5, 0)], followers=["n2"], ack_replicas=1,
                   replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20,
                   batch_max_records=64, batch_max_bytes=1 << 20, incarnation=42)
    c.admit_read(Request(1, "get", b"k"), [b"r"], 0.0)
    c.tick(0.0)
    # A fetch sent to an earlier incarnation (round 57 there) arrives late.
    stale = Fetch("n2", 5, 0, 0, round=57, inc=41)
    assert not any(isinstance(a, ServeRead) for a in c.on_fetch(stale, [b"n2"], 0.0))
    fresh = Fetch("n2", 5, 0, 0, round=1, inc=42)
    assert any(isinstance(a, ServeRead) for a in c.on_fetch(fresh, [b"n2"], 0.0))
