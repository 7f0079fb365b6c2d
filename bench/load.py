"""Load generator: N concurrent writers against a running cluster.

Concurrency is spread over several processes, each keeping a window of
writes in flight on one socket (daemon.pipeline), so the generator is not
the bottleneck it measures; its own CPU time is reported beside the result.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from daemon.pipeline import Pipeline

from common import percentile


def _worker(endpoints: list[str], window: int, seconds: float, value_size: int, q: Any, wid: int) -> None:
    p = Pipeline(endpoints, timeout=5.0, deadline=30.0)
    value = os.urandom(value_size // 2).hex().encode()[:value_size]
    end_at = time.monotonic() + seconds
    seq = iter(range(10**9))

    def items():
        for i in seq:
            yield ("set", f"w{wid}-k{i % 1000}".encode(), value)

    t0 = time.perf_counter()
    r = p.run_writes(items(), window, stop=lambda: time.monotonic() >= end_at)
    elapsed = time.perf_counter() - t0
    p.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    q.put({"lat": r.latencies, "elapsed": elapsed, "errors": r.errors, "failed": len(r.failed),
           "cpu": ru.ru_utime + ru.ru_stime})


@dataclass
class LoadResult:
    clients: int
    ops: float
    p50: float
    p99: float
    p999: float
    errors: dict[str, int]
    failed: int
    gen_cpu: float  # load generator CPU seconds per wall second


def run_load(endpoints: list[str], clients: int, seconds: float = 3.0, value_size: int = 100,
             procs: int | None = None) -> LoadResult:
    procs = procs or min(clients, 4)
    windows = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(endpoints, w, seconds, value_size, q, i)) for i, w in enumerate(windows) if w]
    for p in ps:
        p.start()
    results = [q.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join(30)
    lat = [x for r in results for x in r["lat"]]
    elapsed = max(r["elapsed"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return LoadResult(clients, len(lat) / elapsed, percentile(lat, 0.5), percentile(lat, 0.99),
                      percentile(lat, 0.999), errors, sum(r["failed"] for r in results),
                      sum(r["cpu"] for r in results) / elapsed)
