"""The production ports (daemon/node/ports.py): the WAL writer and the syncer
thread, ZeroMQ sockets, the monotonic clock and the application's logger.

Mechanism only: each moves bytes and reports what happened; the roles decide.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import zmq

from daemon.config import ClusterConfig
from daemon.node.ports import FsyncFailure, SyncResult
from daemon.node.syncer import Syncer
from daemon.ops import logs
from daemon.wal import WalFsyncError, retention
from daemon.wal.segments import SegmentedLog

# Replies the replication ROUTER queues per connection. A follower has one
# fetch outstanding; a key that sends fetches and never reads has its
# answers dropped here instead of pinning a chunk (up to fetch_max_bytes)
# per fetch in memory.
REPL_SNDHWM = 2


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class LogEvents:
    """daemon/ops/logs.py as the roles' Events port."""

    def event(self, name: str, **kv: Any) -> None:
        logs.event(name, **kv)

    def warn(self, name: str, **kv: Any) -> None:
        logs.warn(name, **kv)

    def error(self, name: str, **kv: Any) -> None:
        logs.error(name, **kv)


class WalLog:
    """The log port over the segmented log (daemon/wal/segments.py); with a Syncer, batches of more than one
    record are written and fsynced on its thread while the loop goes on."""

    def __init__(self, writer: SegmentedLog, data_dir: str, syncer: Syncer | None = None) -> None:
        self.writer = writer
        self.data_dir = data_dir
        self.syncer = syncer
        self._done: Callable[[SyncResult], None] | None = None

    @property
    def end(self) -> int:
        return self.writer.end

    @property
    def busy(self) -> bool:
        return self.syncer is not None and self.syncer.busy

    @property
    def sock(self) -> Any:
        return self.syncer.sock if self.syncer is not None else None

    def read_chunk(self, offset: int, end: int, max_bytes: int) -> bytes:
        return self.writer.read_chunk(offset, end, max_bytes)

    def read_raw(self, offset: int, n: int) -> bytes:
        return self.writer.read_raw(offset, n) if n > 0 else b""

    def append(self, data: bytes, records: int, done: Callable[[SyncResult], None]) -> None:
        if self.syncer is None or records == 1:
            # A lone record gains nothing from overlap; skip the two thread
            # hand-offs that would add to its latency.
            w = self.writer
            try:
                _, end = w.append_frames(data)
                r = SyncResult(end, None, w.last_fsync_s, records, len(data), w.last_append_s)
            except Exception as e:  # handed to the role, which decides
                r = SyncResult(0, e, 0.0, records)
            done(r)
            return
        self._done = done
        self.syncer.submit(data, records)

    def collect(self) -> None:
        """The syncer's socket is readable: deliver the finished batch."""
        assert self.syncer is not None
        r = self.syncer.collect()
        if r is not None:
            self._deliver(r)

    def wait(self, timeout: float) -> None:
        """Block until the batch in flight is done (the only blocking wait: shutdown, role end)."""
        if not self.busy:
            return
        assert self.syncer is not None
        r = self.syncer.wait(timeout)
        if r is None:
            # The disk did not answer: nothing can be claimed about the
            # batch, so nobody is told it is durable.
            raise FsyncFailure("the batch in flight did not complete")
        self._deliver(r)

    def _deliver(self, r: SyncResult) -> None:
        done, self._done = self._done, None
        assert done is not None
        done(r)

    def truncate_suffix(self, offset: int, last_epoch: int) -> tuple[int, str]:
        save = os.path.join(self.data_dir, f"divergent-{last_epoch}-{offset}.wal")
        if os.path.exists(save):
            save = f"{save[:-4]}-{int(time.time())}.wal"
        return self.writer.truncate_suffix(offset, save), save

    @property
    def oldest(self) -> int:
        return self.writer.oldest

    def segments_view(self) -> list[retention.Segment]:
        segs = self.writer.segments
        ends = [b for b, _ in segs[1:]] + [self.writer.end]
        return [retention.Segment(b, e, sealed=i < len(segs) - 1) for i, ((b, _), e) in enumerate(zip(segs, ends))]

    def retire(self, upto: int, reason: str) -> tuple[int, int]:
        if self.busy:
            raise RuntimeError("retire while a batch is on its way to disk")  # the syncer may be rolling
        try:
            gone = self.writer.retire(upto, reason)
        except WalFsyncError as e:  # a failed fsync of oldest.json: exit 3 and recover, as for the log's own
            raise FsyncFailure(str(e)) from None
        return len(gone), sum(size for _, _, size in gone)

    def close(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
            self.syncer = None


class ZmqRepl:
    """The replication ROUTER as the roles' ReplPort."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock

    def send(self, envelope: list[bytes], frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart([*envelope, *frames], zmq.NOBLOCK)
        except zmq.Again:
            pass  # its queue is full (REPL_SNDHWM): it has not read what it asked for; it will ask again


class ZmqLeaderLink:
    """A follower's DEALER to the leader's replication endpoint."""

    def __init__(self, ctx: zmq.Context, cfg: ClusterConfig, creds: Any) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.creds = creds
        self.sock: zmq.Socket | None = None

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self, leader: str | None) -> bool:
        self.close()
        if leader is None:
            return False
        ep = self.cfg.node(leader).repl_endpoint
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.cfg.fetch_max_bytes + 2 * (1 << 20))
        if self.creds is not None:
            self.creds.apply(s, ep)  # our node key; only the leader's own key is accepted back
        s.connect(ep)
        self.sock = s
        return True

    def send(self, body: bytes) -> None:
        self.send_parts([body])

    def send_parts(self, frames: list[bytes]) -> None:
        if self.sock is not None:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pass  # the silence timer reconnects and asks again

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class NoLink:
    """A leader has no leader link."""

    connected = False

    def connect(self, leader: str | None) -> bool:
        return False

    def send(self, body: bytes) -> None:
        pass

    def send_parts(self, frames: list[bytes]) -> None:
        pass

    def close(self) -> None:
        pass
