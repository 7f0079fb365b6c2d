"""Network namespaces for tests: daemon/failover/faults/netns.py, skipping
the test with the reason where they cannot be built."""

from __future__ import annotations

import pytest

from daemon.failover.faults import FaultUnavailable
from daemon.failover.faults.netns import Net


def make_net(names: list[str]) -> Net:
    try:
        return Net.make(names)
    except FaultUnavailable as e:
        pytest.skip(str(e))
