"""The follower's checks, fed bytes directly: nothing bad is ever appended."""

from __future__ import annotations

import msgpack

from daemon.wal.format import Record, encode_frame
from daemon.wire.replication import BadMessage, decode_from_leader
from follower.core import AdoptEpoch, Append, FollowerCore, Redirect, Refetch, Truncate


class Decoding(FollowerCore):
    """The core behind the wire decoder, as the role loop uses it: dicts in, decisions out."""

    def on_message(self, hdr, data=None):  # type: ignore[override]
        frames = [msgpack.packb(hdr)] + ([data] if data is not None else [])
        try:
            return super().on_message(decode_from_leader(frames))
        except BadMessage as e:
            return super().on_message(e)


def frames(n: int, epoch: int = 2, start: int = 0) -> bytes:
    return b"".join(encode_frame(Record("set", f"k{start + i}".encode(), b"v" * 10), epoch) for i in range(n))


def core(end: int = 0, epoch: int = 2, last_epoch: int = 2) -> FollowerCore:
    return Decoding("n2", epoch, end, last_epoch, 0, 1 << 20, [(last_epoch, 0)] if end else [])


def data(offset, epoch=2) -> dict:
    return {"t": "data", "epoch": epoch, "leader": "n1", "offset": offset, "end": 999, "commit": 0}


def test_chunk_at_our_end_is_appended():
    c = core()
    chunk = frames(3)
    d = c.on_message(data(0), chunk)
    assert isinstance(d, Append) and d.data == chunk and len(d.frames) == 3
    assert [f.offset for f, _ in d.frames] == [0, len(chunk) // 3, 2 * len(chunk) // 3]


def test_duplicate_and_gap_are_refetched():
    first = frames(2)
    c = core(end=len(first))
    assert isinstance(c.on_message(data(0), first), Refetch)  # duplicate below our end
    gap = c.on_message(data(len(first) + 40), frames(1))
    assert isinstance(gap, Refetch) and gap.loud and "does not start at our end" in gap.reason


def test_a_flipped_bit_anywhere_is_never_appended():
    chunk = frames(3)
    for pos in range(0, len(chunk), 7):
        bad = bytearray(chunk)
        bad[pos] ^= 0x04
        d = core().on_message(data(0), bytes(bad))
        assert isinstance(d, Refetch) and d.loud, pos


def test_truncated_chunk_is_refetched():
    chunk = frames(2)
    assert isinstance(core().on_message(data(0), chunk[:-3]), Refetch)


def test_frame_epochs_outside_the_allowed_range_are_refused():
    assert isinstance(core().on_message(data(0, epoch=2), frames(1, epoch=3)), Refetch)  # above the leader
    assert isinstance(core(last_epoch=2).on_message(data(0, epoch=2), frames(1, epoch=1)), Refetch)  # going back


def test_leader_epochs():
    stale = core(epoch=3).on_message(data(0, epoch=2), frames(1))
    assert isinstance(stale, Refetch) and "older than ours" in stale.reason
    newer = core(epoch=2).on_message(data(0, epoch=5), frames(1, epoch=5))
    assert isinstance(newer, AdoptEpoch) and newer.epoch == 5 and newer.leader == "n1"


def test_truncate_only_below_our_end():
    c = core(end=500)
    t = c.on_message({"t": "truncate", "epoch": 2, "leader": "n1", "offset": 200, "last_epoch": 2}, None)
    assert isinstance(t, Truncate) and t.offset == 200
    assert isinstance(c.on_message({"t": "truncate", "epoch": 2, "leader": "n1", "offset": 500, "last_epoch": 2}, None), Refetch)
    assert isinstance(c.on_message({"t": "truncate", "epoch": 2, "leader": "n1", "offset": -1, "last_epoch": 2}, None), Refetch)


def test_truncation_follows_kip_279_for_an_epoch_the_leader_never_had():
    # Our log: epoch 1 from 0, epoch 2 (a leader the new one never knew) from 79.
    # The leader (epoch 3) answers for epoch 2 with its largest epoch <= 2,
    # epoch 1, which ends at 120 in its log: we cut at our own end of epoch 1, 79.
    c = Decoding("n2", 3, 150, 2, 0, 1 << 20, [(1, 0), (2, 79)])
    t = c.on_message({"t": "truncate", "epoch": 3, "leader": "n1", "offset": 120, "last_epoch": 1}, None)
    assert isinstance(t, Truncate) and t.offset == 79
    # The leader's end of epoch 1 is the smaller one: cut there.
    t = c.on_message({"t": "truncate", "epoch": 3, "leader": "n1", "offset": 60, "last_epoch": 1}, None)
    assert isinstance(t, Truncate) and t.offset == 60


def test_heartbeat_redirect_and_garbage():
    c = core()
    hb = c.on_message({"t": "data", "epoch": 2, "leader": "n1", "offset": None, "end": 70, "commit": 60}, None)
    assert isinstance(hb, Refetch) and hb.reason == "heartbeat" and c.leader_end == 70
    r = c.on_message({"t": "not_leader", "epoch": 4, "leader": "n3"}, None)
    assert isinstance(r, Redirect) and (r.epoch, r.leader) == (4, "n3")
    for junk in (None, [], {"t": 5}, {"t": "data"}, {"t": "data", "epoch": "x"}, {"t": "weird", "epoch": 2}):
        assert isinstance(c.on_message(junk, b"x"), Refetch)


def test_fetch_message_carries_the_durable_end():
    c = core(end=0)
    d = c.on_message(data(0), frames(2))
    c.appended(len(d.data), 2, 2)
    m = c.fetch_msg()
    assert (m.offset, m.epoch, m.last_epoch, m.records) == (len(d.data), 2, 2, 2)


def test_a_standing_refusal_is_asked_again_later_and_later_not_in_a_busy_loop():
    c = core(end=100)
    refuse = {"t": "error", "epoch": 2, "message": "no"}
    delays = [c.on_message(refuse).delay for _ in range(12)]
    assert delays[0] == 0.0 and all(0 < d <= 0.2 for d in delays[1:])
    assert delays == sorted(delays) and delays[-1] == 0.2
    c.appended(161, 2, 1)  # progress resets the pace
    assert c.on_message(refuse).delay == 0.0


def test_the_state_before_an_append_drops_epoch_starts_at_or_beyond_the_append():
    from daemon.node.identity import FOLLOWER, NodeState

    st = NodeState(FOLLOWER, 5, "n1", [(1, 0), (2, 720), (3, 1661)])
    new = st.before_append(1661, [(2, 1661)])
    assert new.history == [(1, 0), (2, 720)]  # epoch 2 continues: no new start, and epoch 3's is gone
    assert st.before_append(1700, []) is None


def test_a_refusal_never_moves_the_follower_to_its_epoch():
    """A refusal changes nothing: a node of another cluster refuses with its
    own (larger) epoch, and adopting it would depose this cluster's leader
    (found by review)."""
    c = core(end=0, epoch=2)
    d = c.on_message({"t": "error", "epoch": 9000, "message": "this node leads cluster X, not Y"})
    assert isinstance(d, Refetch) and "refused" in d.reason
    assert c.epoch == 2
