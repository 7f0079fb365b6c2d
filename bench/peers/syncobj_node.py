"""One pysyncobj node, run as a process. Node 1 also runs the clients.

pysyncobj has no client protocol: a user calls the replicated object from
inside a node process. So node 1 reads "RUN <clients> <seconds>" lines on
stdin, runs that many threads of `set(..., sync=True)` (each returns once
the Raft majority has committed the write) and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplDict


def run(d: ReplDict, clients: int, seconds: float) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    value = os.urandom(50).hex()

    def client(t: int) -> None:
        mine: list[float] = []
        failed = 0
        i = 0
        while time.monotonic() < stop_at:
            s = time.perf_counter()
            try:
                d.set(f"c{t}-{i % 1000}", value, sync=True, timeout=10)
            except Exception:
                failed += 1
                continue
            mine.append(time.perf_counter() - s)
            i += 1
        with lock:
            lat.extend(mine)
            errors[0] += failed

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(t,)) for t in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"lat": lat, "elapsed": elapsed, "errors": errors[0],
            "cpu": (ru.ru_utime - ru0.ru_utime + ru.ru_stime - ru0.ru_stime) / elapsed}


def main() -> None:
    me, partners, journal = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    d = ReplDict()
    conf = SyncObjConf(journalFile=journal, fullDumpFile=journal + ".dump", dynamicMembershipChange=False,
                       appendEntriesUseBatch=False)
    o = SyncObj(me, partners, conf=conf, consumers=[d])
    if len(sys.argv) < 5:
        while True:
            time.sleep(1)
    end = time.monotonic() + 30
    while not (o.isReady() and o._getLeader() is not None):
        if time.monotonic() > end:
            print(json.dumps({"error": "no Raft leader elected within 30 s"}), flush=True)
            os._exit(1)
        time.sleep(0.05)
    d.set("warmup", "x", sync=True, timeout=10)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "RUN":
            print(json.dumps(run(d, int(cmd[1]), float(cmd[2]))), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
