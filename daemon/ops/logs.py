"""One log line per event, as key=value pairs an operator can grep.

    ts=2026-11-25T04:12:01.123Z level=info node=node1 event=recovered records=120 ...

Never call this per record on a hot path: log batches, state changes, errors.
"""

from __future__ import annotations

import logging
import sys
import time

_LOG = logging.getLogger("zwal")


def _fmt(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class KVFormatter(logging.Formatter):
    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}"]
        if self.node:
            parts.append(f"node={_fmt(self.node)}")
        fields = getattr(record, "kv", None)
        if fields is not None:
            parts.append(f"event={_fmt(record.getMessage())}")
            parts.extend(f"{k}={_fmt(v)}" for k, v in fields.items())
        else:
            parts.append(f"msg={_fmt(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_fmt(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup(node: str | None = None, level: int = logging.INFO, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KVFormatter(node))
    _LOG.handlers[:] = [handler]
    _LOG.setLevel(level)
    _LOG.propagate = False


def event(name: str, level: int = logging.INFO, **kv: object) -> None:
    _LOG.log(level, name, extra={"kv": kv})


def warn(name: str, **kv: object) -> None:
    event(name, logging.WARNING, **kv)


def error(name: str, **kv: object) -> None:
    event(name, logging.ERROR, **kv)


class RateGate:
    """At most `burst` lines of one event per `period` seconds of the given
    clock; the rest are counted and reported in the next line
    (`suppressed=N`), so a flood of bad requests can neither fill the disk
    nor hide how big it was. The clock is the caller's: the node's roles pass
    their host clock (simulated in tests/sim), `Limited` the monotonic one."""

    def __init__(self, burst: int = 20, period: float = 60.0) -> None:
        self.burst = burst
        self.period = period
        self._start = -1e18
        self._lines = 0
        self.suppressed = 0

    def admit(self, now: float, kv: dict) -> bool:
        """Whether to emit a line now; adds `suppressed` to kv when it does."""
        if now - self._start >= self.period:
            self._start, self._lines = now, 0
        if self._lines >= self.burst:
            self.suppressed += 1
            return False
        self._lines += 1
        if self.suppressed:
            kv["suppressed"] = self.suppressed
            self.suppressed = 0
        return True


class Limited(RateGate):
    """A RateGate on the monotonic clock that logs through this module."""

    def warn(self, name: str, **kv: object) -> bool:
        import time

        if not self.admit(time.monotonic(), kv):
            return False
        warn(name, **kv)
        return True
