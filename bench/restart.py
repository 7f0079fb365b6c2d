"""Restart time of a node with a long history: full replay vs the newest snapshot + the log after it.

    .venv/bin/python bench/restart.py [--records 2000000] [--keys 200000] [--dir SCRATCH]

It writes a segmented log of RECORDS records over KEYS keys (values of
128 bytes, 50 client ids) into a scratch node's data directory, then
measures `Node.open_log` (what a restart does before it answers):
1. with no snapshot: a full replay;
2. with a snapshot at the end and 10,000 records after it: the restart
   the issue's target is about (docs/format.md, "Restart time").
Prints one JSON object; bench/README.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from daemon import config as config_mod  # noqa: E402
from daemon.node import snapshot as snap  # noqa: E402
from daemon.node.node import Node  # noqa: E402
from daemon.ops import logs  # noqa: E402
from daemon.wal.format import Record, encode_frame  # noqa: E402
from daemon.wal.segments import open_segments  # noqa: E402

CLUSTER = """[cluster]
bootstrap_leader = "node1"
security = "none"
[[node]]
name = "node1"
data_dir = "n1"
client_endpoint = "tcp://127.0.0.1:1"
repl_endpoint = "tcp://127.0.0.1:2"
"""


def fill(log_dir: str, first: int, n: int, keys: int, epoch: int) -> None:
    log, _ = open_segments(log_dir)
    try:
        batch = []
        for i in range(first, first + n):
            batch.append(encode_frame(Record("set", b"key-%08d" % (i % keys), b"v" * 120 + b"%08d" % i,
                                             b"client-%d" % (i % 50), i, 1_700_000_000_000 + i // 10), epoch))
            if len(batch) == 20000:
                log.append_frames(b"".join(batch))
                batch = []
        if batch:
            log.append_frames(b"".join(batch))
    finally:
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--dir", help="scratch directory (default: a new temporary one, removed after)")
    a = ap.parse_args()
    root = a.dir or tempfile.mkdtemp(prefix="zwal-restart-")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    try:
        with open(os.path.join(root, "cluster.toml"), "w") as f:
            f.write(CLUSTER)
        logs.setup(node="bench", stream=open(os.path.join(root, "node.log"), "w"))
        cfg = config_mod.load(os.path.join(root, "cluster.toml"))
        node = Node(cfg, "node1")
        t0 = time.perf_counter()
        fill(node.me.log_dir, 0, a.records, a.keys, 1)
        out: dict = {"records": a.records, "keys": a.keys, "write_s": round(time.perf_counter() - t0, 2)}
        ldir = node.me.log_dir
        out["log_bytes"] = sum(os.path.getsize(os.path.join(ldir, p)) for p in os.listdir(ldir) if p.endswith(".seg"))
        out["segments"] = len([p for p in os.listdir(ldir) if p.endswith(".seg")])
        t0 = time.perf_counter()
        node.open_log()
        out["full_replay_s"] = round(time.perf_counter() - t0, 2)
        out["replay_mb_per_s"] = round(out["log_bytes"] / 1e6 / out["full_replay_s"], 1)
        kv = node.kv
        crc = int.from_bytes(node.writer.read_raw(kv.last.offset, 4), "little")
        t0 = time.perf_counter()
        parts = snap.encode(kv, crc)
        snap.write_file(snap.snapshot_dir(node.me.data_dir), kv.end, parts)
        out["snapshot_write_s"] = round(time.perf_counter() - t0, 2)
        out["snapshot_bytes"] = sum(map(len, parts))
        node.writer.close()
        node.writer = None
        fill(ldir, a.records, 10_000, a.keys, 2)
        node2 = Node(cfg, "node1")
        t0 = time.perf_counter()
        node2.open_log()
        out["restart_from_snapshot_s"] = round(time.perf_counter() - t0, 2)
        out["replayed"] = node2.scan.replayed
        assert node2.kv.records == a.records + 10_000, (node2.kv.records, a.records)
        node2.writer.close()
        print(json.dumps(out))
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
