"""zwal's public Python API: ``from zwal import Client``.

A thin, stable name over the client library in ``daemon.client`` (the
``daemon`` and ``follower`` packages hold the implementation and stay as
they are). Everything ``daemon.client`` exports is exported here: the
blocking ``Client``, its results (``WriteResult``, ``ReadResult``) and one
exception class per wire error code, all subclasses of ``ZwalError``; and
``ConfigError``/``KeyError_``, which ``Client(config=...)`` raises for a bad
cluster file or certificate. docs/client.md documents them.

Imports run one way: ``zwal`` imports ``daemon``; ``daemon`` never imports
``zwal``.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from daemon import client as _client
from daemon.auth.keys import KeyError_  # a certificate that is missing, unreadable or readable by others
from daemon.client import *  # noqa: F401,F403  (the public names are daemon.client.__all__)
from daemon.config import ConfigError  # a cluster file that is missing or invalid

try:
    __version__ = _metadata.version("zwal")
except _metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "KeyError_", "__version__"]
__all__ += _client.__all__
