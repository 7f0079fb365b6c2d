"""Bulk writes (issue 22, the `batch` op): zwal's Client.set_many beside `redis-benchmark -P 16`, same run.

zwal: real `zwal node` processes with CurveZMQ (bench/scenarios.py), 1 node and 3 nodes with K = 1; P load
processes, each writing batches of B records of 100-byte values with unique keys for S seconds. Reported:
writes/s, the leader's CPU per write (from /proc), and the ratio to Redis (appendonly yes, appendfsync always,
pipelined 16 deep by redis-benchmark) when redis-server and redis-benchmark are installed (bench/setup_peers.sh).

    make bench-bulk [BULK_ARGS='--seconds 5 --procs 4 --batch 1024']
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness_ports import free_base_port  # noqa: E402
from scenarios import start_zwal, stop_zwal  # noqa: E402

from daemon.client.blocking import Client  # noqa: E402


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _writer(eps: list[str], creds, seconds: float, batch: int, wid: int, barrier, q) -> None:
    value = b"v" * 100
    n = 0
    with Client(eps, timeout=5.0, deadline=30.0, creds=creds) as c:
        barrier.wait()
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            items = [(b"bulk-%d-%d" % (wid, i + j), value) for j in range(batch)]
            i += batch
            n += len(c.set_many(items))
    q.put(n)


def zwal_bulk(root: str, nodes: int, k: int, procs: int, batch: int, seconds: float) -> dict[str, float]:
    ps, eps, creds = start_zwal(root, nodes, k, "group")
    try:
        barrier, q = mp.Barrier(procs + 1), mp.Queue()
        ws = [mp.Process(target=_writer, args=(eps, creds, seconds, batch, i, barrier, q)) for i in range(procs)]
        for w in ws:
            w.start()
        barrier.wait()
        cpu0, t0 = _cpu_s(ps[0].pid), time.monotonic()
        total = sum(q.get(timeout=seconds + 120) for _ in ws)
        wall, cpu = time.monotonic() - t0, _cpu_s(ps[0].pid) - cpu0
        for w in ws:
            w.join(30)
        return {"writes_per_s": total / wall, "leader_cpu_us_per_write": cpu / max(total, 1) * 1e6, "writes": total}
    finally:
        stop_zwal(ps)


def redis_bulk(root: str, seconds: float, clients: int = 16, pipeline: int = 16) -> dict[str, float] | str:
    if not shutil.which("redis-server") or not shutil.which("redis-benchmark"):
        return "redis-server or redis-benchmark is not installed (bench/setup_peers.sh, as root)"
    port = free_base_port(2) + 1
    d = os.path.join(root, "redis")
    os.makedirs(d, exist_ok=True)
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--appendonly",
                            "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() \
                    == "PONG":
                break
            time.sleep(0.05)

        def run(n: int) -> tuple[float, float, float]:
            cpu0, t0 = _cpu_s(srv.pid), time.monotonic()
            out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-c", str(clients), "-P",
                                  str(pipeline), "-n", str(n), "-d", "100", "-r", "1000000", "-q"],
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"redis-benchmark exited with {out.returncode}: {out.stderr.strip()[-300:]}")
            wall = time.monotonic() - t0
            return n / wall, (_cpu_s(srv.pid) - cpu0) / n * 1e6, wall

        rate, _, _ = run(50_000)
        rate, cpu, wall = run(max(50_000, int(rate * seconds)))
        return {"writes_per_s": rate, "server_cpu_us_per_write": cpu, "seconds": wall}
    finally:
        srv.terminate()
        srv.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=4, help="load processes (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=1024, help="writes per batch (default: %(default)s)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="zwal-bulk-")
    rows = []
    for nodes, k in ((1, 0), (3, 1)):
        r = zwal_bulk(os.path.join(work, f"z{nodes}"), nodes, k, args.procs, args.batch, args.seconds)
        rows.append((f"zwal {nodes} node(s), K={k}, set_many x{args.batch}, {args.procs} procs", r))
        print(f"{rows[-1][0]}: {r['writes_per_s']:,.0f} writes/s, leader CPU {r['leader_cpu_us_per_write']:.1f} us/write",
              flush=True)
    red = redis_bulk(work, args.seconds)
    if isinstance(red, str):
        print(f"Redis: not run: {red}")
    else:
        print(f"Redis appendfsync always, redis-benchmark -P 16 -c 16: {red['writes_per_s']:,.0f} writes/s, "
              f"server CPU {red['server_cpu_us_per_write']:.1f} us/write")
        for name, r in rows:
            print(f"  {name}: {r['writes_per_s'] / red['writes_per_s']:.2f}x Redis")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
