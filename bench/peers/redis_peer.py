"""Redis with appendonly yes + appendfsync always, and a replica; load from redis-benchmark (C), and from
the same Python load framework as zwal's (redis-py, pipelined, same processes and window)."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from common import GRID, Sample, in_processes, proc_cpu, sample_from, split, stop_all
from harness_ports import free_base_port

from . import Missing

NOTE = ("appendonly yes, appendfsync always (Redis fsyncs its AOF once per event-loop pass, before replying: "
        "group commit); a replica follows asynchronously (Redis has no synchronous replication); "
        "load from redis-benchmark, written in C")
NOTE_PY = ("the same Redis, loaded from Python as zwal is: redis-py pipelines of as many SETs as the process's "
           "share of the clients, spread over the same 4 processes (each SET's latency is its pipeline's round "
           "trip), so the server comparison is not one of load generators")


def _start(port: int, d: str, *extra: str) -> subprocess.Popen:
    os.makedirs(d, exist_ok=True)
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--appendonly",
                             "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parse(text: str) -> tuple[float, dict[float, float], int]:
    """(requests/s, percentiles in seconds, requests) from redis-benchmark's plain output."""
    text = text.replace("\r", "\n")
    m = re.search(r"(\d+) requests completed in ([\d.]+) seconds", text)
    t = re.search(r"throughput summary: ([\d.]+) requests per second", text)
    if not m or not t:
        raise Missing(f"redis-benchmark output not understood: {text[-300:]!r}")
    dist = text.split("Latency by percentile distribution:")[1].split("Cumulative distribution")[0]
    points = [(float(p) / 100, float(ms) / 1000) for p, ms in re.findall(r"([\d.]+)% <= ([\d.]+) milliseconds", dist)]
    qs = {}
    for q in GRID:
        qs[q] = next((v for p, v in points if p >= q), points[-1][1] if points else float("nan"))
    return float(t.group(1)), qs, int(m.group(1))


@contextmanager
def _servers(work: str) -> Iterator[tuple[int, subprocess.Popen, Callable[[], bool]]]:
    """A primary (port base + 1) and its replica; yields (base, the primary's process, replica_up)."""
    if not shutil.which("redis-server") or not shutil.which("redis-benchmark"):
        raise Missing("redis-server or redis-benchmark is not installed: run bench/setup_peers.sh (as root)")
    base = free_base_port(4)
    procs: list[subprocess.Popen] = []

    def replica_up() -> bool:
        r = subprocess.run(["redis-cli", "-p", str(base + 2), "info", "replication"], capture_output=True, text=True,
                           timeout=10)
        return "master_link_status:up" in r.stdout

    try:
        procs.append(_start(base + 1, os.path.join(work, "redis-primary")))
        procs.append(_start(base + 2, os.path.join(work, "redis-replica"), "--replicaof", "127.0.0.1", str(base + 1)))
        for _ in range(100):
            if replica_up():
                break
            time.sleep(0.1)
        else:
            raise Missing("the Redis replica did not connect to its primary within 10 s")
        yield base, procs[0], replica_up
    finally:
        stop_all(procs)


@contextmanager
def running(work: str) -> Iterator:
    rates: dict[int, float] = {}
    with _servers(work) as (base, primary, replica_up):

        def bench(clients: int, n: int) -> tuple[float, dict[float, float], float, int, float]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            server0 = proc_cpu(primary.pid)
            t0 = time.perf_counter()
            out = subprocess.run(["redis-benchmark", "-p", str(base + 1), "-t", "set", "-c", str(clients), "-n",
                                  str(n), "-d", "100", "-r", "100000"], capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"redis-benchmark exited with {out.returncode}: {out.stderr.strip()[-300:]}")
            wall = time.perf_counter() - t0
            server = proc_cpu(primary.pid) - server0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall
            ops, qs, count = parse(out.stdout)
            return ops, qs, cpu, count, server

        def measure(clients: int, seconds: float) -> Sample:
            if clients not in rates:  # size the run so it lasts about `seconds` (redis-benchmark counts requests)
                rates[clients] = bench(clients, 200 * clients)[0]
            ops, qs, cpu, count, server = bench(clients, max(500, int(rates[clients] * seconds)))
            s = Sample(ops, qs, cpu, count=count).with_server_cpu(server)
            if not replica_up():
                s.notes.append(f"{clients} clients: the replica's link was down after the run")
            return s

        yield measure


def _py_worker(port: int, window: int, seconds: float, value_size: int, wid: int, barrier: object, q: object) -> None:
    import redis

    r = redis.Redis(port=port)
    value = os.urandom(value_size // 2).hex().encode()[:value_size]
    r.ping()
    barrier.wait()  # type: ignore[attr-defined]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    lat: list[float] = []
    i = 0
    t0 = time.perf_counter()
    end_at = time.monotonic() + seconds
    while time.monotonic() < end_at:
        p = r.pipeline(transaction=False)
        for _ in range(window):
            p.set(f"w{wid}-k{i % 1000}", value)
            i += 1
        t = time.perf_counter()
        p.execute()
        lat.extend([time.perf_counter() - t] * window)
    elapsed = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    q.put({"lat": lat, "elapsed": elapsed,  # type: ignore[attr-defined]
           "cpu": ru.ru_utime - ru0.ru_utime + ru.ru_stime - ru0.ru_stime})


@contextmanager
def running_py(work: str) -> Iterator:
    try:
        import redis  # noqa: F401
    except ImportError as e:
        raise Missing(f"redis-py is not installed ({e}): pip install -e '.[bench]'") from e
    with _servers(work) as (base, primary, replica_up):

        def measure(clients: int, seconds: float) -> Sample:
            server0 = proc_cpu(primary.pid)
            results = in_processes(_py_worker, [(base + 1, w, seconds, 100, i) for i, w in enumerate(split(clients))],
                                   seconds + 120)
            server = proc_cpu(primary.pid) - server0
            elapsed = max(x["elapsed"] for x in results)
            s = sample_from([v for x in results for v in x["lat"]], elapsed,
                            sum(x["cpu"] for x in results) / elapsed).with_server_cpu(server)
            if not replica_up():
                s.notes.append(f"{clients} clients: the replica's link was down after the run")
            return s

        yield measure
