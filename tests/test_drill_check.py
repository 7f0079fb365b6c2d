"""The drill's verdict, computed from a ledger and a log without any node."""

from __future__ import annotations

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
