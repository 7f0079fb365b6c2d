"""The retry window is bounded by time and bytes, never by a count of clients.

Issue 19: a write, then 5,000 one-off client ids, then the same retry was
answered `ok` at a new offset (two copies in the log): the window evicted
whole clients once 4,096 were known. These drive the pure pieces (KVState,
RetryTracker, LeaderCore) with no sockets; test_retry_churn.py does it with
real processes.
"""

from __future__ import annotations

import msgpack

from daemon.node.kv import CLIENT_COST, ENTRY_COST, KVState, Placed, RetryWindow, Seen
from daemon.node.leader_core import LeaderCore, Reply
from daemon.wal.format import (HEADER_SIZE, HEADER_SIZE_V1, Frame, Record, decode_payload, encode_frame,
                               encode_frame_v1, iter_frames_in)
from daemon.wire.client import Request

T0 = 1_700_000_000.0  # a wall-clock time (s) for the leader


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def leader(kv: KVState | None = None, budget: int = 64 << 20, clock: Clock | None = None) -> LeaderCore:
    return LeaderCore(
        name="n1", epoch=1, end=0, kv=kv or KVState(), history=[(1, 0)], followers=[], ack_replicas=0,
        replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20, batch_max_records=100_000,
        batch_max_bytes=1 << 30, retry_budget_bytes=budget, wall_clock=clock or Clock(),
    )


class Log:
    """The leader's log bytes, written by driving the core as the node loop does (K = 0)."""

    def __init__(self, c: LeaderCore) -> None:
        self.c = c
        self.data = bytearray()

    def write(self, cid: bytes, rid: int, key: bytes = b"k", value: bytes = b"v", now: float = 0.0) -> list[dict]:
        out = [r for r in self.c.admit_write(Request(rid, "set", key, value, cid), [b"e"], now) if isinstance(r, Reply)]
        out += self.flush(now)
        return [msgpack.unpackb(r.body, raw=False) for r in out]

    def flush(self, now: float = 0.0) -> list[Reply]:
        frames = self.c.take_batch()
        for f in frames:
            self.data += f
        return [r for r in self.c.batch_durable(len(self.data), now) if isinstance(r, Reply)]


def test_churn_of_5000_one_off_ids_does_not_evict_a_live_window():
    c = leader()
    log = Log(c)
    first = log.write(b"keeper", 1)[0]
    assert first["ok"]
    for i in range(5000):
        assert log.write(b"once-%d" % i, 1)[0]["ok"]
    again = log.write(b"keeper", 1)[0]
    assert again["ok"] and again["offset"] == first["offset"], "the retry was written a second time"
    copies = [f for f in iter_frames_in(bytes(log.data)) if decode_payload(f.payload).client_id == b"keeper"]
    assert len(copies) == 1


def test_a_full_budget_refuses_a_new_client_busy_and_keeps_every_window():
    cost = CLIENT_COST + len(b"old-0") + ENTRY_COST
    c = leader(budget=10 * cost)
    log = Log(c)
    placed = [log.write(b"old-%d" % i, 1)[0] for i in range(10)]
    assert all(p["ok"] for p in placed)
    end = len(log.data)
    r = c.admit_write(Request(1, "set", b"k", b"v", b"new-1"), [b"e"], 0.0)
    body = msgpack.unpackb(r[0].body, raw=False)
    assert body["ok"] is False and body["error"] == "busy" and body["written"] is False
    assert "retry_budget_bytes" in body["message"] and "Retry in" in body["message"]
    assert log.flush() == [] and len(log.data) == end, "a refused write changed the log"
    for i, p in enumerate(placed):  # every live window still answers its retry with the original
        again = log.write(b"old-%d" % i, 1)[0]
        assert again["ok"] and again["offset"] == p["offset"]
    assert len(log.data) == end


