"""Retention's mechanism on the segmented log (SegmentedLog.retire, recovery's finish_retirement)."""

import os

import pytest

from daemon.wal import Record
from daemon.wal.segments import (DELETED, OLDEST_NOTE, OffsetCompacted, SegmentGap, finish_retirement, open_segments,
                                 read_oldest)


def filled(tmp_path, n=40, segment_bytes=65536):
    ldir = str(tmp_path / "log")
    os.makedirs(ldir)
    log, _ = open_segments(ldir, segment_bytes=segment_bytes)
    for i in range(n):
        log.append_batch([Record("set", f"k{i}".encode(), b"v" * 4000)], epoch=1)
    return ldir, log


def test_retire_moves_the_oldest_first_then_deletes_and_reads_below_are_compacted(tmp_path):
    ldir, log = filled(tmp_path)
    bases = [b for b, _ in log.segments]
    assert len(bases) >= 3
    end = log.end
    gone = log.retire(bases[2], reason="test")
    assert [b for b, _, _ in gone] == bases[:2]
    assert read_oldest(ldir) == bases[2] and log.oldest == bases[2]
    assert sorted(os.listdir(ldir)) == sorted([OLDEST_NOTE] + [os.path.basename(p) for _, p in log.segments])
    with pytest.raises(OffsetCompacted):
        log.read_chunk(0, end, 4096)
    assert log.read_chunk(bases[2], end, 4096)  # what stays is readable
    log.close()
    log, scan = open_segments(ldir, replay_from=bases[2], segment_bytes=65536)
    assert log.oldest == bases[2] and log.end == end
    log.close()


def test_the_last_segment_and_non_bases_are_refused(tmp_path):
    ldir, log = filled(tmp_path)
    bases = [b for b, _ in log.segments]
    with pytest.raises(ValueError, match="not the base"):
        log.retire(bases[1] + 1, reason="test")
    assert log.retire(bases[0], reason="test") == []  # nothing below the first
    log.close()


@pytest.mark.parametrize("crash_after", ["note", "rename"])
def test_recovery_finishes_a_pass_a_crash_interrupted(tmp_path, crash_after):
    ldir, log = filled(tmp_path)
    segs = log.segments
    end = log.end
    log.close()
    # the state a crash leaves: the note written, then (maybe) the first file renamed, nothing unlinked
    from daemon.wal.segments import _write_oldest
    _write_oldest(ldir, segs[2][0])
    if crash_after == "rename":
        os.rename(segs[0][1], segs[0][1] + DELETED)
    log, _ = open_segments(ldir, replay_from=segs[2][0], segment_bytes=65536)
    assert [b for b, _ in log.segments][0] == segs[2][0] and log.end == end
    left = os.listdir(ldir)
    assert not any(n.endswith(DELETED) for n in left)
    assert os.path.basename(segs[0][1]) not in left and os.path.basename(segs[1][1]) not in left
    log.close()


def test_a_note_naming_no_segment_is_refused_and_nothing_changes(tmp_path):
    ldir, log = filled(tmp_path)
    segs = log.segments
    log.close()
    from daemon.wal.segments import _write_oldest
    _write_oldest(ldir, segs[1][0] + 7)
    before = sorted(os.listdir(ldir))
    with pytest.raises(SegmentGap, match="no segment starts there"):
        finish_retirement(ldir)
    assert sorted(os.listdir(ldir)) == before


def test_the_oldest_is_durable_before_any_file_goes(tmp_path, monkeypatch):
    """KAFKA-16073's order: a crash at the first rename finds the note already naming the new oldest."""
    ldir, log = filled(tmp_path)
    bases = [b for b, _ in log.segments]
    seen = []
    real_rename = os.rename

    class Crash(BaseException):
        """The process dies here (an OSError from the rename is a refusal the node survives:
        tests/test_retention_faults.py)."""

    def crash(src, dst):
        if not str(src).endswith(".seg"):
            return real_rename(src, dst)
        seen.append(read_oldest(ldir))
        raise Crash()

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(Crash):
        log.retire(bases[2], reason="test")
    assert seen and seen[0] == bases[2]
