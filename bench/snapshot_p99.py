"""Write latency with and without a snapshot being written (docs/format.md, "Snapshots: off the write path").

One node (K = 0, security none), preloaded with KEYS keys of VALUE bytes;
then W blocking writers for PHASE seconds with no snapshot, then PHASE
seconds while `zwal snapshot` runs back to back. Prints p50/p99 of the writes
that started inside and outside a snapshot's run, for the writer the node
was started with (ZWAL_SNAPSHOT_WRITER=fork|thread).

    .venv/bin/python bench/snapshot_p99.py fork 200000
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from harness import Cluster  # noqa: E402

from daemon.client.blocking import Client  # noqa: E402
from daemon.client.pipeline import Pipeline  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))] if s else float("nan")


def main() -> None:
    writer, keys = sys.argv[1], int(sys.argv[2])
    phase, writers = float(os.environ.get("PHASE", "8")), int(os.environ.get("WRITERS", "4"))
    root = tempfile.mkdtemp(prefix="zwal-snapbench-")
    c = Cluster(root, 1, 0, security="none", snapshot_bytes=0)
    c.start("node1", env={"ZWAL_SNAPSHOT_WRITER": writer})
    ep = c.endpoint("node1")
    t0 = time.monotonic()
    p = Pipeline([ep], deadline=60)
    val = b"v" * 150
    p.run_writes((("set", b"key-%08d" % i, val) for i in range(keys)), window=256)
    p.close()
    print(f"preloaded {keys} keys in {time.monotonic() - t0:.1f} s", flush=True)
    lat: list[tuple[float, float]] = []  # (start, seconds)
    stop = threading.Event()

    def write(n: int) -> None:
        with Client([ep], timeout=5, deadline=30) as cl:
            i = 0
            while not stop.is_set():
                s = time.monotonic()
                cl.set(f"w{n}-{i % 1000}", "x" * 100)
                lat.append((s, time.monotonic() - s))
                i += 1

    ts = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in ts:
        t.start()
    time.sleep(phase)
    windows: list[tuple[float, float]] = []
    snaps = 0
    end = time.monotonic() + phase
    with Client([ep], timeout=60, deadline=60) as adm:
        while time.monotonic() < end:
            s = time.monotonic()
            adm.admin("snapshot", ep, deadline=60)
            windows.append((s, time.monotonic()))
            snaps += 1
            adm.set("bump", str(snaps))  # the next snapshot has a new offset to take
    stop.set()
    for t in ts:
        t.join()
    first = windows[0][0]
    inside = [d for s, d in lat if any(a <= s <= b for a, b in windows)]
    outside = [d for s, d in lat if s < first]
    took = [b - a for a, b in windows]
    print(f"writer={writer} keys={keys} snapshots={snaps} snapshot_s_p50={pct(took, 0.5):.3f} "
          f"writes_without={len(outside)} p50={pct(outside, 0.5) * 1000:.2f}ms p99={pct(outside, 0.99) * 1000:.2f}ms "
          f"writes_during={len(inside)} p50={pct(inside, 0.5) * 1000:.2f}ms p99={pct(inside, 0.99) * 1000:.2f}ms "
          f"ratio_p99={pct(inside, 0.99) / pct(outside, 0.99):.2f}", flush=True)
    c.close()


if __name__ == "__main__":
    main()
