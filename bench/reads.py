"""Read latency: what a ReadIndex `get` costs (docs/protocol.md, "Replies").

Runs a 3-node cluster with K = 1 (every fresh read is confirmed by a follower's
fetch carrying a read round started after the read arrived) beside one with
K = 0 (reads answered at once, `linearizable: false`), and reports `get` at
1 and 64 clients: reads/s and p50/p99 latency. Run: `make bench-reads`.
The difference between the two is the price of never serving a stale read as
fresh from a deposed leader.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from typing import Any

import msgpack
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import in_processes, sample_from, split  # noqa: E402
from scenarios import start_zwal, stop_zwal  # noqa: E402


def _reader(endpoint: str, window: int, seconds: float, keys: int, wid: int, creds: Any, barrier: Any,
            q: Any) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if creds is not None:
        creds.apply(s, endpoint)
    s.connect(endpoint)
    ids = itertools.count(wid * 10**9)
    sent: dict[int, float] = {}
    lat: list[float] = []
    errors: dict[str, int] = {}
    barrier.wait()
    end_at = time.monotonic() + seconds
    t0 = time.perf_counter()

    def send() -> None:
        i = next(ids)
        sent[i] = time.perf_counter()
        s.send(msgpack.packb({"id": i, "op": "get", "key": f"k{i % keys}".encode()}))

    for _ in range(window):
        send()
    while sent:
        if not s.poll(5000):
            break
        m = msgpack.unpackb(s.recv(), raw=False)
        t = sent.pop(m["id"], None)
        if t is None:
            continue
        if m.get("ok"):
            lat.append(time.perf_counter() - t)
        else:
            errors[m["error"]] = errors.get(m["error"], 0) + 1
        if time.monotonic() < end_at:
            send()
    q.put({"lat": lat, "elapsed": time.perf_counter() - t0, "errors": errors})
    s.close()
    ctx.term()


def measure(endpoint: str, clients: int, seconds: float, creds: Any = None) -> dict[str, Any]:
    res = in_processes(_reader, [(endpoint, w, seconds, 1000, i, creds) for i, w in enumerate(split(clients))],
                       seconds + 60)
    lat = [x for r in res for x in r["lat"]]
    smp = sample_from(lat, max(r["elapsed"] for r in res))
    errs: dict[str, int] = {}
    for r in res:
        for k, v in r["errors"].items():
            errs[k] = errs.get(k, 0) + v
    return {"reads_per_s": round(smp.ops), "p50_us": round(smp.quantiles[0.5] * 1e6),
            "p99_us": round(smp.quantiles[0.99] * 1e6), "errors": errs}


def measure_reads(work: str, seconds: float, clients: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
    """`get` on a 3-node cluster with K = 0 and K = 1, at each client count: {"K=k clients=n": figures}."""
    from daemon.client.blocking import Client

    out: dict[str, Any] = {}
    for k in (0, 1):
        procs, eps, creds = start_zwal(os.path.join(work, f"reads-k{k}"), 3, k, "group")
        try:
            with Client(eps[:1], timeout=2, deadline=20, creds=creds) as c:
                for i in range(1000):
                    c.set(f"k{i}".encode(), b"v" * 100)
            for n in clients:
                r = measure(eps[0], n, seconds, creds)
                out[f"K={k} clients={n}"] = r
                print(f"  get, 3 nodes, K={k}, {n:>2} client(s): {r['reads_per_s']:>7} reads/s  "
                      f"p50 {r['p50_us']:>6} us  p99 {r['p99_us']:>6} us  errors {r['errors'] or 0}", flush=True)
        finally:
            stop_zwal(procs)
    return out


def markdown(out: dict[str, Any], clients: tuple[int, ...] = (1, 64)) -> str:
    """The report's section on reads: each figure beside its unconfirmed twin."""
    lines = ["## Reads (`get` on the leader, 3 nodes)", "",
             "K = 1: ReadIndex (committed state, leadership confirmed by a follower's fetch after the read "
             "arrived; `linearizable: true`). K = 0: answered at once (`linearizable: false`).", "",
             "| clients | K=0 reads/s | K=0 p50 (us) | K=1 reads/s | K=1 p50 (us) | K=1 p99 (us) | ReadIndex p50 cost | "
             "K=1 / K=0 throughput |", "|---|---|---|---|---|---|---|---|"]
    for n in clients:
        a, b = out.get(f"K=0 clients={n}"), out.get(f"K=1 clients={n}")
        if a is None or b is None:
            continue
        lines.append(f"| {n} | {a['reads_per_s']:,} | {a['p50_us']:,} | {b['reads_per_s']:,} | {b['p50_us']:,} | "
                     f"{b['p99_us']:,} | +{b['p50_us'] - a['p50_us']:,} us | "
                     f"{b['reads_per_s'] / max(a['reads_per_s'], 1):.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each measurement (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zwal-reads-") as work:
        out = measure_reads(work, args.seconds)
    print()
    print(markdown(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
