"""Who may ask a node what: client admission and fetch authorization, for both roles.

Invariant: a message from the network changes nothing unless it passes
here. A revoked key's message is dropped unanswered; a known key whose
role may not send the op gets `forbidden`; a request naming another
cluster gets `wrong_cluster`; a connection that does not read its replies
has its requests dropped unread (nothing executed, so a retry is safe); a
fetch is only ever a node key speaking for its own node of this cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from daemon.auth import policy
from daemon.auth.keys import Identity
from daemon.node.ports import ClientPort, Events, Limited
from daemon.wire.client import Err, ProtocolError, Request, decode_request, error_reply, split_envelope
from daemon.wal.format import MAX_FRAME
from daemon.wire.replication import BadMessage, Fetch, FetchSnapshot, RepairData, decode_fetch, decode_to_leader

if TYPE_CHECKING:
    from daemon.node.leader_core import Counters


class _Revoked:
    """The sender's key is no longer in the allow-list (revoked since it connected)."""

    def __str__(self) -> str:
        return "revoked"


REVOKED = _Revoked()
Sender = Union[Identity, _Revoked, None]  # None: security = "none"

_FORBIDDEN_LOG = Limited(burst=20)
_WRONG_CLUSTER_LOG = Limited(burst=20)
_FORGED_LOG = Limited(burst=20)


def decode_client(out: ClientPort, frames: list[bytes], counters: "Counters", who: Sender, cluster_id: str,
                  events: Events, now: float) -> tuple[list[bytes], Request] | None:
    """Decode a client message; bad input gets an error reply and None."""
    if isinstance(who, _Revoked):
        counters.error("revoked")
        return None
    if frames and out.congested(frames[0]):
        counters.error("slow_reader")
        out.refuse(frames[0])
        return None
    envelope, body, problem = split_envelope(frames)
    if body is None:
        counters.bad_requests += 1
        counters.error(Err.BAD_REQUEST)
        if envelope and envelope[0]:
            out.send([*envelope, error_reply(None, Err.BAD_REQUEST, problem or "bad message")])
        return None
    try:
        req = decode_request(body)
    except ProtocolError as e:
        counters.bad_requests += 1
        counters.error(e.code)
        out.send([*envelope, error_reply(e.request_id, e.code, str(e))])
        return None
    if req.cluster is not None and cluster_id and req.cluster != cluster_id:
        # Two clusters mixed up (a config for one, ports of the other):
        # refuse before anything else, whatever the op.
        counters.error(Err.WRONG_CLUSTER)
        _WRONG_CLUSTER_LOG.warn(events, now, "wrong_cluster", op=req.op, theirs=req.cluster, ours=cluster_id)
        out.send([*envelope, error_reply(req.id, Err.WRONG_CLUSTER,
                                         f"this node belongs to cluster {cluster_id}, not {req.cluster}: "
                                         "the cluster file you used points at another cluster's endpoints")])
        return None
    if who is not None and not policy.allowed(who.role, req.op):
        counters.error(Err.FORBIDDEN)
        _FORBIDDEN_LOG.warn(events, now, "forbidden", key=str(who), op=req.op)
        out.send([*envelope, error_reply(req.id, Err.FORBIDDEN,
                                         f"key {who} (role {who.role}) may not send {req.op!r}")])
        return None
    return envelope, req


@dataclass(frozen=True, slots=True)
class Dropped:
    """Not a fetch this node may act on: no answer, nothing changes."""

    reason: str


@dataclass(frozen=True, slots=True)
class OtherCluster:
    """A node of another cluster: refused (a leader says why), nothing changes."""

    theirs: str
    ours: str


def authorize_fetch(frames: list[bytes], who: Sender, names: list[str], cluster_id: str, counters: "Counters",
                    events: Events, now: float, repair_max: int = 0) -> Fetch | RepairData | FetchSnapshot | Dropped | OtherCluster:
    """A message on the replication endpoint: a fetch this node may act on, or why not.

    With `repair_max` > 0 (a leader), repair data of up to that many bytes is
    taken too (daemon/node/repair.py), and snapshot fetches (daemon/node/transfer.py), under the same key
    and name checks."""
    if who is not None and (isinstance(who, _Revoked) or not policy.may_replicate(who.role)):
        # Only node keys replicate: a client or admin key, or a revoked one,
        # gets no log bytes and changes nothing.
        counters.dropped += 1
        return Dropped(f"key {who} may not replicate")
    try:
        fetch = decode_to_leader(frames, repair_max + MAX_FRAME) if repair_max else decode_fetch(frames)
    except BadMessage as e:
        counters.dropped += 1
        return Dropped(f"bad fetch: {e}")
    if who is not None and (fetch.name != who.name or fetch.name not in names):
        # A node key speaks only for its own node: a fetch in another node's
        # name would be a forged acknowledgement.
        counters.dropped += 1
        _FORGED_LOG.warn(events, now, "forbidden", key=str(who), op="fetch",
                         reason=f"fetch in the name of {fetch.name!r}")
        return Dropped(f"fetch in the name of {fetch.name!r}")
    if isinstance(fetch, (RepairData, FetchSnapshot)):
        return fetch  # repair: asked for by this leader, by name, every frame checked; a snapshot: by name
    if fetch.cluster and cluster_id and fetch.cluster != cluster_id:
        counters.error(Err.WRONG_CLUSTER)
        _WRONG_CLUSTER_LOG.warn(events, now, "wrong_cluster", op="fetch", node=fetch.name, theirs=fetch.cluster,
                                ours=cluster_id)
        return OtherCluster(fetch.cluster, cluster_id)
    return fetch
