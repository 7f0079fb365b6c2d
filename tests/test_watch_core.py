"""The watch op without sockets: its codec (bad input) and the pure core (parking, commit, compacted, bounds)."""

from __future__ import annotations

import msgpack
import pytest

from daemon.node.watch import Answer, ServeWatch, Watches
from daemon.wire.client import (WATCH_MAX_BYTES, Err, ProtocolError, Request, Watch, decode_request,
                                decode_watch_reply, watch_reply, WatchRecord)


def _req(**m):
    return msgpack.packb({"id": 7, "op": "watch", **m}, use_bin_type=True)


def test_codec_decodes_a_watch_and_refuses_bad_fields():
    r = decode_request(_req(**{"from": 10, "max_bytes": 100, "wait_ms": 500}))
    assert r.watch == Watch(10, 100, 500)
    for bad in ({}, {"from": -1}, {"from": "x"}, {"from": 0, "max_bytes": 0},
                {"from": 0, "max_bytes": WATCH_MAX_BYTES + 1}, {"from": 0, "wait_ms": 10**9}):
        with pytest.raises(ProtocolError) as e:
            decode_request(_req(**bad))
        assert e.value.code == Err.BAD_REQUEST and e.value.request_id == 7
    with pytest.raises(ProtocolError):  # watch fields on another op
        decode_request(msgpack.packb({"id": 1, "op": "get", "key": b"k", "from": 3}))


def test_reply_round_trips_and_a_bad_reply_is_refused():
    recs = [WatchRecord(0, 30, 1, "set", b"k", b"v"), WatchRecord(30, 55, 1, "del", b"k", None)]
    b = decode_watch_reply(msgpack.unpackb(watch_reply(1, recs, 55, 55, 1), raw=False))
    assert b.records == recs and b.next == 55
    with pytest.raises(ValueError):  # a gap between records
        decode_watch_reply(msgpack.unpackb(watch_reply(1, [recs[0], WatchRecord(31, 55, 1, "del", b"k", None)],
                                                       55, 55, 1), raw=False))
    with pytest.raises(ValueError):
        decode_watch_reply({"records": [], "next": "x", "commit": 0, "epoch": 1})


def _watch(w: Watches, frm: int, *, commit: int, end: int, oldest: int = 0, wait_ms: int = 1000,
           peer: bytes = b"p", max_bytes: int = 1000, waiting: int = 0, now: float = 0.0):
    req = Request(9, "watch", watch=Watch(frm, max_bytes, wait_ms))
    return w.admit(req, [peer], now, commit=commit, end=end, oldest=oldest, snapshot=None if not oldest else 500,
                   epoch=3, waiting=waiting, boundary=lambda off: off % 10 == 0)


def _err(actions):
    assert len(actions) == 1 and isinstance(actions[0], Answer)
    return msgpack.unpackb(actions[0].body, raw=False)


def test_below_the_commit_point_is_served_at_once_and_never_past_it():
    w = Watches(budget=10_000)
    a = _watch(w, 20, commit=100, end=200)
    assert a == [ServeWatch([b"p"], 9, 20, 100, 1000)]  # upto is the commit point, not the end


def test_nothing_committed_past_from_parks_until_commit_or_the_wait():
    w = Watches(budget=10_000)
    assert _watch(w, 100, commit=100, end=200) == []
    assert w.committed(100) == []  # the commit point did not pass it
    assert w.committed(150) == [ServeWatch([b"p"], 9, 100, 150, 1000)]
    assert not w.parked and w.reserved(b"p") == 0
    assert _watch(w, 150, commit=150, end=200, now=1.0) == []
    assert w.next_deadline() == 2.0
    assert w.tick(1.5, 150, 3) == []
    m = _err(w.tick(2.0, 150, 3))
    assert m["ok"] and m["records"] == [] and m["next"] == 150


def test_uncommitted_from_parks_too_and_a_record_not_yet_committed_is_never_served():
    w = Watches(budget=10_000)
    assert _watch(w, 150, commit=100, end=200) == []  # a boundary past the commit point: wait for it
    assert w.committed(150) == []
    assert w.committed(160) == [ServeWatch([b"p"], 9, 150, 160, 1000)]


def test_bad_offsets_change_nothing():
    w = Watches(budget=10_000)
    m = _err(_watch(w, 201, commit=100, end=200))
    assert m["error"] == Err.BAD_OFFSET and "beyond" in m["message"]
    m = _err(_watch(w, 155, commit=100, end=200))
    assert m["error"] == Err.BAD_OFFSET and "not where a record starts" in m["message"]
    assert not w.parked


def test_below_the_oldest_offset_is_compacted_with_oldest_and_snapshot():
    w = Watches(budget=10_000)
    m = _err(_watch(w, 100, commit=1000, end=1000, oldest=400))
    assert m["error"] == Err.OFFSET_COMPACTED and m["oldest"] == 400 and m["snapshot"] == 500
    assert "watch from 400" in m["message"]
    assert _watch(w, 400, commit=1000, end=1000, oldest=400) == [ServeWatch([b"p"], 9, 400, 1000, 1000)]


def test_parked_watches_are_bounded_per_connection_in_bytes():
    w = Watches(budget=3000)
    for _ in range(3):
        assert _watch(w, 100, commit=100, end=100) == []
    m = _err(_watch(w, 100, commit=100, end=100))
    assert m["error"] == Err.BUSY
    assert _watch(w, 100, commit=100, end=100, peer=b"q") == []  # another connection has its own budget
    m = _err(_watch(w, 100, commit=100, end=100, peer=b"r", waiting=2500))  # unread replies count too
    assert m["error"] == Err.BUSY
    assert len(w.fail_all(Err.NOT_LEADER, "stepped down")) == 4 and not w.parked and w.reserved(b"p") == 0


def test_wait_zero_answers_empty_at_once():
    w = Watches(budget=10_000)
    m = _err(_watch(w, 100, commit=100, end=100, wait_ms=0))
    assert m["ok"] and m["next"] == 100 and m["commit"] == 100 and not w.parked
