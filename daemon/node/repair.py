"""Protocol-Aware Recovery of a leader's own tail: pure rules (Alagappan et al., FAST 2018).

A leader whose recovery cut records of its own epoch (a torn or damaged
tail) may have acknowledged them: with ack_replicas = K they sit on K
followers. Rather than step down and wait for an operator, it asks a
follower that holds bytes of its epoch beyond its end for them, checks
every frame, appends them and leads on.

Why the copy is the leader's own bytes: one leader per epoch, and a
follower's log is a byte-identical prefix of its leader's, so frames of the
leader's epoch on a follower are frames this leader wrote, at the same
offsets. A frame that fails its CRC, is not of that epoch, does not start
where the leader's log ends, or lies beyond what the follower claimed to
hold is refused, and nothing changes.

Why F - K + 1 answers are enough (`confirm_quorum`): with F followers, an
acknowledged record is on K of them, and any F - K + 1 followers include
at least one of those K. So once F - K + 1 followers have shown their
positions, the most advanced of them holds every acknowledged record; when
the leader's log (repaired) reaches it, nothing acknowledged is missing.
"""

from __future__ import annotations

from typing import Callable

from daemon.node.identity import epoch_end
from daemon.wal.format import Frame, Record, RecordError, decode_payload, parse_frame
from daemon.wire.replication import RepairData, RepairRequest

# The most bytes of frames a repair request asks for (one frame may be larger,
# up to MAX_FRAME): a RepairData message must fit the leader's replication
# socket's MAXMSGSIZE (daemon/node/node.py: REPAIR_MAX_BYTES + MAX_FRAME + 4 KiB).
REPAIR_MAX_BYTES = 256 * 1024
# A follower that sent bad repair data this many times in a row is no longer
# asked: the records it claims count as held elsewhere (see LeaderCore).
MAX_REPAIR_FAILURES = 3


def confirm_quorum(followers: int, ack_replicas: int) -> int:
    """How many followers a restarted leader that cut its tail must hear before it writes again.

    All of them. F - K + 1 would do to find every acknowledged record (any
    F - K + 1 followers include one of the K that hold it), and this code
    once stopped there. But the leader then writes new records at the cut
    offsets in its own epoch, and a follower it has not heard may still hold
    other, never acknowledged bytes of that epoch at the same offsets: once
    leadership moves, the next leader's epoch check counts that follower as
    a prefix, and two logs differ (simulator scenario resumed_leader_unheard;
    docs/protocol.md). Until such a leader takes a new epoch before it
    resumes, it hears every follower first. A repair that brings its log
    back to the end it had (`damaged_end`) needs no answers at all.
    """
    del ack_replicas  # the rule no longer depends on K
    return followers


def verify_repair(data: bytes, offset: int, epoch: int, claimed_end: int,
                  max_bytes: int) -> list[tuple[Frame, Record]] | str:
    """The frames of `data` if it is a good repair of a log ending at `offset`, else why not.

    Good: whole frames, each passing its CRC and holding a valid record,
    contiguous from `offset`, every one of `epoch`, ending no later than
    `claimed_end` (what the follower's fetch said it holds), and at most
    `max_bytes` unless it is a single frame.
    """
    if not data:
        return "no bytes"
    if offset + len(data) > claimed_end:
        return f"{len(data)} bytes from {offset} go past the end {claimed_end} the follower claimed"
    out: list[tuple[Frame, Record]] = []
    pos = 0
    while pos < len(data):
        status, frame = parse_frame(data, pos, offset)
        if frame is None:
            return f"frame at offset {offset + pos} failed its check ({status})"
        if frame.epoch != epoch:
            return f"frame at offset {frame.offset} has epoch {frame.epoch}, not the leader's epoch {epoch}"
        try:
            rec = decode_payload(frame.payload)
        except RecordError as e:
            return f"frame at offset {frame.offset} has an invalid payload: {e}"
        out.append((frame, rec))
        pos += frame.size
    if len(data) > max_bytes and len(out) > 1:
        return f"{len(data)} bytes in {len(out)} frames is more than the {max_bytes} asked for"
    return out


def repair_reply(req: RepairRequest, name: str, end: int, history: list[tuple[int, int]],
                 read: Callable[[int, int, int], bytes]) -> RepairData | None:
    """A follower's answer to a repair request: its frames of `req.epoch` from `req.offset`; None if it has none.

    `history` is the follower's (epoch, start) list and `end` its durable
    end; `read(offset, end, max_bytes)` returns whole frames of its log
    (daemon/wal/reader.py read_chunk). Only bytes of the requested epoch
    are sent: the leader wants back what it wrote itself.
    """
    e, e_end = epoch_end(history, req.epoch, end)
    if e != req.epoch:
        return None
    start = next((o for ep, o in history if ep == req.epoch), 0)
    upto = min(req.upto, e_end)
    if not start <= req.offset < upto:
        return None
    data = read(req.offset, upto, req.max)
    if not data:
        return None
    return RepairData(name, req.epoch, req.offset, data)
