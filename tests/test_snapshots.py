"""Snapshot files (daemon/node/snapshot.py) and recovery from them (Node.open_log), on real files.

The rule under test is etcd's: a snapshot that fails a check is renamed and
logged, an older one or a full replay is used, and the state after recovery
is always the state a full replay of the log gives.
"""

from __future__ import annotations

import io
import os
import signal
import time

import pytest

from daemon import config as config_mod
from daemon.node import snapshot as snap
from daemon.node import snapshot_load
from daemon.node.kv import KVState
from daemon.node.node import Node
from daemon.node.snapshot_writer import ForkSnapshots, ThreadSnapshots, copy_state
from daemon.node.snapshotting import Snapshotter, due
from daemon.node.zmq_ports import LogEvents
from daemon.ops import logs
from daemon.wal import open_log, scan_path
from daemon.wal.format import Record, encode_frame
from daemon.wal.reader import scan_fd


@pytest.fixture
def logged():
    buf = io.StringIO()
    logs.setup(node="t", stream=buf)
    yield buf
    logs.setup(node=None)


def log_file(node) -> str:
    """The node's log as one file: its first segment (these logs stay far below segment_bytes)."""
    from daemon.wal.segments import segment_name
    os.makedirs(node.me.log_dir, exist_ok=True)
    return os.path.join(node.me.log_dir, segment_name(0))


def records(n: int, start: int = 0, epoch: int = 1) -> bytes:
    return b"".join(
        encode_frame(Record("set" if i % 7 else "del", b"k%d" % (i % 37), b"v%d" % i if i % 7 else None,
                            b"c%d" % (i % 5), i, 1_000_000 + i * 10), epoch)
        for i in range(start, start + n))


def state_of(kv: KVState) -> tuple:
    w = kv.window
    clients = [(cid, c.ts, list(c.ids.items())) for cid, c in w._by_client.items()]
    return (kv.data, kv.records, kv.end, kv.last, kv.epoch_starts, w.clock, w._first, w.bytes, clients)


def full_replay(path: str) -> KVState:
    kv = KVState()
    scan_path(path, kv.apply_frame)
    return kv


def make_node(tmp_path, **settings) -> Node:
    cfg_path = tmp_path / "cluster.toml"
    extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
    cfg_path.write_text(f'[cluster]\nbootstrap_leader = "node1"\nsecurity = "none"\n{extra}'
                        f'[[node]]\nname = "node1"\ndata_dir = "n1"\nclient_endpoint = "tcp://127.0.0.1:1"\n'
                        f'repl_endpoint = "tcp://127.0.0.1:2"\n')
    return Node(config_mod.load(str(cfg_path)), "node1")


def append(node_or_path, data: bytes) -> None:
    path = log_file(node_or_path) if isinstance(node_or_path, Node) else node_or_path
    w, _ = open_log(path)
    w.append_frames(data)
    w.close()


def take(data_dir: str, log_path: str) -> str:
    """A snapshot of the log as it is (its whole length), written as the node writes one."""
    kv = full_replay(log_path)
    with open(log_path, "rb") as f:
        f.seek(kv.last.offset)
        crc = int.from_bytes(f.read(4), "little")
    return snap.write_file(snap.snapshot_dir(data_dir), kv.end, snap.encode(kv, crc))


def recover(node: Node) -> Node:
    node.open_log()
    node.writer.close()
    node.writer = None
    return node


# -- the format -------------------------------------------------------------------


def test_encode_decode_gives_the_replayed_state(tmp_path):
    log = str(tmp_path / "wal.log")
    append(log, records(500) + records(300, 500, epoch=3))
    kv = full_replay(log)
    loaded = snap.decode(b"".join(snap.encode(kv, 77)), 300.0)
    assert state_of(loaded.kv) == state_of(kv)
    assert loaded.header.offset == kv.end and loaded.header.last_crc == 77 and loaded.header.records == 800
    assert loaded.epoch_starts == [(1, 0), (3, kv.epoch_starts[1][1])]


def test_every_flipped_byte_and_every_cut_is_refused(tmp_path):
    log = str(tmp_path / "wal.log")
    append(log, records(40))
    buf = b"".join(snap.encode(full_replay(log), 5))
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x20
        with pytest.raises(snap.SnapshotError):
            snap.decode(bytes(bad), 300.0)
    for n in range(len(buf)):
        with pytest.raises(snap.SnapshotError):
            snap.decode(buf[:n], 300.0)
    with pytest.raises(snap.SnapshotError, match="after the last chunk"):
        snap.decode(buf + b"\0", 300.0)


def test_a_damaged_chunk_is_named(tmp_path):
    log = str(tmp_path / "wal.log")
    append(log, records(40))
    parts = snap.encode(full_replay(log), 5)
    chunk = bytearray(parts[2])  # the KV chunk: its checksum must catch a changed value
    chunk[-3] ^= 1
    with pytest.raises(snap.SnapshotError, match="chunk 1 .* fails its checksum"):
        snap.decode(b"".join([parts[0], parts[1], bytes(chunk), *parts[3:]]), 300.0)


