"""The log engine shared by every zwal node: format, writer, reader, recovery."""

from .format import (
    HEADER_SIZE,
    MAX_KEY,
    MAX_PAYLOAD,
    MAX_VALUE,
    OP_DEL,
    OP_SET,
    Frame,
    Record,
    RecordError,
    decode_payload,
    encode_frame,
    encode_payload,
    frame_payload,
)
from .reader import CLEAN, CORRUPT, TORN, LogOpenError, ScanResult, iter_frames, read_chunk, scan_path
from .recovery import LogCorrupt, open_log
from .writer import WalError, WalFsyncError, WalLocked, WalPoisoned, WalWriteError, WalWriter, write_full

__all__ = [
    "HEADER_SIZE",
    "MAX_KEY",
    "MAX_PAYLOAD",
    "MAX_VALUE",
    "OP_DEL",
    "OP_SET",
    "Frame",
    "Record",
    "RecordError",
    "decode_payload",
    "encode_frame",
    "encode_payload",
    "frame_payload",
    "CLEAN",
    "CORRUPT",
    "TORN",
    "LogOpenError",
    "ScanResult",
    "iter_frames",
    "read_chunk",
    "scan_path",
    "LogCorrupt",
    "open_log",
    "WalError",
    "WalFsyncError",
    "WalLocked",
    "WalPoisoned",
    "WalWriteError",
    "WalWriter",
    "write_full",
]
