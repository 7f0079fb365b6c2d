"""The leader lease and the election, as pure rules (docs/failover.md). No I/O.

The lease. The leader holds `<prefix>/leader` under an etcd lease of TTL T
(as granted: etcd may raise it). etcd counts T from when it handles a grant
or a keepalive, which is after we sent it, so a lease proven by a request
sent at monotonic time s lives in etcd at least until s + T (a change of
etcd leader only lengthens leases, by up to one election timeout). The
leader takes it to end at s + T - margin, and answers no write `ok` and no
read as fresh at or after that deadline: its acknowledgements are all
decided before the key can expire, and an election starts only after the
key has expired. The margin covers the rate difference of the two
machines' clocks and our own reading of the clock.

A paused process: the check is made when a reply is decided. A reply
decided before the deadline and sent after a pause is still true: the
write was on K followers before the key expired, so the election counts
it; the read took effect before any newer leader existed.

The election (`candidate`) reuses `zwal promote`'s rules
(daemon/failover/promote.py): when no key exists, the node that
`promotable` names from every node's status (read after the key was found
missing) is the only one to try, and etcd's transaction lets one node win
each epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from daemon.failover.promote import accepts, deposed_leaders, most_advanced, promotable

# The part of the TTL never used: margin = max(MIN_MARGIN_S, MARGIN_FRACTION x TTL).
MARGIN_FRACTION = 0.2
MIN_MARGIN_S = 0.2


def margin(ttl: float) -> float:
    return max(MIN_MARGIN_S, MARGIN_FRACTION * ttl)


def renew_interval(ttl: float) -> float:
    """How often a leader renews: three tries before the deadline, as Patroni's loop_wait <= ttl/3."""
    return max(0.05, (ttl - margin(ttl)) / 3)


def usable(ttl: float) -> float:
    """The part of a lease a leader may use: a main loop silent this long, or a batch this long on its way
    to disk, could not have used the lease it would renew (the thread stops renewing)."""
    return ttl - margin(ttl)


def stuck_commit_s(ttl: float) -> float:
    """How long a leader may go with fewer than K followers in sync before it stops renewing (a leader cut
    off from its followers but not from etcd would otherwise keep the lease, and no election could run)."""
    return 2.0 * ttl


@dataclass(slots=True)
class Lease:
    """What the leader's main loop knows of its lease: the deadline, on its monotonic clock."""

    deadline: float = -math.inf
    held: bool = False  # granted once in this role: a deadline that passes is a lease lost

    def proven(self, sent_at: float, ttl: float) -> None:
        """A grant or keepalive sent at `sent_at` came back with `ttl` seconds (only ever moves forward)."""
        self.deadline = max(self.deadline, sent_at + ttl - margin(ttl))
        self.held = True

    def valid(self, now: float) -> bool:
        return now < self.deadline

    def lost(self) -> None:
        self.deadline = -math.inf

    def remaining(self, now: float) -> float:
        return max(0.0, self.deadline - now) if self.held else 0.0


# -- the keys ----------------------------------------------------------------------------

def leader_key(prefix: str) -> str:
    return f"{prefix}/leader"


def epoch_key(prefix: str) -> str:
    return f"{prefix}/epoch"


def handoff_key(prefix: str) -> str:
    """A switchover's request: {to, from, epoch}; the election after `epoch` prefers `to` (docs/failover.md)."""
    return f"{prefix}/handoff"


def encode_handoff(to: str, frm: str, epoch: int) -> bytes:
    return json.dumps({"to": to, "from": frm, "epoch": epoch}, sort_keys=True).encode()


def handoff_for(b: bytes | None, etcd_epoch: int) -> str | None:
    """The node a handoff names, if it was made by the leader of `etcd_epoch` (the election now due)."""
    try:
        d = json.loads(b) if b else None
    except ValueError:
        return None
    if isinstance(d, dict) and isinstance(d.get("to"), str) and d.get("epoch") == etcd_epoch:
        return str(d["to"])
    return None


@dataclass(frozen=True, slots=True)
class Holder:
    name: str
    epoch: int


def encode_holder(h: Holder) -> bytes:
    return json.dumps({"name": h.name, "epoch": h.epoch}, sort_keys=True).encode()


