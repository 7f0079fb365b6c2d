"""Rules of the pure cores that no fast test stated before `make mutants` showed it.

Each test here kills a mutant in tests/mutants/catalogue_core.py that
survived every other killer: it states the rule through the core's own
inputs and outputs (no sockets, files or sleeps).
"""

from __future__ import annotations

import msgpack
import pytest

from daemon.node.kv import KVState
from daemon.node.leader_core import LeaderCore, Reply
from daemon.wire.client import Err, ProtocolError, Request, decode_request
from daemon.wire.replication import BadMessage, decode_fetch, decode_from_leader

_pack = msgpack.Packer(use_bin_type=True).pack


def _leader(k: int = 1) -> LeaderCore:
    return LeaderCore(
        name="n1", epoch=1, end=0, kv=KVState(), history=[(1, 0)], followers=["n2", "n3"], ack_replicas=k,
        replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20, batch_max_records=64,
        batch_max_bytes=1 << 20,
    )


def _body(r: Reply) -> dict:
    return msgpack.unpackb(r.body, raw=False)


def test_stepping_down_tells_every_waiter_of_a_durable_uncommitted_record_that_it_was_written():
    c = _leader(k=1)
    for f in ("n2", "n3"):
        c.on_fetch(decode_fetch([f.encode(), _pack({"t": "fetch", "name": f, "epoch": 1, "offset": 0,
                                                     "last_epoch": 1})]), [f.encode()], 0.0)
    assert c.admit_write(Request(7, "set", b"k", b"v", b"cid"), [b"a"], 0.0) == []
    frames = c.take_batch()
    c.batch_durable(sum(map(len, frames)), 0.0)
    assert c.commit == 0  # durable on the leader, on no follower yet
    # A retry of it joins the same record and must be told the same.
    assert c.admit_write(Request(7, "set", b"k", b"v", b"cid"), [b"b"], 0.0) == []
    # And one write still in the open batch: never written.
    assert c.admit_write(Request(8, "set", b"k2", b"v", b"cid"), [b"c"], 0.0) == []
    out = {r.envelope[0]: _body(r) for r in c.fail_all(Err.NOT_LEADER, "stepping down")}
    assert set(out) == {b"a", b"b", b"c"}, "every waiting client is answered when the leader steps down"
    for env in (b"a", b"b"):
        assert out[env]["ok"] is False and out[env]["written"] is True and out[env]["offset"] == 0
    assert out[b"c"]["ok"] is False and out[b"c"]["written"] is False


@pytest.mark.parametrize("field,value", [("offset", -1), ("epoch", -1), ("last_epoch", 2**63), ("offset", 2**64 - 1)])
def test_a_fetch_field_outside_the_unsigned_range_is_a_bad_message(field, value):
    m = {"t": "fetch", "name": "n2", "epoch": 1, "offset": 0, "last_epoch": 1, field: value}
    with pytest.raises(BadMessage):
        decode_fetch([b"n2", _pack(m)])


def test_a_leader_message_field_outside_the_unsigned_range_is_a_bad_message():
    with pytest.raises(BadMessage):
        decode_from_leader([_pack({"t": "truncate", "epoch": 2, "leader": "n1", "offset": -5, "last_epoch": 1})])
    with pytest.raises(BadMessage):
        decode_from_leader([_pack({"t": "data", "epoch": 2, "leader": "n1", "offset": 0, "end": -1, "commit": 0}),
                            b""])


def test_a_chunk_header_without_its_data_frame_is_a_bad_message_not_a_crash():
    hdr = _pack({"t": "data", "epoch": 2, "leader": "n1", "offset": 10, "end": 90, "commit": 0})
    with pytest.raises(BadMessage):
        decode_from_leader([hdr])
    heartbeat = _pack({"t": "data", "epoch": 2, "leader": "n1", "offset": None, "end": 90, "commit": 0})
    with pytest.raises(BadMessage):
        decode_from_leader([heartbeat, b"bytes a heartbeat must not carry"])


@pytest.mark.parametrize("epoch", ["7", -1, 2**63, 1.5, None])
def test_a_request_epoch_that_is_not_an_unsigned_integer_is_a_bad_request(epoch):
    # The leader compares a request's epoch with its own (a hint to ask the
    # peers): a string there would crash it, so the decoder must refuse it.
    body = _pack({"id": 3, "op": "set", "key": b"k", "value": b"v", "epoch": epoch})
    with pytest.raises(ProtocolError) as e:
        decode_request(body)
    assert e.value.code == Err.BAD_REQUEST and e.value.request_id == 3
