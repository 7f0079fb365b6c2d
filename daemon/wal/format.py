"""On-disk frame format of a zwal log (documented in docs/format.md).

Writers write version 2: a 24-byte header with its own checksum, then a
msgpack payload with a checksum of its own::

    0   u32  hcrc     CRC-32 (IEEE, zlib) of header bytes 4 .. 24
    4   u32  length   payload length in bytes
    8   u64  epoch    leader epoch that wrote the record (0 = plain local log)
    16  u16  magic    0x5A57 ("ZW")
    18  u8   version  2
    19  u8   flags    0 (reserved)
    20  u32  bcrc     CRC-32 of the payload
    24  ...  payload  msgpack map, `length` bytes

Version 1 frames (20-byte header, one CRC over bytes 4 .. end of frame,
version byte 1) are still read, verified and replicated byte for byte: a
log may hold v1 frames followed by v2 frames. Magic and version sit at the
same offsets in both, so every frame says which version it is.

Why two checksums (TigerBeetle's header and body checksums): with one CRC
over the whole frame, the length is only checked once the whole frame is
there, so a torn last record is indistinguishable from a damaged length in
the middle of the log. A v2 header that passes its own CRC makes `length`
trustworthy: its body running past the end of the file is a torn write,
whatever bytes of it landed.

All integers are little-endian. A record's position (its LSN) is the byte
offset of its first header byte in the whole log. Offsets never restart.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

import msgpack

HEADER_V1 = struct.Struct("<IIQHBB")
HEADER_V2 = struct.Struct("<IIQHBBI")
_REST_V1 = struct.Struct("<IQHBB")  # a v1 header after its CRC
_REST_V2 = struct.Struct("<IQHBBI")  # a v2 header after its header CRC
_CRC = struct.Struct("<I")
HEADER_SIZE_V1 = HEADER_V1.size  # 20
HEADER_SIZE_V2 = HEADER_V2.size  # 24
HEADER_SIZE = HEADER_SIZE_V2  # the header that writers write
# Bytes needed before a frame's version can be read (magic and version sit
# at 16..19 in both versions); fewer is always an incomplete frame.
MIN_HEADER_SIZE = HEADER_SIZE_V1
MAGIC = 0x5A57
VERSION_V1 = 1
VERSION_V2 = 2
VERSION = VERSION_V2  # what encode_frame/frame_payload write
FLAGS = 0

# The 2 magic bytes at header offset 16..18 that every valid frame carries,
# whatever its version; the corruption scanner searches for them to find
# candidate frame starts. MARKER_V1/MARKER_V2 add the version and flags.
MAGIC_BYTES = struct.pack("<H", MAGIC)
MARKER_OFFSET = 16
MARKER_V1 = struct.pack("<HBB", MAGIC, VERSION_V1, FLAGS)
MARKER_V2 = struct.pack("<HBB", MAGIC, VERSION_V2, FLAGS)
MARKER = MARKER_V2

MAX_KEY = 4096
MAX_VALUE = 1024 * 1024
# Largest payload a valid frame may carry: a maximal key and value plus the
# msgpack map overhead and the optional client id fields. Anything larger is
# an impossible length, never a record.
MAX_PAYLOAD = MAX_KEY + MAX_VALUE + 512
MAX_FRAME = HEADER_SIZE_V2 + MAX_PAYLOAD  # the larger header: covers a v1 frame too
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
    """A version-2 frame around `payload`: what every writer writes."""
    n = _check_frame_args(payload, epoch)
    rest = _REST_V2.pack(n, epoch, MAGIC, VERSION_V2, FLAGS, zlib.crc32(payload))
    return _CRC.pack(zlib.crc32(rest)) + rest + payload


def frame_payload_v1(payload: bytes, epoch: int) -> bytes:
    """A version-1 frame around `payload`. No writer writes these any more;
    tests use it to build the logs that older nodes wrote."""
    n = _check_frame_args(payload, epoch)
    body = _REST_V1.pack(n, epoch, MAGIC, VERSION_V1, FLAGS) + payload
    return _CRC.pack(zlib.crc32(body)) + body


def encode_frame_v1(r: Record, epoch: int) -> bytes:
    return frame_payload_v1(encode_payload(r), epoch)


def _check_frame_args(payload: bytes, epoch: int) -> int:
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise RecordError(f"payload of {n} bytes exceeds the maximum of {MAX_PAYLOAD}")
    if not 0 <= epoch < 2**64:
        raise RecordError(f"epoch {epoch} out of range")
    return n


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    size: int
    epoch: int
    payload: bytes
    version: int = VERSION_V2

    @property
    def end(self) -> int:
        return self.offset + self.size

    def record(self) -> Record:
        return decode_payload(self.payload)


class FrameStatus:
    """Outcome of looking at the bytes at one offset.

    The statuses of the second group come only from a v2 frame whose header
    passed its own checksum: its length is then trusted, and the frame's
    end is known (`header_end`).
    """

    OK = "ok"
    SHORT = "short"  # fewer bytes than a header, or than a v1 header's (unchecked) length claims
    BAD_HEADER = "bad_header"  # magic/version/flags wrong or impossible length
    BAD_CRC = "bad_crc"  # a v1 frame fails its one CRC
    BAD_HEADER_CRC = "bad_header_crc"  # a v2 header fails its own CRC: nothing in it is trusted

    SHORT_BODY = "short_body"  # valid v2 header, its payload runs past the end of the bytes
    BAD_BODY_CRC = "bad_body_crc"  # valid v2 header, whole payload there, payload CRC fails

    TRUSTED_LENGTH = (SHORT_BODY, BAD_BODY_CRC)


def frame_version(buf: bytes | memoryview | mmap.mmap, pos: int) -> int | None:
    """The version a frame at buf[pos] claims (1 or 2), None if its magic,
    version or flags are not a zwal frame's or fewer than 20 bytes remain."""
    if len(buf) - pos < MIN_HEADER_SIZE:
        return None
    magic, version, flags = struct.unpack_from("<HBB", buf, pos + MARKER_OFFSET)
    if magic != MAGIC or flags != FLAGS or version not in (VERSION_V1, VERSION_V2):
        return None
    return version


