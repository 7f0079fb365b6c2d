"""A generic closed-loop load for peers without a load tool of their own:
P processes x T threads, each thread a client with one blocking request at
a time. Its CPU is reported beside the result, like zwal's generator."""

from __future__ import annotations

import importlib
import resource
import threading
import time
from typing import Any

from common import Sample, in_processes, sample_from, split


def _proc(factory: str, args: tuple, threads: int, seconds: float, pid: int, barrier: Any, q: Any) -> None:
    mod, fn = factory.rsplit(":", 1)
    make = getattr(importlib.import_module(mod), fn)
    ops = [make(*args, client=pid * 1000 + t) for t in range(threads)]
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)

    def run(op: Any) -> None:
        mine: list[float] = []
        failed = 0
        i = 0
        start.wait()
        while time.monotonic() < end_at:
            s = time.perf_counter()
            try:
                op(i)
            except Exception:
                failed += 1
                time.sleep(0.01)  # a failing peer must not turn its clients into busy loops
                continue
            mine.append(time.perf_counter() - s)
            i += 1
        with lock:
            lat.extend(mine)
            errors[0] += failed

    ts = [threading.Thread(target=run, args=(op,)) for op in ops]
    for t in ts:
        t.start()
    barrier.wait()  # every process is ready: start the clocks together
    before = resource.getrusage(resource.RUSAGE_SELF)
    end_at = time.monotonic() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime - before.ru_utime + ru.ru_stime - before.ru_stime
    q.put({"lat": lat, "elapsed": elapsed, "cpu": cpu, "errors": errors[0]})


def run(factory: str, args: tuple, clients: int, seconds: float, procs: int | None = None) -> Sample:
    """`factory` ("module:function") makes one client's op(i) from (*args, client=n)."""
    out = in_processes(_proc, [(factory, args, n, seconds, i) for i, n in enumerate(split(clients, procs))],
                       seconds + 120)
    elapsed = max(r["elapsed"] for r in out)
    errs = sum(r["errors"] for r in out)
    s = sample_from([x for r in out for x in r["lat"]], elapsed, sum(r["cpu"] for r in out) / elapsed, errs)
    if errs:
        s.notes.append(f"{errs} failed requests")
    return s
