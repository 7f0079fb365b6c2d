"""pysyncobj: 3 Raft nodes on loopback, a replicated dict, its file journal."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from common import Sample, sample_from
from harness_ports import free_base_port

from . import Missing

NOTE = ("NOT durable: pysyncobj's file journal is an mmap with no checksums and no fsync per entry (it is "
        "msync'ed only when the node shuts down), so an "
        "acknowledged write is in the memory of 2 of 3 processes, on no disk; clients are threads inside "
        "node 1 (pysyncobj has no client protocol), so its load and server share one process; "
        "appendEntriesUseBatch=False, as a user who wants latency would set it (the default sends entries "
        "every 0.1 s: about 100 ms per write, 10 writes/s for one client, measured here)")


@contextmanager
def running(work: str) -> Iterator:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        raise Missing("pysyncobj is not installed: pip install -e '.[bench]'") from None
    base = free_base_port(4)
    addrs = [f"127.0.0.1:{base + i + 1}" for i in range(3)]
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "syncobj_node.py")
    procs: list[subprocess.Popen] = []
    try:
        for i, a in enumerate(addrs):
            others = ",".join(x for x in addrs if x != a)
            argv = [sys.executable, script, a, others, os.path.join(work, f"syncobj-{i}.journal")]
            if i == 0:
                procs.append(subprocess.Popen(argv + ["driver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True))
            else:
                procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        driver = procs[0]
        assert driver.stdin and driver.stdout

        def answer(timeout: float) -> dict:
            """Node 1's next JSON line; a wedged or dead node is an error, not a hang."""
            ready, _, _ = select.select([driver.stdout], [], [], timeout)
            line = driver.stdout.readline() if ready else ""
            if not line:
                return {"error": f"node 1 gave no answer within {timeout:.0f} s (exit code {driver.poll()})"}
            return json.loads(line)

        first = answer(60)
        if "error" in first:
            raise Missing(f"pysyncobj: {first['error']}")

        def measure(clients: int, seconds: float) -> Sample:
            driver.stdin.write(f"RUN {clients} {seconds}\n")
            driver.stdin.flush()
            r = answer(seconds + 60)
            if "error" in r:
                raise RuntimeError(f"pysyncobj: {r['error']}")
            s = sample_from(r["lat"], r["elapsed"], errors=r["errors"])
            s.notes.append(f"{clients} clients: node 1 (server and clients together) used {r['cpu']:.2f} cores")
            return s

        yield measure
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
