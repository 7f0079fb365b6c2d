"""zwal's public Python API: ``from zwal import Client``.

A thin, stable name over the client library in ``daemon.client`` (the
``daemon`` and ``follower`` packages hold the implementation and stay as
they are). Everything ``daemon.client`` exports is exported here: the
blocking ``Client``, its results (``WriteResult``, ``ReadResult``) and one
exception class per wire error code, all subclasses of ``ZwalError``.
docs/client.md documents them.

Imports run one way: ``zwal`` imports ``daemon``; ``daemon`` never imports
``zwal``.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from daemon import client as _client
from daemon.client import *  # noqa: F401,F403  (the public names are daemon.client.__all__)

try:
    __version__ = _metadata.version("zwal")
except _metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [*_client.__all__, "__version__"]
