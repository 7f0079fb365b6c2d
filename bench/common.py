"""Shared by the benchmarks: one measurement's sample, the disk's fsync floor, machine facts."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Percentiles kept from every measurement: enough for a percentile plot up
# to p99.9 and for the table, without carrying every latency around.
GRID: list[float] = sorted({round(1 - 10 ** (-3 * i / 60), 6) for i in range(0, 61)} | {0.5, 0.99, 0.999})


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


@dataclass
class Sample:
    """One measurement: acknowledged writes/s and the latency percentiles (seconds)."""

    ops: float
    quantiles: dict[float, float]
    gen_cpu: float = float("nan")  # load generator CPU, in cores (nan: not separable)
    errors: int = 0
    notes: list[str] = field(default_factory=list)
    count: int = 0  # acknowledged writes behind the percentiles
    server_cpu: float = float("nan")  # the leader's (Redis: the primary's) CPU per acknowledged write, in seconds

    def with_server_cpu(self, cpu_seconds: float) -> "Sample":
        """Set server_cpu from the server's CPU time over the measurement (all its threads, user + system)."""
        if self.count:
            self.server_cpu = cpu_seconds / self.count
        return self

    def q(self, p: float) -> float:
        return self.quantiles.get(p, float("nan"))


def sample_from(latencies: list[float], elapsed: float, gen_cpu: float = float("nan"), errors: int = 0,
                batch: int = 1) -> Sample:
    s = sorted(latencies)
    qs = {p: s[min(len(s) - 1, int(len(s) * p))] for p in GRID} if s else {p: float("nan") for p in GRID}
    return Sample(len(s) * batch / elapsed if elapsed > 0 else 0.0, qs, gen_cpu, errors, count=len(s))


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far, from /proc/PID/stat.
    Read before and after a measurement; the difference over the writes acknowledged in it is the
    server's CPU per write (a little high: it includes the idle moments while the load starts)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def measured_cpu(pid: int, run: Callable[[], Sample]) -> Sample:
    """run(), with server_cpu set from `pid`'s CPU time over it."""
    before = proc_cpu(pid)
    s = run()
    return s.with_server_cpu(proc_cpu(pid) - before)


def split(clients: int, procs: int | None = None) -> list[int]:
    """Share `clients` over up to `procs` (default 4) load processes, so one GIL is not the limit."""
    procs = procs or min(clients, 4)
    return [n for n in (clients // procs + (1 if i < clients % procs else 0) for i in range(procs)) if n]


def in_processes(target: Callable[..., None], arg_sets: list[tuple], timeout: float) -> list[dict]:
    """Run target(*args, barrier, queue) in one spawned process per arg set; return what each put on the queue.

    Every target waits on `barrier` once it is ready and starts its clock
    after it, so the processes measure the same window (spawning and
    importing take a good part of a second, unevenly).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    barrier = ctx.Barrier(len(arg_sets), timeout=60)
    ps = [ctx.Process(target=target, args=(*args, barrier, q)) for args in arg_sets]
    for p in ps:
        p.start()
    out: list[dict] = []
    end = time.monotonic() + timeout
    try:
        while len(out) < len(ps):
            try:
                out.append(q.get(timeout=0.5))
            except queue.Empty:
                dead = [p for p in ps if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a load process died (exit code {dead[0].exitcode})") from None
                if time.monotonic() > end:
                    raise RuntimeError(f"the load processes did not report within {timeout:.0f} s") from None
        return out
    finally:
        for p in ps:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()


def stop_all(procs: list) -> None:
    """SIGTERM, then SIGKILL after 15 s: a benchmark never leaves a server behind."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except Exception:
            p.kill()
            p.wait()


def floor(directory: str, seconds: float, threads: int = 1, batch: int = 1, size: int = 120) -> Sample:
    """write+fdatasync on an O_APPEND file, with no network and no encoding.

    `threads` writers each issue their own write+fdatasync (per-record: what a
    server that syncs every request separately gets); `batch` records go in
    one write and one fdatasync (ideal group commit: the best any log can do).
    """
    path = os.path.join(directory, f"floor-{os.getpid()}-{threads}-{batch}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    buf = os.urandom(size) * batch
    lats: list[list[float]] = [[] for _ in range(threads)]
    end = time.perf_counter() + seconds

    def run(mine: list[float]) -> None:
        while time.perf_counter() < end:
            s = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            mine.append(time.perf_counter() - s)

    t0 = time.perf_counter()
    try:
        ts = [threading.Thread(target=run, args=(lat,)) for lat in lats]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return sample_from([x for lat in lats for x in lat], elapsed, batch=batch)


def fsync_floor(directory: str, seconds: float = 2.0, size: int = 120, batch: int = 1) -> dict[str, float]:
    """The floor as a plain dict (used by bench/engine.py)."""
    s = floor(directory, seconds, 1, batch, size)
    return {"ops": s.ops, "calls": s.ops / batch, "p50": s.q(0.5), "p99": s.q(0.99)}


def _disk_of(path: str) -> str:
    """The block device behind `path`, with its model and rotational flag when sysfs tells."""
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "--target", path], capture_output=True,
                             text=True, timeout=5).stdout.split()
        src, fstype = out[0], out[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "disk unknown"
    dev = os.path.basename(os.path.realpath(src)) if src.startswith("/dev/") else src
    desc = f"{fstype} on {src}"
    base = dev.rstrip("0123456789")
    if base.endswith("p") and base[:-1].startswith("nvme"):
        base = base[:-1]
    for attr, fmt in (("device/model", "model {}"), ("queue/rotational", "rotational={}")):
        try:
            with open(f"/sys/block/{base}/{attr}") as f:
                desc += ", " + fmt.format(f.read().strip())
        except OSError:
            pass
    return desc


def machine(path: str = ".") -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {platform.machine()}, kernel {platform.release()}, "
            f"Python {platform.python_version()}, data on {_disk_of(os.path.abspath(path))}")