def test_replay_from_decodes_only_the_tail(tmp_path):
    log = str(tmp_path / "wal.log")
    append(log, records(100))
    mid = full_replay(log).end
    append(log, records(30, 100))
    fd = os.open(log, os.O_RDONLY)
    try:
        seen = []
        r = scan_fd(fd, lambda f, rec: seen.append(f.offset), None, mid)
        assert (r.status, r.records, r.replayed, r.replayed_from) == ("clean", 130, 30, mid)
        assert seen[0] == mid and len(seen) == 30
        inside = scan_fd(fd, None, None, mid - 3)  # not a frame boundary: replay begins at the next one
        assert inside.replayed_from == mid and inside.replayed == 30
    finally:
        os.close(fd)


# -- recovery from snapshots --------------------------------------------------------------


def test_restart_from_snapshot_equals_full_replay(tmp_path, logged):
    node = make_node(tmp_path)
    append(node, records(200))
    take(node.me.data_dir, log_file(node))
    append(node, records(50, 200))
    recover(node)
    assert node.scan.replayed == 50 and node.kv.records == 250
    assert state_of(node.kv) == state_of(full_replay(log_file(node)))
    assert "snapshot=" in logged.getvalue() and "replayed=50" in logged.getvalue()


def test_broken_snapshot_is_renamed_and_the_older_one_used(tmp_path, logged):
    node = make_node(tmp_path)
    append(node, records(100))
    older = take(node.me.data_dir, log_file(node))
    append(node, records(100, 100))
    newer = take(node.me.data_dir, log_file(node))
    with open(newer, "r+b") as f:  # one bit in the middle of a chunk
        f.seek(os.path.getsize(newer) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 4]))
    append(node, records(10, 200))
    recover(node)
    assert not os.path.exists(newer) and os.path.exists(newer + ".broken")
    assert node.scan.replayed == 110  # from the older snapshot
    assert snap.offset_of(os.path.basename(older)) == node.scan.replayed_from
    assert state_of(node.kv) == state_of(full_replay(log_file(node)))
    out = logged.getvalue()
    assert "event=snapshot_broken" in out and "fails its checksum" in out


def test_snapshot_beyond_the_log_end_is_not_used(tmp_path, logged):
    node = make_node(tmp_path)
    append(node, records(100))
    keep = os.path.getsize(log_file(node))
    append(node, records(100, 100))
    s = take(node.me.data_dir, log_file(node))
    os.truncate(log_file(node), keep)  # the disk lost the bytes the snapshot covers
    recover(node)
    assert node.scan.replayed == 100 and node.scan.replayed_from == 0  # a full replay
    assert not os.path.exists(s) and os.path.exists(s + snapshot_load.BEYOND_END)
    assert state_of(node.kv) == state_of(full_replay(log_file(node)))
    assert "event=snapshot_not_used" in logged.getvalue()


def test_snapshot_of_another_log_prefix_is_not_used(tmp_path, logged):
    node = make_node(tmp_path)
    append(node, records(100))
    s = take(node.me.data_dir, log_file(node))
    os.unlink(log_file(node))
    append(node, records(100, epoch=2))  # the same frame sizes, another epoch: the last frame differs
    recover(node)
    assert node.scan.replayed_from == 0 and os.path.exists(s + ".broken")
    assert state_of(node.kv) == state_of(full_replay(log_file(node)))
    assert "is not the one the snapshot ends with" in logged.getvalue()


def test_a_changed_retry_window_replays_the_log(tmp_path, logged):
    node = make_node(tmp_path, retry_window_seconds=60)
    append(node, records(100))
    take(node.me.data_dir, log_file(node))  # built with the default 300 s window
    recover(node)
    assert node.scan.replayed == 100 and "event=snapshot_not_used" in logged.getvalue()


# -- writing: the forked child, keep-two, crashes --------------------------------------------