def test_the_budget_counts_records_on_their_way_too():
    """New ids admitted into one batch are charged before they commit."""
    c = leader(budget=3 * (CLIENT_COST + len(b"n-0") + ENTRY_COST))
    replies = [c.admit_write(Request(1, "set", b"k", b"v", b"n-%d" % i), [b"e"], 0.0) for i in range(5)]
    refused = [msgpack.unpackb(r[0].body, raw=False)["error"] for r in replies if r]
    assert refused == ["busy", "busy"]


def test_windows_expire_by_record_time_not_by_count():
    clock = Clock()
    c = leader(clock=clock)
    log = Log(c)
    first = log.write(b"a", 1)[0]
    clock.t += 299.0  # idle just under the window: still known
    assert log.write(b"b", 1)[0]["ok"]
    again = log.write(b"a", 1)[0]
    assert again["offset"] == first["offset"]
    clock.t += 1.5  # a retry adds nothing: a's latest write (t = 0) is now 300.5 s old
    assert log.write(b"c", 1)[0]["ok"]
    assert not c.kv.window.has_client(b"a")
    assert c.kv.window.has_client(b"b") and c.kv.window.has_client(b"c")
    late = log.write(b"a", 1)[0]
    assert late["offset"] != first["offset"]  # outside the documented bound: a new write


def test_expiry_frees_the_budget_for_new_clients():
    clock = Clock()
    c = leader(budget=2 * (CLIENT_COST + 1 + ENTRY_COST), clock=clock)
    log = Log(c)
    assert log.write(b"a", 1)[0]["ok"] and log.write(b"b", 1)[0]["ok"]
    assert log.write(b"c", 1)[0]["error"] == "busy"
    clock.t += 301
    assert log.write(b"c", 1)[0]["ok"]


def test_a_window_is_kept_by_the_record_times_not_the_node_clock():
    """A follower applying old records later (its own clock far ahead) holds
    the same window: only the times in the records age it."""
    w = RetryWindow(seconds=300)
    s = Seen(Placed(0, 10, 1), b"d" * 16)
    w.put(b"a", 1, s, ts=1_000)
    w.put(b"b", 1, s, ts=1_000 + 300_000)  # exactly the window: a is kept
    assert w.has_client(b"a")
    w.put(b"b", 2, s, ts=1_000 + 300_001)
    assert not w.has_client(b"a")


def test_a_leader_clock_behind_the_log_does_not_turn_time_back():
    """A new leader whose wall clock is an hour behind stamps from the log's
    time on, so a window does not live an hour longer or shorter."""
    kv = KVState()
    first = leader(kv=kv, clock=Clock(T0))
    log = Log(first)
    log.write(b"a", 1)
    second = leader(kv=kv, clock=Clock(T0 - 3600))
    log.c = second
    second.end = len(log.data)
    log.write(b"b", 1, now=10.0)
    log.write(b"b", 2, now=200.0)
    stamps = [decode_payload(f.payload).ts for f in iter_frames_in(bytes(log.data))]
    assert stamps[0] <= stamps[1] <= stamps[2] and stamps[2] - stamps[1] == 190_000
    assert kv.window.has_client(b"a")
    log.write(b"b", 3, now=10.0 + 301)  # 301 s of this leader's monotonic time: a has expired
    assert not kv.window.has_client(b"a")


def replay(data: bytes) -> KVState:
    kv = KVState()
    for f in iter_frames_in(data):
        kv.apply_frame(f, decode_payload(f.payload))
    return kv


def snapshot(kv: KVState) -> dict:
    w = kv.window
    return {"clock": w.clock, "bytes": w.bytes,
            "clients": {cid: (c.ts, dict(c.ids)) for cid, c in w._by_client.items()}}


def test_a_follower_replaying_the_log_holds_the_leaders_window():
    clock = Clock()
    c = leader(clock=clock, budget=40 * (CLIENT_COST + 10 + ENTRY_COST))
    log = Log(c)
    for step in range(60):
        clock.t += 17.0
        log.write(b"c-%d" % (step % 23), step)
        log.write(b"once-%d" % step, 1)
    follower = replay(bytes(log.data))
    assert snapshot(follower) == snapshot(c.kv)
    assert 0 < c.kv.window.clients() < 23 + 60  # some expired, as on the follower


