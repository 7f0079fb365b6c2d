"""What every role answers the same way: not_leader, status, reads, and the admin ops.

Admin invariant: the new node state is saved before the reply, so a crash
after the reply restarts the node in the state the reply announced; a state
that cannot be saved refuses the op and changes nothing.
"""

from __future__ import annotations

from typing import Any

from daemon.node import epochs
from daemon.node.identity import LEADER
from daemon.node.ports import Host, NoSpace, StateNotSaved, Transition
from daemon.wire.client import Err, Request, error_reply, ok_reply


def last_log_epoch(host: Host) -> int:
    """Epoch of the last record in the local log (0 for an empty log)."""
    end = host.log.end
    last = 0
    for e, start in host.state.history:
        if start < end:
            last = e
    return last


def leader_endpoint(host: Host) -> str | None:
    if host.state.leader is None:
        return None
    return host.endpoint_of(host.state.leader)


def not_leader(host: Host, req_id: int | None) -> bytes:
    st = host.state
    leader = st.leader if st.leader != host.name else None
    ep = leader_endpoint(host) if leader else None
    return error_reply(
        req_id, Err.NOT_LEADER,
        f"{host.name} is a {st.role} (epoch {st.epoch}); "
        + (f"send writes to {leader} at {ep}" if leader else "the leader is not known yet"),
        leader=leader, leader_endpoint=ep, epoch=st.epoch,
    )


def status(host: Host, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    st = host.state
    out: dict[str, Any] = {
        "name": host.name,
        "role": st.role,
        "epoch": st.epoch,
        "leader": st.leader,
        "end": host.log.end,
        "last_epoch": last_log_epoch(host),
        "led_epoch": st.led_epoch,
        "damaged_end": st.damaged_end,
        "joining": st.joining,
        "records": host.kv.records,
        "keys": len(host.kv.data),
        **host.extra_status(),
        "history": [list(h) for h in st.history],
    }
    if extra:
        out.update(extra)
    return out


def read_reply(host: Host, req: Request, stale: bool, linearizable: bool = False,
               envelope: list[bytes] | None = None) -> bytes:
    if req.op == "ping":
        return ok_reply(req.id, name=host.name, role=host.state.role, epoch=host.state.epoch)
    if req.op == "get":
        assert req.key is not None
        v = host.kv.get(req.key)
        if v is not None and envelope and host.client.would_exceed(envelope[0], len(v)):
            # The connection is not reading what it already has: a read is
            # safe to refuse (nothing changes), and `busy` is a few bytes
            # where the value could be a MiB.
            return error_reply(req.id, Err.BUSY, f"{len(v)}-byte value not sent: this connection has "
                               f"{host.client.waiting(envelope[0])} bytes of unread replies; read them, "
                               "then retry")
        return ok_reply(req.id, found=v is not None, value=v, offset=host.kv.end, stale=stale,
                        linearizable=linearizable and not stale, node=host.name, epoch=host.state.epoch,
                        leader_endpoint=leader_endpoint(host) if stale else None,
                        # Recovery cut bytes from this log and it has not caught up since: a stale
                        # answer from it may miss what other copies hold (clients skip it).
                        damaged=host.state.damaged_end is not None and host.log.end < host.state.damaged_end)
    raise AssertionError(req.op)


def admin(host: Host, req: Request, pending: Transition | None) -> tuple[bytes, Transition | None]:
    """Carry out promote/follow/fence by the rules of daemon/node/epochs.py.

    `pending` is the role's transition when it has already ended (a leader
    defers admin ops until its batch in flight lands, and may step down
    meanwhile). Such a role refuses: the next role starts from the state the
    transition carries, so a vote saved now would be forgotten, and the node
    could vote twice in one epoch (simulator seed 500609: two leaders)."""
    if pending is not None:
        msg = f"{host.name} is changing role ({pending.reason}); try again"
        host.events.warn("admin_refused", op=req.op, epoch=(req.args or {}).get("epoch"), code=Err.REFUSED,
                         reason=msg)
        return error_reply(req.id, Err.REFUSED, msg), None
    if req.op == epochs.HANDOFF:
        # Only the leader hands off (daemon/node/leader.py); here the node is not leading.
        msg = (f"{host.name} is a {host.state.role} (epoch {host.state.epoch}), not the leader: a handoff is "
               "asked of the leader ('zwal promote NAME' finds it)")
        host.events.warn("admin_refused", op=req.op, code=Err.REFUSED, reason=msg)
        return error_reply(req.id, Err.REFUSED, msg), None
    if host.coord.enabled and req.op in (epochs.FENCE, epochs.PROMOTE, epochs.FOLLOW):
        # One epoch space: etcd allocates every epoch (docs/failover.md); a vote here could lead a second node.
        msg = (f"{host.name}'s cluster fails over through etcd: {req.op} by hand is refused (nothing changed); "
               "the election picks the leader, 'zwal status' shows it")
        host.events.warn("admin_refused", op=req.op, code=Err.REFUSED, reason=msg)
        return error_reply(req.id, Err.REFUSED, msg), None
    d = epochs.decide(req.op, req.args or {}, host.state, host.name, frozenset(host.cfg.names),
                      host.log.end, last_log_epoch(host))
    if isinstance(d, epochs.Refusal):
        host.events.warn("admin_refused", op=req.op, epoch=(req.args or {}).get("epoch"), code=d.code,
                         reason=d.message)
        return error_reply(req.id, d.code, d.message, **d.fields), None
    if d.state is not None:
        try:
            host.save_state(d.state, patience=0.0)
        except (StateNotSaved, NoSpace) as e:
            host.events.warn("admin_refused", op=req.op, code=Err.REFUSED, reason=str(e))
            return error_reply(req.id, Err.REFUSED, str(e)), None
        if d.state.role == LEADER:
            host.events.event("promoted", epoch=d.state.epoch, start_offset=host.log.end)
    t = Transition(host.state, d.transition, reload=d.reload) if d.transition else None
    return ok_reply(req.id, **d.fields), t
