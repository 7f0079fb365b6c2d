"""On-disk frame format of a zwal log (documented in docs/format.md).

A frame is a fixed 20-byte header followed by a msgpack payload::

    0   u32  crc      CRC-32 (IEEE, zlib) of bytes 4 .. end of frame
    4   u32  length   payload length in bytes
    8   u64  epoch    leader epoch that wrote the record (0 = plain local log)
    16  u16  magic    0x5A57 ("ZW")
    18  u8   version  1
    19  u8   flags    0 (reserved)
    20  ...  payload  msgpack map, `length` bytes

All integers are little-endian. The CRC sits first so that it covers every
other header field: a length torn or flipped on disk fails the checksum
instead of being trusted to find the next frame.

A record's position (its LSN) is the byte offset of its first header byte in
the whole log. Offsets never restart, so segment files named by their base
offset can be added later without changing what an offset means.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

import msgpack

HEADER = struct.Struct("<IIQHBB")
_REST = struct.Struct("<IQHBB")  # the header after the CRC
_CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 20
MAGIC = 0x5A57
VERSION = 1
FLAGS = 0

# The 4 bytes at header offset 16..20 that every valid frame carries; the
# corruption scanner searches for them to find candidate frame starts.
MARKER = struct.pack("<HBB", MAGIC, VERSION, FLAGS)
MARKER_OFFSET = 16

MAX_KEY = 4096
MAX_VALUE = 1024 * 1024
# Largest payload a valid frame may carry: a maximal key and value plus the
# msgpack map overhead and the optional client id fields. Anything larger is
# an impossible length, never a record.
MAX_PAYLOAD = MAX_KEY + MAX_VALUE + 512
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD
MAX_CLIENT_ID = 64

OP_SET = "set"
OP_DEL = "del"


class RecordError(ValueError):
    """A record that must not be written: wrong type, empty or too large field."""


@dataclass(frozen=True, slots=True)
class Record:
    """One key-value mutation.

    `client_id`/`request_id` are optional. The leader stores them in the
    record so that every replica, after any failover, can recognise a retried
    request and answer it with the original acknowledgement instead of
    appending a duplicate.
    """

    op: str
    key: bytes
    value: bytes | None = None
    client_id: bytes | None = None
    request_id: int | None = None
    # The leader's clock when it admitted a write that carries a client id,
    # in milliseconds since the Unix epoch; what ages the retry window on
    # every replica alike (docs/protocol.md, "Retries"). Records written
    # before the field existed have none.
    ts: int | None = None

    def __post_init__(self) -> None:
        validate_record(self)


def validate_record(r: Record) -> None:
    if r.op not in (OP_SET, OP_DEL):
        raise RecordError(f"op must be 'set' or 'del', got {r.op!r}")
    if not isinstance(r.key, bytes):
        raise RecordError(f"key must be bytes, got {type(r.key).__name__}")
    if not 1 <= len(r.key) <= MAX_KEY:
        raise RecordError(f"key must be 1..{MAX_KEY} bytes, got {len(r.key)}")
    if r.op == OP_SET:
        if not isinstance(r.value, bytes):
            raise RecordError(f"value must be bytes, got {type(r.value).__name__}")
        if not 1 <= len(r.value) <= MAX_VALUE:
            raise RecordError(f"value must be 1..{MAX_VALUE} bytes, got {len(r.value)}")
    elif r.value is not None:
        raise RecordError("a del record carries no value")
    if (r.client_id is None) != (r.request_id is None):
        raise RecordError("client_id and request_id go together")
    if r.client_id is not None:
        if not isinstance(r.client_id, bytes) or not 1 <= len(r.client_id) <= MAX_CLIENT_ID:
            raise RecordError(f"client_id must be 1..{MAX_CLIENT_ID} bytes")
        if not isinstance(r.request_id, int) or isinstance(r.request_id, bool) or not 0 <= r.request_id < 2**63:
            raise RecordError("request_id must be an integer in 0..2**63-1")
    if r.ts is not None and (not isinstance(r.ts, int) or isinstance(r.ts, bool) or not 0 <= r.ts < 2**63):
        raise RecordError("ts must be an integer in 0..2**63-1 (milliseconds)")


# One Packer reused: msgpack.packb builds a new one per call, which costs
# more than packing a small record does. Single-threaded use only.
_pack = msgpack.Packer(use_bin_type=True).pack


def encode_payload(r: Record) -> bytes:
    m: dict[str, object] = {"op": r.op, "key": r.key}
    if r.value is not None:
        m["value"] = r.value
    if r.client_id is not None:
        m["cid"] = r.client_id
        m["rid"] = r.request_id
    if r.ts is not None:
        m["ts"] = r.ts
    return _pack(m)


def decode_payload(payload: bytes) -> Record:
    """Parse and validate a payload; raises RecordError on anything else.

    A payload whose CRC matched but which does not decode is not a torn write
    (the checksum says these are the bytes that were written): callers treat
    it as corruption.
    """
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise RecordError(f"payload is not msgpack: {e}") from None
    if not isinstance(m, dict):
        raise RecordError("payload is not a msgpack map")
    extra = set(m) - {"op", "key", "value", "cid", "rid", "ts"}
    if extra:
        raise RecordError(f"payload has unknown fields {sorted(extra)}")
    try:
        return Record(m.get("op"), m.get("key"), m.get("value"), m.get("cid"), m.get("rid"), m.get("ts"))  # type: ignore[arg-type]
    except RecordError:
        raise
    except Exception as e:
        raise RecordError(str(e)) from None


def encode_frame(r: Record, epoch: int) -> bytes:
    return frame_payload(encode_payload(r), epoch)


def frame_payload(payload: bytes, epoch: int) -> bytes:
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise RecordError(f"payload of {n} bytes exceeds the maximum of {MAX_PAYLOAD}")
    if not 0 <= epoch < 2**64:
        raise RecordError(f"epoch {epoch} out of range")
    body = _REST.pack(n, epoch, MAGIC, VERSION, FLAGS) + payload
    return _CRC.pack(zlib.crc32(body)) + body


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    size: int
    epoch: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.offset + self.size

    def record(self) -> Record:
        return decode_payload(self.payload)


class FrameStatus:
    """Outcome of looking at the bytes at one offset."""

    OK = "ok"
    SHORT = "short"  # fewer bytes than the header or the header's length claims
    BAD_HEADER = "bad_header"  # magic/version/flags wrong or impossible length
    BAD_CRC = "bad_crc"


def parse_frame(buf: bytes | memoryview | mmap.mmap, pos: int, base: int = 0) -> tuple[str, Frame | None]:
    """Look at the frame starting at buf[pos]; never raises on any bytes.

    `base` is the log offset of buf[0], so returned frames carry log offsets.
    """
    avail = len(buf) - pos
    if avail < HEADER_SIZE:
        return FrameStatus.SHORT, None
    crc, length, epoch, magic, version, flags = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or version != VERSION or flags != FLAGS or length > MAX_PAYLOAD or length == 0:
        return FrameStatus.BAD_HEADER, None
    end = pos + HEADER_SIZE + length
    if end > len(buf):
        return FrameStatus.SHORT, None
    if zlib.crc32(buf[pos + 4 : end]) != crc:
        return FrameStatus.BAD_CRC, None
    return FrameStatus.OK, Frame(base + pos, HEADER_SIZE + length, epoch, bytes(buf[pos + HEADER_SIZE : end]))


def iter_frames_in(buf: bytes | memoryview, base: int = 0) -> Iterator[Frame]:
    """Yield the valid frames at the start of buf; stop at the first that is not."""
    pos = 0
    while True:
        status, frame = parse_frame(buf, pos, base)
        if frame is None:
            return
        yield frame
        pos += frame.size


def frame_sizes(buf: bytes | memoryview) -> list[int]:
    """Sizes of the whole frames at the start of buf, trusting headers.

    Used by the leader to cut a chunk of its own verified log at a frame
    boundary without checksumming it again.
    """
    sizes: list[int] = []
    pos, n = 0, len(buf)
    while pos + HEADER_SIZE <= n:
        length = struct.unpack_from("<I", buf, pos + 4)[0]
        size = HEADER_SIZE + length
        if pos + size > n:
            break
        sizes.append(size)
        pos += size
    return sizes
