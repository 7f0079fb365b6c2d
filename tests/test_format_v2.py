"""Format v2: a header with its own checksum tells a torn tail from mid-log damage.

The story (issue 20, "a power loss can keep a node down"): a client writes a
value that happens to contain a whole zwal frame; the power goes while that
record is written, and the part that landed holds the inner frame. With v1
(one CRC over the whole frame) recovery cannot trust the length, finds the
inner frame, takes it for a later record and refuses to start. With v2 the
header passes its own checksum, so its length is trusted: the bytes are the
torn record's own, and recovery cuts them as a torn tail.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess

import pytest

from conftest import ROOT, ZWAL
from daemon.wal import LogCorrupt, open_log
from daemon.wal.format import (
    HEADER_SIZE,
    HEADER_SIZE_V1,
    FrameStatus,
    Record,
    encode_frame,
    encode_frame_v1,
    frame_sizes,
    parse_frame,
)
from daemon.wal.reader import CLEAN, CORRUPT, TORN, read_chunk, scan_buffer


def _log(enc, n: int = 3, start: int = 0) -> bytes:
    return b"".join(enc(Record("set", f"k{start + i}".encode(), b"v" * 20), 1) for i in range(n))


def _torn_record_holding_a_frame(enc) -> bytes:
    """The landed part of a record whose value contains a whole valid frame:
    everything up to just past the inner frame, the rest never written."""
    inner = enc(Record("set", b"inner", b"looks like a record"), 1)
    value = b"A" * 40 + inner + b"B" * 4000
    frame = enc(Record("set", b"blob", value), 1)
    cut = frame.index(inner) + len(inner) + 10
    return frame[:cut]


def test_v1_torn_record_holding_a_frame_is_refused_as_corruption():
    """The limit of v1, kept for v1 frames: the length has no checksum of its own."""
    good = _log(encode_frame_v1)
    r = scan_buffer(good + _torn_record_holding_a_frame(encode_frame_v1))
    assert r.status == CORRUPT and r.bad_offset == len(good)


def test_v2_same_power_loss_is_a_torn_tail():
    good = _log(encode_frame)
    r = scan_buffer(good + _torn_record_holding_a_frame(encode_frame))
    assert r.status == TORN and r.valid_end == len(good) and r.records == 3
    assert "header passes its checksum" in r.reason


def test_v2_body_that_fails_its_crc_at_eof_is_torn_even_with_a_frame_inside():
    """The file size landed but pages of the payload did not (zeros), one later page did."""
    good = _log(encode_frame)
    inner = encode_frame(Record("set", b"inner", b"x" * 30), 1)
    frame = bytearray(encode_frame(Record("set", b"blob", bytes(3000) + inner + bytes(100)), 1))
    frame[HEADER_SIZE + 10 : HEADER_SIZE + 2000] = b"\x01" * 1990  # not the bytes written
    r = scan_buffer(good + bytes(frame))
    assert r.status == TORN and r.valid_end == len(good) and "body checksum" in r.reason


def test_v2_last_two_records_with_damaged_payloads_are_a_cut_not_a_refusal():
    """Both headers pass their checksum, both payloads fail theirs: nothing intact follows the
    first bad byte, so recovery cuts (and the node marks the cut for its followers to repair);
    refusing here kept a leader down that the simulator showed could heal."""
    good = _log(encode_frame)
    tail = bytearray(_log(encode_frame, 2, start=10))
    n = len(tail) // 2
    for off in (HEADER_SIZE + 3, n + HEADER_SIZE + 3):
        tail[off] ^= 0xFF
    r = scan_buffer(good + bytes(tail))
    assert r.status == TORN and r.valid_end == len(good), (r.status, r.reason)
    tail += _log(encode_frame, 1, start=20)  # an intact record after them: that is mid-log damage
    assert scan_buffer(good + bytes(tail)).status == CORRUPT


def test_power_loss_on_a_real_file_v1_refuses_v2_recovers(tmp_path):
    for enc, ok in ((encode_frame_v1, False), (encode_frame, True)):
        p = str(tmp_path / f"wal-{ok}.log")
        good = _log(enc)
        with open(p, "wb") as f:
            f.write(good + _torn_record_holding_a_frame(enc))
        if not ok:
            with pytest.raises(LogCorrupt):
                open_log(p)
            continue
        w, scan = open_log(p)
        try:
            assert scan.status == TORN and w.end == len(good) == os.path.getsize(p)
            w.append(Record("set", b"after", b"the crash"))
        finally:
            w.close()
        assert os.path.exists(f"{p}.torn-{len(good)}")  # the cut bytes are saved aside


@pytest.mark.parametrize("where", ["header", "body"])
def test_v2_mid_log_damage_is_still_refused(where):
    buf = bytearray(_log(encode_frame, 5))
    third = 2 * (len(buf) // 5)
    buf[third + (5 if where == "header" else HEADER_SIZE + 3)] ^= 0x40
    r = scan_buffer(bytes(buf))
    assert r.status == CORRUPT and r.bad_offset == third and r.records == 2


def test_bad_header_crc_at_the_end_is_a_garbage_tail_and_body_crc_before_a_frame_is_corrupt():
    good = _log(encode_frame)
    last = bytearray(encode_frame(Record("set", b"k", b"v" * 50), 1))
    last[8] ^= 0x01  # the epoch: covered by the header checksum
    assert parse_frame(bytes(last), 0)[0] == FrameStatus.BAD_HEADER_CRC
    r = scan_buffer(good + bytes(last))
    assert r.status == TORN and "header that fails its checksum" in r.reason
    body = bytearray(encode_frame(Record("set", b"k", b"v" * 50), 1))
    body[-1] ^= 0x01
    assert parse_frame(bytes(body), 0)[0] == FrameStatus.BAD_BODY_CRC
    r = scan_buffer(good + bytes(body) + _log(encode_frame, 1, 9))
    assert r.status == CORRUPT and r.bad_offset == len(good)
    assert scan_buffer(good + bytes(body) + bytes(512)).status == TORN  # zeros after: unwritten space


def test_mixed_v1_then_v2_log_scans_and_cuts_per_frame(tmp_path):
    old, new = _log(encode_frame_v1, 4), _log(encode_frame, 4, 4)
    buf = old + new
    r = scan_buffer(buf)
    assert r.status == CLEAN and r.records == 8 and r.v1_records == 4
    sizes = frame_sizes(buf)
    assert sizes[:4] == [len(old) // 4] * 4 and sizes[4:] == [len(new) // 4] * 4
    assert sizes[0] + HEADER_SIZE - HEADER_SIZE_V1 == sizes[4]
    p = tmp_path / "mixed.log"
    p.write_bytes(buf)
    fd = os.open(p, os.O_RDONLY)
    try:
        chunk = read_chunk(fd, 0, len(buf), len(old) + 1)  # cut at a frame boundary across versions
    finally:
        os.close(fd)
    assert chunk == old


def test_follower_accepts_a_chunk_of_both_versions():
    from follower.core import Append, FollowerCore

    c = FollowerCore("n2", 1, 0, 0, 0, 1 << 20)
    data = _log(encode_frame_v1, 2) + _log(encode_frame, 2, 2)
    out = c._check_frames(data, 1)
    assert isinstance(out, Append) and [f.version for f, _ in out.frames] == [1, 1, 2, 2]


def _zwal(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ZWAL, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_upgrade_rewrites_a_v1_log_and_its_history_and_keeps_the_original(tmp_path):
    old = _log(encode_frame_v1, 3) + b"".join(encode_frame_v1(Record("set", b"e2", b"v"), 2) for _ in range(2))
    (tmp_path / "wal.log").write_bytes(old)
    e2 = 3 * len(encode_frame_v1(Record("set", b"k0", b"v" * 20), 1))
    state = {"version": 1, "role": "follower", "epoch": 3, "leader": "n1", "history": [[1, 0], [2, e2], [3, len(old)]],
             "led_epoch": 0, "voted_for": "n1", "confirm_from": None, "damaged_end": None}
    (tmp_path / "node-state.json").write_text(json.dumps(state))
    (tmp_path / "clean-stop.json").write_text(json.dumps({"end": len(old)}))
    r = _zwal("log", "upgrade", "wal.log", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "wal.log.v1").read_bytes() == old
    new = (tmp_path / "wal.log").read_bytes()
    scan = scan_buffer(new)
    assert scan.status == CLEAN and scan.records == 5 and scan.v1_records == 0 and len(new) == len(old) + 5 * 4
    assert [f.record() for f in map(lambda p: parse_frame(new, p)[1], [0])] == [Record("set", b"k0", b"v" * 20)]
    st = json.loads((tmp_path / "node-state.json").read_text())
    assert st["history"] == [[1, 0], [2, e2 + 3 * 4], [3, len(new)]] == [list(x) for x in scan.epoch_starts] + [[3, len(new)]]
    assert json.loads((tmp_path / "clean-stop.json").read_text()) == {"end": len(new)}
    again = _zwal("log", "upgrade", "wal.log", cwd=str(tmp_path))
    assert again.returncode == 0 and "already version 2" in again.stdout


def test_upgrade_refuses_a_running_nodes_locked_log(tmp_path):
    old = _log(encode_frame_v1, 3)
    p = tmp_path / "wal.log"
    p.write_bytes(old)
    fd = os.open(p, os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running node holds it
    try:
        r = _zwal("log", "upgrade", "wal.log", cwd=str(tmp_path))
    finally:
        os.close(fd)
    assert r.returncode == 1 and "locked" in r.stderr and "stop the node" in r.stderr
    assert p.read_bytes() == old and not (tmp_path / "wal.log.v1").exists()


def test_upgrade_refuses_a_torn_log_and_changes_nothing(tmp_path):
    old = _log(encode_frame_v1, 3) + encode_frame_v1(Record("set", b"x", b"y" * 30), 1)[:-5]
    (tmp_path / "wal.log").write_bytes(old)
    r = _zwal("log", "upgrade", "wal.log", cwd=str(tmp_path))
    assert r.returncode == 1 and "zwal log recover" in r.stderr
    assert (tmp_path / "wal.log").read_bytes() == old and sorted(os.listdir(tmp_path)) == ["wal.log"]
