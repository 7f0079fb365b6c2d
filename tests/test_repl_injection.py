"""A fake leader feeds a real follower process damaged and misplaced frames: none is appended."""

from __future__ import annotations


import msgpack
import zmq

from daemon.config import load
from daemon.wal.format import Record, encode_frame
from harness import wait_until


def test_bad_crc_and_wrong_offset_are_never_appended(make_cluster):
    c = make_cluster(2, ack_replicas=0, heartbeat_interval=0.2)
    leader_ep = load(c.config).node("node1").repl_endpoint
    fake = zmq.Context.instance().socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    creds = c.creds("node", "node1")  # the test plays node1, with node1's own key
    fake.curve_secretkey, fake.curve_publickey, fake.curve_server = creds.secret, creds.public, True
    fake.bind(leader_ep)  # node1 is never started: the test plays it
    try:
        c.start("node2")

        def next_fetch() -> tuple[bytes, dict]:
            assert fake.poll(10000), "the follower never fetched"
            ident, body = fake.recv_multipart()
            return ident, msgpack.unpackb(body, raw=False)

        def send(ident: bytes, offset: int, data: bytes) -> None:
            hdr = {"t": "data", "epoch": 1, "leader": "node1", "offset": offset, "end": offset + len(data), "commit": 0}
            fake.send_multipart([ident, msgpack.packb(hdr), data])

        good = b"".join(encode_frame(Record("set", f"good{i}".encode(), b"v"), 1) for i in range(3))
        bad = bytearray(good)
        bad[len(good) // 2] ^= 0x20
        ident, m = next_fetch()
        assert m["offset"] == 0
        send(ident, 0, bytes(bad))  # (a) a flipped byte: CRC fails (the follower adopts epoch 1 first)
        for _ in range(5):
            ident, m = next_fetch()
            assert m["offset"] == 0, "something was appended from a bad chunk"
            if m["epoch"] == 1:
                break
            send(ident, 0, bytes(bad))
        send(ident, 0, bytes(bad))
        ident, m = next_fetch()
        assert m["offset"] == 0
        send(ident, 500, good)  # (b) a chunk beyond our end: a gap
        ident, m = next_fetch()
        assert m["offset"] == 0
        send(ident, 0, good)  # (c) the real thing
        ident, m = next_fetch()
        assert m["offset"] == len(good)
        with open(c.log_path("node2"), "rb") as f:
            assert f.read() == good
        wait_until(lambda: "event=refetch" in open(c.node_log("node2")).read(), 5, "the refetch log line")
        log = open(c.node_log("node2")).read()
        assert "failed its check" in log and "does not start at our end" in log
    finally:
        fake.close(linger=0)
