"""Snapshot transfer's pieces without processes: the messages (bad input refused), the leader's and the
follower's decisions (daemon/node/transfer.py, LeaderCore, FollowerCore), and the install on real files
with a crash before each step (recovery finds the old state or the installed one, never a mix)."""

from __future__ import annotations

import os

import msgpack
import pytest

from daemon.node import install
from daemon.node import snapshot as snap
from daemon.node.install import FileTransfer
from daemon.node.kv import KVState
from daemon.node.leader_core import LeaderCore, SendChunk, SendControl, SendSnapshot
from daemon.node.transfer import Partial, SnapInfo, chunk_fits, resume_pos, serve_range, wants_snapshot
from daemon.wal.segments import list_segments
from daemon.wire.replication import (BadMessage, Fetch, FetchSnapshot, Refuse, SnapshotChunk, SnapshotNeeded,
                                     decode_from_leader, decode_to_leader, encode, encode_fetch_snapshot)
from follower.core import FollowerCore, Refetch, StartTransfer, WriteChunk
from test_snapshots import full_replay, log_file, make_node, records, state_of, take

_pack = msgpack.Packer(use_bin_type=True).pack

# -- the messages ---------------------------------------------------------------------


def test_messages_round_trip():
    for m in (SnapshotNeeded(3, "n1", 1000, 200, 0xDEADBEEF, 1500),
              SnapshotChunk(3, "n1", 1000, 7, 64, 200, b"x" * 10)):
        assert decode_from_leader(encode(m)) == m
    f = FetchSnapshot("n2", 3, 1000, 7, 64, 4096)
    assert decode_to_leader([b"id", encode_fetch_snapshot(f)], 1 << 20) == f


@pytest.mark.parametrize("frames", [
    [_pack({"t": "snapshot_needed", "epoch": 1, "leader": "n1", "offset": 0, "size": 5, "crc": 1, "end": 9})],
    [_pack({"t": "snapshot_needed", "epoch": 1, "leader": "n1", "offset": 9, "size": 0, "crc": 1, "end": 9})],
    [_pack({"t": "snapshot_needed", "epoch": 1, "leader": "n1", "offset": 9, "size": 5, "crc": 1, "end": 8})],
    [_pack({"t": "snapshot_needed", "epoch": 1, "leader": "n1", "offset": 9, "size": 5, "crc": 2**32, "end": 9})],
    [_pack({"t": "snapshot_needed", "epoch": 1, "leader": "n1", "offset": 9, "size": 5, "crc": -1, "end": 9})],
    [_pack({"t": "snapshot_chunk", "epoch": 1, "leader": "n1", "offset": 9, "crc": 1, "pos": 4, "size": 5}), b"ab"],
    [_pack({"t": "snapshot_chunk", "epoch": 1, "leader": "n1", "offset": 9, "crc": 1, "pos": 0, "size": 5}), b""],
    [_pack({"t": "snapshot_chunk", "epoch": 1, "leader": "n1", "offset": 9, "crc": 1, "pos": 0, "size": 5})],
    [_pack({"t": "snapshot_chunk", "epoch": 1, "leader": "n1", "offset": "9", "crc": 1, "pos": 0, "size": 5}),
     b"a"],
])
def test_bad_messages_from_a_leader_are_refused(frames):
    with pytest.raises(BadMessage):
        decode_from_leader(frames)


@pytest.mark.parametrize("m", [
    {"t": "fetch_snapshot", "name": "n2", "epoch": 1, "offset": 9, "crc": 1, "pos": 0, "max": 0},
    {"t": "fetch_snapshot", "name": "", "epoch": 1, "offset": 9, "crc": 1, "pos": 0, "max": 5},
    {"t": "fetch_snapshot", "name": "n2", "epoch": 1, "offset": 9, "crc": 1, "pos": -1, "max": 5},
    {"t": "fetch_snapshot", "name": "n2", "epoch": 1, "offset": 9, "pos": 0, "max": 5},
])
def test_bad_snapshot_fetches_are_refused(m):
    with pytest.raises(BadMessage):
        decode_to_leader([b"id", _pack(m)], 1 << 20)


# -- the decisions ----------------------------------------------------------------------


