"""`zwal drill --fault ...`: every fault on a scratch cluster the drill builds,
and the plain refusal when it cannot build one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

ZWAL = [sys.executable, "-m", "daemon.cli"]


@pytest.mark.slow
def test_drill_with_every_fault_passes_and_reports_reads(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("partition and disk faults need root; CI runs as root")
    r = subprocess.run([*ZWAL, "drill", "--fault", "kill,pause,partition,disk", "--rounds", "4", "--seconds", "1"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    m = re.search(r"drill PASSED: 4 round\(s\) \(kill x1, pause x1, partition x1, disk x1\), (\d+) writes acknowledged, "
                  r"0 acknowledged writes lost, (\d+) fresh reads checked", out)
    assert m, out
    assert int(m.group(1)) > 100 and int(m.group(2)) > 100, out
    assert out.count("reads and writes linearizable:  yes") == 4, out
    assert "disk failed; it exited with code 3" in out and "promote (from node" in out, out
    # The scratch cluster is gone: no mounts, loop devices or namespaces left behind.
    assert str(tmp_path) not in open("/proc/mounts").read()
    assert str(tmp_path) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_drill_auto_partition_and_etcd_faults_on_a_scratch_cluster_with_its_own_etcd(tmp_path):
    """zwal drill --auto --fault partition,etcd: the scratch cluster runs a 3-member etcd on its network's
    service address; the leader is cut off from its followers (round 1), then from etcd alone (round 2);
    the nodes elect a new leader by themselves, nobody promotes, nothing acknowledged is lost, and no two
    leaders acknowledge at overlapping times."""
    if os.geteuid() != 0 or shutil.which("etcd") is None:
        pytest.skip("needs root (network namespaces) and etcd (make sysdeps)")
    r = subprocess.run([*ZWAL, "drill", "--auto", "--fault", "partition,etcd", "--rounds", "2", "--seconds", "1",
                        "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "TMPDIR": str(tmp_path)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["lost"] == 0 and doc["linearizable"], doc
    assert [x["fault"] for x in doc["rounds"]] == ["partition", "etcd"]
    for x in doc["rounds"]:
        assert x["auto"] and x["healed_by_itself"] and x["overlaps"] == [] and x["acked"] > 50, x
        assert x["new_leader"] != x["old_leader"] and x["epoch"] >= 2, x
        # The election waits out the old lease (1 s): an ok from the old leader is not the new one's.
        assert x["promote_seconds"] > 0.5, x
    assert "a 3-member etcd" in r.stderr and "cut node" in r.stderr and "off from etcd" in r.stderr, r.stderr
    assert str(tmp_path) not in open("/proc/mounts").read()
    # A drill that passed removes its scratch cluster's files (a new user found 368 MB left in /tmp) ...
    assert not [p for p in os.listdir(tmp_path) if p.startswith("zwal-drill-")], os.listdir(tmp_path)
    # ... and its etcd members (data under the scratch directory) are gone with it.
    assert str(tmp_path) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_drill_says_plainly_that_partition_and_disk_need_root(tmp_path):
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the CLI as an unprivileged user")
    r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *ZWAL, "drill", "--fault", "disk"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1
    assert "--fault disk needs root" in r.stderr and "--fault kill,pause" in r.stderr, r.stderr


def test_drill_refuses_partition_against_a_running_cluster_file(tmp_path):
    r = subprocess.run([*ZWAL, "drill", "--fault", "partition", "--config", str(tmp_path / "cluster.toml")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "leave out --config" in r.stderr, r.stderr
    r = subprocess.run([*ZWAL, "drill", "--fault", "kill,flood"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "kill, pause, partition, disk" in r.stderr, r.stderr
