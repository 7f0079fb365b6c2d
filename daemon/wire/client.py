"""The client wire protocol (docs/protocol.md): message shapes and error codes.

Pure functions only: bytes in, typed requests or clear errors out. The node
loop never trusts a network frame before it has passed through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from daemon.wal.format import MAX_CLIENT_ID, MAX_KEY, MAX_VALUE, Record, RecordError

# Larger messages are cut off by ZeroMQ itself (ZMQ_MAXMSGSIZE) before they
# reach Python: a maximal value plus a generous envelope.
MAX_MESSAGE = MAX_VALUE + MAX_KEY + 4096
# Every node remembers the last RETRY_WINDOW request ids of each client
# (docs/protocol.md, "Retries"): a client must never have more than this many
# writes outstanding, or a resend could fall outside it and be written twice.
RETRY_WINDOW = 1024

WRITE_OPS = ("set", "del")
BATCH_OP = "batch"  # up to MAX_BATCH writes in one message, each its own record (docs/protocol.md, "batch")
READ_OPS = ("get", "status", "ping", "watch")
ADMIN_OPS = ("promote", "follow", "fence", "snapshot", "handoff")
OPS = WRITE_OPS + (BATCH_OP,) + READ_OPS + ADMIN_OPS
# A batch's writes each take a request id of the client's retry window: never more than the window.
MAX_BATCH = RETRY_WINDOW


class Err:
    """Stable error codes. Clients map each to one exception class."""

    BAD_REQUEST = "bad_request"  # not msgpack, not a map, wrong field types, extra frames
    UNKNOWN_OP = "unknown_op"
    INVALID_RECORD = "invalid_record"  # empty or oversized key/value
    NOT_LEADER = "not_leader"  # retry at `leader_endpoint`
    NOT_ENOUGH_REPLICAS = "not_enough_replicas"  # may still become durable; retry with the same id
    FSYNC_FAILED = "fsync_failed"  # node stops writing and restarts
    NO_SPACE = "no_space"  # disk full; nothing appended; retry later
    WRITE_FAILED = "write_failed"
    STALE_EPOCH = "stale_epoch"  # an admin request from an older epoch
    REFUSED = "refused"  # an admin request the node will not carry out
    SHUTTING_DOWN = "shutting_down"
    FORBIDDEN = "forbidden"  # an authenticated key whose role may not send this op; nothing changed
    WRONG_CLUSTER = "wrong_cluster"  # the request names another cluster's id; nothing changed
    OFFSET_COMPACTED = "offset_compacted"  # watch `from` below the oldest retained offset (`oldest`, `snapshot`)
    BAD_OFFSET = "bad_offset"  # watch `from` not a frame boundary of the log, or beyond its end; nothing changed
    BUSY = "busy"  # a read not served (too many unread replies: read them, retry), or a write not taken
    # because the retry window is full (docs/protocol.md, "Retries"): nothing written; retry later

    RETRYABLE = frozenset({NOT_LEADER, NOT_ENOUGH_REPLICAS, FSYNC_FAILED, NO_SPACE, WRITE_FAILED, SHUTTING_DOWN,
                           BUSY})


class ProtocolError(Exception):
    """A request that cannot be served; carries the code for the error reply."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(slots=True)
class Request:
    id: int
    op: str
    key: bytes | None = None
    value: bytes | None = None
    client_id: bytes | None = None
    epoch: int = 0  # the highest epoch the sender has seen (fencing)
    args: dict | None = None  # admin ops only
    cluster: str | None = None  # the cluster_id the sender means (None: not said)
    watch: "Watch | None" = None  # op "watch" only
    writes: "list[Request] | None" = None  # op "batch" only: each a set or del with its own id

    def record(self) -> Record:
        rid = self.id if self.client_id is not None else None
        return Record(self.op, self.key, self.value, self.client_id, rid)  # type: ignore[arg-type]


def _uint(m: dict, k: str, default: int | None = None) -> int:
    v = m.get(k, default)
    if v is None:
        raise ProtocolError(Err.BAD_REQUEST, f"missing field {k!r}")
    if type(v) is not int or not 0 <= v < 2**63:
        raise ProtocolError(Err.BAD_REQUEST, f"field {k!r} must be an integer in 0..2**63-1")
    return v


