"""Real faults for drills and tests: network partitions in namespaces, a disk
that fills and fails, and a scratch cluster to cause them in.

Each needs root; `FaultUnavailable` says plainly what is missing.
"""

from __future__ import annotations


class FaultUnavailable(Exception):
    """This fault cannot be caused on this machine; the message says why."""
