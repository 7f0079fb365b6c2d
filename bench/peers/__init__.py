"""Systems a user would pick instead of zwal, started on loopback with their durable settings.

Each peer module has `running(work)`, a context manager that starts the peer
and yields `measure(clients, seconds) -> Sample`, and `NOTE`, what a reader
must know beside its figure. `running` raises `Missing` with the reason
(not installed, did not start): the suite reports a missing peer, it never
drops one silently. `bench/setup_peers.sh` installs them.
"""

from __future__ import annotations


class Missing(Exception):
    """The peer cannot run here; the message says why and what to do."""
