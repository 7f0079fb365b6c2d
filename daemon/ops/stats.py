"""Small bounded summaries for status output (percentiles of recent samples)."""

from __future__ import annotations

from collections import deque


class LatencyWindow:
    """The last N samples; enough for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 4096) -> None:
        self.samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total = 0.0

    def add(self, v: float) -> None:
        self.samples.append(v)
        self.count += 1
        self.total += v

    def summary(self) -> dict[str, float | int | None]:
        if not self.samples:
            return {"count": self.count, "p50": None, "p99": None, "max": None}
        s = sorted(self.samples)
        n = len(s)
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 6),
            "p50": round(s[n // 2], 6),
            "p99": round(s[min(n - 1, int(n * 0.99))], 6),
            "max": round(s[-1], 6),
        }