def _bin(m: dict, k: str, required: bool) -> bytes | None:
    v = m.get(k)
    if v is None:
        if required:
            raise ProtocolError(Err.BAD_REQUEST, f"missing field {k!r}")
        return None
    if type(v) is bytes:
        return v
    if type(v) is str:
        return v.encode("utf-8")
    raise ProtocolError(Err.BAD_REQUEST, f"field {k!r} must be bytes or a string")


_FIELDS = frozenset({"id", "op", "key", "value", "cid", "epoch", "args", "cluster", "from", "max_bytes", "wait_ms",
                     "writes"})
_BATCH_ITEM_FIELDS = frozenset({"id", "op", "key", "value"})
_WATCH_FIELDS = ("from", "max_bytes", "wait_ms")

# -- watch (docs/protocol.md, "watch") ------------------------------------------------
# A reply carries whole records of at most `max_bytes` of log frames (at least
# one record, however large): capped so that the encoded reply, whose per-record
# overhead is below a frame's, always fits in MAX_MESSAGE.
WATCH_DEFAULT_BYTES = 256 * 1024
WATCH_MAX_BYTES = MAX_VALUE // 2
WATCH_MAX_WAIT_MS = 60_000


@dataclass(frozen=True, slots=True)
class Watch:
    """A watch request: committed records from log offset `offset` (a frame boundary)."""

    offset: int
    max_bytes: int = WATCH_DEFAULT_BYTES
    wait_ms: int = 0  # how long the leader may park the request when nothing is committed past `offset`


@dataclass(frozen=True, slots=True)
class WatchRecord:
    offset: int  # where the record's frame starts in the log
    end: int  # where it ends: the offset of the next record
    epoch: int
    op: str
    key: bytes
    value: bytes | None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """A watch reply: records in log order, and where to ask next (`next` >= every record's end)."""

    records: list[WatchRecord]
    next: int
    commit: int
    epoch: int


def _decode_watch(m: dict) -> Watch:
    w = Watch(_uint(m, "from"), _uint(m, "max_bytes", WATCH_DEFAULT_BYTES), _uint(m, "wait_ms", 0))
    if not 1 <= w.max_bytes <= WATCH_MAX_BYTES:
        raise ProtocolError(Err.BAD_REQUEST, f"field 'max_bytes' must be 1..{WATCH_MAX_BYTES}")
    if w.wait_ms > WATCH_MAX_WAIT_MS:
        raise ProtocolError(Err.BAD_REQUEST, f"field 'wait_ms' must be 0..{WATCH_MAX_WAIT_MS}")
    return w


def watch_request(request_id: int, w: Watch) -> dict[str, Any]:
    """The request map (the client adds `epoch` and `cluster`)."""
    return {"id": request_id, "op": "watch", "from": w.offset, "max_bytes": w.max_bytes, "wait_ms": w.wait_ms}


def watch_reply(request_id: int, records: list[WatchRecord], next_offset: int, commit: int, epoch: int) -> bytes:
    recs = []
    for r in records:
        d: dict[str, Any] = {"offset": r.offset, "end": r.end, "epoch": r.epoch, "op": r.op, "key": r.key}
        if r.value is not None:
            d["value"] = r.value
        recs.append(d)
    return _pack({"id": request_id, "ok": True, "records": recs, "next": next_offset, "commit": commit,
                  "epoch": epoch})


def decode_watch_reply(reply: dict[str, Any]) -> WatchBatch:
    """An ok watch reply (already unpacked) -> WatchBatch; ValueError if it is not one."""
    recs = reply.get("records")
    nxt, commit, epoch = reply.get("next"), reply.get("commit"), reply.get("epoch")
    if type(recs) is not list or type(nxt) is not int or type(commit) is not int or type(epoch) is not int:
        raise ValueError("not a watch reply: needs records (list), next, commit, epoch (integers)")
    out = []
    pos = None
    for d in recs:
        if type(d) is not dict:
            raise ValueError("a watch record must be a map")
        off, end, ep, op, key, value = (d.get("offset"), d.get("end"), d.get("epoch"), d.get("op"), d.get("key"),
                                        d.get("value"))
        if (type(off) is not int or type(end) is not int or end <= off or type(ep) is not int
                or op not in WRITE_OPS or type(key) is not bytes or not (value is None or type(value) is bytes)):
            raise ValueError(f"bad watch record {d!r:.200}")
        if pos is not None and off != pos:
            raise ValueError(f"watch records not contiguous: {off} after a record ending at {pos}")
        pos = end
        out.append(WatchRecord(off, end, ep, op, key, value))
    if pos is not None and nxt != pos:
        raise ValueError(f"watch reply's next {nxt} is not its last record's end {pos}")
    return WatchBatch(out, nxt, commit, epoch)


