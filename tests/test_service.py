"""Behaving like a service: systemd's notify protocol, the unit file, metrics."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import ROOT
from daemon.client.blocking import InvalidRecord
from daemon.wal import Record, open_log
from harness import wait_until


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = open(os.path.join(ROOT, "deploy", "systemd", "zwal@.service")).read()
    # Point ExecStart at this checkout's zwal so verify can check the command exists.
    zwal = shutil.which("zwal") or os.path.join(os.path.dirname(os.sys.executable), "zwal")
    unit = unit.replace("/opt/zwal/.venv/bin/zwal", zwal)
    path = tmp_path / "zwal@node1.service"
    path.write_text(unit)
    r = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unknown" not in r.stderr and "Invalid" not in r.stderr, r.stderr
    for key in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "TimeoutStopSec=", "User=zwal",
                "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=", "PrivateTmp=yes"):
        assert key in unit


class FakeSystemd:
    """Plays systemd's side of sd_notify: a datagram socket that records messages."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def first(self, key: str) -> tuple[float, dict[str, str]] | None:
        return next(((t, m) for t, m in self.messages if key in m), None)


def test_notify_ready_after_recovery_watchdog_and_stopping(make_cluster, tmp_path):
    c = make_cluster(1, ack_replicas=0)
    # Give recovery real work: a log with records and a torn tail. The node
    # runs once first so its node-state.json exists (a log without one is
    # refused: its votes would be unknown).
    c.start("node1")
    c.stop("node1")
    w, _ = open_log(c.log_path("node1"))
    for i in range(2000):
        w.append(Record("set", f"k{i}".encode(), b"v" * 50), 1)
    end = w.end
    w.close()
    with open(c.log_path("node1"), "ab") as f:
        f.write(b"\x01\x02\x03")  # torn tail: recovery must cut it before READY
    sd = FakeSystemd(str(tmp_path / "notify.sock"))
    p = c.start("node1", wait=False, env={"NOTIFY_SOCKET": sd.path, "WATCHDOG_USEC": "400000"})
    sd.pump(3.0)
    ready = sd.first("READY")
    assert ready is not None, sd.messages
    assert f"end={end}" in ready[1]["STATUS"] and "leader" in ready[1]["STATUS"], ready
    assert os.path.getsize(c.log_path("node1")) == end  # the torn tail was cut before READY
    node_log = open(c.node_log("node1")).read()
    assert node_log.index("event=recovered") < node_log.index("event=ready")
    pings = [t for t, m in sd.messages if m.get("WATCHDOG") == "1" and t >= ready[0]]
    assert len(pings) >= 5, f"only {len(pings)} watchdog pings in ~3 s with a 0.4 s watchdog"
    assert max(b - a for a, b in zip(pings, pings[1:])) < 0.4
    assert sd.first("STOPPING") is None
    p.send_signal(signal.SIGTERM)
    sd.pump(1.5)
    assert sd.first("STOPPING") is not None
    assert p.wait(5) == 0


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_move_with_writes(make_cluster):
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client()
    cl.set("warm", "up")
    url = c.metrics_url("node1")
    before = wait_until(lambda: scrape(url), 10, "metrics to be served")
    for i in range(50):
        cl.set(f"k{i}", "v")
    time.sleep(1.2)  # the snapshot is republished once a second
    after = scrape(url)
    lbl = '{node="node1"}'
    assert after[f"zwal_records_appended_total{lbl}"] - before.get(f"zwal_records_appended_total{lbl}", 0) >= 50
    assert after[f"zwal_writes_acknowledged_total{lbl}"] >= 50
    assert after[f"zwal_fsync_seconds_count{lbl}"] > before.get(f"zwal_fsync_seconds_count{lbl}", 0)
    assert after[f"zwal_end_offset_bytes{lbl}"] > before.get(f"zwal_end_offset_bytes{lbl}", 0)
    assert after['zwal_role{node="node1",role="leader"}'] == 1.0
    assert after[f"zwal_epoch{lbl}"] == 1.0
    assert 'zwal_follower_lag_bytes{follower="node2",node="node1"}' in after
    f = scrape(c.metrics_url("node2"))
    assert f['zwal_role{node="node2",role="follower"}'] == 1.0
    assert f['zwal_records_appended_total{node="node2"}'] >= 50
    # An invalid write is counted by its code.
    with pytest.raises(InvalidRecord):
        cl.set("", "empty key")
    time.sleep(1.2)
    assert scrape(url).get('zwal_client_errors_total{code="invalid_record",node="node1"}', 0) >= 1
