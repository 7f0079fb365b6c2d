"""The production SnapshotPort (daemon/node/snapshotting.py): a forked child writes the file.

Redis's BGSAVE: `fork()` freezes the state as it is (copy-on-write pages),
the child serializes it and writes it with plain os calls only, then
`os._exit`s; the parent reaps it with waitpid(WNOHANG) each turn. The child
closes every inherited descriptor first (the log's lock, ZeroMQ's sockets and
its eventfds), takes no lock another thread could have held at the fork (no
logging, no ZeroMQ), and reports through a pipe. docs/format.md, "Snapshots",
gives the measurements behind fork over a thread (`ThreadSnapshots`, kept
for the comparison: ZWAL_SNAPSHOT_WRITER=thread).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import OrderedDict

from daemon.node import snapshot as snap
from daemon.node.kv import KVState, RetryWindow, _Client
from daemon.node.snapshotting import Written
from daemon.node.transfer import SnapInfo


class _Dir:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def offsets(self) -> list[int]:
        return [e.offset for e in snap.listing(self.directory)[0]]

    def remove(self, offset: int) -> str:
        path = os.path.join(self.directory, snap.name_for(offset))
        os.unlink(path)
        return path

    def move_aside(self, offset: int, why: str) -> str:
        return snap.move_aside(os.path.join(self.directory, snap.name_for(offset)), f".{why}")

    def describe(self, offset: int) -> SnapInfo | None:
        try:
            fd = os.open(os.path.join(self.directory, snap.name_for(offset)), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return SnapInfo(offset, os.fstat(fd).st_size, snap.header_crc(snap.head_bytes(fd)))
        except (OSError, snap.SnapshotError):
            return None
        finally:
            os.close(fd)

    def read_at(self, offset: int, pos: int, n: int) -> bytes:
        # Opened per chunk: a transfer never keeps a file open that KEEP may remove.
        fd = os.open(os.path.join(self.directory, snap.name_for(offset)), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, n, pos)
        finally:
            os.close(fd)


class ForkSnapshots(_Dir):
    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self._pid: int | None = None
        self._pipe: int | None = None
        self._offset = 0
        self._t0 = 0.0

    @property
    def busy(self) -> bool:
        return self._pid is not None

    def start(self, kv: KVState, last_crc: int) -> None:
        assert self._pid is None, "one snapshot at a time"
        r, w = os.pipe()
        self._offset, self._t0 = kv.end, time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: os calls only, never returns
            code = 1
            try:
                os.closerange(3, w)
                os.closerange(w + 1, 1 << 16)
                parts = snap.encode(kv, last_crc, int(time.time() * 1000))
                path = snap.write_file(self.directory, kv.end, parts)
                os.write(w, f"ok {sum(map(len, parts))} {path}".encode())
                code = 0
            except BaseException as e:  # noqa: B036  (the child must reach _exit whatever happens)
                try:
                    os.write(w, f"error {type(e).__name__}: {e}".encode()[:4000])
                except BaseException:  # noqa: B036
                    pass
            finally:
                os._exit(code)
        os.close(w)
        self._pid, self._pipe = pid, r

    def poll(self) -> Written | None:
        if self._pid is None:
            return None
        pid, status = os.waitpid(self._pid, os.WNOHANG)
        if pid == 0:
            return None
        return self._reaped(status)

    def _reaped(self, status: int) -> Written:
        assert self._pipe is not None
        try:
            msg = os.read(self._pipe, 8192).decode(errors="replace")
        finally:
            os.close(self._pipe)
        self._pid = self._pipe = None
        path = os.path.join(self.directory, snap.name_for(self._offset))
        secs = time.monotonic() - self._t0
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and msg.startswith("ok "):
            _, n, path = msg.split(" ", 2)
            return Written(self._offset, path, None, secs, int(n))
        why = msg[6:] if msg.startswith("error ") else f"the snapshot child ended with wait status {status}"
        return Written(self._offset, path, why, secs)

    def cancel(self) -> None:
        if self._pid is None:
            return
        os.kill(self._pid, signal.SIGKILL)
        os.waitpid(self._pid, 0)
        assert self._pipe is not None
        os.close(self._pipe)
        self._pid = self._pipe = None
        try:
            os.unlink(os.path.join(self.directory, snap.name_for(self._offset)) + snap.TMP)
        except FileNotFoundError:
            pass
        try:  # the child may have renamed it just before the kill
            os.unlink(os.path.join(self.directory, snap.name_for(self._offset)))
        except FileNotFoundError:
            pass


def copy_state(kv: KVState) -> KVState:
    """A copy the loop can keep changing `kv` beside (values are immutable bytes)."""
    c = KVState()
    c.data = dict(kv.data)
    c.records, c.end, c.last, c.epoch_starts = kv.records, kv.end, kv.last, list(kv.epoch_starts)
    w, cw = kv.window, RetryWindow(kv.window.per_client)
    cw.window_ms, cw.clock, cw.bytes, cw._first = w.window_ms, w.clock, w.bytes, w._first
    cw._by_client = OrderedDict((cid, _Client(OrderedDict(cl.ids), cl.ts)) for cid, cl in w._by_client.items())
    c.window = cw
    return c


class ThreadSnapshots(_Dir):
    """A thread writes a copy taken on the loop (competes for the GIL while it serializes)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self._thread: threading.Thread | None = None
        self._result: Written | None = None
        self._cancelled = False

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, kv: KVState, last_crc: int) -> None:
        state, t0 = copy_state(kv), time.monotonic()
        self._cancelled = False

        def run() -> None:
            path = os.path.join(self.directory, snap.name_for(state.end))
            try:
                parts = snap.encode(state, last_crc, int(time.time() * 1000))
                if self._cancelled:
                    raise RuntimeError("cancelled")
                path = snap.write_file(self.directory, state.end, parts)
                self._result = Written(state.end, path, None, time.monotonic() - t0, sum(map(len, parts)))
            except Exception as e:
                self._result = Written(state.end, path, f"{type(e).__name__}: {e}", time.monotonic() - t0)

        self._thread = threading.Thread(target=run, name="snapshot", daemon=True)
        self._thread.start()

    def poll(self) -> Written | None:
        if self._thread is None or self._thread.is_alive():
            return None
        self._thread = None
        r, self._result = self._result, None
        return r

    def cancel(self) -> None:
        if self._thread is None:
            return
        self._cancelled = True
        self._thread.join()
        self._thread = None
        r, self._result = self._result, None
        if r is not None and r.error is None:
            os.unlink(r.path)


def production(directory: str) -> ForkSnapshots | ThreadSnapshots:
    return ThreadSnapshots(directory) if os.environ.get("ZWAL_SNAPSHOT_WRITER") == "thread" else ForkSnapshots(directory)
