"""The client commands as a user runs them, against a cluster started by `zwal cluster init` + supervisord."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from daemon.wal import CLEAN, scan_path
from harness import free_base_port

BIN = os.path.dirname(sys.executable)
ZWAL = [sys.executable, "-m", "daemon.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ZWAL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_single_node_cluster_under_supervisord(tmp_path):
    d = str(tmp_path / "c")
    r = run("cluster", "init", d, "--nodes", "1", "--base-port", str(free_base_port(6)))
    assert r.returncode == 0, r.stderr
    again = run("cluster", "init", d, "--nodes", "1")
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    conf, cfg = os.path.join(d, "supervisord.conf"), os.path.join(d, "cluster.toml")
    sup = open(conf).read()
    for key in ("stopsignal=TERM", "stopwaitsecs=15", "autorestart=unexpected", "exitcodes=0,2", "startsecs=1", "[group:zwal]",
                "stdout_logfile_maxbytes"):
        assert key in sup
    subprocess.run([os.path.join(BIN, "supervisord"), "-c", conf], check=True, timeout=30)
    try:
        assert run("status", "--config", cfg, "--wait", "20").returncode == 0
        s = run("set", "color", "blue", "--config", cfg)
        assert s.returncode == 0 and s.stdout.startswith("ok offset=0 ")
        g = run("get", "color", "--config", cfg)
        assert g.returncode == 0 and g.stdout == "blue\n"
        assert run("del", "color", "--config", cfg).returncode == 0
        missing = run("get", "color", "--config", cfg)
        assert missing.returncode == 1 and "not found" in missing.stderr
        st = run("status", "--config", cfg)
        assert st.returncode == 0 and "node1  leader" in st.stdout
        stop = subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", conf, "stop", "zwal:node1"],
                              capture_output=True, text=True, timeout=30)
        assert "stopped" in stop.stdout
        log = open(os.path.join(d, "log", "node1.log")).read()
        assert "event=stopped code=0" in log
        assert scan_path(os.path.join(d, "node1", "log", "00000000000000000000.seg")).status == CLEAN
        down = run("status", "--config", cfg, "--timeout", "1")
        assert down.returncode == 1 and "unreachable" in down.stdout and "no node answered" in down.stderr
    finally:
        subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", conf, "shutdown"], capture_output=True, timeout=30)


def test_unreachable_endpoint_is_a_one_line_error_within_the_timeout():
    port = free_base_port(3) + 1
    for args in (("set", "k", "v"), ("get", "k"), ("del", "k"), ("status",)):
        t0 = time.monotonic()
        r = run(*args, "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "1")
        assert time.monotonic() - t0 < 8
        assert r.returncode == 1, args
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_cluster_file_is_explained(tmp_path):
    r = run("status", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "zwal cluster init" in r.stderr and "Traceback" not in r.stderr
    r = run("set", "k", "v")
    assert r.returncode == 2 and "--config" in r.stderr


def test_status_warns_about_a_node_that_cut_its_log_until_it_caught_up():
    from daemon.cli.cmd_client import render_status

    st = {"name": "node2", "role": "follower", "epoch": 3, "end": 366, "records": 6, "leader": "node1",
          "damaged_end": 427}
    out = render_status([("node2", "tcp://x")], {"node2": st})
    assert "WARNING: node2 cut bytes from its log at recovery (its end was 427, now 366)" in out
    assert "WARNING" not in render_status([("node2", "tcp://x")], {"node2": {**st, "end": 427}})
