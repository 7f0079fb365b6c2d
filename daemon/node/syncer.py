"""Write + fdatasync of one batch off the main thread.

The leader gathers and validates the next batch while the disk flushes the
current one (os.fdatasync releases the GIL), so the disk and the CPU work at
the same time. Exactly one batch is in flight: log order, rollback and the
poisoning rule stay those of the log writer. The caller learns of completion
through a socket it polls, and replies only after that.
"""

from __future__ import annotations

import queue
import socket
import threading
from daemon.node.ports import SyncResult
from daemon.wal.segments import SegmentedLog

__all__ = ["SyncResult", "Syncer"]


class Syncer:
    def __init__(self, writer: SegmentedLog) -> None:
        self.writer = writer
        self.busy = False
        self._q: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._result = SyncResult()
        self._thread = threading.Thread(target=self._run, name="zwal-syncer", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        return self._r.fileno()

    @property
    def sock(self) -> socket.socket:
        return self._r

    def submit(self, data: bytes, records: int) -> None:
        assert not self.busy, "one batch in flight at a time"
        self.busy = True
        self._q.put((data, records))

    def run_inline(self, data: bytes, records: int) -> SyncResult:
        """The same work on the caller's thread (when there is nothing to overlap)."""
        assert not self.busy
        try:
            _, end = self.writer.append_frames(data)
            return SyncResult(end, None, self.writer.last_fsync_s, records, len(data), self.writer.last_append_s)
        except BaseException as e:
            return SyncResult(0, e, 0.0, records)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            data, records = item
            try:
                _, end = self.writer.append_frames(data)
                self._result = SyncResult(end, None, self.writer.last_fsync_s, records, len(data),
                                          self.writer.last_append_s)
            except BaseException as e:  # handed to the loop, which decides
                self._result = SyncResult(0, e, 0.0, records)
            self._w.send(b"x")

    def collect(self) -> SyncResult | None:
        """The finished batch's result, or None if it is still on the disk."""
        try:
            self._r.recv(16)
        except BlockingIOError:
            return None
        self.busy = False
        return self._result

    def wait(self, timeout: float) -> SyncResult | None:
        """Block until the batch in flight is done (shutdown)."""
        if not self.busy:
            return None
        self._r.settimeout(timeout)
        try:
            self._r.recv(16)
        except (TimeoutError, OSError):
            return None
        finally:
            self._r.setblocking(False)
        self.busy = False
        return self._result

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(5)
        self._r.close()
        self._w.close()
