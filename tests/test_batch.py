"""The `batch` op (docs/protocol.md, "batch"; issue 22): many writes in one message, each its own record with
its own offset and retry id, one reply; real nodes, CURVE, K = 1."""

from __future__ import annotations

import os

import msgpack
import pytest

from daemon.client.blocking import InvalidRecord
from daemon.wal.segments import iter_log_frames
from tests.test_retry_churn import call


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster(3, ack_replicas=1)
    c.start_all()
    c.wait_in_sync()
    return c


def records(c, name: str) -> list[tuple[int, dict]]:
    return [(f.offset, msgpack.unpackb(f.payload)) for f in iter_log_frames(c.log_dir(name))]


def test_set_many_writes_each_record_once_in_order_and_every_copy_holds_them(cluster):
    c = cluster
    cl = c.client()
    items = [(f"b{i}", f"v{i}" * 10) for i in range(2500)]  # three batches: 1024 writes at most in each
    res = cl.set_many(items + [("b7", None)])  # the last one deletes b7
    assert len(res) == 2501
    offsets = [r.offset for r in res]
    assert offsets == sorted(offsets) and len(set(offsets)) == 2501
    assert all(r.end > r.offset and r.epoch == 1 for r in res)
    assert cl.get("b0") == b"v0" * 10 and cl.get("b2499") == b"v2499" * 10 and cl.get("b7") is None
    c.wait_converged()
    for n in c.names:
        recs = records(c, n)
        assert [o for o, _ in recs] == offsets, n  # every write once, at the offset it was answered with


def test_a_batch_sent_again_gets_the_original_offsets_and_writes_nothing_twice(cluster):
    c = cluster
    s = c.dealer(c.endpoint("node1"))
    cid = os.urandom(12)
    writes = [{"id": 100 + i, "op": "set", "key": b"r%d" % i, "value": b"x"} for i in range(50)]
    first = call(s, [{"id": 1, "op": "batch", "cid": cid, "writes": writes}])[1]
    assert first["ok"], first
    again = call(s, [{"id": 2, "op": "batch", "cid": cid, "writes": writes}])[2]
    assert again["ok"] and [r["offset"] for r in again["results"]] == [r["offset"] for r in first["results"]]
    end = c.status("node1")["end"]
    assert end == first["results"][-1]["end"]  # nothing appended by the second
    # The same ids with other content: refused for those writes, as for a single write.
    other = [dict(w, value=b"y") for w in writes[:3]]
    bad = call(s, [{"id": 3, "op": "batch", "cid": cid, "writes": other}])[3]
    assert not bad["ok"] and bad["error"] == "bad_request" and "3 of 3 writes failed" in bad["message"]
    assert c.status("node1")["end"] == end
    s.close()


def test_bad_input_in_a_batch_changes_nothing(cluster):
    c = cluster
    s = c.dealer(c.endpoint("node1"))
    cid = os.urandom(12)
    end = c.status("node1")["end"]
    good = {"id": 1, "op": "set", "key": b"ok", "value": b"1"}
    cases = {
        "invalid_record": {"id": 10, "op": "batch", "cid": cid, "writes": [good, {"id": 2, "op": "set", "key": b"",
                                                                               "value": b"1"}]},
        "bad_request": {"id": 11, "op": "batch", "writes": [good]},  # no cid: no retry ids
    }
    for code, msg in cases.items():
        r = call(s, [msg])[msg["id"]]
        assert not r["ok"] and r["error"] == code, r
    for writes in ([], [good, dict(good)], [{"id": 3, "op": "get", "key": b"k"}], [{"id": 4, "op": "del", "key": b"k",
                                                                                    "value": b"v"}]):
        r = call(s, [{"id": 12, "op": "batch", "cid": cid, "writes": writes}])[12]
        assert not r["ok"] and r["error"] == "bad_request", (writes, r)
    assert c.status("node1")["end"] == end  # nothing was written
    assert c.ping("node1")
    s.close()
    with pytest.raises(InvalidRecord):
        c.client().set_many([("fine", "1"), ("", "empty key")])
    assert c.status("node1")["end"] == end


def test_a_follower_answers_a_batch_not_leader(cluster):
    c = cluster
    s = c.dealer(c.endpoint("node2"))
    r = call(s, [{"id": 1, "op": "batch", "cid": os.urandom(12), "writes": [{"id": 1, "op": "set", "key": b"k",
                                                                              "value": b"v"}]}])[1]
    assert not r["ok"] and r["error"] == "not_leader" and r.get("leader") == "node1", r
    s.close()
    # The client follows the redirect.
    from daemon.client.blocking import Client

    with Client([c.endpoint("node2")], config=c.config, timeout=1.0, deadline=10.0) as cl:
        assert [x.epoch for x in cl.set_many([("k1", "v"), ("k2", "v")])] == [1, 1]


def test_zwal_set_batch_reads_lines_from_stdin(cluster):
    import subprocess
    import sys

    c = cluster
    zwal = [sys.executable, "-m", "daemon.cli", "set", "--batch", "--config", c.config]
    lines = "".join(f"line{i}\tvalue {i}\n" for i in range(300)) + "\nspaced  two words\n"
    r = subprocess.run([*zwal, "--json"], input=lines.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import json

    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["writes"] == 301 and doc["epoch"] == 1
    cl = c.client()
    assert cl.get("line299") == b"value 299" and cl.get("spaced") == b"two words"
    end = c.status("node1")["end"]
    bad = subprocess.run(zwal, input=b"k1\tv1\nnovalue\n", capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"stdin line 2" in bad.stderr and b"nothing was written" in bad.stderr
    assert c.status("node1")["end"] == end
