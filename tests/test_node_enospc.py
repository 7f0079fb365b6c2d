"""A real full disk: the node's data directory on a tiny tmpfs."""

from __future__ import annotations

import os
import subprocess

import pytest

from daemon.client.blocking import Client, NoSpace
from daemon.wal import CLEAN, iter_frames, scan_path


def mount_tiny_fs(mnt):
    """A 256 KiB tmpfs at `mnt` (a node's data directory); skips without root."""
    mnt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path):
    yield from mount_tiny_fs(tmp_path / "cluster0" / "node1")


def test_enospc_fails_writes_cleanly_and_writes_resume_when_space_returns(make_cluster, tiny_fs):
    c = make_cluster(1, ack_replicas=0)
    assert c.data_dir("node1") == tiny_fs
    c.start("node1")
    ep = c.endpoint("node1")
    cl = Client([ep], config=c.config, timeout=1.0, deadline=1.0)
    cl.set("before", "full")
    filler = os.path.join(tiny_fs, "filler")
    with open(filler, "wb") as f:  # leave a few KiB
        st = os.statvfs(tiny_fs)
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 12 * 1024))
    acked, refused = [], 0
    for i in range(25):
        try:
            r = cl.request("set", key=f"k{i}".encode(), value=b"x" * 1000, endpoint=ep, deadline=0.3)
            acked.append((f"k{i}".encode(), r["offset"]))
        except NoSpace as e:
            refused += 1
            assert "No space left" in str(e) or "no_space" in str(e)
    assert acked and refused, (len(acked), refused)
    assert c.alive("node1") and cl.get("before") == b"full"  # still serves reads
    assert scan_path(c.log_path("node1")).status == CLEAN  # no partial record left behind
    assert os.path.getsize(c.log_path("node1")) == c.status("node1")["end"]
    os.unlink(filler)
    r = cl.request("set", key=b"after", value=b"space", endpoint=ep, deadline=5.0)  # space came back
    assert r["ok"]
    c.stop("node1")
    disk = {f.offset: rec.key for f in iter_frames(c.log_path("node1")) for rec in [f.record()]}
    assert all(disk.get(o) == k for k, o in acked) and b"after" in disk.values()
    assert "code=no_space" in open(c.node_log("node1")).read()


@pytest.fixture
def tiny_fs_node3(tmp_path):
    yield from mount_tiny_fs(tmp_path / "cluster0" / "node3")


def test_a_follower_whose_disk_fills_stays_up_says_no_space_and_catches_up(make_cluster, tiny_fs_node3):
    """Issue 19: a chunk that starts a new epoch needs a node-state save; on a full disk
    that save used to exit 3 (a restart loop under supervisord)."""
    import errno
    import time

    from harness import wait_until

    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    assert c.data_dir("node3") == tiny_fs_node3
    c.start_all()
    cl = c.client()
    cl.set("before", "x")
    c.wait_converged()
    promote = c.zwal("promote", "node2", "--config", c.config, "--timeout", "2")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    wait_until(lambda: c.status("node3")["epoch"] == 2, 10, "node3 follows epoch 2")
    filler = os.path.join(tiny_fs_node3, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    cl2 = Client([c.endpoint("node2")], config=c.config, timeout=2.0, deadline=10.0)
    for i in range(5):
        cl2.set(f"k{i}", "v" * 100)  # K = 1: node1 acknowledges
    wait_until(lambda: c.status("node3").get("no_space"), 10, "node3 reports no_space")
    time.sleep(1.0)
    assert c.alive("node3"), "the follower whose disk is full stayed up"
    st = c.status("node3")
    assert st["role"] == "follower" and st["end"] < c.status("node2")["end"]
    log = open(c.node_log("node3")).read()
    assert "event=no_space" in log
    os.unlink(filler)
    wait_until(lambda: c.status("node3")["end"] == c.status("node2")["end"], 15, "node3 catches up")
    assert c.status("node3").get("no_space") is None
    assert c.alive("node3")
    cl2.close()
