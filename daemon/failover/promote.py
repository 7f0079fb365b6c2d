"""Promotion: the rules (pure) and the steps (I/O) of `zwal promote`.

Safety argument. A write acknowledged with ack_replicas = K is durable on
the leader and on K followers. With F followers, any F - K + 1 of them
include at least one of those K, and follower logs are prefixes of the
leader's, so the most advanced answering follower (by last epoch, then end
offset) holds every acknowledged write. Promoting it loses nothing that was
acknowledged.

Steps, in an order that keeps that argument true while the cluster moves:
1. ask everyone for (epoch, last_epoch, end) and check the rules;
2. fence: every reachable node durably takes epoch E+1, so none of them
   accepts data from (or acknowledges to) the old leader any more, and a
   reachable old leader steps down; the followers' ends are now frozen;
3. ask again and re-check that the chosen node is still the most advanced;
4. promote it at epoch E+1 (durable in its state file before it leads);
5. tell the others to follow it.
A crash between steps leaves nodes fenced at E+1 with no leader (safe;
run promote again) or the new leader at E+1 (done): never two nodes in
different roles claiming one epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from daemon.client.blocking import Client, ZwalError, fetch_statuses
from daemon.config import ClusterConfig
from daemon.node.epochs import EPOCHS_LEFT_WARNING, MAX_EPOCH


@dataclass
class Decision:
    ok: bool
    reason: str
    epoch: int = 0  # the new epoch
    warnings: list[str] = field(default_factory=list)


def position(st: dict[str, Any]) -> tuple[int, int]:
    """How advanced a node's log is: (epoch of its last record, end offset)."""
    return (st.get("last_epoch") or 0, st.get("end") or 0)


def decide(name: str, statuses: dict[str, dict[str, Any] | None], ack_replicas: int, force: bool,
           old_leaders: frozenset[str] = frozenset()) -> Decision:
    """The promotion rules, free of I/O. `statuses` maps node -> status or None.

    `old_leaders` are nodes that led before fencing with records of their own
    epoch at the end of their logs (`deposed_leaders`): they are followers
    now, but their extra records were never acknowledged by K followers, so
    they neither count towards the quorum nor set the bar for "most advanced".
    """
    me = statuses.get(name)
    if name not in statuses:
        return Decision(False, f"{name} is not a node of this cluster")
    if me is None:
        return Decision(False, f"{name} does not answer; only a reachable node can be promoted")
    reachable = {n: s for n, s in statuses.items() if s is not None}
    old_leaders = old_leaders | former_leaders(reachable)
    # Never epoch 1: the bootstrap leader holds it without a vote.
    epoch = max(max(s["epoch"] for s in reachable.values()), 1) + 1
    followers_total = len(statuses) - 1
    if me["role"] == "leader":
        return Decision(False, f"{name} already leads epoch {me['epoch']}")
    if epoch > MAX_EPOCH:
        return Decision(False, f"the cluster is at epoch {epoch - 1}, the largest the protocol allows ({MAX_EPOCH}); "
                               "no further promotion is possible. Rebuild the cluster from a node's log")
    warnings: list[str] = []
    if MAX_EPOCH - epoch < EPOCHS_LEFT_WARNING:
        warnings.append(f"epoch {epoch} is within {MAX_EPOCH - epoch} of the protocol's limit ({MAX_EPOCH}): "
                        "something raised the epochs far beyond the number of promotions; find out what")

    # The followers whose logs may hold acknowledged writes. A damaged node
    # (its recovery cut bytes from its log, and it has not caught up since)
    # may miss some: it is no copy to count on.
    candidates = {n: s for n, s in reachable.items() if s["role"] == "follower" and n not in old_leaders}
    candidates[name] = me
    need = followers_total - ack_replicas + 1
    damaged = {n for n, s in reachable.items() if is_damaged(s)}
    answered = len(set(candidates) - damaged)
    if answered < need and damaged:
        # The former leaders' tails may now hold the only copies of records
        # the damaged nodes lost: they count and they set the bar. (Any
        # N - K of the N nodes include one of the K + 1 that hold each
        # acknowledged write, and N - K = F - K + 1.)
        candidates = {n: s for n, s in reachable.items() if s["role"] == "follower"}
        candidates[name] = me
        answered = len(set(candidates) - damaged)
        warnings.append(f"{', '.join(sorted(damaged))} cut bytes from its log at recovery and may miss "
                        "acknowledged writes: former leaders count as copies")
    if ack_replicas == 0:
        msg = ("ack_replicas = 0: writes were acknowledged before any follower had them, so no follower "
               "is guaranteed to hold every acknowledged write")
        if not force:
            return Decision(False, msg + "; use --force to promote anyway (acknowledged writes may be lost)")
        warnings.append(msg)
    elif answered < need:
        msg = (f"only {answered} of {followers_total} follower(s) answered"
               + (f" with an intact log ({', '.join(sorted(damaged))} lost records at recovery)" if damaged else "")
               + f"; with ack_replicas = {ack_replicas} at least {need} must answer to be sure one of them holds "
               "every acknowledged write")
        if not force:
            return Decision(False, msg + " (bring more nodes back, or use --force and accept possible loss)")
        warnings.append(msg)
    majority = len(statuses) // 2 + 1
    if len(reachable) < majority:
        msg = (f"only {len(reachable)} of {len(statuses)} nodes answered; a promotion needs the votes of a "
               f"majority ({majority}) so that two promotions can never both win")
        if not force:
            return Decision(False, msg + " (bring more nodes back, or use --force and run no other promotion)")
        warnings.append(msg)
    best_name, best = max(candidates.items(), key=lambda kv: position(kv[1]))
    if position(me) < position(best):
        msg = (f"{name} is behind {best_name}: {name} ends at {me.get('end')} (last epoch {me.get('last_epoch')}), "
               f"{best_name} at {best.get('end')} (last epoch {best.get('last_epoch')}); promote {best_name} instead")
        if not force:
            return Decision(False, msg)
        warnings.append(msg + "; records beyond it will be truncated on the others")
    return Decision(True, f"promote {name} to epoch {epoch}", epoch, warnings)


