"""The transport floor: the least a Python server on pyzmq can do for a durable write.

A ROUTER takes every message that is ready (at least one), appends their
bodies to an O_APPEND file with one write and one fdatasync, then answers
each with the smallest reply zwal's load generator accepts (msgpack id, ok,
offset, end, epoch). No log format, no CRC, no key-value state, no retry
window, no replication: what is left is ZeroMQ (with or without CurveZMQ),
msgpack in and out, and the disk. zwal's figures beside it say what zwal's
own work costs, and at one client its p50 is the floor the 1-client target
is measured against (issue 22: 1-client p50 <= this + 20 us).

    python bench/transport_floor.py PORT DIR [--curve SERVER_SECRET_Z85]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import msgpack
import zmq


def serve(port: int, directory: str, secret: str | None) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 100000)
    s.setsockopt(zmq.SNDHWM, 100000)
    if secret is not None:
        s.curve_server = True
        s.curve_secretkey = secret.encode()
    s.bind(f"tcp://127.0.0.1:{port}")
    fd = os.open(os.path.join(directory, "transport-floor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    unpack, pack = msgpack.unpackb, msgpack.Packer(use_bin_type=True).pack
    end = 0
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        batch = [s.recv_multipart()]
        while len(batch) < 4096:
            try:
                batch.append(s.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        data = b"".join(m[-1] for m in batch)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)
        for m in batch:
            req = unpack(m[-1], raw=False)
            start, end = end, end + len(m[-1])
            s.send_multipart([*m[:-1], pack({"id": req["id"], "ok": True, "offset": start, "end": end, "epoch": 1})])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("dir")
    ap.add_argument("--curve", metavar="SERVER_SECRET_Z85", help="CurveZMQ server with this secret key")
    a = ap.parse_args()
    serve(a.port, a.dir, a.curve)


if __name__ == "__main__":
    main()
