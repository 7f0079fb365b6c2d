"""SegmentedLog.retire on a file system that refuses (found by review): a segment whose rename was refused
is no part of the log for the tools or for a restart that is refused again, and a failed directory fsync
after a rename ends trust as any failed fsync does."""
import os
import subprocess
import sys


from daemon.wal import Record
from daemon.wal import segments as S
from daemon.wal.segments import open_segments


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
        if len(calls) == 1:         # the first fsync after a segment's rename
            raise OSError(5, "Input/output error (injected)")
        return real(d)
    S._write_oldest(ldir, segs[2][0])   # so the oldest note's own fsync is not the one failing
    monkeypatch.setattr(S, "fsync_dir", fsync_dir)
    log.retire(segs[2][0], reason="test")
    assert calls, "fsync_dir not called"
    # a failed fsync ends trust: the log should refuse writes now
    assert log.poisoned, "the log still takes writes after a failed directory fsync"
