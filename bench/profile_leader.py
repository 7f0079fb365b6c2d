"""Where a zwal leader's time goes: py-spy samples a 1-node leader (group commit)
while 64 clients write, and this prints the functions that hold its threads.

Wall-clock sampling (idle frames included): a thread blocked in fdatasync
or in zmq's poll shows up as such, which is the point; the leader's main
thread and its syncer thread are reported apart.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from load import run_load  # noqa: E402
from scenarios import start_zwal, stop_zwal  # noqa: E402


def summarise(raw: str, top: int) -> str:
    """Self time per function, per thread, from py-spy's collapsed stacks ("frames count" lines)."""
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        leaf = frames[-1]
        per_thread[thread][leaf] += int(n)
        totals[thread] += int(n)
    out = []
    for thread, c in sorted(per_thread.items(), key=lambda kv: -totals[kv[0]]):
        out.append(f"{thread}: {totals[thread]} samples")
        for fn, n in c.most_common(top):
            out.append(f"  {100 * n / totals[thread]:5.1f}%  {fn}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--nodes", type=int, default=1, help="3 to profile a leader with two followers (K=1)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        sys.exit("py-spy is not installed: pip install -e '.[bench]'")
    os.makedirs(os.path.join(ROOT, "var"), exist_ok=True)
    if args.seconds < 4:
        sys.exit("--seconds must be at least 4 (the load starts after a second, sampling stops before it ends)")
    work = tempfile.mkdtemp(prefix="profile-", dir=os.path.join(ROOT, "var"))
    procs: list[subprocess.Popen] = []
    raw = os.path.join(work, "leader.txt")
    try:
        procs, eps, creds = start_zwal(os.path.join(work, "c"), args.nodes, 1 if args.nodes > 1 else 0, "group")
        import psutil

        result = {}
        t = threading.Thread(target=lambda: result.update(r=run_load(eps, args.clients, args.seconds, creds=creds)))
        t.start()
        time.sleep(1.5)  # the load processes spawn and line up first
        leader = psutil.Process(procs[0].pid)
        c0, m0 = leader.cpu_times(), psutil.cpu_times()
        rec = subprocess.run([spy, "record", "--pid", str(procs[0].pid), "--duration", str(int(args.seconds) - 3),
                              "--rate", "250", "--idle", "--threads", "--nonblocking", "--format", "raw",
                              "--output", raw], capture_output=True, text=True)
        c1, m1 = leader.cpu_times(), psutil.cpu_times()
        t.join()
        if rec.returncode != 0:
            sys.exit(f"py-spy failed (it needs ptrace: run as root or set kernel.yama.ptrace_scope=0):\n{rec.stderr}")
        r = result["r"]
        print(f"load: {args.clients} clients, {r.ops:,.0f} writes/s, p50 {r.q(0.5) * 1e6:,.0f} us, "
              f"load generator {r.gen_cpu:.2f} cores")
        busy = sum(m1) - sum(m0)
        print(f"while sampled: leader process {(c1.user + c1.system - c0.user - c0.system) / (busy or 1):.0%} of "
              f"the CPU time that passed, machine idle {(m1.idle - m0.idle) / (busy or 1):.0%} "
              f"({psutil.cpu_count()} cores; py-spy itself takes some)")
        with open(raw) as f:
            print(summarise(f.read(), args.top))
    finally:
        stop_zwal(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
