"""Free local ports for clusters the tools start themselves (the drill's
scratch cluster, the benchmarks, the tests)."""

from __future__ import annotations

import random
import socket


def _ephemeral_low(default: int = 32768) -> int:
    """Where the kernel starts picking source ports for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_base_port(span: int = 30, low: int = 20000, high: int = 60000) -> int:
    """A base port with `span` free ports after it on 127.0.0.1 (best effort, randomised).

    Below the kernel's ephemeral range when there is room: a port found free
    there could be taken by any outgoing connection's source port before the
    node binds it (seen in CI: a node's cannot_bind under client load)."""
    eph = _ephemeral_low()
    if eph - low >= 50 * span:
        high = min(high, eph)
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
