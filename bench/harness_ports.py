"""Free local ports for benchmark clusters."""

from __future__ import annotations

import random
import socket


def free_base_port(span: int) -> int:
    for _ in range(200):
        base = random.randrange(30000, 60000 - span)
        try:
            for p in range(base + 1, base + span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")
