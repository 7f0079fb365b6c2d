"""`make bench-engine`: the log engine against the disk's fsync floor, in one run.

Floor: raw os.write + os.fdatasync of one ~100-byte record on an O_APPEND
file. Then WalWriter.append per record and append_batch at batch sizes 1,
8, 64, 512, on the same filesystem, as records/s and as a ratio to the floor.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import fsync_floor, machine, percentile  # noqa: E402

from daemon.wal import Record, open_log  # noqa: E402

SECONDS = 2.0


def measure(work: str, name: str, batch: int | None) -> dict[str, float]:
    path = os.path.join(work, f"{name}.wal")
    w, _ = open_log(path)
    recs = [Record("set", f"key-{i:06d}".encode(), os.urandom(40).hex().encode()[:70]) for i in range(max(batch or 1, 1))]
    lat = []
    n = 0
    t0 = time.perf_counter()
    end = t0 + SECONDS
    while time.perf_counter() < end:
        s = time.perf_counter()
        if batch is None:
            w.append(recs[0], 1)
            n += 1
        else:
            w.append_batch(recs, 1)
            n += batch
        lat.append(time.perf_counter() - s)
    elapsed = time.perf_counter() - t0
    w.close()
    os.unlink(path)
    return {"rps": n / elapsed, "p50": percentile(lat, 0.5)}


def main() -> None:
    os.makedirs(os.path.join(ROOT, "var"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-engine-", dir=os.path.join(ROOT, "var"))
    rounds = 3
    try:
        print(f"machine: {machine()}; {rounds} interleaved rounds of {SECONDS:.0f} s each, medians shown")
        samples: dict[str, list[tuple[float, float]]] = {}
        for _ in range(rounds):
            fl = fsync_floor(work, SECONDS, size=100)
            samples.setdefault("floor: write+fdatasync", []).append((fl["ops"], fl["p50"]))
            m = measure(work, "per-record", None)
            samples.setdefault("append (per record)", []).append((m["rps"], m["p50"]))
            for b in (1, 8, 64, 512):
                m = measure(work, f"batch{b}", b)
                samples.setdefault(f"append_batch({b})", []).append((m["rps"], m["p50"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v), min(r for r, _ in v),
               max(r for r, _ in v)) for k, v in samples.items()}
    floor_rps = med["floor: write+fdatasync"][0]
    print(f"{'':28s} {'records/s':>12s} {'(min-max)':>19s} {'p50/call':>10s} {'x floor':>8s}")
    for name, (rps, p50, lo, hi) in med.items():
        print(f"{name:28s} {rps:12.0f} {f'({lo:.0f}-{hi:.0f})':>19s} {p50 * 1e6:8.0f}us {rps / floor_rps:8.2f}")
    per = {"rps": med["append (per record)"][0]}
    batches = {64: {"rps": med["append_batch(64)"][0]}}
    floor = {"ops": floor_rps}
    print()
    r1 = per["rps"] / floor["ops"]
    r64 = batches[64]["rps"] / per["rps"]
    print()
    print(f"target: per-record append >= 0.8x floor: {r1:.2f}x -> {'met' if r1 >= 0.8 else 'MISSED'}")
    print(f"target: batch 64 >= 20x per-record:       {r64:.1f}x -> {'met' if r64 >= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