def decode_holder(b: bytes) -> Holder | None:
    """The leader key's value, or None when it is not one (never trusted blindly)."""
    try:
        d = json.loads(b)
        if isinstance(d, dict) and isinstance(d.get("name"), str) and type(d.get("epoch")) is int:
            return Holder(d["name"], d["epoch"])
    except ValueError:
        pass
    return None


def decode_epoch(b: bytes | None) -> int:
    try:
        return int(b) if b else 0
    except ValueError:
        return 0


# -- the election ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Stand:
    """Try to take the leader key for `epoch` (the epoch key must still be at `expect_epoch`)."""
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


def candidate(me: str, statuses: dict[str, dict[str, Any] | None], ack_replicas: int, allow_data_loss: bool,
              etcd_epoch: int, prefer: str | None = None) -> Stand | Wait:
    """Should `me` stand in an election now? `statuses`: every node's, read after the key was found missing.

    The rules are `zwal promote`'s, without --force: `promotable` names the
    most advanced follower that F - K + 1 answering copies vouch for, no
    damaged node counting as a copy, ties by name; a majority must answer.
    With ack_replicas = 0 no follower is sure to hold every acknowledged
    write, so only `allow_data_loss` elects (the most advanced follower).
    `prefer` (a switchover's target) stands instead of that pick when the
    same rules accept it: `zwal promote prefer` would, without --force.
    """
    reachable = {n: s for n, s in statuses.items() if s is not None}
    if len(reachable) < len(statuses) // 2 + 1:
        return Wait(f"only {len(reachable)} of {len(statuses)} nodes answered; an election needs a majority")
    # A node that cannot reach etcd cannot take the key: it still counts as a copy, but the pick is another
    # (else an old leader cut off from etcd, fenced and the most advanced, would be waited for for ever).
    no_etcd = frozenset(n for n, s in reachable.items() if s.get("coordinator_error"))
    if ack_replicas == 0:
        if not allow_data_loss:
            return Wait("ack_replicas = 0: automatic failover is off (set allow_data_loss = true in [coordinator] "
                        "to fail over anyway, losing what only the old leader held)")
        pick = most_advanced({n: s for n, s in statuses.items() if n not in no_etcd})
    else:
        pick = promotable(statuses, ack_replicas, deposed_leaders(statuses), exclude=no_etcd)
        if prefer is not None and prefer != pick and prefer not in no_etcd and accepts(prefer, statuses, ack_replicas):
            pick = prefer
    if pick is None:
        return Wait("no follower is sure to hold every acknowledged write yet (zwal promote's rules)"
                    + (f"; {', '.join(sorted(no_etcd))} cannot reach etcd" if no_etcd else ""))
    if pick != me:
        return Wait(f"{pick} is the one to lead")
    top = max([etcd_epoch, 1, *(s["epoch"] for s in reachable.values())])
    if me == prefer:
        return Stand(top + 1, f"{me} is the switchover's target, and the copies vouch for it")
    return Stand(top + 1, f"{me} is the most advanced follower the copies vouch for")


def old_lease_wait(statuses: dict[str, dict[str, Any] | None], ttl: float) -> float:
    """How long the winner of an election waits, keeping its own lease, before it reads the copies again.

    The old leader's lease ended before etcd let its key go, if etcd keeps time: its last keepalive was
    sent before etcd expired the lease, and its deadline is that send time + TTL - margin. An etcd that
    revokes leases early (etcd#15247: a leader stuck on a slow fdatasync; fixed by etcd#16822, backported
    to 3.4 and 3.5) breaks that, and the old leader could acknowledge writes after the statuses were
    read. So, unless every node answered and none as a leader, the winner waits one TTL from when it
    found the key gone (no old lease proven before the key went reaches past that), then decides again
    on fresh statuses. Chubby's new master waits out the old master's lease the same way. (The bug's
    other form, keepalives still answered after the expiry, is stopped by the followers adopting the
    winner's epoch from etcd: docs/failover.md, "An etcd that revokes early".)"""
    if all(s is not None and s.get("role") != "leader" for s in statuses.values()):
        return 0.0
    return ttl
