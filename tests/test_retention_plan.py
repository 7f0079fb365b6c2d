"""The retention decision (daemon/wal/retention.py): which sealed segments may go."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.wal.retention import KEEP_ALL, Segment, plan


def segs(*sizes: int) -> list[Segment]:
    out, base = [], 0
    for i, n in enumerate(sizes):
        out.append(Segment(base, base + n, sealed=i < len(sizes) - 1))
        base += n
    return out


def test_only_sealed_segments_wholly_below_the_snapshot_go():
    s = segs(100, 100, 100, 50)  # bases 0, 100, 200, 300 (the last is active)
    p = plan(s, snapshot_offset=250, acked_floor=None, transfer_floor=None, retain_bytes=0)
    assert [x.base for x in p.delete] == [0, 100] and p.oldest == 200
    assert "snapshot is at 250" in p.kept_because
    # the segment ending exactly at the snapshot's offset is wholly below it
    p = plan(s, snapshot_offset=200, acked_floor=None, transfer_floor=None, retain_bytes=0)
    assert [x.base for x in p.delete] == [0, 100]
    p = plan(s, snapshot_offset=199, acked_floor=None, transfer_floor=None, retain_bytes=0)
    assert [x.base for x in p.delete] == [0]


def test_the_active_segment_never_goes_even_below_a_snapshot():
    s = segs(100, 100)
    p = plan(s, snapshot_offset=200, acked_floor=None, transfer_floor=None, retain_bytes=0)
    assert [x.base for x in p.delete] == [0] and "still written" in p.kept_because


def test_no_snapshot_or_keep_all_deletes_nothing():
    s = segs(100, 100, 100)
    assert plan(s, snapshot_offset=None, acked_floor=None, transfer_floor=None, retain_bytes=0).delete == ()
    p = plan(s, snapshot_offset=300, acked_floor=None, transfer_floor=None, retain_bytes=KEEP_ALL)
    assert p.delete == () and p.oldest == 0


def test_a_lagging_follower_and_a_running_transfer_hold_segments():
    s = segs(100, 100, 100, 10)
    p = plan(s, snapshot_offset=300, acked_floor=150, transfer_floor=None, retain_bytes=0)
    assert [x.base for x in p.delete] == [0] and "acknowledged only up to 150" in p.kept_because
    p = plan(s, snapshot_offset=300, acked_floor=None, transfer_floor=100, retain_bytes=0)
    assert [x.base for x in p.delete] == [0] and "transfer will fetch from 100" in p.kept_because


def test_retain_bytes_keeps_at_least_that_much_log():
    s = segs(100, 100, 100, 10)  # 310 bytes
    p = plan(s, snapshot_offset=300, acked_floor=None, transfer_floor=None, retain_bytes=150)
    assert [x.base for x in p.delete] == [0] and p.oldest == 100  # 210 stay; one more would leave 110
    p = plan(s, snapshot_offset=300, acked_floor=None, transfer_floor=None, retain_bytes=110)
    assert [x.base for x in p.delete] == [0, 100]
    p = plan(s, snapshot_offset=300, acked_floor=None, transfer_floor=None, retain_bytes=111)
    assert [x.base for x in p.delete] == [0]  # deleting the second would leave 110 < 111


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="contiguous"):
        plan([Segment(0, 10, True), Segment(11, 20, False)], snapshot_offset=20, acked_floor=None,
             transfer_floor=None, retain_bytes=0)
    with pytest.raises(ValueError, match="retain_bytes"):
        plan(segs(10, 10), snapshot_offset=20, acked_floor=None, transfer_floor=None, retain_bytes=-2)


@settings(max_examples=400, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8), snap=st.none() | st.integers(0, 400),
       acked=st.none() | st.integers(0, 400), transfer=st.none() | st.integers(0, 400),
       retain=st.integers(-1, 400))
def test_whatever_it_deletes_is_an_oldest_prefix_that_every_rule_allows(sizes, snap, acked, transfer, retain):
    s = segs(*sizes)
    p = plan(s, snapshot_offset=snap, acked_floor=acked, transfer_floor=transfer, retain_bytes=retain)
    assert list(p.delete) == s[: len(p.delete)]
    assert p.oldest == (p.delete[-1].end if p.delete else 0)
    end = s[-1].end
    for seg in p.delete:
        assert seg.sealed and snap is not None and seg.end <= snap
        assert acked is None or seg.end <= acked
        assert transfer is None or seg.end <= transfer
        assert retain >= 0 and end - seg.end >= retain