class _Log:
    busy = False  # retention runs no pass while a batch is on its way to disk

    def __init__(self, path: str) -> None:
        self.path = path

    def segments_view(self) -> list:
        return []  # one file: retention has nothing to delete

    def read_raw(self, offset: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(n)


def run_until_idle(s: Snapshotter, kv: KVState, commit: int, log: _Log) -> None:
    s.step(kv, commit, log, time.monotonic())
    deadline = time.monotonic() + 30
    while s.port.busy and time.monotonic() < deadline:
        time.sleep(0.01)
        s.step(kv, commit, log, time.monotonic())


@pytest.mark.parametrize("port", [ForkSnapshots, ThreadSnapshots])
def test_writer_keeps_the_two_newest(tmp_path, logged, port):
    log = str(tmp_path / "wal.log")
    d = str(tmp_path / "snapshots")
    s = Snapshotter(port(d), LogEvents(), every_bytes=1)
    offsets = []
    for i in range(3):
        append(log, records(50, 50 * i))
        kv = full_replay(log)
        run_until_idle(s, kv, kv.end, _Log(log))
        offsets.append(kv.end)
    assert [e.offset for e in snap.listing(d)[0]] == offsets[:0:-1]
    assert logged.getvalue().count("event=snapshot_written") == 3
    assert "event=snapshot_removed" in logged.getvalue()
    newest = snap.decode(snap.read(os.path.join(d, snap.name_for(offsets[-1]))), 300.0)
    assert state_of(newest.kv) == state_of(full_replay(log))


def test_no_snapshot_beyond_the_commit_point(tmp_path):
    log = str(tmp_path / "wal.log")
    append(log, records(50))
    kv = full_replay(log)
    s = Snapshotter(ForkSnapshots(str(tmp_path / "snapshots")), LogEvents(), every_bytes=1)
    s.step(kv, kv.end - 1, _Log(log), time.monotonic())
    s.step(kv, None, _Log(log), time.monotonic())
    assert not s.port.busy
    assert not due(False, 100, 99, 0, 1, True, 0.0, 0.0) and due(False, 100, 100, 0, 1, False, 0.0, 0.0)


def test_copy_state_is_independent(tmp_path):
    log = str(tmp_path / "wal.log")
    append(log, records(60))
    kv = full_replay(log)
    c = copy_state(kv)
    before = state_of(c)
    for frame in []:
        pass
    kv.data[b"new"] = b"x"
    next(iter(kv.window._by_client.values())).ids[10**9] = None  # type: ignore[assignment]
    assert state_of(c) == before


def test_killed_during_a_write_leaves_a_temp_file_that_recovery_removes(tmp_path, logged):
    node = make_node(tmp_path)
    append(node, records(3000))
    kv = full_replay(log_file(node))
    for i in range(150_000):  # a state big enough that the child is still writing when killed
        kv.data[b"big%d" % i] = b"x" * 64
    port = ForkSnapshots(snap.snapshot_dir(node.me.data_dir))
    port.start(kv, 0)
    tmp = os.path.join(port.directory, snap.name_for(kv.end) + snap.TMP)
    deadline = time.monotonic() + 30
    while not os.path.exists(tmp) and port.busy and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert port._pid is not None
    os.kill(port._pid, signal.SIGKILL)  # kill -9 in the middle of the write
    while port.poll() is None:
        time.sleep(0.01)
    assert os.path.exists(tmp) and not os.path.exists(tmp[:-len(snap.TMP)])
    recover(node)
    assert not os.path.exists(tmp)
    assert node.scan.replayed == 3000
    assert "event=snapshot_temp_removed" in logged.getvalue()


def test_truncation_below_a_snapshot_moves_it_aside(tmp_path, logged):
    log = str(tmp_path / "wal.log")
    d = str(tmp_path / "snapshots")
    append(log, records(40))
    low = full_replay(log).end
    append(log, records(40, 40))
    s = Snapshotter(ForkSnapshots(d), LogEvents(), every_bytes=1)
    for n in (40, 80):
        kv = KVState()
        scan_path(log, lambda f, r, kv=kv: kv.apply_frame(f, r) if f.offset < (low if n == 40 else 10**12) else None)
        run_until_idle(s, kv, kv.end, _Log(log))
    assert len(snap.listing(d)[0]) == 2
    s.truncating(low)
    assert [e.offset for e in snap.listing(d)[0]] == [low]
    assert any(n.endswith(".truncated") for n in os.listdir(d))
    assert "event=snapshot_moved_aside" in logged.getvalue() and s.newest == low


def test_rename_comes_after_the_fsync(tmp_path, monkeypatch):
    """Temp file, fsync, rename, fsync the directory: a crash never leaves a named snapshot that is not all there."""
    calls: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append("fsync_dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync_file")
        real_fsync(fd)

    def rename(a: str, b: str) -> None:
        calls.append("rename")
        real_rename(a, b)

    log = str(tmp_path / "wal.log")
    append(log, records(20))
    parts = snap.encode(full_replay(log), 0)
    monkeypatch.setattr(snap.os, "fsync", fsync)
    monkeypatch.setattr(snap.os, "rename", rename)
    snap.write_file(str(tmp_path / "snapshots"), 1, parts)
    assert calls == ["fsync_file", "rename", "fsync_dir"]


def test_snapshot_bytes_0_means_only_on_demand():
    """snapshot_bytes = 0 (daemon/config.py: "snapshots only on demand"): before the fix `due` held at every
    turn once anything was committed, so a node with 0 snapshotted after every batch."""
    from daemon.node.snapshotting import due

    assert not due(False, 5000, 5000, 0, 0, False, 0.0, 1.0)
    assert due(False, 5000, 5000, 0, 0, True, 0.0, 1.0)  # `zwal snapshot` still takes one
    assert due(False, 5000, 5000, 0, 4096, False, 0.0, 1.0)
