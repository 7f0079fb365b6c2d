"""The replication protocol (docs/protocol.md): typed messages, encoded and decoded here only.

A follower sends `Fetch`; a leader answers with `Data` (a chunk or, with
`offset` None, a heartbeat), `Truncate` or `Refuse`; a node that does not
lead answers `NotLeader`. A restarted leader that lost records of its own
epoch asks a follower that holds them with `RepairRequest`, and the
follower answers `RepairData` (daemon/node/repair.py). A follower that needs
bytes the leader no longer holds (below its oldest segment), or a new node
for which the leader's newest snapshot is smaller than the log below it, is
answered `SnapshotNeeded`; it then asks `FetchSnapshot` for the file in
chunks and is answered `SnapshotChunk` (Raft's InstallSnapshot, KRaft's
FetchSnapshot; daemon/node/transfer.py). Every decoder checks every field: bytes from the
network become a typed message or a `BadMessage` with a reason, never a
half-trusted dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

# Epochs and offsets are unsigned and below 2**63 on the wire (docs/protocol.md).
MAX_UINT = 2**63 - 1

_pack = msgpack.Packer(use_bin_type=True).pack


class BadMessage(Exception):
    """A replication message that failed a check; the text says which."""


@dataclass(frozen=True, slots=True)
class Fetch:
    """Follower -> leader: send me bytes from `offset`; everything below it is fsynced here.

    (`last_epoch`, `offset`) is the follower's log position; the leader counts
    the fetch as an acknowledgement only if that position is a prefix of its
    own log. `round` is the highest read round the follower has been sent
    (ReadIndex, docs/protocol.md).
    """

    name: str
    epoch: int
    offset: int
    last_epoch: int
    records: int = 0
    max: int = 1 << 20
    round: int = 0
    inc: int = 0  # the leader incarnation that sent `round` (rounds of another incarnation prove nothing)
    cluster: str = ""  # the follower's cluster_id ("" : not said); a leader of another cluster refuses it


@dataclass(frozen=True, slots=True)
class Data:
    """Leader -> follower: log bytes from `offset` (a heartbeat when `offset` is None)."""

    epoch: int
    leader: str
    offset: int | None
    end: int
    commit: int
    round: int = 0
    data: bytes | None = None
    inc: int = 0  # a random number per leader incarnation: a restarted leader's rounds start again


@dataclass(frozen=True, slots=True)
class Truncate:
    """Leader -> follower: your log stops matching mine after epoch `last_epoch`, which ends at `offset` here.

    This is Kafka's OffsetsForLeaderEpoch answer: `last_epoch` is the largest
    epoch of the leader's history not above the follower's last epoch, and
    `offset` where it ends in the leader's log. The follower truncates to the
    smaller of `offset` and its own end of `last_epoch` (KIP-101, KIP-279).
    """

    epoch: int
    leader: str
    offset: int
    last_epoch: int


@dataclass(frozen=True, slots=True)
class Refuse:
    """Leader -> follower: the fetch is refused; nothing changes on either side."""

    epoch: int
    message: str


@dataclass(frozen=True, slots=True)
class NotLeader:
    """A node that does not lead, to whoever fetched from it."""

    epoch: int
    leader: str | None


@dataclass(frozen=True, slots=True)
class RepairRequest:
    """Leader -> follower: send me your frames of epoch `epoch` from `offset` (my end) up to `upto`.

    At most `max` bytes (or one frame if larger). Only a leader confirming
    its log after recovery cut records of its own epoch sends it.
    """

    epoch: int
    leader: str
    offset: int
    upto: int
    max: int


@dataclass(frozen=True, slots=True)
class RepairData:
    """Follower -> leader: whole frames of the leader's epoch, from `offset`, copied from the follower's log."""

    name: str
    epoch: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SnapshotNeeded:
    """Leader -> follower: the bytes you asked for are not sent as log; fetch my snapshot `offset` first.

    `size` is the snapshot file's length in bytes, `crc` its header's own
    checksum (the u32 after the header map, daemon/node/snapshot.py), which
    names one file: a follower resumes a transfer only of the same offset
    and crc. `end` is the leader's end now: the follower counts as no copy
    for promotion until its log reaches it (NodeState.damaged_end).
    """

    epoch: int
    leader: str
    offset: int
    size: int
    crc: int
    end: int


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """Follower -> leader: send me bytes [pos, pos + max) of your snapshot `offset` (whose header crc is `crc`)."""

    name: str
    epoch: int
    offset: int
    crc: int
    pos: int
    max: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Leader -> follower: bytes of snapshot `offset` (header crc `crc`, `size` bytes in all) from `pos`."""

    epoch: int
    leader: str
    offset: int
    crc: int
    pos: int
    size: int
    data: bytes


