"""After a failed fsync nothing the failed process wrote past its last good
fsync is trusted again: not by recovery, not for a retry, not on a follower.

Two kinds of fault:
- `strace -e inject=fdatasync:error=EIO`: the exact call fails, the bytes
  really are on disk, so only the rule (not luck) keeps them out;
- a real failing disk (tests/faultfs.py): ext4 on a loop device over a full
  tmpfs. The failed pages stay in the page cache and read back as written
  until the cache is dropped, exactly the danger of PostgreSQL's fsyncgate.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time

import msgpack
import pytest
import zmq

from daemon.wal import CLEAN, iter_frames, scan_path
from daemon.wal.reader import ScanResult, scan_buffer, sha256_file
from daemon.wal.writer import unsynced_note_path
from faultfs import make_disk, read_direct
from harness import Cluster, wait_until


def raw(c: Cluster, endpoint: str, msg: dict, timeout: float = 5.0) -> dict | None:
    """One request, sent exactly as given (the test picks cid and id), one reply."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    c.secure(s, endpoint)
    s.connect(endpoint)
    try:
        s.send(msgpack.packb(msg, use_bin_type=True))
        if not s.poll(timeout * 1000):
            return None
        return msgpack.unpackb(s.recv(), raw=False)
    finally:
        s.close()


def set_msg(cid: bytes, rid: int, key: bytes, value: bytes) -> dict:
    return {"id": rid, "op": "set", "cid": cid, "key": key, "value": value}


def records(path: str) -> dict[int, tuple[bytes, bytes | None]]:
    return {f.offset: (r.key, r.value) for f in iter_frames(path) for r in [f.record()]}


def strace_or_skip() -> str:
    s = shutil.which("strace")
    if s is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    return s


