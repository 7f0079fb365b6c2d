"""The segmented log (daemon/wal/segments.py) on real files with real fsync."""

from __future__ import annotations

import errno
import json
import os

import pytest

from daemon.wal import CLEAN, TORN, LogCorrupt, Record, WalFsyncError, WalLocked, encode_frame, scan_path
from daemon.wal import segments
from daemon.wal.format import iter_frames_in
from daemon.wal.segments import (SealedSegmentDamaged, SegmentGap, list_segments, migrate_legacy, open_segments,
                                 plan_roll, read_all, scan_log, segment_name)
from daemon.wal.writer import unsynced_note_path

SEG = 4096


def batch(i: int, n: int = 3, size: int = 100) -> list[Record]:
    return [Record("set", f"k{i}-{j}".encode(), bytes([i % 251]) * size) for j in range(n)]


def fill(log, batches: int, epoch: int = 1) -> list[list[tuple[int, int]]]:
    return [log.append_batch(batch(i), epoch) for i in range(batches)]


@pytest.fixture
def ldir(tmp_path) -> str:
    return str(tmp_path / "log")


def test_plan_roll_is_decided_between_batches():
    assert not plan_roll(0, 0, SEG)  # an empty segment never rolls
    assert not plan_roll(0, SEG - 1, SEG)
    assert plan_roll(0, SEG, SEG)
    assert plan_roll(100, 100 + SEG + 500, SEG)  # an overflowing batch stayed; the next one rolls
    assert not plan_roll(100, 100, 1)


def test_a_segment_rolls_at_the_limit_on_a_batch_boundary(ldir):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    placed = fill(log, 40)
    log.close()
    files = list_segments(ldir)
    assert len(files) > 3
    starts = {off for b in placed for off, _ in b}
    batch_starts = {b[0][0] for b in placed}
    for i, (base, path) in enumerate(files):
        size = os.path.getsize(path)
        assert scan_path(path).status == CLEAN  # whole frames only: no frame is split across files
        assert base in batch_starts  # every file begins with a batch, never inside one
        if i + 1 < len(files):
            assert base + size == files[i + 1][0]
            # it rolled at the first batch boundary at or past the limit, not before
            assert size >= SEG
            last_batch = max(b for b in batch_starts if b < base + size)
            assert last_batch - base < SEG
    assert b"".join(open(p, "rb").read() for _, p in files) == read_all(os.path.dirname(ldir))
    assert starts == {f.offset for f in iter_frames_in(read_all(ldir))}


def test_a_roll_fsyncs_the_new_file_and_the_directory_before_writing_to_it(ldir, monkeypatch):
    events: list[tuple[str, str]] = []

    def name(fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    def write(fd: int, view: memoryview) -> int:
        events.append(("write", name(fd)))
        return os.write(fd, view)

    def fsync(fd: int) -> None:
        events.append(("fsync", name(fd)))
        os.fdatasync(fd)

    real_fsync = os.fsync

    def dir_fsync(fd: int) -> None:
        events.append(("fsync", name(fd)))
        real_fsync(fd)

    log, _ = open_segments(ldir, segment_bytes=SEG, write=write, fsync=fsync)
    monkeypatch.setattr(segments.os, "fsync", dir_fsync)
    fill(log, 15)
    log.close()
    second = segment_name(list_segments(ldir)[1][0])
    first_write = events.index(("write", second))
    before = events[:first_write]
    assert ("fsync", second) in before and ("fsync", "log") in before
    assert before.index(("fsync", "log")) > max(i for i, e in enumerate(before) if e == ("write", segment_name(0)))


def test_reads_cross_segment_boundaries(ldir):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 40)
    whole = read_all(ldir)
    bases = [b for b, _ in log.segments]
    assert len(whole) == log.end
    pos, chunks = 0, []
    while pos < log.end:
        c = log.read_chunk(pos, log.end, 10 * SEG)
        assert c, f"empty chunk at {pos} below the end {log.end}"
        assert pos + len(c) in bases or pos + len(c) == log.end  # a chunk stops at a segment's end at most
        chunks.append(c)
        pos += len(c)
    assert b"".join(chunks) == whole
    for b in bases[1:]:
        assert log.read_chunk(b, log.end, 1) == whole[b:b + len(log.read_chunk(b, log.end, 1))]
        assert log.read_raw(b - 10, 20) == whole[b - 10:b + 10]
    assert log.read_raw(0, log.end + 100) == whole
    assert log.read_chunk(log.end, log.end, 100) == b""
    log.close()