FromLeader = Data | Truncate | Refuse | NotLeader | RepairRequest | SnapshotNeeded | SnapshotChunk
ToLeader = Fetch | RepairData | FetchSnapshot
MAX_CRC = 2**32 - 1


def _uint(m: dict[str, Any], k: str, *, optional: bool = False) -> Any:
    v = m.get(k)
    if v is None and optional:
        return None
    if type(v) is not int or not 0 <= v <= MAX_UINT:
        raise BadMessage(f"field {k!r} must be an integer in 0..2**63-1, got {v!r}")
    return v


def _str(m: dict[str, Any], k: str, *, optional: bool = False) -> Any:
    v = m.get(k)
    if v is None and optional:
        return None
    if type(v) is not str or not 0 < len(v) <= 256:
        raise BadMessage(f"field {k!r} must be a non-empty string, got {v!r}")
    return v


def _cluster(m: dict[str, Any]) -> str:
    v = m.get("cluster")
    if v is None:
        return ""
    if type(v) is not str or not 1 <= len(v) <= 64:
        raise BadMessage(f"field 'cluster' must be a string of 1..64 characters, got {v!r}")
    return v


def _map(body: bytes) -> dict[str, Any]:
    try:
        m = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:
        raise BadMessage("not a msgpack message") from None
    if type(m) is not dict or type(m.get("t")) is not str:
        raise BadMessage("not a map with a string 't'")
    return m


# -- follower -> leader ------------------------------------------------------------


def encode_fetch(f: Fetch) -> bytes:
    m = {"t": "fetch", "name": f.name, "epoch": f.epoch, "offset": f.offset, "last_epoch": f.last_epoch,
         "records": f.records, "max": f.max, "round": f.round, "inc": f.inc}
    if f.cluster:
        m["cluster"] = f.cluster
    return _pack(m)


def encode_fetch_snapshot(f: FetchSnapshot) -> bytes:
    return _pack({"t": "fetch_snapshot", "name": f.name, "epoch": f.epoch, "offset": f.offset, "crc": f.crc,
                  "pos": f.pos, "max": f.max})


def _crc(m: dict[str, Any]) -> int:
    v = _uint(m, "crc")
    if v > MAX_CRC:
        raise BadMessage(f"field 'crc' must be a 32-bit checksum, got {v!r}")
    return int(v)


def decode_fetch_snapshot(m: dict[str, Any]) -> FetchSnapshot:
    most = _uint(m, "max")
    if most == 0:
        raise BadMessage("a snapshot fetch needs max > 0")
    return FetchSnapshot(_str(m, "name"), _uint(m, "epoch"), _uint(m, "offset"), _crc(m), _uint(m, "pos"), most)


def encode_repair_data(r: RepairData) -> list[bytes]:
    return [_pack({"t": "repair_data", "name": r.name, "epoch": r.epoch, "offset": r.offset}), r.data]


def decode_to_leader(frames: list[bytes], max_data: int) -> ToLeader:
    """A ROUTER's [identity, body] (a fetch) or [identity, header, data] (repair data) from a follower."""
    if len(frames) == 3:
        m = _map(frames[1])
        if m["t"] != "repair_data":
            raise BadMessage(f"a two-frame message must be repair data, got {m['t']!r}")
        data = frames[2]
        if not 0 < len(data) <= max_data:
            raise BadMessage(f"repair data must be 1..{max_data} bytes, got {len(data)}")
        return RepairData(_str(m, "name"), _uint(m, "epoch"), _uint(m, "offset"), data)
    if len(frames) == 2:
        m = _map(frames[1])
        if m["t"] == "fetch_snapshot":
            return decode_fetch_snapshot(m)
    return decode_fetch(frames)


def decode_fetch(frames: list[bytes]) -> Fetch:
    """A ROUTER's [identity, body] from a follower."""
    if len(frames) != 2:
        raise BadMessage(f"a fetch is one frame (got {len(frames) - 1})")
    m = _map(frames[1])
    if m["t"] != "fetch":
        raise BadMessage(f"expected a fetch, got {m['t']!r}")
    return Fetch(_str(m, "name"), _uint(m, "epoch"), _uint(m, "offset"), _uint(m, "last_epoch"),
                 _uint(m, "records", optional=True) or 0, _uint(m, "max", optional=True) or (1 << 20),
                 _uint(m, "round", optional=True) or 0, _uint(m, "inc", optional=True) or 0,
                 _cluster(m))


