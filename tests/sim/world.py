"""The simulated world: one seeded RNG, a virtual clock, an event queue, a network and disks.

Nothing here reads the wall clock, starts a thread or opens a socket: a run
is a pure function of its seed, so a failing seed replays exactly.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from typing import Any, Callable

from daemon.wal.segments import kept_after_truncate


class Violation(AssertionError):
    """An invariant of the cluster was broken."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"[{invariant}] {message}")
        self.invariant = invariant
        self.detail = message


class World:
    def __init__(self, seed: int, keep: int = 200, full_trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self._q: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self.steps = 0
        self.recent: deque[str] = deque(maxlen=keep)
        self.full: list[str] | None = [] if full_trace else None
        self._ids = 0
        self.net = Network(self)

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def at(self, t: float, fn: Callable[..., Any], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._q, (max(t, self.now), self._seq, fn, args))

    def after(self, d: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + d, fn, *args)

    def log(self, who: str, what: Any, msg: Any = None) -> None:
        """Trace a line; `msg` (a message) is described only when the line is printed."""
        entry = (self.now, who, what, msg)
        self.recent.append(entry)
        if self.full is not None:
            self.full.append(_fmt(entry))

    def trace(self) -> list[str]:
        """The recent trace, formatted (the full one with full_trace=True)."""
        return list(self.full) if self.full is not None else [_fmt(e) for e in self.recent]

    def digest(self) -> str:
        h = hashlib.sha256()
        for line in self.trace():
            h.update(line.encode())
        return h.hexdigest()

    def step(self) -> bool:
        if not self._q:
            return False
        t, _, fn, args = heapq.heappop(self._q)
        self.now = t
        self.steps += 1
        fn(*args)
        return True


class Network:
    """Point-to-point messages with delay, loss and directed blocked links (partitions).

    Each (src, dst) link is FIFO, like one TCP connection; a message is lost
    when the link is blocked at send or at delivery time (a disconnect drops
    what ZeroMQ had queued), or at random with probability `loss`.
    """

    def __init__(self, world: World) -> None:
        self.w = world
        self.handlers: dict[str, Callable[[str, Any], None]] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.loss = 0.0
        self.slow = 0.0  # probability of a delay spike
        self._last: dict[tuple[str, str], float] = {}

    def send(self, src: str, dst: str, msg: Any) -> None:
        w = self.w
        if (src, dst) in self.blocked or w.rng.random() < self.loss:
            w.log(src, f"-x {dst} (lost)", msg)
            return
        delay = w.rng.uniform(0.0005, 0.004)
        if w.rng.random() < self.slow:
            delay += w.rng.uniform(0.05, 0.6)
        t = max(w.now + delay, self._last.get((src, dst), 0.0))
        self._last[(src, dst)] = t
        w.at(t, self._deliver, src, dst, msg)

    def _deliver(self, src: str, dst: str, msg: Any) -> None:
        if (src, dst) in self.blocked:
            self.w.log(dst, f"x- {src} (link cut)", msg)
            return
        h = self.handlers.get(dst)
        if h is not None:
            h(src, msg)

    def cut(self, a: set[str], b: set[str], one_way: bool = False) -> list[tuple[str, str]]:
        pairs = [(x, y) for x in a for y in b]
        if not one_way:
            pairs += [(y, x) for x in a for y in b]
        new = [p for p in pairs if p not in self.blocked]
        self.blocked.update(new)
        return new

    def heal(self, pairs: list[tuple[str, str]] | None = None) -> None:
        if pairs is None:
            self.blocked.clear()
        else:
            self.blocked.difference_update(pairs)


def describe(msg: Any) -> str:
    d = getattr(msg, "describe", None)
    return d() if d else type(msg).__name__


def _fmt(entry: tuple[float, str, Any, Any]) -> str:
    t, who, what, msg = entry
    return f"{t:9.4f} {who:>6} {what}" + ("" if msg is None else f" {describe(msg)}")


class Disk:
    """A log file: `cache` is what the process reads, `durable` what survives a crash.

    Writes append to the cache; fsync makes the cache durable; truncation is
    durable at once (recovery and the follower fsync after cutting). A crash
    keeps the durable bytes plus, at random, a prefix of the unsynced tail
    (possibly cut mid-frame, possibly zeros). `flips` remembers injected bit
    flips so invariants can compare the bytes the node was given.
    """

    def __init__(self) -> None:
        self.cache = bytearray()
        self.durable = bytearray()
        self.flips: dict[int, int] = {}
        # Durable bytes that a truncation removed after an injected flip had
        # damaged them: (offset, the bytes as the node had fsynced them). The
        # node held them when it acknowledged them; the fault took them.
        self.destroyed: list[tuple[int, bytes]] = []
        self.version = 0
        # Segment bases (daemon/wal/segments.py): durable from the roll on,
        # since a roll fsyncs the new file and the directory before writing.
        self.bases: list[int] = [0]
        # The oldest offset retention kept (daemon/wal/segments.py oldest.json,
        # durable before any file goes); bytes below it are gone for reads.
        self.oldest = 0

    def write(self, data: bytes) -> int:
        self.cache += data
        self.version += 1
        return len(self.cache)

    def fsync(self) -> None:
        if self.durable != self.cache:
            self.durable = bytearray(self.cache)
            self.version += 1

    def truncate(self, n: int) -> None:
        if any(p >= n for p in self.flips):
            self.destroyed.append((n, self.pristine()[n:]))
        del self.cache[n:]
        del self.durable[n:]
        self.bases = kept_after_truncate(self.bases, n)
        self.flips = {p: m for p, m in self.flips.items() if p < n}
        self.version += 1

    def crash(self, rng: random.Random, lose_unsynced: bool = False) -> str:
        extra = bytes(self.cache[len(self.durable):])
        self.cache = bytearray(self.durable)
        self.version += 1
        if rng.random() < 0.05:
            # Stale blocks after the end (ext4 data=writeback, a reused
            # block): non-zero garbage, perhaps with a header's worth of it.
            junk = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 300)))
            self.cache += junk
            self.durable = bytearray(self.cache)
            return f"lost {len(extra)} unsynced bytes; {len(junk)} bytes of stale garbage after the end"
        if not extra or lose_unsynced:
            return f"lost {len(extra)} unsynced bytes"
        r = rng.random()
        if r < 0.4:
            return f"lost {len(extra)} unsynced bytes"
        keep = len(extra) if r < 0.6 else rng.randrange(1, len(extra) + 1)
        kept = extra[:keep]
        if rng.random() < 0.2:
            kept = kept[: keep // 2] + bytes(keep - keep // 2)  # the rest is unwritten space
        self.cache += kept
        self.durable = bytearray(self.cache)
        return f"kept {keep} of {len(extra)} unsynced bytes"

    def flip(self, pos: int, mask: int) -> None:
        self.durable[pos] ^= mask
        if pos < len(self.cache):
            self.cache[pos] ^= mask
        self.flips[pos] = self.flips.get(pos, 0) ^ mask
        self.version += 1

    def pristine(self) -> bytes:
        """The durable bytes with injected flips undone: what the node was given."""
        if not self.flips:
            return bytes(self.durable)
        b = bytearray(self.durable)
        for p, m in self.flips.items():
            if p < len(b):
                b[p] ^= m
        return bytes(b)