def test_recovery_replays_every_segment_with_global_offsets(ldir):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 20, epoch=1)
    fill(log, 20, epoch=3)
    end = log.end
    log.close()
    seen = []
    log, scan = open_segments(ldir, segment_bytes=SEG, on_frame=lambda f, r: seen.append((f.offset, r.key)))
    want = [(f.offset, f.record().key) for f in iter_frames_in(read_all(ldir))]
    assert seen == want and scan.status == CLEAN and scan.valid_end == end == log.end
    assert scan.records == 120 and [e for e, _ in scan.epoch_starts] == [1, 3]
    assert scan.epoch_starts[1][1] == want[60][0]
    log.close()


def test_replay_from_skips_the_segments_below_it(ldir, monkeypatch):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 40)
    log.close()
    frames = list(iter_frames_in(read_all(ldir)))
    bases = [b for b, _ in list_segments(ldir)]
    start = next(f.offset for f in frames if f.offset > bases[2])  # inside the third segment
    scanned = []
    real = segments.scan_fd
    monkeypatch.setattr(segments, "scan_fd", lambda fd, *a: scanned.append(fd) or real(fd, *a))
    seen = []
    log, scan = open_segments(ldir, segment_bytes=SEG, replay_from=start, on_frame=lambda f, r: seen.append(f.offset))
    assert seen == [f.offset for f in frames if f.offset >= start]
    assert len(scanned) == len(bases) - 3  # sealed segments 0 and 1 were not read; the last is open_log's
    log.close()
    with pytest.raises(segments.WalError, match="not where a record starts"):
        open_segments(ldir, replay_from=start + 1)


def test_a_torn_tail_in_the_last_segment_is_cut_and_saved(ldir):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 20)
    end = log.end
    log.close()
    base, last = list_segments(ldir)[-1]
    assert base > 0
    torn = encode_frame(Record("set", b"torn", b"x" * 50), 1)[:-7]
    with open(last, "ab") as f:
        f.write(torn)
    cuts = []
    log, scan = open_segments(ldir, segment_bytes=SEG, before_cut=cuts.append)
    assert scan.status == TORN and scan.valid_end == end == log.end and scan.dropped == len(torn)
    assert cuts and cuts[0].valid_end == end and cuts[0].file_size == end + len(torn)  # global offsets
    assert open(f"{last}.torn-{end - base}", "rb").read() == torn
    log.append(Record("set", b"after", b"cut"), 1)
    log.close()
    assert scan_log(ldir).status == CLEAN


def test_damage_in_a_sealed_segment_is_refused_and_nothing_changes(ldir):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 40)
    log.close()
    assert len(list_segments(ldir)) > 2
    base, sealed = list_segments(ldir)[1]
    data = bytearray(open(sealed, "rb").read())
    data[len(data) - 5] ^= 0xFF  # the last record of a sealed segment: would look torn in a single file
    open(sealed, "wb").write(bytes(data))
    before = {p: open(p, "rb").read() for _, p in list_segments(ldir)}
    with pytest.raises(SealedSegmentDamaged) as e:
        open_segments(ldir, segment_bytes=SEG)
    assert sealed in str(e.value) and "offset" in str(e.value) and isinstance(e.value, LogCorrupt)
    assert {p: open(p, "rb").read() for _, p in list_segments(ldir)} == before
    assert scan_log(ldir).status == "corrupt"


@pytest.mark.parametrize("how", ["gap", "overlap", "hole"])
def test_segments_that_are_not_contiguous_are_refused(ldir, how):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 30)
    log.close()
    files = list_segments(ldir)
    _, victim = files[1]
    if how == "gap":
        os.truncate(victim, os.path.getsize(victim) - 1)
    elif how == "overlap":
        with open(victim, "ab") as f:
            f.write(encode_frame(Record("set", b"extra", b"1"), 1))
    else:
        os.unlink(victim)
    with pytest.raises(SegmentGap) as e:
        open_segments(ldir, segment_bytes=SEG)
    assert "segment" in str(e.value) and os.path.basename(files[2][1]) in str(e.value)


def test_truncate_suffix_across_segments(ldir, tmp_path):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 40)
    whole = read_all(ldir)
    bases = [b for b, _ in log.segments]
    cut = next(f.offset for f in iter_frames_in(whole) if f.offset > bases[1])
    save = str(tmp_path / "divergent.wal")
    n = log.truncate_suffix(cut, save)
    assert n == len(whole) - cut and open(save, "rb").read() == whole[cut:]
    assert log.end == cut and [b for b, _ in log.segments] == bases[:2]
    assert [b for b, _ in list_segments(ldir)] == bases[:2]
    o, _ = log.append(Record("set", b"new", b"leader"), 2)
    assert o == cut
    log.close()
    log, scan = open_segments(ldir, segment_bytes=SEG)
    assert scan.status == CLEAN and log.end == cut + len(encode_frame(Record("set", b"new", b"leader"), 2))
    assert read_all(ldir)[:cut] == whole[:cut]
    # a cut exactly at a segment's base leaves that segment empty, as the last one
    n = log.truncate_suffix(bases[1], str(tmp_path / "d2.wal"))
    assert log.end == bases[1] and os.path.getsize(list_segments(ldir)[-1][1]) == 0
    log.close()


