"""The append path with injected faults: short writes, EINTR, EIO on fsync, ENOSPC."""

from __future__ import annotations

import errno
import json
import os

import pytest

from daemon.wal import (
    CLEAN,
    Record,
    WalError,
    WalFsyncError,
    WalLocked,
    WalPoisoned,
    WalWriteError,
    encode_frame,
    open_log,
    scan_path,
)
from daemon.wal.writer import unsynced_note_path


def recs(n: int, tag: str = "k") -> list[Record]:
    return [Record("set", f"{tag}{i}".encode(), os.urandom(40)) for i in range(n)]


class SpyFsync:
    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise OSError(errno.EIO, "injected EIO")
        os.fdatasync(fd)


def test_short_writes_and_eintr_give_identical_bytes(tmp_path):
    state = {"n": 0}

    def stingy(fd: int, view: memoryview) -> int:
        state["n"] += 1
        if state["n"] % 3 == 0:
            raise InterruptedError()
        return os.write(fd, view[: 1 + state["n"] % 3])

    records = recs(20)
    a, _ = open_log(str(tmp_path / "a.wal"), write=stingy)
    b, _ = open_log(str(tmp_path / "b.wal"))
    for r in records[:10]:
        assert a.append(r, 2) == b.append(r, 2)
    a.append_batch(records[10:], 2)
    b.append_batch(records[10:], 2)
    a.close()
    b.close()
    assert state["n"] > 100  # the loop really did many small writes
    assert (tmp_path / "a.wal").read_bytes() == (tmp_path / "b.wal").read_bytes()


def test_one_fsync_per_append_and_per_batch(log_path):
    spy = SpyFsync()
    w, _ = open_log(log_path, fsync=spy)
    base = spy.calls  # recovery fsyncs once before it drops the cache
    assert base == 1
    w.append(recs(1)[0])
    assert spy.calls == base + 1
    out = w.append_batch(recs(64))
    assert spy.calls == base + 2
    assert [o for o, _ in out] == sorted(o for o, _ in out) and out[0][0] == w.end - sum(s for _, s in out)
    w.close()
    assert spy.calls == base + 3  # close syncs once more


def test_append_returns_offset_and_size(log_path):
    w, _ = open_log(log_path)
    r = recs(2)
    o1, s1 = w.append(r[0], 5)
    o2, s2 = w.append(r[1], 5)
    w.close()
    assert (o1, s1, o2) == (0, len(encode_frame(r[0], 5)), s1) and os.path.getsize(log_path) == s1 + s2


def test_fsync_failure_poisons_the_writer(log_path):
    spy = SpyFsync(fail_on=3)  # 1: recovery, 2: first append, 3: second append
    w, _ = open_log(log_path, fsync=spy)
    w.append(recs(1)[0])
    with pytest.raises(WalFsyncError):
        w.append(recs(1, "x")[0])
    calls = spy.calls
    for _ in range(3):
        with pytest.raises(WalPoisoned):
            w.append(recs(1, "y")[0])
        with pytest.raises(WalPoisoned):
            w.append_batch(recs(3, "z"))
    assert spy.calls == calls, "fsync was retried after it failed"
    w.close()
    assert spy.calls == calls