def is_damaged(st: dict[str, Any]) -> bool:
    """The node's recovery cut bytes from its log and it has not caught up past its old end since."""
    d = st.get("damaged_end")
    return isinstance(d, int) and (st.get("end") or 0) < d


def former_leaders(reachable: dict[str, dict[str, Any]]) -> frozenset[str]:
    """Followers whose last records are from the epoch they themselves led.

    Whatever they hold beyond the other followers was never acknowledged by
    K followers, so it must not make them look "most advanced".
    """
    return frozenset(n for n, s in reachable.items()
                     if s["role"] == "follower" and s.get("led_epoch") and s.get("led_epoch") == s.get("last_epoch"))


def deposed_leaders(before_fence: dict[str, dict[str, Any] | None]) -> frozenset[str]:
    """Nodes that led before the fence and whose last records are of the epoch they led.

    Only a tail written in a node's own epoch can hold records no K followers
    acknowledged. A leader whose last records are from an older epoch wrote
    nothing yet: its log is as good as any follower's and may be the only
    complete copy of records acknowledged in that older epoch (for instance
    when the previous leader lost its tail), so it keeps its rank.
    """
    return frozenset(n for n, s in before_fence.items()
                     if s is not None and s["role"] == "leader" and s.get("last_epoch") == s.get("epoch"))


def most_advanced(statuses: dict[str, dict[str, Any] | None]) -> str | None:
    """The reachable follower with the most advanced log (the drill's choice).

    Former leaders of their last epoch are chosen only when nobody else is.
    """
    reachable = {n: s for n, s in statuses.items() if s is not None}
    fol = [(n, s) for n, s in reachable.items() if s["role"] == "follower"]
    others = [(n, s) for n, s in fol if n not in former_leaders(reachable)]
    fol = others or fol
    if not fol:
        return None
    return max(fol, key=lambda kv: position(kv[1]))[0]


