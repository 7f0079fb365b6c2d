"""The lease and election rules (daemon/failover/lease.py): pure, no etcd."""

import math

from daemon.failover.lease import (Holder, Lease, Stand, Wait, candidate, decode_epoch, decode_holder,
                                   encode_holder, margin, renew_interval)


def st(role, epoch, end, last_epoch=1, **kw):
    return {"role": role, "epoch": epoch, "end": end, "last_epoch": last_epoch, **kw}


def test_the_deadline_counts_from_the_send_time_less_the_margin_and_never_moves_back():
    lease = Lease()
    assert not lease.valid(0.0) and lease.remaining(0.0) == 0.0 and lease.deadline == -math.inf
    lease.proven(10.0, 3)
    assert lease.deadline == 10.0 + 3 - margin(3) and margin(3) == 0.2 * 3
    assert lease.valid(12.39) and not lease.valid(12.4)
    lease.proven(9.0, 3)  # an older proof that came back late extends nothing
    assert lease.deadline == 12.4
    lease.lost()
    assert not lease.valid(10.0)
    assert margin(1) == 0.2 and renew_interval(1) * 3 < 1 - margin(1) + 1e-9


def test_only_the_follower_the_copies_vouch_for_stands():
    # K = 1, F = 2: node1 (old leader) is gone; node3 is ahead of node2.
    sts = {"node1": None, "node2": st("follower", 1, 100), "node3": st("follower", 1, 150)}
    assert isinstance(candidate("node2", sts, 1, False, 1), Wait)
    d = candidate("node3", sts, 1, False, 1)
    assert isinstance(d, Stand) and d.epoch == 2
    # etcd has allocated a higher epoch before (a failed election): above it.
    d = candidate("node3", sts, 1, False, 7)
    assert isinstance(d, Stand) and d.epoch == 8


def test_a_damaged_node_is_no_copy_and_a_minority_never_elects():
    # node3 lost bytes at recovery (damaged_end 200 > its end): node2 cannot prove it holds them.
    sts = {"node1": None, "node2": st("follower", 1, 100), "node3": st("follower", 1, 90, damaged_end=200)}
    assert isinstance(candidate("node2", sts, 1, False, 1), Wait)
    assert isinstance(candidate("node3", sts, 1, False, 1), Wait)
    # With K = 2 every acknowledged write is on every node: node2 holds them all.
    assert isinstance(candidate("node2", sts, 2, False, 1), Stand)
    lone = {"node1": None, "node2": st("follower", 1, 100), "node3": None}
    assert isinstance(candidate("node2", lone, 1, False, 1), Wait)
    assert isinstance(candidate("node2", lone, 0, True, 1), Wait)  # allow_data_loss elects, but never by a minority


def test_ack_replicas_0_elects_only_when_data_loss_is_allowed():
    sts = {"node1": None, "node2": st("follower", 1, 100), "node3": st("follower", 1, 50)}
    w = candidate("node2", sts, 0, False, 1)
    assert isinstance(w, Wait) and "allow_data_loss" in w.reason
    assert isinstance(candidate("node2", sts, 0, True, 1), Stand)
    assert isinstance(candidate("node3", sts, 0, True, 1), Wait)


def test_the_leader_key_is_never_trusted_blindly():
    assert decode_holder(encode_holder(Holder("node2", 5))) == Holder("node2", 5)
    for junk in (b"", b"{", b"[]", b'{"name": 3, "epoch": 1}', b'{"name": "a", "epoch": "1"}',
                 b'{"name": "a", "epoch": true}'):
        assert decode_holder(junk) is None
    assert decode_epoch(None) == 0 and decode_epoch(b"x") == 0 and decode_epoch(b"12") == 12


def test_a_switchover_target_stands_only_when_the_copies_vouch_for_it():
    from daemon.failover.lease import encode_handoff, handoff_for

    # The old leader node1 stepped down at epoch 2 with its whole log on node2 and node3.
    sts = {"node1": st("follower", 2, 500, 2, led_epoch=2), "node2": st("follower", 2, 500, 2),
           "node3": st("follower", 2, 500, 2)}
    d = candidate("node3", sts, 1, False, 2, prefer="node3")
    assert isinstance(d, Stand) and d.epoch == 3 and "switchover" in d.reason
    assert candidate("node2", sts, 1, False, 2, prefer="node3") == Wait("node3 is the one to lead")
    # node3 fell behind before the election: the usual pick leads, never a copy that may miss a write.
    behind = {**sts, "node3": st("follower", 2, 400, 2)}
    assert isinstance(candidate("node3", behind, 1, False, 2, prefer="node3"), Wait)
    assert candidate("node3", behind, 1, False, 2) == candidate("node3", behind, 1, False, 2, prefer="node3")
    # A handoff counts only for the election after the epoch it was made in.
    b = encode_handoff("node3", "node1", 2)
    assert handoff_for(b, 2) == "node3" and handoff_for(b, 3) is None
    assert handoff_for(b"{not json", 2) is None and handoff_for(None, 2) is None


def test_a_node_cut_off_from_etcd_counts_as_a_copy_but_is_not_the_pick():
    # node1 led epoch 1, was cut off from etcd, self-fenced: the most advanced, but it cannot take the key.
    cut = st("follower", 1, 500, led_epoch=1, coordinator_error="no etcd endpoint answered")
    sts = {"node1": cut, "node2": st("follower", 1, 480), "node3": st("follower", 1, 450)}
    d = candidate("node2", sts, 1, False, 1)
    assert isinstance(d, Stand) and d.epoch == 2
    assert candidate("node3", sts, 1, False, 1) == Wait("node2 is the one to lead")
    # Its copy still counts: a follower behind what the copies vouch for is not picked instead.
    only = {"node1": st("follower", 1, 500, coordinator_error="x"), "node2": st("follower", 1, 480), "node3": None}
    w = candidate("node2", only, 1, False, 1)
    assert isinstance(w, Wait) and "node1 cannot reach etcd" in w.reason, w