def test_enospc_mid_record_leaves_the_last_good_offset(log_path):
    state = {"fail": False}

    def disk_full(fd: int, view: memoryview) -> int:
        if state["fail"]:
            n = os.write(fd, view[: max(1, len(view) // 2)])  # part of the frame lands
            state["fail"] = False
            state["then"] = True
            return n
        if state.pop("then", False):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, view)

    w, _ = open_log(log_path, write=disk_full)
    w.append_batch(recs(5))
    good = w.end
    state["fail"] = True
    with pytest.raises(WalWriteError) as e:
        w.append_batch(recs(5, "lost"))
    assert e.value.no_space and "nothing was appended" in str(e.value)
    assert os.path.getsize(log_path) == good == w.end
    assert scan_path(log_path).status == CLEAN
    w.append(recs(1, "after")[0])  # space came back: writes go on
    w.close()
    r = scan_path(log_path)
    assert r.status == CLEAN and r.records == 6


def test_two_writers_cannot_open_one_log(log_path):
    w, _ = open_log(log_path)
    with pytest.raises(WalLocked, match="locked by another process"):
        open_log(log_path)
    w.close()
    w2, _ = open_log(log_path)  # the lock goes with the first writer
    w2.close()


def test_new_file_is_created_0644(log_path):
    old = os.umask(0)
    try:
        w, _ = open_log(log_path)
        w.close()
    finally:
        os.umask(old)
    assert os.stat(log_path).st_mode & 0o777 == 0o644


def test_fsync_failure_cuts_the_unsynced_bytes_and_notes_the_durable_end(log_path):
    """fsyncgate: what this process wrote after its last good fsync is not kept."""
    spy = SpyFsync(fail_on=3)
    w, _ = open_log(log_path, fsync=spy)
    w.append(recs(1)[0])
    durable = w.end
    with pytest.raises(WalFsyncError):
        w.append_batch(recs(5, "lost"))
    assert os.path.getsize(log_path) == durable  # cut back at once
    note = json.loads(open(unsynced_note_path(log_path)).read())
    assert note["durable_end"] == durable
    w.close()
    w2, scan = open_log(log_path)  # recovery applies the note: nothing left to cut, note removed
    assert scan.status == CLEAN and w2.end == durable and scan.records == 1
    assert not os.path.exists(unsynced_note_path(log_path))
    w2.close()


def test_recovery_cuts_at_the_noted_end_when_the_writer_could_not(log_path, monkeypatch):
    """The cut after a failed fsync failed too (EROFS, EIO): the durable note
    makes recovery cut there, save the bytes aside, then forget the note."""
    spy = SpyFsync(fail_on=3)
    w, _ = open_log(log_path, fsync=spy)
    w.append(recs(1)[0])
    durable = w.end

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EROFS, "injected EROFS")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(WalFsyncError):
        w.append_batch(recs(5, "lost"))
    monkeypatch.undo()
    size = os.path.getsize(log_path)
    assert size > durable  # still there: the page cache says these frames are fine
    assert scan_path(log_path).status == CLEAN
    w.close()
    w2, scan = open_log(log_path)
    assert scan.status == CLEAN and w2.end == durable and scan.records == 1
    saved = f"{log_path}.unsynced-{durable}"
    assert os.path.getsize(saved) == size - durable
    assert not os.path.exists(unsynced_note_path(log_path))
    w2.append(recs(1, "after")[0])  # appends go on; a second open does not cut them
    end = w2.end
    w2.close()
    w3, scan = open_log(log_path)
    assert w3.end == end and scan.records == 2
    w3.close()


def test_an_unreadable_note_refuses_to_open_and_changes_nothing(log_path):
    w, _ = open_log(log_path)
    w.append(recs(1)[0])
    w.close()
    before = open(log_path, "rb").read()
    with open(unsynced_note_path(log_path), "w") as f:
        f.write("{not json")
    with pytest.raises(WalError, match="unreadable note"):
        open_log(log_path)
    assert open(log_path, "rb").read() == before


def test_a_failed_rollback_is_treated_as_a_failed_fsync(log_path, monkeypatch):
    """A partial write that cannot be cut away must not leave a writer that
    a reload could revive: it poisons, notes the durable end, and raises
    fsync_failed (the node exits 3 and recovery cuts at the note)."""
    state = {"fail": False}

    def half_then_enospc(fd: int, view: memoryview) -> int:
        if state["fail"]:
            state["fail"] = False
            n = os.write(fd, view[: len(view) // 2])
            state["then"] = True
            return n
        if state.pop("then", False):
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, view)

    w, _ = open_log(log_path, write=half_then_enospc)
    w.append_batch(recs(3))
    good = w.end
    state["fail"] = True

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "injected EIO")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(WalFsyncError, match="rolling it back failed"):
        w.append_batch(recs(3, "lost"))
    monkeypatch.undo()
    assert w.poisoned
    assert json.loads(open(unsynced_note_path(log_path)).read())["durable_end"] == good
    assert os.path.getsize(log_path) > good  # the half frame is still there
    w.close()
    w2, scan = open_log(log_path)
    assert w2.end == good and scan.status == CLEAN and os.path.exists(f"{log_path}.unsynced-{good}")
    w2.close()


def test_a_note_that_outlived_its_file_cuts_nothing(log_path, tmp_path):
    """A log restored from a replica (another file, or the same inode
    rewritten) must never be cut by the old note."""
    w, _ = open_log(log_path, fsync=SpyFsync(fail_on=3))
    w.append(recs(1)[0])
    with pytest.raises(WalFsyncError):
        w.append(recs(1, "x")[0])
    w.close()
    assert os.path.exists(unsynced_note_path(log_path))
    # The operator restores the log from a replica that holds more records.
    replica = str(tmp_path / "replica.wal")
    r, _ = open_log(replica)
    r.append_batch(recs(5, "r"))
    r.close()
    os.replace(replica, log_path)  # a new inode
    w2, scan = open_log(log_path)
    assert scan.records == 5 and scan.status == CLEAN
    assert not os.path.exists(unsynced_note_path(log_path))
    w2.close()


def test_a_note_is_ignored_when_the_bytes_it_vouched_for_changed(log_path):
    w, _ = open_log(log_path, fsync=SpyFsync(fail_on=3))
    w.append(recs(1)[0])
    with pytest.raises(WalFsyncError):
        w.append(recs(1, "x")[0])
    w.close()
    data = open(log_path, "rb").read()
    # Same inode, rewritten in place with other records (cp over the file).
    other = str(log_path) + ".other"
    o, _ = open_log(other)
    o.append_batch(recs(4, "o"))
    o.close()
    with open(log_path, "r+b") as f:
        f.write(open(other, "rb").read())
    w2, scan = open_log(log_path)
    assert scan.records == 4 and len(data) < os.path.getsize(log_path)
    w2.close()


def test_recovery_fsync_fails_once_goes_on_twice_refuses(log_path):
    w, _ = open_log(log_path)
    w.append(recs(1)[0])
    w.close()
    w2, scan = open_log(log_path, fsync=SpyFsync(fail_on=1))  # a writeback error reported once
    assert scan.records == 1
    w2.close()

    def always(fd: int) -> None:
        raise OSError(errno.EIO, "injected EIO")

    with pytest.raises(WalFsyncError, match="fsync fails at recovery"):
        open_log(log_path, fsync=always)
