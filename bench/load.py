"""Load generator: N concurrent writers against a running cluster.

Concurrency is spread over several processes, each keeping a window of
writes in flight on one socket (daemon.pipeline), so the generator is not
the bottleneck it measures; its own CPU time is reported beside the result.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from daemon.client.pipeline import Pipeline

from common import Sample, in_processes, sample_from, split


def _worker(endpoints: list[str], window: int, seconds: float, value_size: int, wid: int, creds: Any,
            barrier: Any, q: Any) -> None:
    p = Pipeline(endpoints, timeout=5.0, deadline=30.0, creds=creds)
    value = os.urandom(value_size // 2).hex().encode()[:value_size]
    barrier.wait()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
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
           "cpu": ru.ru_utime - ru0.ru_utime + ru.ru_stime - ru0.ru_stime})


def run_load(endpoints: list[str], clients: int, seconds: float = 3.0, value_size: int = 100,
             procs: int | None = None, creds: Any = None) -> Sample:
    """`clients` writes in flight, spread over up to 4 generator processes."""
    results = in_processes(_worker, [(endpoints, w, seconds, value_size, i, creds)
                                     for i, w in enumerate(split(clients, procs))],
                           seconds + 120)
    lat = [x for r in results for x in r["lat"]]
    elapsed = max(r["elapsed"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    failed = sum(r["failed"] for r in results)
    s = sample_from(lat, elapsed, sum(r["cpu"] for r in results) / elapsed, sum(errors.values()) + failed)
    if errors or failed:
        s.notes.append(f"errors {errors}, {failed} writes failed")
    return s
