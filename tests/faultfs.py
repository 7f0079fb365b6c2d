"""A real failing disk for tests: daemon/failover/faults/disk.py, skipping the
test with the reason where it cannot be built."""

from __future__ import annotations

import pytest

from daemon.failover.faults import FaultUnavailable
from daemon.failover.faults.disk import FailingDisk, read_direct

__all__ = ["make_disk", "read_direct"]


def make_disk(base: str, mountpoint: str, **kw: int) -> FailingDisk:
    try:
        return FailingDisk.make(base, mountpoint, **kw)
    except FaultUnavailable as e:
        pytest.skip(str(e))
