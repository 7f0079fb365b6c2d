"""A retry is recognised after client-id churn, with real processes (issue 19).

Found by an adversarial pass: a write, then 5,000 one-off client ids (every
`zwal set` and every new Client() makes one), then the same retry was
answered `ok` at a new offset, with two copies in the log: the retry window
evicted whole clients once 4,096 were known.
"""

from __future__ import annotations

import os

import msgpack

from daemon.wal.reader import iter_frames

CHURN = 5000


def call(s, msgs: list[dict]) -> dict[int, dict]:
    for m in msgs:
        s.send(msgpack.packb(m, use_bin_type=True))
    out: dict[int, dict] = {}
    while len(out) < len(msgs):
        assert s.poll(10_000), f"{len(msgs) - len(out)} of {len(msgs)} replies missing"
        r = msgpack.unpackb(s.recv(), raw=False)
        out[r["id"]] = r
    return out


def churn(s, n: int = CHURN) -> None:
    """n one-off client ids, each writing once, 500 on the wire at a time."""
    for base in range(0, n, 500):
        replies = call(s, [{"id": 1000 + i, "op": "set", "key": b"churn", "value": b"%d" % i, "cid": os.urandom(12)}
                           for i in range(base, base + 500)])
        assert all(r["ok"] for r in replies.values()), [r for r in replies.values() if not r["ok"]][:1]


def copies(c, keeper: bytes) -> dict[str, list[int]]:
    return {name: [f.offset for f in iter_frames(c.log_path(name)) if msgpack.unpackb(f.payload).get("cid") == keeper]
            for name in c.names}


def test_a_retry_after_5000_one_off_client_ids_gets_the_original_offset(make_cluster):
    c = make_cluster(3, ack_replicas=1)
    c.start_all()
    leader = c.leader()
    assert leader is not None
    c.wait_in_sync(leader)  # under load the followers may not have fetched yet: the first write would be refused
    s = c.dealer(c.endpoint(leader))
    keeper = os.urandom(12)
    write = {"id": 1, "op": "set", "key": b"kept", "value": b"once", "cid": keeper}
    first = call(s, [write])[1]
    assert first["ok"], first
    churn(s)
    again = call(s, [write])[1]
    s.close()
    assert again["ok"], again
    assert again["offset"] == first["offset"], "the retry was written a second time"
    c.wait_converged()
    assert copies(c, keeper) == {n: [first["offset"]] for n in c.names}


def test_a_new_leader_recognises_a_retry_from_before_the_churn(make_cluster):
    """The followers rebuilt the window from the leader's records (with their
    record times): after a failover, the retry still gets the original."""
    c = make_cluster(3, ack_replicas=1)
    c.start_all()
    c.wait_in_sync()  # under load the followers may not have fetched yet: the write would be refused
    s = c.dealer(c.endpoint("node1"))
    keeper = os.urandom(12)
    write = {"id": 5, "op": "set", "key": b"kept", "value": b"once", "cid": keeper}
    first = call(s, [write])[5]
    assert first["ok"], first
    churn(s)
    s.close()
    c.wait_converged()
    c.kill("node1")
    promote = c.zwal("promote", "node2", "--config", c.config, "--timeout", "1")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    s = c.dealer(c.endpoint("node2"))
    again = call(s, [write])[5]
    s.close()
    assert again["ok"], again
    assert again["offset"] == first["offset"] and again["epoch"] == first["epoch"], (first, again)
    assert copies(c, keeper)["node2"] == [first["offset"]]
