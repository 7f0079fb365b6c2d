"""The Python client: a blocking `Client`, an asyncio `AsyncClient` (the same rules: core.py), and a
pipelined load generator.

Each wire error code maps to one exception class (`error_from_reply`).
"""

from daemon.client.blocking import (
    BadOffset,
    BadRequest,
    Busy,
    Client,
    Forbidden,
    FsyncFailed,
    InvalidRecord,
    NoLeader,
    NoSpace,
    NotEnoughReplicas,
    NotLeader,
    OffsetCompacted,
    ReadResult,
    Refused,
    ShuttingDown,
    StaleEpoch,
    Unavailable,
    UnknownOp,
    WriteFailed,
    WriteResult,
    WrongCluster,
    ZwalError,
    error_from_reply,
)
from daemon.client.aio import AsyncClient
from daemon.wire.client import WatchRecord

__all__ = [
    "AsyncClient", "BadOffset", "OffsetCompacted", "WatchRecord",
    "BadRequest", "Busy", "Client", "Forbidden", "WrongCluster", "FsyncFailed", "InvalidRecord", "NoLeader", "NoSpace", "NotEnoughReplicas", "NotLeader",
    "ReadResult", "Refused", "ShuttingDown", "StaleEpoch", "Unavailable", "UnknownOp", "WriteFailed",
    "WriteResult", "ZwalError", "error_from_reply",
]