def test_when_the_leader_sends_the_snapshot_instead_of_log():
    s = SnapInfo(1000, 100, 7)
    assert wants_snapshot(0, 0, 2000, s)  # an empty follower: the snapshot is smaller than the log below it
    assert not wants_snapshot(0, 0, 2000, SnapInfo(1000, 1000, 7))  # not smaller: the log is sent
    assert not wants_snapshot(10, 0, 2000, s)  # it has a log we hold: log bytes from its end
    assert wants_snapshot(10, 500, 2000, s)  # below our oldest offset: only the snapshot holds it
    assert not wants_snapshot(1000, 1000, 2000, s)  # at the snapshot: log bytes
    assert not wants_snapshot(0, 0, 2000, None)
    assert not wants_snapshot(0, 0, 900, s)  # never a snapshot beyond our end


def core(end: int = 2000) -> LeaderCore:
    kv = KVState()
    kv.end = end
    return LeaderCore(name="n1", epoch=2, end=end, kv=kv, history=[(1, 0), (2, 800)], followers=["n2", "n3"],
                      ack_replicas=1, replication_timeout=1.0, heartbeat_interval=0.1, max_uncommitted_bytes=1 << 20,
                      batch_max_records=10, batch_max_bytes=1 << 20)


def test_leader_core_offers_the_snapshot_and_serves_it_by_position():
    c = core()
    c.snap, c.fetch_max = SnapInfo(1000, 300, 7), 128
    out = c.on_fetch(Fetch("n2", 2, 0, 0), [b"e"], 1.0)
    need = [a.msg for a in out if isinstance(a, SendControl)]
    assert need == [SnapshotNeeded(2, "n1", 1000, 300, 7, 2000)], out
    assert c.on_fetch(Fetch("n3", 2, 900, 2), [b"e"], 1.0)[-1] == SendChunk("n3", [b"e"], 900)
    c.oldest = 1000
    assert isinstance(c.on_fetch(Fetch("n3", 2, 900, 2), [b"e"], 1.0)[-1].msg, SnapshotNeeded)
    a = c.on_fetch_snapshot(FetchSnapshot("n2", 2, 1000, 7, 256, 4096), [b"e"], 2.0)
    assert a == [SendSnapshot("n2", [b"e"], 1000, 7, 256, 44, 300)]  # capped by the rest of the file
    assert c.on_fetch_snapshot(FetchSnapshot("n2", 2, 1000, 7, 0, 4096), [b"e"], 2.0)[0].n == 128  # fetch_max
    assert "n2" in c.transfers
    again = c.on_fetch_snapshot(FetchSnapshot("n2", 2, 1000, 8, 0, 4096), [b"e"], 2.0)  # another file
    assert isinstance(again[0].msg, SnapshotNeeded)
    c.snap = None
    assert isinstance(c.on_fetch(Fetch("n3", 2, 900, 2), [b"e"], 1.0)[-1].msg, Refuse)  # below oldest, nothing
    assert serve_range(FetchSnapshot("n2", 2, 1000, 7, 300, 9), SnapInfo(1000, 300, 7), 9) is None


def test_follower_core_resumes_the_same_file_and_restarts_another():
    offer = SnapshotNeeded(2, "n1", 1000, 300, 7, 2000)
    assert resume_pos(None, offer) == 0
    assert resume_pos(Partial(1000, 7, 120), offer) == 120
    assert resume_pos(Partial(1000, 8, 120), offer) == 0  # same offset, another file
    assert resume_pos(Partial(900, 7, 120), offer) == 0
    assert resume_pos(Partial(1000, 7, 301), offer) == 0
    f = FollowerCore("n2", 2, 0, 0, 0, 128)
    f.transfer = Partial(1000, 7, 120)
    d = f.on_message(offer)
    assert d == StartTransfer(1000, 7, 300, 120, 2000)
    assert f.fetch_snapshot_msg() == FetchSnapshot("n2", 2, 1000, 7, 120, 128)
    assert isinstance(f.on_message(SnapshotChunk(2, "n1", 1000, 7, 0, 300, b"a")), Refetch)  # not our position
    assert isinstance(f.on_message(SnapshotChunk(2, "n1", 1000, 9, 120, 300, b"a")), Refetch)  # another file
    assert f.on_message(SnapshotChunk(2, "n1", 1000, 7, 120, 300, b"ab")) == WriteChunk(120, b"ab")
    assert not f.chunk_written(2) and f.transfer.pos == 122
    assert f.chunk_written(178)
    assert isinstance(FollowerCore("n2", 2, 1000, 2, 0, 128).on_message(offer), Refetch)  # not beyond our end
    assert isinstance(FollowerCore("n2", 3, 0, 0, 0, 128).on_message(offer), Refetch)  # a stale leader
    assert chunk_fits(None, SnapshotChunk(2, "n1", 1000, 7, 0, 300, b"a"))


