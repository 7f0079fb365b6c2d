"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

The protocol is one datagram of `KEY=VALUE` lines to the AF_UNIX socket
named by $NOTIFY_SOCKET ('@' means the abstract namespace). Without
NOTIFY_SOCKET (supervisord, a terminal, tests) every call does nothing.
The watchdog interval comes from $WATCHDOG_USEC; we ping at half of it
from the main loop, so a wedged loop stops pinging and systemd restarts us.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        if env is None:
            env = os.environ
        addr = env.get("NOTIFY_SOCKET")
        self.sock: socket.socket | None = None
        self.addr: str | None = None
        if addr:
            self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        wd_for_us = usec is not None and (pid is None or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if wd_for_us and usec is not None and usec.isdigit() and int(usec) > 0 else None
        self._next_watchdog = 0.0
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.addr)  # type: ignore[arg-type]
        except OSError:
            pass  # systemd gone or socket full: never let notification break the node

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def tick(self, now: float | None = None) -> None:
        """Call from the main loop: pings the watchdog when due."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_interval
            self.send("WATCHDOG=1")

    def next_due(self, now: float) -> float:
        return self._next_watchdog if self.watchdog_interval is not None else now + 3600
