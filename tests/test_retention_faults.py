"""Retention on a file system that refuses to delete (issue 20 item 7: strace -e inject fails `rename`
and `unlink`). A retired segment is wholly below the durable oldest offset, so a refused rename or
unlink costs disk space and never a byte of the log: the node keeps serving, logs
segment_delete_failed, tries again at each retention pass, and finishes at restart. Before the fix,
the first refused unlink stopped the leader with an internal error (exit 2)."""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest

from harness import wait_until

from daemon.wal.segments import list_segments, read_oldest, segment_name

pytestmark = pytest.mark.slow

SETTINGS = dict(segment_bytes=65536, snapshot_bytes=1048576, retain_bytes=0)


def _events(c, name: str, event: str) -> list[dict]:
    with open(c.node_log(name), errors="replace") as f:
        return [dict(re.findall(r"(\w+)=(\S+)", ln)) for ln in f if f"event={event}" in ln]


@pytest.mark.parametrize("call", ["unlink", "rename"])
def test_a_refused_delete_leaves_the_node_serving_and_is_finished_at_restart(make_cluster, call):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make sysdeps)")
    c = make_cluster(1, ack_replicas=0, **SETTINGS)
    c.start("node1")  # create the log outside strace
    assert c.stop("node1") == 0
    first = os.path.join(c.log_dir("node1"), segment_name(0))
    # Only the first segment's own calls fail: its rename to .deleted, or the unlink of the .deleted file.
    calls = "unlink,unlinkat" if call == "unlink" else "rename,renameat,renameat2"
    target = first + ".deleted" if call == "unlink" else first
    p = c.start("node1", wrap=[strace, "-f", "-qq", "-o", os.devnull, "-P", target, "-e", f"trace={calls}",
                               "-e", f"inject={calls}:error=EIO"])
    cl = c.client()
    value = "x" * 3000
    want: dict[str, bytes] = {}
    for i in range(1500):  # ~4.5 MB: four snapshots at 1 MiB, retention passes after each
        k, v = f"k{i % 400}", f"{i}:{value}".encode()
        cl.set(k, v)
        want[k] = v
    wait_until(lambda: len(_events(c, "node1", "segment_delete_failed")) >= 2, 20,
               "the refused delete to be logged and tried again at the next pass")
    assert c.alive("node1"), "the node stopped on a refused delete"
    assert not _events(c, "node1", "internal_error")
    failed = _events(c, "node1", "segment_delete_failed")
    assert failed[0]["path"] == first and failed[0]["base"] == "0", failed[0]
    deleted = [d for d in _events(c, "node1", "segment_deleted") if "base" in d]
    assert deleted and all(d["path"] != first for d in deleted)  # the others went
    # status counts what went, not what was planned (the refused segment is not counted).
    assert c.status("node1")["retention"]["deleted_segments"] == \
        len([d for d in _events(c, "node1", "segment_deleted") if "base" in d])
    leftover = first + ".deleted" if call == "unlink" else first
    assert os.path.exists(leftover)
    oldest = read_oldest(c.log_dir("node1"))
    assert oldest is not None and oldest > 0
    # The node still takes and serves writes, and the log it serves starts at the oldest offset.
    w = cl.set("after", "fault")
    assert cl.get("after") == b"fault" and w.offset > oldest
    want["after"] = b"fault"
    # A clean stop (the node itself, not strace), then a start without the fault: the file goes.
    os.kill(c.status("node1")["pid"], signal.SIGTERM)
    assert p.wait(30) == 0
    c.start("node1")
    assert not os.path.exists(first) and not os.path.exists(first + ".deleted")
    assert list_segments(c.log_dir("node1"))[0][0] == read_oldest(c.log_dir("node1"))
    assert any(d.get("finished_at_recovery") == "True" for d in _events(c, "node1", "segment_deleted"))
    cl2 = c.client()
    assert {k: cl2.get(k) for k in want} == want


def test_a_refused_snapshot_rename_answers_an_error_names_no_snapshot_and_loses_nothing(make_cluster):
    """The snapshot's temp file is written and fsynced, then its rename fails: `zwal snapshot` says
    the snapshot failed, no snapshot is named (recovery never finds one that is not all there), the
    node keeps serving, and a restart replays the whole log and then snapshots as asked."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make sysdeps)")
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    cl = c.client()
    want = {f"k{i % 50}": f"v{i}".encode() for i in range(300)}
    for i in range(300):
        cl.set(f"k{i % 50}", f"v{i}")
    end = c.status("node1")["end"]
    assert c.stop("node1") == 0
    snapdir = os.path.join(c.data_dir("node1"), "snapshots")
    tmp = os.path.join(snapdir, f"snapshot-{end:020d}.tmp")
    p = c.start("node1", wrap=[strace, "-f", "-qq", "-o", os.devnull, "-P", tmp,
                               "-e", "trace=rename,renameat,renameat2", "-e", "inject=rename,renameat,renameat2:error=EIO"])
    r = c.zwal("snapshot", "--config", c.config)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "failed" in (r.stdout + r.stderr) and "Input/output error" in (r.stdout + r.stderr), r.stdout + r.stderr
    assert not os.path.exists(os.path.join(snapdir, f"snapshot-{end:020d}"))
    assert _events(c, "node1", "snapshot_failed")
    assert c.alive("node1")
    cl = c.client()
    cl.set("after", "fault")
    want["after"] = b"fault"
    os.kill(c.status("node1")["pid"], signal.SIGTERM)
    assert p.wait(30) == 0
    c.start("node1")
    rec = _events(c, "node1", "recovered")[-1]
    assert rec["snapshot"] == "0", rec  # the unnamed temp file is never used
    cl2 = c.client()
    assert {k: cl2.get(k) for k in want} == want
    r2 = c.zwal("snapshot", "--config", c.config, "--json")
    assert r2.returncode == 0, r2.stdout + r2.stderr


def test_a_refused_rename_of_the_oldest_note_skips_the_pass_and_the_node_serves_on(make_cluster):
    """Step 1 of a retention pass (oldest.json) refused: nothing is deleted, the pass is skipped and
    tried again, the node serves on (it stopped with internal_error, exit 2, which the supervisor does
    not restart)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make sysdeps)")
    c = make_cluster(1, ack_replicas=0, **SETTINGS)
    c.start("node1")
    assert c.stop("node1") == 0
    tmp = os.path.join(c.log_dir("node1"), "oldest.json.tmp")
    calls = "rename,renameat,renameat2"
    p = c.start("node1", wrap=[strace, "-f", "-qq", "-o", os.devnull, "-P", tmp, "-e", f"trace={calls}",
                               "-e", f"inject={calls}:error=EIO"])
    cl = c.client()
    try:
        for i in range(1500):
            cl.set(f"k{i % 400}", f"{i}:{'x' * 3000}")
    except Exception:
        pass
    wait_until(lambda: p.poll() is not None or len(_events(c, "node1", "retention_pass_skipped")) >= 2, 30,
               "retention passes to be skipped (or the node to stop)")
    assert p.poll() is None, "the node stopped on a refused rename of oldest.json.tmp"
    assert not _events(c, "node1", "internal_error"), _events(c, "node1", "internal_error")[:1]
    assert not _events(c, "node1", "segment_deleted")  # step 1 failed: nothing may go
    assert cl.set("after", "refusal").epoch == 1  # the node serves on