# -- the install on real files, a crash before each step ---------------------------------


class Crash(Exception):
    pass


def _node(d):
    d.mkdir(exist_ok=True)
    return make_node(d)


def _leader_snapshot(tmp_path) -> tuple[bytes, KVState]:
    lead = _node(tmp_path / "lead")
    path = log_file(lead)
    with open(path, "wb") as f:
        f.write(records(300))
    out = take(lead.me.data_dir, path)
    return snap.read(out), full_replay(path)


def _follower(tmp_path):
    node = _node(tmp_path / "fol")
    with open(log_file(node), "wb") as f:
        f.write(records(100))  # a prefix of the leader's log, below the snapshot
    return node


@pytest.mark.parametrize("crash_at", [0, 1, 2, 3, 4])
def test_a_crash_at_each_install_step_recovers_the_old_state_or_the_installed_one(tmp_path, monkeypatch, crash_at):
    data, want = _leader_snapshot(tmp_path)
    crc, offset = snap.header_crc(data), want.end
    node = _follower(tmp_path)
    old_end = len(records(100))
    t = FileTransfer(node.me.data_dir, node.cfg.retry_window_seconds)
    t.begin(offset, crc, 0)
    t.write(0, data[:1000])
    t.close()
    t.begin(offset, crc, 1000)  # a resume keeps the bytes written before
    t.write(1000, data[1000:])
    real_rename, real_fsync = os.rename, install.fsync_dir
    calls = {"n": 0}

    def step(*a):
        calls["n"] += 1
        if calls["n"] > crash_at:
            raise Crash()

    def rename(*a):
        step()
        real_rename(*a)

    def fsync_dir(p):
        real_fsync(p)

    monkeypatch.setattr(install.os, "rename", rename)
    monkeypatch.setattr(install, "fsync_dir", fsync_dir)
    try:
        assert t.install(offset, crc, len(data)) == ""
        done = True
    except Crash:
        done = False
    monkeypatch.setattr(install.os, "rename", real_rename)
    assert done == (crash_at >= 3)
    # kill -9 here: a new process recovers the data directory.
    again = _node(tmp_path / "fol")
    again.open_log()
    end = again.writer.end
    bases = [b for b, _ in list_segments(again.me.log_dir)]
    again.writer.close()
    if crash_at == 0:  # before the snapshot was in place: the old log, the transfer's bytes kept to resume
        assert end == old_end and bases == [0]
        assert state_of(again.kv) == state_of(full_replay(os.path.join(tmp_path / "fol", "n1", "log",
                                                                       "00000000000000000000.seg")))
        assert FileTransfer(again.me.data_dir, 60).partial() == Partial(offset, crc, len(data))
    else:  # the snapshot is in place: the install is finished, all of it
        assert end == offset and bases == [offset]
        assert state_of(again.kv) == state_of(want)
        assert not os.path.exists(os.path.join(again.me.data_dir, install.REPLACED))
        assert not os.path.exists(os.path.join(again.me.data_dir, install.INSTALLING))


def test_a_damaged_transfer_is_not_installed(tmp_path):
    data, want = _leader_snapshot(tmp_path)
    node = _follower(tmp_path)
    t = FileTransfer(node.me.data_dir, node.cfg.retry_window_seconds)
    crc = snap.header_crc(data)
    t.begin(want.end, crc, 0)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 1
    t.write(0, bytes(bad))
    why = t.install(want.end, crc, len(data))
    assert "checksum" in why
    assert [b for b, _ in list_segments(node.me.log_dir)] == [0]  # the old log stands
    assert snap.listing(snap.snapshot_dir(node.me.data_dir)) == ([], [])  # the temp file is gone
    t.begin(want.end, crc + 1, 0)
    t.write(0, data)
    assert "crc" in t.install(want.end, crc + 1, len(data))  # not the file offered
    assert [b for b, _ in list_segments(node.me.log_dir)] == [0]
