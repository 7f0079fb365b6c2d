"""The systemd unit's hardening: systemd-analyze rates its exposure under 2.0,
and a real cluster runs under the unit's socket-family and system-call limits
(fsync, the ZeroMQ sockets, the metrics port, sd_notify, a clean stop)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import ROOT
from harness import wait_until

UNIT = os.path.join(ROOT, "deploy", "systemd", "zwal@.service")
SECCOMP_EXEC = os.path.join(ROOT, "tests", "seccomp_exec.py")


def unit_text() -> str:
    return open(UNIT).read()


def test_unit_exposure_is_under_2():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    r = subprocess.run([tool, "security", "--offline=true", "--no-pager", UNIT], capture_output=True, text=True,
                       timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure < 2.0, r.stdout


def test_unit_keeps_what_the_node_needs():
    """Hardening must not take away what a node uses."""
    lines = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in unit_text().splitlines()
             if "=" in ln and not ln.startswith("#")}
    assert lines["Type"] == "notify" and lines["NotifyAccess"] == "main"  # READY/STATUS/WATCHDOG from the node
    assert int(lines["LimitNOFILE"]) >= 65536  # connections are file descriptors
    assert lines["StateDirectory"] == "zwal/%i" and lines["ReadWritePaths"] == "/var/lib/zwal/%i"
    families = lines["RestrictAddressFamilies"].split()
    # AF_NETLINK: libzmq lists the interfaces (getifaddrs) when it binds tcp://, and aborts if it cannot.
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= set(families)
    assert "PrivateNetwork" not in lines and "IPAddressDeny" not in lines  # peers may be on other hosts
    assert "MemoryDenyWriteExecute" not in lines or lines["MemoryDenyWriteExecute"] == "no"


def _libseccomp() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libseccomp.so.2")
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_a_cluster_runs_under_the_units_socket_and_syscall_limits(make_cluster, tmp_path):
    if shutil.which("systemd-analyze") is None or not _libseccomp():
        pytest.skip("needs systemd-analyze (to expand the unit's @system-call sets) and libseccomp")
    wrap = [sys.executable, SECCOMP_EXEC, UNIT, "--"]
    # The wrapper itself must refuse what the unit refuses, or this test proves nothing.
    denied = subprocess.run([*wrap, sys.executable, "-c", "import os; os.setuid(0)"], capture_output=True,
                            text=True, timeout=30)
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, denied.stderr
    packet = subprocess.run([*wrap, sys.executable, "-c", "import socket; socket.socket(socket.AF_PACKET, "
                             "socket.SOCK_RAW)"], capture_output=True, text=True, timeout=30)
    assert packet.returncode != 0 and "Address family not supported" in packet.stderr, packet.stderr

    c = make_cluster(2, ack_replicas=1, wraps={"node1": wrap, "node2": wrap})
    from test_service import FakeSystemd

    sd = FakeSystemd(str(tmp_path / "notify.sock"))
    p1 = c.start("node1", wait=False, env={"NOTIFY_SOCKET": sd.path})
    c.start("node2", wait=False)
    sd.pump(3.0)
    assert sd.first("READY") is not None, (sd.messages, open(c.node_log("node1")).read())
    wait_until(lambda: c.ping("node2"), 15, "node2 to answer")
    cl = c.client()
    w = wait_until(lambda: cl.set("k", "v"), 20, "a write acknowledged with K = 1 (two fsyncs)")
    for i in range(20):
        cl.set(f"k{i}", "v" * 100)
    assert cl.get("k") == b"v"
    c.wait_converged()
    metrics = urllib.request.urlopen(c.metrics_url("node1"), timeout=5).read().decode()
    assert "zwal_fsync_seconds_count" in metrics
    assert w.offset == 0
    p1.send_signal(signal.SIGTERM)
    assert p1.wait(10) == 0
    assert c.stop("node2") == 0
    logs = open(c.node_log("node1")).read() + open(c.node_log("node2")).read()
    assert "Operation not permitted" not in logs and "Traceback" not in logs, logs
