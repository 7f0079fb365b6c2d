"""`zwal promote NAME` on a cluster that fails over through etcd: a switchover.

The leader is asked to hand its lease to NAME (the `handoff` admin op,
daemon/node/leader.py). It stops taking writes, waits until NAME has
acknowledged all of its log (so every write it acknowledged is on NAME),
names NAME in `<prefix>/handoff`, gives its lease up and steps down. The
election that follows prefers NAME when `zwal promote`'s rules accept it
(daemon/failover/lease.py, `candidate`). Nothing here votes or allocates an
epoch: etcd does, as in every election (docs/failover.md, "Switchover").
"""

from __future__ import annotations

import time
from typing import Any, Callable

from daemon.client.blocking import Client, ZwalError
from daemon.config import ClusterConfig
from daemon.failover.promote import PromoteResult, fetch_statuses, operator_creds


def lease_holder(sts: dict[str, dict[str, Any] | None]) -> str | None:
    """The node that leads and says it holds the etcd lease now."""
    for n, s in sts.items():
        if s and s.get("role") == "leader" and s.get("lease_holder") == n and (s.get("lease_remaining_s") or 0) > 0:
            return n
    return None


def run_switchover(cfg: ClusterConfig, name: str, *, timeout: float = 2.0, catch_up: float = 10.0,
                   say: Callable[[str], None] = lambda s: None, cert: str | None = None) -> PromoteResult:
    t0 = time.monotonic()
    creds = operator_creds(cfg, "admin", cert)

    def statuses() -> dict[str, dict[str, Any] | None]:
        return fetch_statuses([(n.name, n.client_endpoint) for n in cfg.nodes], timeout, creds)

    def done(ok: bool, msg: str, epoch: int = 0, end: int | None = None) -> PromoteResult:
        return PromoteResult(ok, name, epoch, msg, end, seconds=time.monotonic() - t0)

    if name not in cfg.names:
        return done(False, f"{name} is not a node of this cluster (nodes: {', '.join(cfg.names)})")
    sts = statuses()
    old = lease_holder(sts)
    if old is None:
        return done(False, "no node holds the leader lease now (an election is due, and it picks the leader by "
                           "itself); retry when 'zwal status' shows a lease holder")
    old_st = sts[old] or {}
    if old == name:
        return done(False, f"{name} already leads epoch {old_st.get('epoch')}")
    if sts.get(name) is None:
        return done(False, f"{name} does not answer; only a reachable, in-sync follower can take the lease")
    say(f"asking {old} (leader of epoch {old_st.get('epoch')}) to hand its lease to {name}; writes pause until "
        f"{name} holds all of {old}'s log (at most {catch_up:g} s)")
    wait = catch_up + 5.0
    try:
        with Client([cfg.node(old).client_endpoint], timeout=wait, deadline=wait, creds=creds) as c:
            r = c.admin("handoff", cfg.node(old).client_endpoint, deadline=wait, to=name, timeout=catch_up)
    except ZwalError as e:
        return done(False, f"{old} refused: {e}")
    say(f"{old} stepped down at offset {r.get('end')} (epoch {r.get('epoch')}); waiting for the election")
    # The election: the followers find the key gone, then the handoff; it ends within a few lease TTLs.
    limit = time.monotonic() + max(15.0, 5.0 * cfg.coordinator.lease_ttl)
    while time.monotonic() < limit:
        sts = statuses()
        now_holder = lease_holder(sts)
        if now_holder is not None and (sts[now_holder] or {}).get("epoch", 0) > int(r.get("epoch") or 0):
            st = sts[now_holder] or {}
            if now_holder != name:
                return done(False, f"the election chose {now_holder} (epoch {st.get('epoch')}), not {name}: the "
                                   f"copies did not vouch for {name} when it ran (its log: 'grep election_' in the "
                                   "nodes' logs). Nothing acknowledged was lost", int(st.get("epoch") or 0))
            return done(True, f"{name} leads epoch {st.get('epoch')}, handed over by {old} at offset {r.get('end')}",
                        int(st.get("epoch") or 0), r.get("end"))
        time.sleep(0.1)
    return done(False, f"{old} stepped down but no node was elected within {limit - t0:.0f} s; the election "
                       "goes on by itself ('zwal status' shows it)")