def fail_fdatasync(strace: str, when: str) -> list[str]:
    return [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=fdatasync", "-e", f"inject=fdatasync:error=EIO:when={when}"]


# -- injected: the bytes are on disk, the rule alone keeps them out -------------------------


@pytest.mark.slow
def test_a_retry_after_a_failed_fsync_is_written_anew_not_answered_from_the_failed_bytes(make_cluster):
    strace = strace_or_skip()
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    ep = c.endpoint("node1")
    for i in range(5):
        assert raw(c, ep, set_msg(b"warm", i, f"pre{i}".encode(), b"v"))["ok"]
    c.stop("node1")
    durable = os.path.getsize(c.log_path("node1"))
    # fdatasync 1 is recovery's; 2 is the first append.
    p = c.start("node1", wrap=fail_fdatasync(strace, "2"))
    cid = os.urandom(12)
    r = raw(c, ep, set_msg(cid, 77, b"k", b"first"))
    assert r is not None and r["ok"] is False and r["error"] == "fsync_failed", r
    assert p.wait(60) == 3
    log = open(c.node_log("node1")).read()
    assert "event=unsynced_tail_cut" in log
    # The failed process cut what it wrote after its last good fsync, and
    # left a durable note of that end for recovery.
    assert os.path.getsize(c.log_path("node1")) == durable
    c.start("node1")
    assert not os.path.exists(unsynced_note_path(c.log_path("node1")))
    assert os.path.getsize(c.log_path("node1")) == durable
    # The retry (same cid and id) is written by this process and fsynced now.
    r = raw(c, ep, set_msg(cid, 77, b"k", b"first"))
    assert r["ok"] and r["offset"] == durable
    assert list(records(c.log_path("node1")).values()).count((b"k", b"first")) == 1
    # A retry with other content under the failed id is a new write too: the
    # failed one left nothing to conflict with... but now the id is taken.
    r = raw(c, ep, set_msg(cid, 77, b"k", b"other"))
    assert r["ok"] is False and r["error"] == "bad_request"


@pytest.mark.slow
def test_a_follower_whose_fsync_failed_acknowledges_only_what_it_fsynced(make_cluster):
    strace = strace_or_skip()
    c = make_cluster(2, ack_replicas=1)
    c.start_all()
    cl = c.client()
    for i in range(5):
        cl.set(f"pre{i}", "v")
    c.wait_converged()
    c.stop("node2")
    durable = os.path.getsize(c.log_path("node2"))
    p = c.start("node2", wrap=fail_fdatasync(strace, "2"))
    r = raw(c, c.endpoint("node1"), set_msg(b"w", 1, b"k", b"v"), timeout=3.0)
    # The follower's fsync failed: K = 1 cannot be met, so no success.
    assert r is None or r["ok"] is False, r
    # The exit follows node2's next fetch; under a loaded machine (and strace)
    # that can take a while: wait for the exit itself, with a generous cap.
    try:
        code = p.wait(90)
    except Exception:
        raise AssertionError("node2 did not exit after its failed fdatasync; its log:\n"
                             + open(c.node_log("node2")).read()[-3000:]) from None
    assert code == 3, open(c.node_log("node2")).read()[-3000:]
    assert "event=unsynced_tail_cut" in open(c.node_log("node2")).read()
    assert os.path.getsize(c.log_path("node2")) == durable
    c.start("node2")
    r = raw(c, c.endpoint("node1"), set_msg(b"w", 1, b"k", b"v"), timeout=10.0)
    assert r["ok"], r
    c.wait_converged()


# -- a real failing disk ---------------------------------------------------------------------


class Writers:
    """Clients with raw requests (cid and id known), until the node stops answering."""

    def __init__(self, c: Cluster, endpoint: str, n: int, value_size: int = 2048) -> None:
        self.cluster = c
        self.endpoint = endpoint
        self.acked: dict[bytes, tuple[bytes, int]] = {}  # key -> (value, offset)
        self.failed: list[dict] = []  # requests answered with an error or not at all
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.value_size = value_size
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        cid = os.urandom(12)
        for rid in range(1, 1_000_000):
            if self.stop.is_set():
                return
            key = f"c{i}-{rid}".encode()
            msg = set_msg(cid, rid, key, os.urandom(self.value_size // 2).hex().encode())
            r = raw(self.cluster, self.endpoint, msg, timeout=3.0)
            with self.lock:
                if r is not None and r.get("ok"):
                    self.acked[key] = (msg["value"], r["offset"])
                    continue
                self.failed.append(msg)
                why = "no answer" if r is None else r.get("error", "?")
                self.errors[why] = self.errors.get(why, 0) + 1
            if why in ("no answer", "fsync_failed"):
                return  # the node failed: this client stops
            time.sleep(0.05)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def check_acked_on_disk(path: str, acked: dict[bytes, tuple[bytes, int]]) -> None:
    scan = scan_path(path)
    recs = records(path)
    missing = [(k, off, len(v)) for k, (v, off) in acked.items() if recs.get(off) != (k, v)]
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged writes are not on the disk "
                         f"(scan: {scan.describe()}); first: {missing[:5]}")


def recovered_end(node_log: str) -> int:
    """The end offset the node's last recovery settled on (its `event=recovered` line)."""
    lines = [ln for ln in open(node_log) if "event=recovered " in ln]
    return int(re.search(r" bytes=(\d+)", lines[-1]).group(1))


def disk_truth(path: str) -> tuple[ScanResult, dict[int, tuple[bytes, bytes | None]]]:
    data = read_direct(path)
    recs: dict[int, tuple[bytes, bytes | None]] = {}
    scan = scan_buffer(data, lambda f, r: recs.__setitem__(f.offset, (r.key, r.value)))
    return scan, recs


@pytest.mark.slow
def test_a_leader_on_a_failing_disk_recovers_what_the_disk_holds_not_the_page_cache(make_cluster, tmp_path):
    """K = 0, one node, its disk fills under load. Restarted on the same
    mount (the failed pages still cached), recovery must settle on what the
    disk holds; every failed request retried is then written anew, and all
    of it is on the disk after a fresh mount."""
    disk = make_disk(str(tmp_path / "disk"), str(tmp_path / "cluster0" / "node1"))
    c = None
    try:
        c = make_cluster(1, ack_replicas=0)
        assert c.data_dir("node1") == disk.mountpoint
        p = c.start("node1")
        w = Writers(c, c.endpoint("node1"), 4)
        w.start()
        code = p.wait(120)  # writes until the disk fails
        w.join()
        assert code == 3, f"node exit code {code}; errors {w.errors}"
        assert w.acked and w.failed, (len(w.acked), w.errors)
        assert "event=fsync_failed" in open(c.node_log("node1")).read()
        truth, on_disk = disk_truth(c.log_path("node1"))
        # What the disk dropped although it reported success (the loop
        # driver's short write, faultfs.py) can only be the very end.
        lost = sorted(off for k, (v, off) in w.acked.items() if on_disk.get(off) != (k, v))
        assert all(off >= truth.valid_end for off in lost), (lost[:5], truth.describe())
        disk.grow()
        c.start("node1")  # same mount, same page cache: the worst moment
        assert recovered_end(c.node_log("node1")) == truth.valid_end, (
            "recovery trusted the page cache", truth.describe())
        ep = c.endpoint("node1")
        retried = {}
        for msg in w.failed:  # each failed request again, same cid and id
            r = raw(c, ep, msg, timeout=10.0)
            assert r is not None and r["ok"], r
            assert r["offset"] >= truth.valid_end  # written by this process, not found in old bytes
            retried[msg["key"]] = (msg["value"], r["offset"])
        c.stop("node1")
        disk.remount()  # a fresh mount: only what reached the disk reads back
        kept = {k: a for k, a in w.acked.items() if a[1] not in lost}
        check_acked_on_disk(c.log_path("node1"), {**kept, **retried})
        c.start("node1")
        with c.client() as cl:
            for k, (v, _) in list(retried.items()) + list(kept.items())[-50:]:
                assert cl.get(k) == v
        c.stop("node1")
        print(f"\nacknowledged {len(w.acked)}, dropped by the disk after a reported success {len(lost)}, "
              f"failed then retried {len(retried)}, errors {w.errors}")
    finally:
        if c is not None:
            c.close()
        disk.destroy()


@pytest.mark.slow
def test_a_follower_on_a_failing_disk_restarts_from_what_its_disk_holds(make_cluster, tmp_path):
    """K = 1, the follower's disk fills. Restarted on the same mount it must
    fetch from the end its disk holds, so the leader counts nothing it lacks;
    after a fresh mount both logs hold every acknowledged write."""
    disk = make_disk(str(tmp_path / "disk"), str(tmp_path / "cluster0" / "node2"))
    c = None
    try:
        c = make_cluster(2, ack_replicas=1)
        assert c.data_dir("node2") == disk.mountpoint
        c.start_all()
        w = Writers(c, c.endpoint("node1"), 4)
        w.start()
        wait_until(lambda: not c.alive("node2"), 120, "the follower's disk to fail")
        assert c.procs["node2"].wait(60) == 3
        w.join()
        assert w.acked, w.errors
        assert "event=fsync_failed" in open(c.node_log("node2")).read()
        truth, on_disk = disk_truth(c.log_path("node2"))
        lost = sorted(off for k, (v, off) in w.acked.items() if on_disk.get(off) != (k, v))
        assert all(off >= truth.valid_end for off in lost), (lost[:5], truth.describe())
        disk.grow()
        c.start("node2")  # same mount, same page cache
        assert recovered_end(c.node_log("node2")) == truth.valid_end, (
            "recovery trusted the page cache", truth.describe())
        more = Writers(c, c.endpoint("node1"), 2)
        more.start()
        time.sleep(2.0)
        more.join()
        assert more.acked, more.errors
        acked = {**w.acked, **more.acked}
        c.wait_converged()
        c.stop("node2")
        c.stop("node1")
        disk.remount()
        check_acked_on_disk(c.log_path("node2"), acked)
        check_acked_on_disk(c.log_path("node1"), acked)
        assert scan_path(c.log_path("node2")).status == CLEAN
        assert sha256_file(c.log_path("node1")) == sha256_file(c.log_path("node2"))
        print(f"\nacknowledged {len(acked)}, dropped by the follower's disk after a reported success "
              f"{len(lost)} (the leader kept them), errors {w.errors}")
    finally:
        if c is not None:
            c.close()
        disk.destroy()
