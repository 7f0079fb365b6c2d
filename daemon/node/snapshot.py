"""Snapshot files: what replay rebuilds up to a log offset, so a restart replays only the tail.

A snapshot `snapshots/snapshot-<offset>` (offset zero-padded to 20 digits)
holds the key-value state, the retry windows, and the log's own epoch
starts below `offset`, exactly as a full replay of the log's first `offset`
bytes builds them (docs/format.md, "Snapshots"). Layout::

    0   8   magic    b"ZWALSNAP"
    8   u16 version  1
    10  u16 flags    0
    12  u32 length   of the header map
    16  ... header   msgpack map: offset, records, last_offset, last_epoch, last_crc, window_ms, chunks, created_ms
    ..  u32 crc      CRC-32 of bytes 0 .. end of the header map
    then `chunks` chunks, each: u32 crc (of the 5 bytes after it and the payload), u32 length, u8 kind, payload

Invariants:
- a snapshot is written to `<name>.tmp`, fsynced, renamed, and the
  directory fsynced: a crash leaves the old set of snapshots or the new one,
  and a `.tmp` that recovery removes (logged);
- a snapshot is used only if every check passes (header, each chunk, the
  chunk count, no trailing bytes) and the log still holds the frame it says
  ends at its offset (`last_offset`, `last_epoch`, `last_crc`); anything
  else is renamed `.broken` or left unused, and logged: never skipped
  silently (etcd's rule);
- its offset was committed when it was taken (daemon/node/snapshotting.py).

Writing uses plain os calls only: it runs in a forked child, where no lock
another thread held (the logger's, ZeroMQ's) may be taken.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import msgpack

from daemon.node.kv import KVState, Placed, Seen, _Client

MAGIC = b"ZWALSNAP"
VERSION = 1
_HEAD = struct.Struct("<8sHHI")
_CRC = struct.Struct("<I")
_CHUNK = struct.Struct("<IIB")  # crc, length, kind
MAX_CHUNK = 64 * 1024 * 1024  # no chunk the writer makes is larger (entries are packed in groups)
ENTRIES_PER_CHUNK = 8192

KIND_META = 1  # {"epoch_starts": [[epoch, offset], ...], "end": offset}
KIND_KV = 2  # [[key, value], ...]
KIND_WINDOW = 3  # {"clock", "first", "per_client", "window_ms"}
KIND_CLIENTS = 4  # [[client id, ts, [[request id, offset, end, epoch, digest], ...]], ...] oldest first

SNAPSHOT_DIR = "snapshots"
PREFIX = "snapshot-"
TMP = ".tmp"
BROKEN = ".broken"
TRUNCATED = ".truncated"
KEEP = 2  # valid snapshots kept: the newest and the one before it


class SnapshotError(Exception):
    """A snapshot file that fails a check; the message says which."""


def snapshot_dir(data_dir: str) -> str:
    return os.path.join(data_dir, SNAPSHOT_DIR)


def name_for(offset: int) -> str:
    return f"{PREFIX}{offset:020d}"


def offset_of(name: str) -> int | None:
    """The offset a valid snapshot name carries (None: not a snapshot's name)."""
    if not name.startswith(PREFIX):
        return None
    digits = name[len(PREFIX):]
    if len(digits) != 20 or not digits.isdigit():
        return None
    return int(digits)


@dataclass(frozen=True, slots=True)
class Header:
    offset: int  # the snapshot holds exactly the records below this log offset
    records: int
    last_offset: int  # the last frame below `offset`: where it starts, its epoch and CRC (-1, 0, 0: none)
    last_epoch: int
    last_crc: int
    window_ms: int  # the retry window's length it was built with (a changed config needs a full replay)
    chunks: int
    created_ms: int = 0


@dataclass
class Loaded:
    header: Header
    kv: KVState
    epoch_starts: list[tuple[int, int]] = field(default_factory=list)


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _chunk(kind: int, payload: bytes) -> bytes:
    body = _CHUNK.pack(0, len(payload), kind)[4:] + payload
    return _CRC.pack(zlib.crc32(body)) + body


def _payloads(kv: KVState) -> Iterator[tuple[int, bytes]]:
    yield KIND_META, _pack({"epoch_starts": [list(e) for e in kv.epoch_starts], "end": kv.end})
    items = list(kv.data.items()) if len(kv.data) <= ENTRIES_PER_CHUNK else None
    if items is not None:
        yield KIND_KV, _pack(items)
    else:
        group: list[tuple[bytes, bytes]] = []
        for kv_pair in kv.data.items():
            group.append(kv_pair)
            if len(group) >= ENTRIES_PER_CHUNK:
                yield KIND_KV, _pack(group)
                group = []
        if group:
            yield KIND_KV, _pack(group)
    w = kv.window
    yield KIND_WINDOW, _pack({"clock": w.clock, "first": w._first, "per_client": w.per_client,
                              "window_ms": w.window_ms})
    clients: list[list[object]] = []
    for cid, c in w._by_client.items():
        clients.append([cid, c.ts, [[rid, s.placed.offset, s.placed.end, s.placed.epoch, s.digest]
                                    for rid, s in c.ids.items()]])
        if len(clients) >= ENTRIES_PER_CHUNK // 8:
            yield KIND_CLIENTS, _pack(clients)
            clients = []
    if clients:
        yield KIND_CLIENTS, _pack(clients)


def encode(kv: KVState, last_crc: int, created_ms: int = 0) -> list[bytes]:
    """The file's bytes for `kv` (the state of the log's first kv.end bytes), as parts to write in order.

    `last_crc` is the CRC field of the log's frame at kv.last.offset."""
    chunks = [_chunk(kind, p) for kind, p in _payloads(kv)]
    last = kv.last
    head = _pack({"offset": kv.end, "records": kv.records,
                  "last_offset": last.offset if last is not None else -1,
                  "last_epoch": last.epoch if last is not None else 0, "last_crc": last_crc,
                  "window_ms": kv.window.window_ms, "chunks": len(chunks), "created_ms": created_ms})
    start = _HEAD.pack(MAGIC, VERSION, 0, len(head)) + head
    return [start + _CRC.pack(zlib.crc32(start)), *chunks]


def _int(m: dict, k: str, lo: int = 0) -> int:
    v = m.get(k)
    if type(v) is not int or v < lo:
        raise SnapshotError(f"header field {k!r} is {v!r}, not an integer >= {lo}")
    return v


def decode_header(buf: bytes) -> tuple[Header, int]:
    """The header and where the first chunk starts; raises SnapshotError."""
    if len(buf) < _HEAD.size:
        raise SnapshotError(f"{len(buf)} bytes: shorter than a snapshot header")
    magic, version, flags, n = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise SnapshotError("not a snapshot (wrong magic)")
    if version != VERSION or flags != 0:
        raise SnapshotError(f"unknown snapshot version {version} (flags {flags})")
    end = _HEAD.size + n
    if end + 4 > len(buf):
        raise SnapshotError("header cut short")
    if zlib.crc32(buf[:end]) != _CRC.unpack_from(buf, end)[0]:
        raise SnapshotError("header fails its checksum")
    try:
        m = msgpack.unpackb(buf[_HEAD.size:end], raw=False)
    except Exception as e:
        raise SnapshotError(f"header is not msgpack: {e}") from None
    if type(m) is not dict:
        raise SnapshotError("header is not a map")
    h = Header(_int(m, "offset"), _int(m, "records"), _int(m, "last_offset", -1), _int(m, "last_epoch"),
               _int(m, "last_crc"), _int(m, "window_ms", 1), _int(m, "chunks", 3), _int(m, "created_ms"))
    if (h.offset == 0) != (h.last_offset == -1) or h.last_offset >= h.offset:
        raise SnapshotError(f"last frame at {h.last_offset} does not end below offset {h.offset}")
    return h, end + 4


def header_crc(buf: bytes) -> int:
    """The header's own checksum (the u32 after the header map): names one snapshot file."""
    _, pos = decode_header(buf)
    return int(_CRC.unpack_from(buf, pos - 4)[0])


def head_bytes(fd: int) -> bytes:
    """The fixed part and the header map of the snapshot open at `fd` (pread: the file position is not used)."""
    fixed = os.pread(fd, _HEAD.size, 0)
    if len(fixed) < _HEAD.size:
        return fixed
    n = _HEAD.unpack_from(fixed, 0)[3]
    return fixed + os.pread(fd, min(n, MAX_CHUNK) + 4, _HEAD.size)


def _chunks(buf: bytes, pos: int, count: int) -> Iterator[tuple[int, object]]:
    for i in range(count):
        if pos + _CHUNK.size > len(buf):
            raise SnapshotError(f"chunk {i} of {count} missing at byte {pos} (the file is cut short)")
        crc, n, kind = _CHUNK.unpack_from(buf, pos)
        end = pos + _CHUNK.size + n
        if n > MAX_CHUNK or end > len(buf):
            raise SnapshotError(f"chunk {i} at byte {pos}: length {n} runs past the end of the file")
        if zlib.crc32(buf[pos + 4:end]) != crc:
            raise SnapshotError(f"chunk {i} at byte {pos} fails its checksum")
        try:
            yield kind, msgpack.unpackb(buf[pos + _CHUNK.size:end], raw=False, strict_map_key=False,
                                        use_list=True)
        except Exception as e:
            raise SnapshotError(f"chunk {i} at byte {pos} is not msgpack: {e}") from None
        pos = end
    if pos != len(buf):
        raise SnapshotError(f"{len(buf) - pos} bytes after the last chunk")


def decode(buf: bytes, window_seconds: float) -> Loaded:
    """Rebuild the state a snapshot holds; raises SnapshotError on any failed check."""
    h, pos = decode_header(buf)
    kv = KVState(window_seconds)
    w = kv.window
    seen: set[int] = set()
    starts: list[tuple[int, int]] = []
    try:
        for kind, obj in _chunks(buf, pos, h.chunks):
            seen.add(kind)
            if kind == KIND_META:
                assert isinstance(obj, dict)
                starts = [(int(e), int(o)) for e, o in obj["epoch_starts"]]
                if obj["end"] != h.offset:
                    raise SnapshotError(f"state ends at {obj['end']}, header says {h.offset}")
            elif kind == KIND_KV:
                assert isinstance(obj, list)
                # The chunk's CRC says these are the bytes written; only the
                # shape is checked here (one C-level pass, no per-item Python).
                kv.data.update(obj)
            elif kind == KIND_WINDOW:
                assert isinstance(obj, dict)
                if obj["window_ms"] != h.window_ms:
                    raise SnapshotError("window length differs from the header's")
                w.clock, w._first, w.per_client = obj["clock"], obj["first"], obj["per_client"]
            elif kind == KIND_CLIENTS:
                assert isinstance(obj, list)
                for cid, ts, ids in obj:
                    c = _Client(OrderedDict(), ts)
                    for rid, off, end, epoch, digest in ids:
                        c.ids[rid] = Seen(Placed(off, end, epoch), digest)
                    w._by_client[cid] = c
                    w.bytes += w.client_bytes(cid, c)
            else:
                raise SnapshotError(f"unknown chunk kind {kind}")
    except SnapshotError:
        raise
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"a chunk has the wrong shape: {type(e).__name__} {e}") from None
    missing = {KIND_META, KIND_WINDOW} - seen
    if missing:
        raise SnapshotError(f"chunk kinds {sorted(missing)} missing")
    kv.records = h.records
    kv.end = h.offset
    kv.last = Placed(h.last_offset, h.offset, h.last_epoch) if h.last_offset >= 0 else None
    kv.epoch_starts = starts
    return Loaded(h, kv, starts)


# -- files: plain os calls only (a forked child writes them) -------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(directory: str, offset: int, parts: list[bytes]) -> str:
    """Write a snapshot durably: temp file, fsync, rename, fsync the directory. Returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name_for(offset))
    tmp = path + TMP
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for p in parts:
            view = memoryview(p)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        # The bytes are durable before the name points at them: a crash
        # after the rename must never find a snapshot that is not all there.
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(directory)
    return path


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    path: str


def listing(directory: str) -> tuple[list[Entry], list[str]]:
    """(snapshots newest first, leftover temp files) in `directory`."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return [], []
    snaps = [Entry(o, os.path.join(directory, n)) for n in names if (o := offset_of(n)) is not None]
    tmps = [os.path.join(directory, n) for n in names if n.endswith(TMP) and n.startswith(PREFIX)]
    return sorted(snaps, key=lambda e: -e.offset), sorted(tmps)


def move_aside(path: str, suffix: str) -> str:
    """Rename a snapshot out of use (`.broken`, `.truncated`), durably; returns the new path."""
    dest = path + suffix
    if os.path.exists(dest):
        dest = f"{dest}-{int(time.time())}"
    os.rename(path, dest)
    _fsync_dir(os.path.dirname(path))
    return dest


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