@dataclass
class PromoteResult:
    ok: bool
    name: str
    epoch: int
    message: str
    start_offset: int | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_promote(cfg: ClusterConfig, name: str, *, force: bool = False, timeout: float = 2.0,
                statuses_fn: Callable[[ClusterConfig, float], dict[str, dict[str, Any] | None]] | None = None,
                say: Callable[[str], None] = lambda s: None, cert: str | None = None) -> PromoteResult:
    t0 = time.monotonic()
    if statuses_fn is None and cert is not None:
        # Only the given (admin) certificate may exist on this machine.
        def statuses_fn(c: ClusterConfig, t: float) -> dict[str, dict[str, Any] | None]:
            return fetch_statuses([(n.name, n.client_endpoint) for n in c.nodes], t, operator_creds(c, "admin", cert))
    get_statuses = statuses_fn or statuses_of
    sts = get_statuses(cfg, timeout)
    d = decide(name, sts, cfg.ack_replicas, force)
    if not d.ok:
        return PromoteResult(False, name, 0, d.reason)
    for w in d.warnings:
        say(f"WARNING: {w}")
    epoch = d.epoch
    eps = {n.name: n.client_endpoint for n in cfg.nodes}
    majority = len(cfg.nodes) // 2 + 1
    with Client(list(eps.values()), timeout=timeout, deadline=timeout, creds=operator_creds(cfg, "admin", cert)) as c:
        # The fence is a vote for `name` in `epoch` (one per node per epoch,
        # like Raft's): a majority of votes makes this the only promotion of
        # `epoch` that can win, whatever else runs at the same time.
        fenced = []
        for n in ([name] + [n for n in sts if n != name]):
            if sts.get(n) is None:
                continue
            try:
                r = c.admin("fence", eps[n], deadline=timeout, epoch=epoch, candidate=name)
                if r.get("voted_for") not in (None, name):
                    say(f"{n} voted for {r.get('voted_for')} in epoch {epoch}")
                    continue
                fenced.append(n)
            except ZwalError as e:
                say(f"could not fence {n}: {e}")
        say(f"fenced {', '.join(fenced)} at epoch {epoch} (votes for {name})")
        if name not in fenced:
            return PromoteResult(False, name, epoch, f"{name} could not be fenced for itself; nothing promoted "
                                                     f"(nodes fenced: {fenced}). Another promotion may be running: "
                                                     "check 'zwal status', then run promote again")
        if len(fenced) < majority and not force:
            return PromoteResult(False, name, epoch,
                                 f"only {len(fenced)} of {len(cfg.nodes)} nodes voted for {name} in epoch {epoch} "
                                 f"(a majority is {majority}); nothing promoted. Another promotion may be running: "
                                 "check 'zwal status', then run promote again")
        # The ends are frozen now: check again before acting.
        sts2 = get_statuses(cfg, timeout)
        old = deposed_leaders(sts)
        d2 = decide(name, {n: (s if n in fenced else None) for n, s in sts2.items()}, cfg.ack_replicas, force, old)
        if not d2.ok and not force:
            return PromoteResult(False, name, epoch,
                                 f"after fencing: {d2.reason}. The cluster is fenced at epoch {epoch} with no leader; "
                                 f"run 'zwal promote {name}' again")
        try:
            # `end`: the node refuses if its log has since shrunk below what was
            # checked (a recovery cut a damaged tail between the check and now).
            r = c.admin("promote", eps[name], deadline=timeout, epoch=epoch, end=(sts2.get(name) or {}).get("end", 0))
        except ZwalError as e:
            return PromoteResult(False, name, epoch, f"{name} refused promotion: {e}")
        refused = []
        for n in fenced:
            if n == name:
                continue
            try:
                c.admin("follow", eps[n], deadline=timeout, epoch=epoch, leader=name)
            except ZwalError as e:
                if getattr(e, "code", None) in ("refused", "stale_epoch"):
                    refused.append(f"{n}: {e}")
                say(f"could not tell {n} to follow {name} ({e}); it will find the leader by itself")
    if refused:
        return PromoteResult(False, name, epoch,
                             f"{name} leads epoch {epoch}, but {len(refused)} node(s) refused to follow it "
                             f"({'; '.join(refused)}): another promotion may have run at the same time; "
                             "check 'zwal status'", r.get("end"), d.warnings, time.monotonic() - t0)
    return PromoteResult(True, name, epoch, f"{name} leads epoch {epoch} from offset {r.get('end')}",
                         r.get("end"), d.warnings, time.monotonic() - t0)


def statuses_of(cfg: ClusterConfig, timeout: float) -> dict[str, dict[str, Any] | None]:
    return fetch_statuses([(n.name, n.client_endpoint) for n in cfg.nodes], timeout, operator_creds(cfg))


def operator_creds(cfg: ClusterConfig, role: str | None = None, cert: str | None = None) -> Any:
    """An operator's certificate: the admin one (or `cert`) for admin ops; for
    status, the client one if this machine has it, else the admin one."""
    from daemon.auth.creds import for_config
    from daemon.auth.keys import secret_path

    if cfg.security == "none":
        return for_config(cfg)  # no keys; the cluster id still goes with every request
    if role is None:
        role = "client" if os.path.exists(secret_path(cfg.keys_dir, "client", "client")) else "admin"
    return for_config(cfg, role, cert=cert if role == "admin" else None)
