"""Free local ports for clusters the tools start themselves (the drill's
scratch cluster, the benchmarks, the tests)."""

from __future__ import annotations

import random
import socket


def free_base_port(span: int = 30, low: int = 20000, high: int = 60000) -> int:
    """A base port with `span` free ports after it on 127.0.0.1 (best effort, randomised)."""
    for _ in range(200):
        base = random.randrange(low, high - span)
        try:
            for p in range(base + 1, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free range of ports on 127.0.0.1")
