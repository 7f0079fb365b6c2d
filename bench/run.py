"""`make bench`: acknowledged writes/s and latency beside the disk's fsync floor.

Everything is measured in one run on this machine: the floor (write +
fdatasync per record on an O_APPEND file in the same directory as the
nodes' data), then zwal single-node (group commit and per-record fsync) at
1, 16 and 64 concurrent clients, then 3 nodes with ack_replicas K = 0, 1, 2
at 1 and 64 clients. Ratios are against the floor measured in this run.
Results go to stdout and to bench/results/<date>/report.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import fsync_floor, machine  # noqa: E402
from load import run_load  # noqa: E402
from quick import start_cluster  # noqa: E402

from harness_ports import free_base_port  # noqa: E402


def scenario(work: str, name: str, nodes: int, k: int, mode: str, clients: list[int], seconds: float) -> list[dict]:
    base = free_base_port(3 * nodes + 3)
    procs = start_cluster(os.path.join(work, name), nodes, k, mode, base)
    rows = []
    try:
        eps = [f"tcp://127.0.0.1:{base + 3 * i + 1}" for i in range(nodes)]
        for n in clients:
            r = run_load(eps, n, seconds)
            rows.append({"scenario": name, "clients": n, "ops": r.ops, "p50": r.p50, "p99": r.p99,
                         "p999": r.p999, "errors": r.errors, "failed": r.failed, "gen_cpu": r.gen_cpu})
            print(f"  {name:28s} {n:3d} clients: {r.ops:8.0f} writes/s  p50 {r.p50 * 1e6:7.0f} us  "
                  f"p99 {r.p99 * 1e6:7.0f} us  (load generator {r.gen_cpu:.2f} cores)", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="load per measurement (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="fewer scenarios, shorter runs")
    args = ap.parse_args()
    os.makedirs(os.path.join(ROOT, "var"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-", dir=os.path.join(ROOT, "var"))
    print(f"machine: {machine()}")
    fl = fsync_floor(work, 3.0)
    flb = fsync_floor(work, 2.0, batch=64)
    print(f"disk floor: {fl['ops']:.0f} write+fdatasync/s per record, p50 {fl['p50'] * 1e6:.0f} us; "
          f"batched x64: {flb['ops']:.0f} records/s", flush=True)
    rows: list[dict] = []
    secs = 2.0 if args.quick else args.seconds
    try:
        rows += scenario(work, "1 node, group commit", 1, 0, "group", [1, 16, 64], secs)
        if not args.quick:
            rows += scenario(work, "1 node, per-record fsync", 1, 0, "per-record", [1, 16, 64], secs)
        for k in ([1] if args.quick else [0, 1, 2]):
            rows += scenario(work, f"3 nodes, K={k}", 3, k, "group", [1, 64], secs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# zwal benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"Machine: {machine()}", "",
             f"Disk floor (write+fdatasync per ~120-byte record, same filesystem): {fl['ops']:.0f}/s, "
             f"p50 {fl['p50'] * 1e6:.0f} us, p99 {fl['p99'] * 1e6:.0f} us. Batched x64: {flb['ops']:.0f} records/s.", "",
             "| scenario | clients | writes/s | x floor | p50 (us) | p99 (us) | p999 (us) | p50 - floor p50 (us) | load gen CPU | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['clients']} | {r['ops']:.0f} | {r['ops'] / fl['ops']:.2f} | "
                     f"{r['p50'] * 1e6:.0f} | {r['p99'] * 1e6:.0f} | {r['p999'] * 1e6:.0f} | "
                     f"{(r['p50'] - fl['p50']) * 1e6:.0f} | {r['gen_cpu']:.2f} | {r['errors'] or '-'} |")
    leader_only = {r["clients"]: r for r in rows if r["scenario"] == "1 node, group commit"}
    k1 = {r["clients"]: r for r in rows if r["scenario"] == "3 nodes, K=1"}
    lines += ["", "Targets (issues 3 and 4):"]
    if 1 in leader_only:
        lines.append(f"- 1 client p50 <= floor p50 + 150 us: {leader_only[1]['p50'] * 1e6:.0f} vs "
                     f"{fl['p50'] * 1e6 + 150:.0f} us")
    if 64 in leader_only:
        lines.append(f"- 64 clients >= 8x floor: {leader_only[64]['ops'] / fl['ops']:.1f}x")
    if 64 in k1 and 64 in leader_only:
        lines.append(f"- K=1, 64 clients >= 0.5x leader-only: {k1[64]['ops'] / leader_only[64]['ops']:.2f}x; "
                     f">= 10x etcd (~2,400 puts/s here): {k1[64]['ops'] / 2400:.1f}x")
    if 1 in k1 and 1 in leader_only:
        lines.append(f"- K=1, 1 client p50 <= 2x leader-only p50: {k1[1]['p50'] / leader_only[1]['p50']:.2f}x")
    report = "\n".join(lines) + "\n"
    out_dir = os.path.join(HERE, "results", datetime.date.today().isoformat())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report)
    print()
    print(report)
    print(f"written to {os.path.relpath(os.path.join(out_dir, 'report.md'), ROOT)}")


if __name__ == "__main__":
    main()
