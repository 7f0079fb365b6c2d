"""Shared by the benchmarks: the disk's fsync floor, percentiles, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def fsync_floor(directory: str, seconds: float = 2.0, size: int = 120, batch: int = 1) -> dict[str, float]:
    """write+fdatasync of `batch` ~size-byte records per call on an O_APPEND file."""
    path = os.path.join(directory, f"floor-{os.getpid()}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    buf = os.urandom(size) * batch
    lat: list[float] = []
    try:
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            s = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - s)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return {"ops": len(lat) * batch / elapsed, "calls": len(lat) / elapsed,
            "p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99), "mean": statistics.fmean(lat)}


def machine() -> str:
    disk = "?"
    try:
        st = os.statvfs(".")
        disk = f"{st.f_blocks * st.f_frsize / 2**30:.0f} GiB fs"
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {platform.machine()}, kernel {platform.release()}, Python {platform.python_version()}, {disk}"