def test_a_retry_after_failover_is_recognised_after_churn():
    """The new leader rebuilds the window from the log (records with times),
    and recognises a retry of a write made before 5,000 one-off ids."""
    c = leader()
    log = Log(c)
    first = log.write(b"keeper", 7)[0]
    for i in range(5000):
        log.write(b"once-%d" % i, 1)
    new = leader(kv=replay(bytes(log.data)), clock=Clock(T0 - 60))
    new.end = len(log.data)
    log.c = new
    again = log.write(b"keeper", 7)[0]
    assert again["ok"] and again["offset"] == first["offset"]


def test_records_from_before_record_times_expire_one_window_after_the_first_timed_one():
    s = Seen(Placed(0, 10, 1), b"d" * 16)
    w = RetryWindow(seconds=300)
    w.put(b"old", 1, s, ts=None)
    w.put(b"new", 1, s, ts=5_000_000)
    assert w.has_client(b"old")
    w.put(b"new", 2, s, ts=5_000_000 + 300_000)
    assert w.has_client(b"old")
    w.put(b"new", 3, s, ts=5_000_000 + 300_001)
    assert not w.has_client(b"old")


def test_old_records_without_a_time_still_decode_and_new_ones_round_trip():
    old = encode_frame_v1(Record("set", b"k", b"v", b"cid", 1), 1)  # as a node from before ts wrote it
    assert decode_payload(Frame(0, len(old), 1, old[HEADER_SIZE_V1:], 1).payload).ts is None
    new = encode_frame(Record("set", b"k", b"v", b"cid", 1, 1_700_000_000_123), 1)
    assert decode_payload(new[HEADER_SIZE:]).ts == 1_700_000_000_123


def _cluster(**settings) -> dict:
    return {"cluster": {"bootstrap_leader": "n1", "security": "none", **settings},
            "node": [{"name": "n1", "data_dir": "d", "client_endpoint": "tcp://127.0.0.1:1",
                      "repl_endpoint": "tcp://127.0.0.1:2"}]}


def test_the_settings_are_known_with_defaults_and_checked():
    import pytest

    from daemon.config import ConfigError, parse

    cfg = parse(_cluster(), "/x/cluster.toml")
    assert (cfg.retry_window_seconds, cfg.retry_budget_bytes) == (300.0, 64 << 20)
    cfg = parse(_cluster(retry_window_seconds=60, retry_budget_bytes=8 << 20), "/x/cluster.toml")
    assert (cfg.retry_window_seconds, cfg.retry_budget_bytes) == (60, 8 << 20)
    with pytest.raises(ConfigError, match="retry_window_seconds must be positive"):
        parse(_cluster(retry_window_seconds=0), "/x/cluster.toml")
    with pytest.raises(ConfigError, match="retry_budget_bytes must be at least"):
        parse(_cluster(retry_budget_bytes=10), "/x/cluster.toml")


def test_an_untimed_log_keeps_the_old_bound_on_replay():
    """A log written before record times existed replays under the bound it
    was written with (4,096 clients), not into unbounded memory."""
    s = Seen(Placed(0, 10, 1), b"d" * 16)
    w = RetryWindow(seconds=300)
    for i in range(5000):
        w.put(b"c-%d" % i, 1, s, ts=None)
    assert w.clients() == 4096 and not w.has_client(b"c-0") and w.has_client(b"c-4999")
    assert w.bytes == sum(CLIENT_COST + len(b"c-%d" % i) + ENTRY_COST for i in range(904, 5000))
    w.put(b"timed", 1, s, ts=1)  # from the first record time on, no count applies
    for i in range(5000):
        w.put(b"t-%d" % i, 1, s, ts=2)
    assert w.clients() == 4096 + 5001