def header_size(version: int) -> int:
    return HEADER_SIZE_V1 if version == VERSION_V1 else HEADER_SIZE_V2


def parse_frame(buf: bytes | memoryview | mmap.mmap, pos: int, base: int = 0) -> tuple[str, Frame | None]:
    """Look at the frame starting at buf[pos]; never raises on any bytes.

    `base` is the log offset of buf[0], so returned frames carry log offsets.
    """
    avail = len(buf) - pos
    if avail < MIN_HEADER_SIZE:
        return FrameStatus.SHORT, None
    version = frame_version(buf, pos)
    if version is None:
        return FrameStatus.BAD_HEADER, None
    if version == VERSION_V1:
        crc, length, epoch, _magic, _version, _flags = HEADER_V1.unpack_from(buf, pos)
        if length > MAX_PAYLOAD or length == 0:
            return FrameStatus.BAD_HEADER, None
        end = pos + HEADER_SIZE_V1 + length
        if end > len(buf):
            return FrameStatus.SHORT, None
        if zlib.crc32(buf[pos + 4 : end]) != crc:
            return FrameStatus.BAD_CRC, None
        return FrameStatus.OK, Frame(base + pos, HEADER_SIZE_V1 + length, epoch,
                                     bytes(buf[pos + HEADER_SIZE_V1 : end]), VERSION_V1)
    if avail < HEADER_SIZE_V2:
        return FrameStatus.SHORT, None
    hcrc, length, epoch, _magic, _version, _flags, bcrc = HEADER_V2.unpack_from(buf, pos)
    # The header's own checksum first: until it passes, `length` is noise.
    if zlib.crc32(buf[pos + 4 : pos + HEADER_SIZE_V2]) != hcrc:
        return FrameStatus.BAD_HEADER_CRC, None
    if length > MAX_PAYLOAD or length == 0:
        return FrameStatus.BAD_HEADER, None  # checksummed yet impossible: no writer makes it
    end = pos + HEADER_SIZE_V2 + length
    if end > len(buf):
        return FrameStatus.SHORT_BODY, None
    if zlib.crc32(buf[pos + HEADER_SIZE_V2 : end]) != bcrc:
        return FrameStatus.BAD_BODY_CRC, None
    return FrameStatus.OK, Frame(base + pos, HEADER_SIZE_V2 + length, epoch,
                                 bytes(buf[pos + HEADER_SIZE_V2 : end]), VERSION_V2)


def trusted_frame_end(buf: bytes | memoryview | mmap.mmap, pos: int) -> int:
    """Where the frame at pos ends, by its length field; only meaningful for
    a status in FrameStatus.TRUSTED_LENGTH (a v2 header that passed its CRC)."""
    return pos + HEADER_SIZE_V2 + struct.unpack_from("<I", buf, pos + 4)[0]


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
    boundary without checksumming it again. Each frame's own version gives
    its header size (v1 and v2 frames may follow each other); a header that
    is neither stops the walk.
    """
    sizes: list[int] = []
    pos, n = 0, len(buf)
    while True:
        version = frame_version(buf, pos)
        if version is None:
            break
        hsize = header_size(version)
        if pos + hsize > n:
            break
        size = hsize + struct.unpack_from("<I", buf, pos + 4)[0]
        if pos + size > n:
            break
        sizes.append(size)
        pos += size
    return sizes