def test_two_processes_cannot_open_one_segmented_log(ldir, monkeypatch):
    log, _ = open_segments(ldir, segment_bytes=SEG)
    with pytest.raises(WalLocked):
        open_segments(ldir, segment_bytes=SEG)
    fill(log, 20)  # rolls: the first segment's write fd (and its file lock) is gone
    assert len(log.segments) > 1
    # a second opener that listed the directory before the roll takes the sealed
    # segment for the last one: only the lock on the directory stops it appending there
    real = segments.list_segments
    monkeypatch.setattr(segments, "list_segments", lambda d: real(d)[:1])
    with pytest.raises(WalLocked):
        open_segments(ldir, segment_bytes=SEG)
    monkeypatch.undo()
    log.close()
    open_segments(ldir)[0].close()


def test_a_failed_fsync_after_a_roll_notes_the_segment_and_recovery_cuts_there(ldir):
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) != segment_name(0) and calls.get("fail") is None:
            # the first fsync of an append in the second segment (after its roll's own fsync)
            if calls.setdefault("new", 0) == 1:
                calls["fail"] = 1
                raise OSError(errno.EIO, "injected EIO")
            calls["new"] += 1
        os.fdatasync(fd)

    log, _ = open_segments(ldir, segment_bytes=SEG, fsync=fsync)
    durable = 0
    with pytest.raises(WalFsyncError):
        for i in range(40):
            log.append_batch(batch(i), 1)
            durable = log.end
    assert log.poisoned
    base, second = list_segments(ldir)[1]
    note = json.loads(open(unsynced_note_path(second)).read())
    assert note["durable_end"] + base == durable == log.end
    log.close()
    log, scan = open_segments(ldir, segment_bytes=SEG)
    assert log.end == durable and scan.status == CLEAN and not os.path.exists(unsynced_note_path(second))
    log.close()


# -- migration from the single-file wal.log ------------------------------------------


def legacy_dir(tmp_path, note_frame: int | None = None) -> tuple[str, bytes]:
    """A data dir of zwal before segments: wal.log (30 records), evidence beside it and,
    with note_frame, a failed fsync's note whose durable end is that frame's offset."""
    from daemon.wal import open_log
    from daemon.wal.writer import write_unsynced_note

    d = str(tmp_path / "node")
    os.mkdir(d)
    w, _ = open_log(os.path.join(d, "wal.log"))
    for i in range(10):
        w.append_batch(batch(i), 1)
    data = open(os.path.join(d, "wal.log"), "rb").read()
    if note_frame is not None:
        at = list(iter_frames_in(data))[note_frame].offset
        write_unsynced_note(os.path.join(d, "wal.log"), at, "injected", w.read_fd)
    w.close()
    with open(os.path.join(d, "wal.log.torn-5"), "wb") as f:
        f.write(b"evidence")
    return d, data


def test_a_data_dir_with_wal_log_is_migrated_at_first_open(tmp_path):
    d, data = legacy_dir(tmp_path)
    log, scan = open_segments(os.path.join(d, "log"))
    assert scan.status == CLEAN and log.end == len(data)
    assert not os.path.exists(os.path.join(d, "wal.log"))
    assert open(os.path.join(d, "log", segment_name(0)), "rb").read() == data
    assert os.path.exists(os.path.join(d, "wal.log.torn-5"))  # evidence stays where it was
    log.close()


STEPS = ["mkdir", "move_note", "move_log", "fsync_log_dir", "fsync_data_dir"]


@pytest.mark.parametrize("step", STEPS)
def test_migration_survives_a_crash_at_every_step(tmp_path, step):
    """A crash before each step, then a restart: the log is whole, and the
    note of a failed fsync still cuts what it must (it moves first)."""
    d, data = legacy_dir(tmp_path, note_frame=20)
    durable = list(iter_frames_in(data))[20].offset

    class Crash(Exception):
        pass

    def hook(s: str) -> None:
        if s == step:
            raise Crash(s)

    with pytest.raises(Crash):
        open_segments(os.path.join(d, "log"), migrate_hook=hook)
    log, scan = open_segments(os.path.join(d, "log"))
    assert log.end == durable, "the failed fsync's note was lost in the migration"
    assert read_all(d) == data[:durable]
    assert not os.path.exists(os.path.join(d, "wal.log")) and not os.path.exists(os.path.join(d, "wal.log.unsynced"))
    assert os.path.exists(os.path.join(d, "log", f"{segment_name(0)}.unsynced-{durable}"))  # cut bytes saved
    log.close()


KILL_AT = """
import os, signal, sys
from daemon.wal.segments import open_segments
def hook(step):
    if step == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)
open_segments(os.path.join(sys.argv[1], "log"), migrate_hook=hook)
"""