def decode_request(body: bytes) -> Request:
    """Parse one request body; raise ProtocolError with the id when it is known."""
    try:
        m = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:
        raise ProtocolError(Err.BAD_REQUEST, "request is not a msgpack message") from None
    if type(m) is not dict:
        raise ProtocolError(Err.BAD_REQUEST, "request must be a msgpack map")
    rid = m.get("id")
    if type(rid) is not int or not 0 <= rid < 2**63:
        rid = None
    try:
        if not _FIELDS.issuperset(m):
            extra = set(m) - _FIELDS
            raise ProtocolError(Err.BAD_REQUEST, f"unknown field(s) {sorted(map(str, extra))}")
        if rid is None:
            _uint(m, "id")  # raises the precise message
        op = m.get("op")
        if type(op) is not str:
            raise ProtocolError(Err.BAD_REQUEST, "field 'op' must be a string")
        if op not in OPS:
            raise ProtocolError(Err.UNKNOWN_OP, f"unknown op {op!r} (known: {', '.join(OPS)})")
        epoch = m.get("epoch", 0)
        if type(epoch) is not int or not 0 <= epoch < 2**63:
            _uint(m, "epoch")
        req = Request(rid, op, epoch=epoch)  # type: ignore[arg-type]
        if "cluster" in m:
            cl = m["cluster"]
            if type(cl) is not str or not 1 <= len(cl) <= 64:
                raise ProtocolError(Err.BAD_REQUEST, "field 'cluster' must be a string of 1..64 characters")
            req.cluster = cl
        if "cid" in m:
            cid = _bin(m, "cid", False)
            if cid is not None and not 1 <= len(cid) <= MAX_CLIENT_ID:
                raise ProtocolError(Err.BAD_REQUEST, f"field 'cid' must be 1..{MAX_CLIENT_ID} bytes")
            req.client_id = cid
        if op == "watch":
            req.watch = _decode_watch(m)
        else:
            extra_w = [k for k in _WATCH_FIELDS if k in m]
            if extra_w:
                raise ProtocolError(Err.BAD_REQUEST, f"field(s) {extra_w} belong to op 'watch' only")
        if op == BATCH_OP:
            req.writes = _decode_batch(m, req.client_id)
        elif "writes" in m:
            raise ProtocolError(Err.BAD_REQUEST, "field 'writes' belongs to op 'batch' only")
        if op == "set" or op == "del" or op == "get":
            req.key = _bin(m, "key", True)
        if op == "set":
            req.value = _bin(m, "value", True)
        elif "value" in m:
            raise ProtocolError(Err.BAD_REQUEST, f"op {op!r} takes no value")
        if op in ADMIN_OPS:
            args = m.get("args", {})
            if type(args) is not dict:
                raise ProtocolError(Err.BAD_REQUEST, "field 'args' must be a map")
            req.args = args
        elif op == "get":
            if not 1 <= len(req.key) <= MAX_KEY:  # type: ignore[arg-type]
                raise ProtocolError(Err.INVALID_RECORD, f"key must be 1..{MAX_KEY} bytes")
        return req
    except ProtocolError as e:
        e.request_id = rid
        raise