# -- leader -> follower ------------------------------------------------------------


def encode(msg: FromLeader) -> list[bytes]:
    """The frames of one message to a follower (after the ROUTER envelope)."""
    if isinstance(msg, Data):
        hdr = _pack({"t": "data", "epoch": msg.epoch, "leader": msg.leader, "offset": msg.offset,
                     "end": msg.end, "commit": msg.commit, "round": msg.round, "inc": msg.inc})
        return [hdr] if msg.offset is None else [hdr, msg.data or b""]
    if isinstance(msg, Truncate):
        return [_pack({"t": "truncate", "epoch": msg.epoch, "leader": msg.leader, "offset": msg.offset,
                       "last_epoch": msg.last_epoch})]
    if isinstance(msg, Refuse):
        return [_pack({"t": "error", "epoch": msg.epoch, "message": msg.message})]
    if isinstance(msg, RepairRequest):
        return [_pack({"t": "repair", "epoch": msg.epoch, "leader": msg.leader, "offset": msg.offset,
                       "upto": msg.upto, "max": msg.max})]
    if isinstance(msg, NotLeader):
        return [_pack({"t": "not_leader", "epoch": msg.epoch, "leader": msg.leader})]
    if isinstance(msg, SnapshotNeeded):
        return [_pack({"t": "snapshot_needed", "epoch": msg.epoch, "leader": msg.leader, "offset": msg.offset,
                       "size": msg.size, "crc": msg.crc, "end": msg.end})]
    if isinstance(msg, SnapshotChunk):
        return [_pack({"t": "snapshot_chunk", "epoch": msg.epoch, "leader": msg.leader, "offset": msg.offset,
                       "crc": msg.crc, "pos": msg.pos, "size": msg.size}), msg.data]
    raise AssertionError(f"not a message to a follower: {msg!r}")


def decode_from_leader(frames: list[bytes]) -> FromLeader:
    """A DEALER's frames from the node the follower fetches from."""
    if not 1 <= len(frames) <= 2:
        raise BadMessage(f"a leader's message is one or two frames (got {len(frames)})")
    m = _map(frames[0])
    t = m["t"]
    epoch = _uint(m, "epoch")
    if t == "data":
        offset = _uint(m, "offset", optional=True)
        if (offset is None) != (len(frames) == 1):
            raise BadMessage("a chunk has an offset and a second frame; a heartbeat has neither")
        return Data(epoch, _str(m, "leader"), offset, _uint(m, "end"), _uint(m, "commit"),
                    _uint(m, "round", optional=True) or 0, frames[1] if offset is not None else None,
                    _uint(m, "inc", optional=True) or 0)
    if t == "snapshot_chunk":
        if len(frames) != 2:
            raise BadMessage("a snapshot chunk is a header and one frame of bytes")
        offset, pos, size, data = _uint(m, "offset"), _uint(m, "pos"), _uint(m, "size"), frames[1]
        if not data or pos + len(data) > size:
            raise BadMessage(f"a snapshot chunk of {len(data)} bytes at {pos} does not fit in {size} bytes")
        return SnapshotChunk(epoch, _str(m, "leader"), offset, _crc(m), pos, size, data)
    if len(frames) != 1:
        raise BadMessage(f"a {t!r} message is one frame")
    if t == "truncate":
        return Truncate(epoch, _str(m, "leader"), _uint(m, "offset"), _uint(m, "last_epoch"))
    if t == "error":
        msg = m.get("message")
        return Refuse(epoch, msg if isinstance(msg, str) else repr(msg))
    if t == "not_leader":
        return NotLeader(epoch, _str(m, "leader", optional=True))
    if t == "repair":
        offset, upto, most = _uint(m, "offset"), _uint(m, "upto"), _uint(m, "max")
        if not offset < upto or most == 0:
            raise BadMessage(f"a repair request needs offset < upto and max > 0 (got {offset}, {upto}, {most})")
        return RepairRequest(epoch, _str(m, "leader"), offset, upto, most)
    if t == "snapshot_needed":
        offset, size, end = _uint(m, "offset"), _uint(m, "size"), _uint(m, "end")
        if offset == 0 or size == 0 or end < offset:
            raise BadMessage(f"a snapshot offer needs 0 < offset <= end and size > 0 (got {offset}, {end}, {size})")
        return SnapshotNeeded(epoch, _str(m, "leader"), offset, size, _crc(m), end)
    raise BadMessage(f"unknown message type {t!r}")
