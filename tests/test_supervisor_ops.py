"""An operator's day under real supervisord: stop, start, restart every node while clients write."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from daemon.client.blocking import Client, ZwalError
from daemon.wire.client import Err
from daemon.wal import CLEAN, iter_frames, scan_path
from harness import free_base_port, sha256, wait_until

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)


def ctl(conf: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", conf, *args], capture_output=True, text=True,
                          timeout=60)


def test_stop_start_restart_each_node_under_load_loses_nothing(tmp_path):
    d = str(tmp_path / "c")
    zwal = [sys.executable, "-m", "daemon.cli"]
    r = subprocess.run([*zwal, "cluster", "init", d, "--nodes", "3", "--base-port", str(free_base_port(12))],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    conf = os.path.join(d, "supervisord.conf")
    cfg = os.path.join(d, "cluster.toml")
    subprocess.run([os.path.join(BIN, "supervisord"), "-c", conf], check=True, timeout=30)
    acked: list[tuple[bytes, bytes, int]] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer(i: int) -> None:
        c = Client(config=cfg, timeout=1.0, deadline=30.0)
        n = 0
        while not stop.is_set():
            key, value = f"w{i}-{n}".encode(), os.urandom(6).hex().encode()
            n += 1
            try:
                res = c.set(key, value)
                acked.append((key, value, res.offset))
            except ZwalError as e:
                errors.append(e.code)
        c.close()

    try:
        st = subprocess.run([*zwal, "status", "--config", cfg, "--wait", "30"], capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stdout + st.stderr
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for node in ("node2", "node3", "node1"):
            time.sleep(0.7)
            assert "stopped" in ctl(conf, "stop", f"zwal:{node}").stdout
            time.sleep(0.7)
            assert "started" in ctl(conf, "start", f"zwal:{node}").stdout
            time.sleep(0.7)
            out = ctl(conf, "restart", f"zwal:{node}").stdout
            assert "stopped" in out and "started" in out
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert len(acked) > 100, f"only {len(acked)} writes acknowledged"
        # Only retryable errors, and none that surfaced past the client's retries.
        assert set(errors) <= Err.RETRYABLE | {"unavailable"}, errors
        # Clean stops: every node logged a clean exit for each stop/restart.
        for node in ("node1", "node2", "node3"):
            log = open(os.path.join(d, "log", f"{node}.log")).read()
            assert log.count("event=stopped code=0") >= 2, f"{node} did not stop cleanly twice"

        def converged() -> bool:
            ends = {n: Client([e], config=cfg, timeout=1, deadline=1).status(endpoint=e, deadline=1)["end"]
                    for n, e in (("node1", _ep(cfg, "node1")), ("node2", _ep(cfg, "node2")), ("node3", _ep(cfg, "node3")))}
            return len(set(ends.values())) == 1

        wait_until(converged, 30, "the three nodes to converge")
        logs = [os.path.join(d, n, "log", "00000000000000000000.seg") for n in ("node1", "node2", "node3")]
        assert len({sha256(p) for p in logs}) == 1
        assert all(scan_path(p).status == CLEAN for p in logs)
        on_disk = {f.offset: (rec.key, rec.value) for f in iter_frames(logs[0]) for rec in [f.record()]}
        missing = [(k, o) for k, v, o in acked if on_disk.get(o) != (k, v)]
        assert missing == [], f"{len(missing)} acknowledged writes missing, e.g. {missing[:3]}"
    finally:
        stop.set()
        ctl(conf, "shutdown")


def _ep(cfg: str, name: str) -> str:
    from daemon import config

    return config.load(cfg).node(name).client_endpoint
