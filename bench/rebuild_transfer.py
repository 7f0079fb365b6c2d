"""Rebuild time of a wiped follower: by snapshot transfer, and by copying the whole log (for comparison).

    .venv/bin/python bench/rebuild_transfer.py [RECORDS] [KEYS]

A 3-node cluster (K = 1) takes RECORDS writes of 128-byte values over KEYS
keys; the leader takes a snapshot (`zwal snapshot`); a follower is stopped,
its data directory moved aside, and started again: the time from its start
until its end equals the leader's is the rebuild time. The same run without
a snapshot (snapshot_bytes = 0, none taken) copies the log from offset 0.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from daemon.client.pipeline import Pipeline  # noqa: E402
from harness import Cluster, wait_until  # noqa: E402


def run(records: int, keys: int, snapshot: bool) -> dict[str, float]:
    root = tempfile.mkdtemp(prefix="zwal-rebuild-")
    c = Cluster(root, 3, 1, snapshot_bytes=0)
    try:
        c.start_all()
        p = Pipeline([c.endpoint(n) for n in c.names], timeout=10.0, deadline=120.0, creds=c.creds())
        items = (("set", b"key-%08d" % (i % keys), b"v" * 120 + b"%08d" % i) for i in range(records))
        res = p.run_writes(items, window=256)
        p.close()
        assert not res.failed
        leader = c.leader()
        assert leader
        snap_bytes = 0
        if snapshot:
            r = c.zwal("snapshot", "--config", c.config)
            assert r.returncode == 0, r.stderr
            sd = os.path.join(c.data_dir(leader), "snapshots")
            snap_bytes = max(os.path.getsize(os.path.join(sd, n)) for n in os.listdir(sd))
        c.wait_converged(timeout=120)
        follower = next(n for n in c.names if n != leader)
        c.stop(follower)
        os.rename(c.data_dir(follower), c.data_dir(follower) + ".aside")
        end = c.status(leader)["end"]
        t0 = time.monotonic()
        c.start(follower)
        wait_until(lambda: c.status(follower)["end"] == end, 300, "the rebuild")
        return {"log_bytes": end, "snapshot_bytes": snap_bytes, "rebuild_s": round(time.monotonic() - t0, 2)}
    finally:
        c.close()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    for snapshot in (True, False):
        print("snapshot transfer" if snapshot else "log copy from 0", run(n, k, snapshot), flush=True)