def _decode_batch(m: dict, cid: bytes | None) -> list[Request]:
    """A batch's writes: 1..MAX_BATCH maps {id, op, key, value}, distinct ids, under the batch's `cid`."""
    if cid is None:
        raise ProtocolError(Err.BAD_REQUEST, "op 'batch' needs field 'cid': each write's retry id is (cid, its id)")
    if "key" in m or "value" in m:
        raise ProtocolError(Err.BAD_REQUEST, "op 'batch' takes its keys and values in 'writes'")
    ws = m.get("writes")
    if type(ws) is not list or not 1 <= len(ws) <= MAX_BATCH:
        raise ProtocolError(Err.BAD_REQUEST, f"field 'writes' must be a list of 1..{MAX_BATCH} writes")
    out: list[Request] = []
    seen: set[int] = set()
    for i, w in enumerate(ws):
        if type(w) is not dict or not _BATCH_ITEM_FIELDS.issuperset(w):
            raise ProtocolError(Err.BAD_REQUEST, f"writes[{i}] must be a map of id, op, key and value")
        wid, wop = _uint(w, "id"), w.get("op")
        if wop not in WRITE_OPS:
            raise ProtocolError(Err.BAD_REQUEST, f"writes[{i}]: op must be one of {', '.join(WRITE_OPS)}")
        if wid in seen:
            raise ProtocolError(Err.BAD_REQUEST, f"writes[{i}]: request id {wid} appears twice in the batch")
        seen.add(wid)
        r = Request(wid, wop, key=_bin(w, "key", True), client_id=cid)
        if wop == "set":
            r.value = _bin(w, "value", True)
        elif "value" in w:
            raise ProtocolError(Err.BAD_REQUEST, f"writes[{i}]: del takes no value")
        out.append(r)
    return out


def batch_request(request_id: int, cid: bytes, writes: list[tuple[int, str, bytes, bytes | None]]) -> dict[str, Any]:
    """The request map for op "batch" (the client adds `epoch` and `cluster`): writes are (id, op, key, value)."""
    items = []
    for wid, wop, key, value in writes:
        d: dict[str, Any] = {"id": wid, "op": wop, "key": key}
        if value is not None:
            d["value"] = value
        items.append(d)
    return {"id": request_id, "op": BATCH_OP, "cid": cid, "writes": items}


def batch_reply(request_id: int, results: list[dict[str, Any]]) -> bytes:
    """One reply for a whole batch: each write's own reply, in the batch's order. `ok` only if every write's
    is; else the first failure's `error` and `message`, with how many failed."""
    bad = [r for r in results if not r.get("ok")]
    if not bad:
        return _pack({"id": request_id, "ok": True, "results": results})
    return encode({"id": request_id, "ok": False, "error": bad[0].get("error"),
                   "message": f"{len(bad)} of {len(results)} writes failed, the first: {bad[0].get('message')}",
                   "results": results})


def validate_write(req: Request) -> Record:
    try:
        return req.record()
    except RecordError as e:
        raise ProtocolError(Err.INVALID_RECORD, str(e), req.id) from None


_pack = msgpack.Packer(use_bin_type=True).pack  # reused: see wal/format.py


def encode(msg: dict[str, Any]) -> bytes:
    return _pack(msg)


def error_reply(request_id: int | None, code: str, message: str, **extra: Any) -> bytes:
    msg: dict[str, Any] = {"id": request_id, "ok": False, "error": code, "message": message}
    msg.update(extra)
    return encode(msg)


def ok_reply(request_id: int, **fields: Any) -> bytes:
    msg: dict[str, Any] = {"id": request_id, "ok": True}
    msg.update(fields)
    return _pack(msg)


def write_ok(request_id: int, offset: int, end: int, epoch: int) -> bytes:
    """The acknowledgement of a durable write (the hot path: no kwargs)."""
    return _pack({"id": request_id, "ok": True, "offset": offset, "end": end, "epoch": epoch})


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], bytes | None, str | None]:
    """ROUTER frames -> (reply envelope, body, problem).

    A DEALER sends [body]; a REQ socket sends ["", body]. Anything else has
    extra frames: it still gets an error reply at its identity.
    """
    if len(frames) == 2:
        return frames[:1], frames[1], None
    if len(frames) == 3 and frames[1] == b"":
        return frames[:2], frames[2], None
    if len(frames) < 2:
        return frames[:1], None, "empty message"
    return frames[:1], None, f"request must be one frame (got {len(frames) - 1})"
