"""The epoch rules of fence, follow and promote: pure, typed, no I/O.

These are the rules that keep one leader per epoch (docs/protocol.md,
"Fencing and promotion"). `Node.admin` asks `decide` and then performs the
answer: it saves the new state (before replying) and changes role.

Invariants:
- a node's epoch never goes down, and never above MAX_EPOCH;
- in one epoch a node gives one vote (`voted_for`), like Raft's term votes:
  a fence for candidate X, following leader X, or leading as X. A second
  candidate of the same epoch is refused, so two promotions of one epoch
  cannot both gather a majority;
- a node leads epoch E only if it voted for itself in E (the promote tool
  fences it for itself first) and follows nobody in E;
- following is not voting: a node follows whoever leads an epoch it is in
  (only a majority's candidate can), but never leads and follows at once;
- a `joining` node (rebuilt, daemon/node/bootstrap.py) casts no vote: it
  may have voted before it lost its state;
- an epoch from a client request never reaches these rules (it is a hint);
  only admin requests and peers move a node's epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.node.identity import FOLLOWER, LEADER, NodeState

# Epochs travel as unsigned integers below 2**63 (docs/protocol.md).
MAX_EPOCH = 2**63 - 1
# `zwal promote` warns when fewer epochs than this are left.
EPOCHS_LEFT_WARNING = 1000
# No admin op moves a node's epoch further than this in one step: a single
# packet cannot push the cluster to the end of the epoch range (promote
# moves epochs by one).
MAX_EPOCH_STEP = 1 << 16

FENCE = "fence"
FOLLOW = "follow"
PROMOTE = "promote"
HANDOFF = "handoff"  # etcd mode: the leader moves its lease to a named follower (daemon/node/leader.py)


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str  # a wire error code: bad_request, stale_epoch or refused
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Accept:
    """Carry out the op: save `state` (None = nothing changes), then reply with `fields`."""

    state: NodeState | None
    fields: dict[str, Any]
    # Why the role loop must end (None = it goes on as it is).
    transition: str | None = None
    # Replay the log before the next role (a leader stepping down may hold unreplicated records).
    reload: bool = False


def _epoch_arg(args: dict[str, Any]) -> int | Refusal:
    epoch = args.get("epoch")
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        return Refusal("bad_request", f"admin ops need an integer 'epoch' in 0..{MAX_EPOCH} in args")
    return epoch


def decide(op: str, args: dict[str, Any], cur: NodeState, me: str, names: frozenset[str],
           end: int, last_epoch: int) -> Accept | Refusal:
    """The answer to an admin op `op` with `args`, for node `me` in state `cur` with log end `end`."""
    epoch = _epoch_arg(args)
    if isinstance(epoch, Refusal):
        return epoch
    if epoch > cur.epoch + MAX_EPOCH_STEP:
        return Refusal("bad_request", f"epoch {epoch} is more than {MAX_EPOCH_STEP} above {me}'s epoch {cur.epoch}; "
                                      "promotions move epochs one at a time", {"epoch": cur.epoch})
    if op == FENCE:
        return _fence(epoch, args.get("candidate"), cur, me, names, end, last_epoch)
    if op == FOLLOW:
        return _follow(epoch, args.get("leader"), cur, me, names)
    if op == PROMOTE:
        checked = args.get("end", 0)
        if type(checked) is not int or checked < 0:
            return Refusal("bad_request", "'end' must be a non-negative integer")
        return _promote(epoch, cur, me, end, checked)
    return Refusal("unknown_op", f"unknown admin op {op!r}")


def _as(cur: NodeState, role: str, epoch: int, leader: str | None, vote: str | None) -> NodeState:
    """`cur` in a new role and epoch: the history, led epoch and damage mark are kept, confirm_from is not
    (nor `joining`: only a follow gets here from a joining node)."""
    return cur.with_(role=role, epoch=epoch, leader=leader, voted_for=vote, confirm_from=None, joining=False,
                     resume_at=None, unheard=[])


def _stale(epoch: int, cur: NodeState, me: str) -> Refusal:
    return Refusal("stale_epoch", f"{me} is already at epoch {cur.epoch}", {"epoch": cur.epoch})


def _fence(epoch: int, candidate: Any, cur: NodeState, me: str, names: frozenset[str],
           end: int, last_epoch: int) -> Accept | Refusal:
    """Durably take `epoch` (and vote for `candidate`): no older leader gets data or acks from us after this."""
    if candidate is not None and (not isinstance(candidate, str) or candidate not in names):
        return Refusal("bad_request", "'candidate' must name a node of the cluster")
    if epoch < cur.epoch:
        return _stale(epoch, cur, me)
    if cur.joining:
        # Rebuilt from an empty data directory: it may have voted in this very
        # epoch before, so a vote now could be its second (two leaders).
        return Refusal("refused", f"{me} was rebuilt (it started with no node-state.json and an empty log) and "
                                  "has not found its leader yet: it may have voted before, so it casts no vote "
                                  "until it follows a leader", {"epoch": cur.epoch, "voted_for": None})
    fields = {"epoch": epoch, "end": end, "last_epoch": last_epoch, "voted_for": candidate}
    if epoch > cur.epoch:
        st = _as(cur, FOLLOWER, epoch, None, candidate)
        return Accept(st, fields, f"fenced at epoch {epoch}", reload=cur.role == LEADER)
    # The same epoch: only a vote can change, and only from nobody to `candidate`.
    if candidate is None or cur.voted_for == candidate:
        return Accept(None, {**fields, "voted_for": cur.voted_for})
    if cur.voted_for is not None or cur.role == LEADER:
        return Refusal("refused", f"{me} already voted for {cur.voted_for or me} in epoch {epoch}",
                       {"epoch": epoch, "voted_for": cur.voted_for or me})
    st = _as(cur, FOLLOWER, epoch, None, candidate)
    return Accept(st, fields, f"fenced at epoch {epoch}" if cur.leader is not None else None)


def _follow(epoch: int, leader: Any, cur: NodeState, me: str, names: frozenset[str]) -> Accept | Refusal:
    if not isinstance(leader, str) or leader not in names or leader == me:
        return Refusal("bad_request", "'leader' must name another node of the cluster")
    if epoch < cur.epoch:
        return _stale(epoch, cur, me)
    if epoch == cur.epoch:
        if cur.role == LEADER:
            return Refusal("refused", f"{me} leads epoch {epoch}; a follow needs a newer epoch", {"epoch": epoch})
        if cur.leader == leader:
            return Accept(None, {"epoch": epoch})
    # Following is not voting: whoever won `epoch` won it with a majority of
    # votes, so a node that voted for a loser still follows the winner (Raft).
    st = _as(cur, FOLLOWER, epoch, leader, cur.voted_for if epoch == cur.epoch and cur.voted_for else leader)
    return Accept(st, {"epoch": epoch}, f"told to follow {leader} at epoch {epoch}", reload=cur.role == LEADER)


def _promote(epoch: int, cur: NodeState, me: str, end: int, checked: int) -> Accept | Refusal:
    if cur.role == LEADER:
        return Refusal("refused", f"{me} is already the leader (epoch {cur.epoch})")
    if end < checked:
        return Refusal("refused", f"{me}'s log ends at {end}, below the end {checked} the promotion checked: it lost "
                                  "records since (a recovery cut its tail); nothing promoted, run promote again",
                       {"end": end})
    if epoch != cur.epoch or cur.voted_for != me or cur.leader is not None:
        return Refusal("stale_epoch" if epoch < cur.epoch else "refused",
                       f"{me} can lead epoch {epoch} only after a fence at that epoch for itself "
                       f"(it is at epoch {cur.epoch}, voted for {cur.voted_for or 'nobody'}"
                       + (f", following {cur.leader}" if cur.leader else "") + ")",
                       {"epoch": cur.epoch, "voted_for": cur.voted_for})
    hist = list(cur.history)
    if not hist or hist[-1][0] < epoch:
        hist.append((epoch, end))
    st = _as(cur, LEADER, epoch, me, me).with_(history=hist, led_epoch=epoch)
    return Accept(st, {"epoch": epoch, "end": end}, f"promoted to epoch {epoch}")


def may_follow(cur: NodeState, epoch: int, leader: str | None) -> bool:
    """May a node take `leader` as the leader of `epoch` (learnt from a peer or the leader itself)?

    Never an older epoch, and never its own epoch while it leads it. Votes
    do not restrict following: only a majority's candidate can lead an
    epoch, so a node that voted for a loser follows the winner.
    """
    if epoch < cur.epoch:
        return False
    return not (epoch == cur.epoch and cur.role == LEADER)
