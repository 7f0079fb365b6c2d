"""Free local ports for benchmark clusters (daemon/ops/ports.py)."""

from __future__ import annotations

from daemon.ops.ports import free_base_port as _free


def free_base_port(span: int) -> int:
    return _free(span, low=30000)
