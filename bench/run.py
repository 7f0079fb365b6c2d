"""`make bench`: zwal beside the disk's fsync floor and the systems a user would pick instead.

Everything is measured in one run on this machine, so every ratio compares
figures taken minutes apart on the same disk: the floor (write+fdatasync on
an O_APPEND file in the same directory as the data), zwal on 1 node (group
commit, per-record fsync) and on 3 nodes (ack_replicas K = 0, 1, 2), then
Redis (appendfsync always, with a replica), SQLite (WAL, synchronous=FULL),
a 3-member etcd cluster and pysyncobj (3 nodes), each at 1, 16 and 64
concurrent clients writing ~100-byte values. Each figure is the median of
--runs runs, with the spread. A peer that is not installed is reported as
missing (bench/setup_peers.sh installs them; it needs root for apt).

Output: a table on stdout, and bench/results/<date>/report.md with
throughput.png, latency.png and results.json beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from common import Sample, machine  # noqa: E402
from peers import Missing  # noqa: E402
from report import Row, markdown, summarise  # noqa: E402
from reads import markdown as reads_markdown, measure_reads  # noqa: E402
from scenarios import all_scenarios  # noqa: E402


def _finite(x: object) -> object:
    """NaN (not measured) becomes null: JSON has no NaN."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="one run of 1.5 s per figure, fewer zwal scenarios (under 2 minutes)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    ap.add_argument("--seconds", type=float, help="load per run (default 3, quick 1.5)")
    ap.add_argument("--clients", default="1,16,64", help="client counts (default: %(default)s)")
    ap.add_argument("--only", help="only scenarios whose name contains one of these comma-separated texts "
                    "(case-insensitive), e.g. --only 'floor,redis'")
    ap.add_argument("--out", help="output directory (default: bench/results/<date>[-quick])")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    seconds = args.seconds or (1.5 if args.quick else 3.0)
    clients = [int(c) for c in args.clients.split(",")]
    os.makedirs(os.path.join(ROOT, "var"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-", dir=os.path.join(ROOT, "var"))
    mach = machine(work)
    print(f"machine: {mach}")
    print(f"{runs} run(s) of {seconds:g} s per figure at {clients} clients; data in {os.path.relpath(work, ROOT)}",
          flush=True)
    scenarios = all_scenarios(args.quick)
    wanted: list[str] = []
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
        scenarios = [s for s in scenarios if any(w in s.name.lower() for w in wanted)]
    samples: dict[tuple[str, int], list[Sample]] = {}
    missing: dict[str, str] = {}
    t_start = time.monotonic()
    try:
        for sc in scenarios:
            d = os.path.join(work, sc.name.split(",")[0].replace(" ", "-"))
            os.makedirs(d, exist_ok=True)
            try:
                with sc.start(d) as measure:
                    for run in range(runs):
                        for n in clients:
                            s = measure(n, seconds)
                            samples.setdefault((sc.name, n), []).append(s)
                            cpu = "" if s.gen_cpu != s.gen_cpu else f", load CPU {s.gen_cpu:.2f}"
                            if s.server_cpu == s.server_cpu:
                                cpu += f", server CPU {s.server_cpu * 1e6:.1f} us/write"
                            print(f"  [{run + 1}/{runs}] {sc.name:38s} {n:3d} clients: {s.ops:9,.0f} writes/s  "
                                  f"p50 {s.q(0.5) * 1e6:7,.0f} us  p99 {s.q(0.99) * 1e6:7,.0f} us{cpu}"
                                  f"{'  errors ' + str(s.errors) if s.errors else ''}", flush=True)
            except Missing as e:
                missing[sc.name] = str(e)
                print(f"  MISSING {sc.name}: {e}", flush=True)
            except Exception as e:  # one broken scenario must not lose the others' figures
                missing[sc.name] = f"failed while measuring ({type(e).__name__}: {e}); figures taken before are kept"
                print(f"  FAILED {sc.name}: {type(e).__name__}: {e}", flush=True)
        reads: dict = {}
        if not args.only or any(w in "reads get" for w in wanted):
            try:
                reads = measure_reads(work, seconds)
            except Exception as e:
                missing["zwal reads"] = f"failed while measuring ({type(e).__name__}: {e})"
                print(f"  FAILED zwal reads: {type(e).__name__}: {e}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows: list[Row] = [summarise(sc.name, n, samples[(sc.name, n)]) for sc in scenarios for n in clients
                       if (sc.name, n) in samples]
    stamp = datetime.date.today().isoformat() + ("-quick" if args.quick else "")
    out_dir = args.out or os.path.join(HERE, "results", stamp)
    os.makedirs(out_dir, exist_ok=True)
    plots: list[str] = []
    try:
        from plots import draw

        if rows:  # (--only reads measures no writes)
            plots = draw(rows, {sc.name: sc.group for sc in scenarios}, mach, out_dir)
    except ImportError as e:
        print(f"no plots: {e} (pip install -e '.[bench]')")
    settings = (f"{runs} run(s) of {seconds:g} s per figure, ~100-byte values, clients {clients}, "
                f"taken {datetime.datetime.now().isoformat(timespec='seconds')} in {time.monotonic() - t_start:.0f} s.")
    report = markdown("zwal benchmark" + (" (quick)" if args.quick else ""), mach, settings, rows, samples, missing,
                      {sc.name: sc.note for sc in scenarios}, plots)
    if reads:
        report += "\n" + reads_markdown(reads)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(_finite({"machine": mach, "settings": settings, "missing": missing, "reads": reads,
                           "rows": [dataclasses.asdict(r) | {"curve": {str(k): v for k, v in r.curve.items()}}
                                    for r in rows]}), f, indent=1)
    print()
    print(report)
    print(f"written to {os.path.relpath(out_dir, ROOT)}/ (report.md, {', '.join(plots + ['results.json'])})")


if __name__ == "__main__":
    main()
