"""Recovery: a torn tail is cut to the previous boundary and saved; corruption is refused."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from daemon.wal import CLEAN, CORRUPT, TORN, LogCorrupt, Record, iter_frames, open_log, scan_path


def build(path: str, n: int) -> list[tuple[int, int]]:
    w, _ = open_log(path)
    placed = [w.append(Record("set", f"k{i}".encode(), f"value-{i}".encode() * 3), 1) for i in range(n)]
    w.close()
    return placed


def test_cut_anywhere_inside_the_last_record_recovers_to_the_previous_boundary(tmp_path):
    src = str(tmp_path / "src.wal")
    placed = build(src, 5)
    data = open(src, "rb").read()
    last_off, last_size = placed[-1]
    for cut in range(last_off, last_off + last_size + 1):
        p = str(tmp_path / f"cut{cut}.wal")
        with open(p, "wb") as f:
            f.write(data[:cut])
        r = scan_path(p)
        if cut in (last_off, last_off + last_size):
            assert r.status == CLEAN
            continue
        assert r.status == TORN and r.valid_end == last_off, cut
        w, res = open_log(p)
        w.close()
        assert os.path.getsize(p) == last_off and res.dropped == cut - last_off
        with open(f"{p}.torn-{last_off}", "rb") as f:
            assert f.read() == data[last_off:cut]  # evidence kept before truncating
        assert scan_path(p).status == CLEAN


def test_corruption_is_refused_and_the_file_left_untouched(tmp_path):
    p = str(tmp_path / "c.wal")
    placed = build(p, 10)
    with open(p, "r+b") as f:
        f.seek(placed[3][0] + 25)
        b = f.read(1)
        f.seek(placed[3][0] + 25)
        f.write(bytes([b[0] ^ 0x40]))
    before = open(p, "rb").read()
    with pytest.raises(LogCorrupt) as e:
        open_log(p)
    assert f"corruption at offset {placed[3][0]}" in str(e.value)
    assert open(p, "rb").read() == before
    assert scan_path(p).status == CORRUPT


CHILD = r"""
import sys
from daemon.wal import open_log, Record
w, _ = open_log(sys.argv[1])
i = int(sys.argv[2])
while True:
    off, size = w.append(Record("set", f"k{i}".encode(), (f"v{i}-" * 8).encode()), 1)
    sys.stdout.write(f"{off} {size} {i}\n")
    sys.stdout.flush()
    i += 1
"""


def test_kill_minus_9_at_random_moments_loses_no_reported_record(tmp_path):
    p = str(tmp_path / "crash.wal")
    rnd = random.Random(42)
    reported: dict[int, tuple[int, int]] = {}
    next_i = 0
    for round_ in range(22):
        child = subprocess.Popen([sys.executable, "-c", CHILD, p, str(next_i)], stdout=subprocess.PIPE, text=True,
                                 cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        # The kill lands at a random moment of its appends, not of its start-up: the first report says
        # it is appending (on a loaded machine importing alone took longer than the old fixed sleep).
        assert child.stdout is not None
        first = child.stdout.readline()
        time.sleep(rnd.random() * 0.1)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
        for line in (first + out).splitlines():
            parts = line.split()
            if len(parts) == 3:  # a half-printed last line is not a report
                off, size, i = map(int, parts)
                reported[i] = (off, size)
                next_i = max(next_i, i + 1)
        w, _ = open_log(p)  # recovery
        w.close()
        assert scan_path(p).status == CLEAN
    assert len(reported) > 100
    on_disk = {f.offset: (f.size, f.record()) for f in iter_frames(p)}
    for i, (off, size) in reported.items():
        assert off in on_disk, f"record {i} reported at {off} is gone"
        got_size, rec = on_disk[off]
        assert got_size == size and rec.key == f"k{i}".encode()


def test_the_caller_is_told_of_a_cut_before_the_bytes_are_removed(log_path):
    from daemon.wal import encode_frame, open_log
    from daemon.wal.format import Record

    with open(log_path, "wb") as f:
        f.write(encode_frame(Record("set", b"k", b"v"), 1))
        f.write(encode_frame(Record("set", b"k2", b"v2"), 1)[:-3])  # a torn last record
    seen = []

    def before_cut(scan):
        seen.append((scan.valid_end, os.path.getsize(log_path)))

    w, scan = open_log(log_path, before_cut=before_cut)
    w.close()
    assert seen == [(scan.valid_end, scan.file_size)]  # the file still held the torn bytes
    assert os.path.getsize(log_path) == scan.valid_end
