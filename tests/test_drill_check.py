"""The drill's verdict, computed from a ledger and a log without any node."""

from __future__ import annotations

import pytest

from daemon.failover.drill import Ack, Ledger, check_ledger


def ledger(*acks: Ack, unacked=()) -> Ledger:
    lg = Ledger()
    for a in acks:
        lg.ok(a)
    for u in unacked:
        lg.fail(*u)
    return lg


def test_everything_present_passes():
    lg = ledger(Ack(b"drill-a", b"1", 0, 1), Ack(b"drill-b", b"2", 50, 1), unacked=[(b"drill-c", b"3", "not_leader")])
    log = {0: (b"drill-a", b"1"), 50: (b"drill-b", b"2"), 99: (b"drill-c", b"3")}
    c = check_ledger(lg, log, lambda k: {k2: v for k2, v in log.values()}.get(k))
    assert (c.acked, c.lost, c.unacked_present, c.unacked_absent, c.duplicated) == (2, [], 1, 0, [])


def test_missing_or_moved_or_unreadable_acks_are_lost():
    lg = ledger(Ack(b"drill-a", b"1", 0, 1), Ack(b"drill-b", b"2", 50, 1), Ack(b"drill-c", b"3", 90, 2))
    log = {0: (b"drill-a", b"1"), 60: (b"drill-b", b"2"), 90: (b"drill-c", b"3")}
    c = check_ledger(lg, log, lambda k: None if k == b"drill-c" else b"?")
    assert len(c.lost) == 3
    assert "offset 50" in c.lost[1] and "get returns None" in c.lost[2]


def test_a_retry_appended_twice_is_reported():
    lg = ledger(Ack(b"drill-a", b"1", 0, 1))
    log = {0: (b"drill-a", b"1"), 40: (b"drill-a", b"1")}
    c = check_ledger(lg, log, lambda k: b"1")
    assert c.lost == [] and c.duplicated == [b"drill-a"]


def test_two_leaders_acknowledging_at_overlapping_times_are_reported():
    from daemon.failover.drill import check_leaders

    # Epoch 1's last write was sent at 5.0, after epoch 2 had acknowledged one at 4.0: both led at once.
    both = [Ack(b"drill-a", b"1", 0, 1, 1.0, 1.1), Ack(b"drill-b", b"2", 50, 2, 3.0, 4.0),
            Ack(b"drill-c", b"3", 40, 1, 5.0, 5.2)]
    out = check_leaders(both)
    assert len(out) == 1 and "epoch 1 acknowledged b'drill-c'" in out[0] and "epoch 2" in out[0]
    # A reply of epoch 1 that only arrives after epoch 2's first ok (a paused leader's, decided before the
    # pause) is no overlap: it was sent before.
    late = [Ack(b"drill-a", b"1", 0, 1, 1.0, 9.0), Ack(b"drill-b", b"2", 50, 2, 3.0, 4.0)]
    assert check_leaders(late) == []


def test_the_time_to_a_new_leader_counts_only_the_new_leadership():
    """A leader cut off from its followers or from etcd is the same process: an ok of its epoch after the
    fault is the old leadership still answering, not a new leader (the drill said 0.01 s before). After
    a kill, an ok of the old epoch sent after the fault is the restarted node keeping its lease."""
    from daemon.failover.drill import Ack, Ledger, first_ack_after

    led = Ledger()
    led.acked += [Ack(b"drill-a", b"1", 0, 1, 10.001, 10.01),   # the old leader, after the fault at 10.0
                  Ack(b"drill-b", b"2", 50, 2, 11.0, 12.5)]     # the new leadership
    assert first_ack_after(led, 10.0, 1, restarted=False) == pytest.approx(2.5)
    assert first_ack_after(led, 10.0, 1, restarted=True) == pytest.approx(0.01)
    assert first_ack_after(Ledger(), 10.0, 1) is None


def test_drill_auto_refuses_a_cluster_without_etcd_and_faults_it_does_not_drill(tmp_path):
    import subprocess
    import sys

    zwal = [sys.executable, "-m", "daemon.cli"]
    r = subprocess.run([*zwal, "drill", "--fault", "etcd"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--fault etcd cuts the leader off from etcd" in r.stderr and "--auto" in r.stderr, \
        r.stderr
    r = subprocess.run([*zwal, "drill", "--auto", "--config", str(tmp_path / "c.toml"), "--fault", "damage"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--fault damage is not drilled with --auto" in r.stderr, r.stderr
    d = str(tmp_path / "c")
    assert subprocess.run([*zwal, "cluster", "init", d], capture_output=True, timeout=60).returncode == 0
    r = subprocess.run([*zwal, "drill", "--auto", "--config", f"{d}/cluster.toml"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "needs [coordinator] kind = \"etcd\"" in r.stderr, r.stderr