@pytest.mark.parametrize("step", STEPS)
def test_migration_survives_kill_9_at_every_step(tmp_path, step):
    import subprocess
    import sys

    from conftest import ROOT

    d, data = legacy_dir(tmp_path, note_frame=20)
    durable = list(iter_frames_in(data))[20].offset
    p = subprocess.run([sys.executable, "-c", KILL_AT, d, step], cwd=ROOT, capture_output=True, timeout=60)
    assert p.returncode == -9, p.stderr
    log, scan = open_segments(os.path.join(d, "log"))
    assert log.end == durable and read_all(d) == data[:durable] and scan.status == CLEAN
    assert sorted(os.listdir(d)) == ["log", "wal.log.torn-5"]
    log.close()


def test_wal_log_beside_segments_is_refused(tmp_path):
    d, data = legacy_dir(tmp_path)
    open_segments(os.path.join(d, "log"))[0].close()
    open(os.path.join(d, "wal.log"), "wb").write(data)
    with pytest.raises(segments.WalError, match="both wal.log and segments"):
        migrate_legacy(d)


def test_the_log_tools_take_a_data_directory_or_a_log_directory(tmp_path):
    from test_engine_cli import zwal

    d = str(tmp_path / "node")
    os.mkdir(d)
    ldir = os.path.join(d, "log")
    log, _ = open_segments(ldir, segment_bytes=SEG)
    fill(log, 30)
    end = log.end
    log.close()
    assert len(list_segments(ldir)) > 2
    whole = read_all(ldir)
    want = [f.offset for f in iter_frames_in(whole)]
    for path in (d, ldir):
        v = zwal("log", "verify", path)
        assert v.returncode == 0 and f"end offset {end}" in v.stdout, v.stdout + v.stderr
        dump = [json.loads(line) for line in zwal("log", "dump", path).stdout.splitlines()]
        assert [o["offset"] for o in dump] == want  # global offsets across the files
        later = zwal("log", "dump", path, "--from", str(want[50]))
        assert [json.loads(line)["offset"] for line in later.stdout.splitlines()] == want[50:]
    base, last = list_segments(ldir)[-1]
    with open(last, "ab") as f:
        f.write(b"\x01" * 9)
    assert zwal("log", "verify", d).returncode == 1
    r = zwal("log", "recover", d)
    assert r.returncode == 0 and f"{last}.torn-{end - base}" in r.stdout, r.stdout + r.stderr
    assert read_all(ldir) == whole and zwal("log", "verify", ldir).returncode == 0
    base1, sealed = list_segments(ldir)[1]
    os.truncate(sealed, os.path.getsize(sealed) - 3)
    assert zwal("log", "verify", d).returncode == 2
    r = zwal("log", "recover", d)
    assert r.returncode == 2 and sealed in r.stderr


# -- real processes ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_cluster_with_small_segments_serves_replicates_and_restarts(make_cluster):
    """64 KiB segments: the leader rolls under load, followers (catching up from zero
    too) hold segmented logs whose concatenation is the leader's, and every node
    restarts from its segments with the records it acknowledged."""
    from test_repl_cluster import Load

    from harness import wait_until
    from daemon.wal.segments import iter_log_frames, sha256_log

    c = make_cluster(3, ack_replicas=1, segment_bytes=65536, fetch_max_bytes=100000)
    c.start("node1")
    c.start("node2")
    first = Load(c, 4, 3000, "s")  # about 3000 * 70 bytes: several segments
    first.wait()
    c.start("node3")  # catches up from zero across the leader's segments
    more = Load(c, 4, 2000, "t")
    more.wait()
    acked = first.acked + more.acked
    assert len(acked) == 5000 and first.failed == more.failed == []
    c.wait_converged(timeout=60)
    for n in c.names:
        files = list_segments(c.log_dir(n))
        assert len(files) >= 3, f"{n} did not roll: {files}"
        assert scan_log(c.log_dir(n)).status == CLEAN
        assert not os.path.exists(os.path.join(c.root, n, "wal.log"))
    assert len({sha256_log(c.log_dir(n)) for n in c.names}) == 1
    disk = {f.offset: f.record().key for f in iter_log_frames(c.log_dir("node1"))}
    assert [(k, o) for k, o in acked if disk.get(o) != k] == []
    for n in c.names:
        c.stop(n)
    c.start_all()
    base, last = list_segments(c.log_dir("node1"))[-1]
    end = base + os.path.getsize(last)
    wait_until(lambda: c.status("node1")["end"] == end, 30, "node1 to recover its whole log")
    with c.client() as cl:
        for key, _ in acked[::500]:
            assert cl.read(key).value is not None
        assert cl.set(b"after-restart", b"1").offset >= end
    c.wait_converged(timeout=60)
