"""SegmentedLog.retire on a file system that refuses (found by review): a segment whose rename was refused
is no part of the log for the tools or for a restart that is refused again, and a failed directory fsync
after a rename ends trust as any failed fsync does."""
import os
import subprocess
import sys

import pytest

from daemon.wal import Record
from daemon.wal import segments as S
from daemon.wal.segments import SegmentGap, list_segments, open_segments, read_oldest, segment_name
from daemon.wal.writer import fsync_dir


def filled(tmp_path, n=40, segment_bytes=65536):
    ldir = str(tmp_path / "data" / "log")
    os.makedirs(ldir)
    log, _ = open_segments(ldir, segment_bytes=segment_bytes)
    for i in range(n):
        log.append_batch([Record("set", f"k{i}".encode(), b"v" * 4000)], epoch=1)
    return ldir, log


def refuse_rename_of(monkeypatch, path):
    real = os.rename

    def rename(src, dst):
        if str(src) == path:
            raise OSError(5, "Input/output error (injected)")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", rename)


def test_verify_of_a_running_nodes_data_dir_is_clean_after_a_refused_rename(tmp_path, monkeypatch):
    ldir, log = filled(tmp_path)
    segs = log.segments
    refuse_rename_of(monkeypatch, segs[0][1])
    log.retire(segs[2][0], reason="test")        # segs[0] refused, segs[1] deleted
    assert os.path.exists(segs[0][1]) and not os.path.exists(segs[1][1])
    monkeypatch.undo()
    # the node is still running (or was kill -9'd): an operator runs `zwal log verify DATA_DIR`
    data_dir = os.path.dirname(ldir)
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "log", "verify", data_dir],
                       capture_output=True, text=True, env={**os.environ})
    log.close()
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_a_restart_while_the_file_system_still_refuses_starts(tmp_path, monkeypatch):
    ldir, log = filled(tmp_path)
    segs = log.segments
    refuse_rename_of(monkeypatch, segs[0][1])
    log.retire(segs[2][0], reason="test")
    log.close()
    # the node served on; now it restarts (or reloads), the refusal persists
    log2, _ = open_segments(ldir, replay_from=segs[2][0], segment_bytes=65536)
    log2.close()


def test_a_failed_directory_fsync_in_retire_ends_trust(tmp_path, monkeypatch):
    ldir, log = filled(tmp_path)
    segs = log.segments
    real = S.fsync_dir
    calls = []

    def fsync_dir(d):
        calls.append(d)
        if len(calls) == 2:         # the first fsync after a segment's rename (the 1st is oldest.json's)
            raise OSError(5, "Input/output error (injected)")
        return real(d)
    S._write_oldest(ldir, segs[2][0])   # so the oldest note's own fsync is not the one failing
    monkeypatch.setattr(S, "fsync_dir", fsync_dir)
    log.retire(segs[2][0], reason="test")
    assert calls, "fsync_dir not called"
    # a failed fsync ends trust: the log should refuse writes now
    assert log.poisoned, "the log still takes writes after a failed directory fsync"


def test_oldest_note_with_every_segment_lost_is_refused_not_recreated_at_zero(tmp_path):
    ldir, log = filled(tmp_path, n=120)  # sealed segments above the oldest: a gap is not an empty log
    segs = log.segments
    log.retire(segs[2][0], reason="test")
    log.close()
    for _, p in list_segments(ldir):
        os.unlink(p)           # the disk lost every segment; oldest.json says segs[2]
    before = sorted(os.listdir(ldir))
    with pytest.raises(SegmentGap):
        log2, _ = open_segments(ldir, segment_bytes=65536)
        log2.close()
    assert sorted(os.listdir(ldir)) == before, "bad input changed the directory"


def test_verify_sees_a_missing_segment_at_the_oldest_offset(tmp_path, monkeypatch):
    ldir, log = filled(tmp_path, n=120)  # sealed segments above the oldest: a gap is not an empty log
    segs = log.segments
    real = os.rename
    def rename(src, dst):
        if str(src) == segs[0][1]:
            raise OSError(5, "Input/output error (injected)")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", rename)
    log.retire(segs[2][0], reason="test")        # segs[0] left over, segs[1] gone
    monkeypatch.undo()
    log.close()
    os.unlink(segs[2][1])   # the segment AT the oldest offset is lost: a real gap above oldest
    with pytest.raises(SegmentGap):
        open_segments(ldir, segment_bytes=65536)
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "log", "verify", os.path.dirname(ldir)],
                       capture_output=True, text=True)
    assert r.returncode != 0, ("verify calls a log with a gap at its oldest offset clean", r.stdout, r.stderr)


def test_a_retire_by_the_writer_of_a_log_an_install_replaced_changes_nothing(tmp_path):
    data = tmp_path / "data"
    ldir = str(data / "log")
    os.makedirs(ldir)
    log, _ = open_segments(ldir, segment_bytes=65536)
    for i in range(120):
        log.append_batch([Record("set", f"k{i}".encode(), b"v" * 4000)], epoch=1)
    segs = log.segments
    base = log.end + 10_000
    # install.FileTransfer.install step 4: log/ -> log.replaced/, log.installing/ (one empty S.seg) -> log/
    os.rename(ldir, str(data / "log.replaced"))
    os.mkdir(ldir)
    open(os.path.join(ldir, segment_name(base)), "wb").close()
    fsync_dir(str(data))
    # the old writer is still the node's until the reload: one more retention pass
    gone = log.retire(segs[2][0], reason="below the snapshot")
    log.close()
    assert gone == [] and read_oldest(ldir) is None  # the new log is not the old writer's to change
    assert os.path.exists(os.path.join(str(data / "log.replaced"), os.path.basename(segs[0][1])))
    log2, _ = open_segments(ldir, replay_from=base, segment_bytes=65536)   # the reload
    log2.close()


def test_a_failed_fsync_of_the_oldest_note_ends_trust_and_deletes_nothing(tmp_path, monkeypatch):
    ldir, log = filled(tmp_path, n=120)  # sealed segments above the oldest: a gap is not an empty log
    segs = log.segments
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("oldest.json.tmp"):
            raise OSError(5, "Input/output error (injected)")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(S.WalFsyncError):
        log.retire(segs[2][0], reason="test")
    monkeypatch.undo()
    assert log.poisoned and all(os.path.exists(p) for _, p in segs)
    log.close()


def test_a_failed_fsync_of_the_oldest_note_stops_the_node_as_a_failed_fsync(tmp_path, monkeypatch):
    """Through the node's log port the failed fsync is an FsyncFailure: the node exits 3 and recovers
    (the supervisor restarts it), not an internal error (exit 2, which the supervisor does not restart)."""
    from daemon.node.ports import FsyncFailure
    from daemon.node.zmq_ports import WalLog

    ldir, log = filled(tmp_path, n=120)
    segs = log.segments
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("oldest.json.tmp"):
            raise OSError(5, "Input/output error (injected)")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(FsyncFailure):
        WalLog(log, os.path.dirname(ldir), None).retire(segs[2][0], "test")
    monkeypatch.undo()
    assert log.poisoned
    log.close()
