"""Regression: a leader that starts with a log must not vouch for its unreplicated tail.

Found by `zwal drill`: a leader fsynced a write, crashed before any follower
had it, restarted, and answered the client's retry from its retry window.
That record then vanished at the next failover: an acknowledged write lost.
"""

from __future__ import annotations

from daemon.wire.client import Request
from daemon.node.leader_core import LeaderCore, Reply
from daemon.node.kv import KVState, Placed
from daemon.wal.format import Record, encode_frame
from daemon.wire.replication import Fetch

import msgpack


def core_with_replayed_record(k: int) -> tuple[LeaderCore, Placed]:
    kv = KVState()
    rec = Record("set", b"key", b"value", b"client-1", 7)
    placed = Placed(0, len(encode_frame(rec, 1)), 1)
    kv.apply(rec, placed)  # what replay at start-up does
    core = LeaderCore(name="n1", epoch=1, end=placed.end, kv=kv, history=[(1, 0)], followers=["n2", "n3"],
                      ack_replicas=k, replication_timeout=1.0, heartbeat_interval=0.5,
                      max_uncommitted_bytes=1 << 20, batch_max_records=100, batch_max_bytes=1 << 20)
    return core, placed


def retry(core: LeaderCore, now: float) -> list:
    req = Request(7, "set", b"key", b"value", b"client-1")
    return core.admit_write(req, [b"client"], now)


def fetch(core: LeaderCore, name: str, offset: int, now: float) -> list:
    return core.on_fetch(Fetch(name, 1, offset, 1 if offset else 0), [name.encode()], now)


def test_retry_of_unreplicated_replayed_record_waits_for_k_acks():
    core, placed = core_with_replayed_record(k=1)
    fetch(core, "n2", 0, now=0.0)  # a follower is in sync but lacks the record
    assert retry(core, now=0.1) == [], "answered a retry the followers do not hold"
    replies = [a for a in fetch(core, "n2", placed.end, now=0.2) if isinstance(a, Reply)]
    assert len(replies) == 1
    m = msgpack.unpackb(replies[0].body)
    assert m["ok"] and m["offset"] == 0 and m["id"] == 7
    assert core.batch == []  # never appended twice


def test_retry_of_unreplicated_replayed_record_times_out_as_not_enough_replicas():
    core, placed = core_with_replayed_record(k=1)
    fetch(core, "n2", 0, now=0.0)
    assert retry(core, now=0.1) == []
    out = [msgpack.unpackb(a.body) for a in core.tick(now=5.0) if isinstance(a, Reply)]
    assert [(m["ok"], m["error"], m["written"]) for m in out] == [(False, "not_enough_replicas", True)]


def test_with_k0_the_replayed_log_is_committed_at_once():
    core, placed = core_with_replayed_record(k=0)
    out = retry(core, now=0.0)
    assert len(out) == 1 and msgpack.unpackb(out[0].body)["ok"]
