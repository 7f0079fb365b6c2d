"""A quick look: one cluster, a few client counts, beside the fsync floor."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from common import fsync_floor, machine  # noqa: E402
from load import run_load  # noqa: E402

from daemon.client import Client  # noqa: E402
from daemon.cmd_cluster import render  # noqa: E402


def start_cluster(root: str, nodes: int, k: int, mode: str, base: int) -> list[subprocess.Popen]:
    cluster, _ = render(root, nodes, base, k, "bench")
    cluster = cluster.replace('fsync_mode = "group"', f'fsync_mode = "{mode}"')
    os.makedirs(root, exist_ok=True)
    cfg = os.path.join(root, "cluster.toml")
    with open(cfg, "w") as f:
        f.write(cluster)
    procs = []
    for i in range(1, nodes + 1):
        log = open(os.path.join(root, f"node{i}.log"), "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "daemon.cli", "node", "--config", cfg, "--name", f"node{i}"],
                                      stdout=log, stderr=subprocess.STDOUT))
    eps = [f"tcp://127.0.0.1:{base + 3 * i + 1}" for i in range(nodes)]
    c = Client(eps, timeout=0.5, deadline=20)
    end = time.monotonic() + 20
    while True:
        try:
            c.set(b"warmup", b"x")
            break
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
    c.close()
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--mode", default="group")
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    work = tempfile.mkdtemp(dir=os.path.join(os.path.dirname(HERE), "var") if os.path.isdir(os.path.join(os.path.dirname(HERE), "var")) else None)
    print(machine())
    fl = fsync_floor(work)
    print(f"floor: {fl['ops']:.0f} fsync/s, p50 {fl['p50']*1e6:.0f} us")
    procs = start_cluster(os.path.join(work, "c"), args.nodes, args.k, args.mode, 23000)
    try:
        for n in map(int, args.clients.split(",")):
            r = run_load([f"tcp://127.0.0.1:{23000 + 3 * i + 1}" for i in range(args.nodes)], n, args.seconds)
            print(f"nodes={args.nodes} K={args.k} mode={args.mode} clients={n}: {r.ops:.0f} ops/s "
                  f"({r.ops / fl['ops']:.1f}x floor) p50 {r.p50*1e6:.0f} us p99 {r.p99*1e6:.0f} us "
                  f"errors={r.errors} failed={r.failed} gen_cpu={r.gen_cpu:.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
