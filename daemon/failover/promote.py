"""Promotion: the rules (pure) and the steps (I/O) of `zwal promote`.

Safety argument. A write acknowledged with ack_replicas = K is durable on
its leader and on K followers: K + 1 of the N = F + 1 nodes. So among any
N - K = F - K + 1 nodes one held it. `decide` promotes NAME only when that
many answering nodes are copies of NAME's log (`is_copy`: NAME's log holds
every acknowledged record they hold, or held before a recovery cut), and
NAME is not behind any answering follower that is no former leader (by
last epoch, then end offset). Promoting it loses nothing acknowledged.

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
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, assert_never

from daemon.client.blocking import Client, ZwalError, fetch_statuses
from daemon.config import ClusterConfig
from daemon.node.epochs import EPOCHS_LEFT_WARNING, MAX_EPOCH


@dataclass
class Decision:
    ok: bool
    reason: str
    epoch: int = 0  # the new epoch
    warnings: list[str] = field(default_factory=list)
    # When refused: a node decide() accepts now (the one the reason names), or None.
    instead: str | None = None


def position(st: dict[str, Any]) -> tuple[int, int]:
    """How advanced a node's log is: (epoch of its last record, end offset)."""
    return (st.get("last_epoch") or 0, st.get("end") or 0)


def damage_bound(st: dict[str, Any]) -> tuple[int, int]:
    """The position a log must reach to hold everything this damaged node held before its cut.

    `damaged_end` is the end of its log before recovery cut it. The epoch of
    its last record then is not reported, but it is at most the newest epoch
    its history names (recovery moves the starts of cut epochs to the cut,
    it does not forget them), its `led_epoch`, or its `last_epoch` now.
    A known gap: once it appends again (from a leader promoted after its
    cut), `before_append` drops the history entries at the cut, and until
    that leader's own epoch reaches it the bound can be below the epoch it
    lost, so a promotion in that window could count it as a copy wrongly. A
    node-state field holding the epoch of the last record before the cut
    (next to damaged_end) would close this.
    """
    hist = [int(e) for e, _ in (st.get("history") or [])]
    top = max([st.get("last_epoch") or 0, st.get("led_epoch") or 0, *hist])
    return (top, st.get("damaged_end") or 0)


def is_copy(p: dict[str, Any], st: dict[str, Any]) -> bool:
    """Does the log `p` hold every acknowledged record the node `st` holds, or held before a cut?

    Log matching (one leader per epoch; each log a byte-identical prefix of
    the leader of its last epoch; a leader is promoted holding every record
    acknowledged before it): a log at (e, x) holds every acknowledged record
    of a log at (e', x') <= (e, x). With e' = e both are prefixes of one
    leader's log, so the shorter is a prefix of the longer; with e' < e the
    records were acknowledged before the leader of e was promoted, and p's
    log reaches into e, past what that leader held then.
    - An intact node is a copy when its position is at most p's. That holds
      for a former leader too once it truncated its divergent tail: its log
      is then a prefix of p's (its own epoch's records that remain are the
      ones p also holds).
    - A damaged node (end < damaged_end) may have acknowledged records in the
      bytes its recovery cut; it is a copy only when p reaches its
      `damage_bound`: p then holds every byte it ever held. The damaged node
      itself never is (its end is below its damaged_end).
    """
    if is_damaged(st):
        return position(p) >= damage_bound(st)
    return position(st) <= position(p)


def _ranked(nodes: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Most advanced first; equal positions by name, so ties always resolve the same way."""
    return sorted(sorted(nodes.items()), key=lambda kv: position(kv[1]), reverse=True)


@dataclass
class _Assessment:
    epoch: int
    problems: list[tuple[str, str]]  # (what is wrong, what to do if no other node is accepted)
    warnings: list[str]


def _assess(name: str, statuses: dict[str, dict[str, Any] | None], ack_replicas: int,
            old_leaders: frozenset[str], no_vote: frozenset[str] = frozenset()) -> Decision | _Assessment:
    """The rules for promoting `name`: a Decision when refused outright, else the problems --force overrides."""
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
    problems: list[tuple[str, str]] = []
    down = sorted(n for n, s in statuses.items() if s is None and n not in no_vote)
    # Up but refused the vote (a rebuilt node votes only once it follows a
    # leader): bringing it back is no remedy, and without a leader it never
    # catches up, so only --force is left.
    bring_back = (f"bring {', '.join(down)} back" if down else "wait for the damaged nodes to catch up")
    copy_advice = (f"{bring_back}, or use --force and accept possible loss of acknowledged writes"
                   if down or not no_vote else
                   f"{', '.join(sorted(no_vote))} answered but cast no vote, and no log shows that {name} holds every "
                   f"acknowledged write: only 'zwal promote {name} --force' can promote now, accepting possible loss "
                   "of acknowledged writes")

    if ack_replicas == 0:
        problems.append(("ack_replicas = 0: writes were acknowledged before any follower had them, so no follower "
                         "is guaranteed to hold every acknowledged write",
                         "use --force to promote anyway (acknowledged writes may be lost)"))
    # A live leader counts too (a switchover): by log matching its position
    # says what it holds whatever its role, and the check after fencing,
    # when it can acknowledge nothing more, decides again.
    countable = {n: s for n, s in reachable.items() if s["role"] in ("follower", "leader")}
    countable[name] = me
    # The bar: the most advanced answering follower that is no former leader
    # (a former leader's tail beyond it was never acknowledged, given the
    # copies below), damaged or not (its bytes below its end are real).
    bar = {n: s for n, s in countable.items() if n not in old_leaders or n == name}
    best_name, best = _ranked(bar)[0]
    if position(me) < position(best):
        problems.append((f"{name} is behind {best_name}: {name} ends at {me.get('end')} (last epoch "
                         f"{me.get('last_epoch')}), {best_name} at {best.get('end')} (last epoch "
                         f"{best.get('last_epoch')})",
                         f"records beyond {name}'s end would be truncated on the others; {bring_back}, or use "
                         "--force and accept possible loss of acknowledged writes"))
    # The copies: answering followers (and `name`) whose every acknowledged
    # record `name`'s log holds. With N nodes, each acknowledged record sits
    # on K + 1 of them (its leader and K followers); when N - K = F - K + 1
    # nodes are copies, one of them held it, so `name` holds it.
    copies = {n for n, s in countable.items() if is_copy(me, s)}
    need = followers_total - ack_replicas + 1
    if ack_replicas > 0 and len(copies) < need:
        why = []
        for n, s in sorted(countable.items()):
            if n in copies:
                continue
            if is_damaged(s):
                be, bx = damage_bound(s)
                why.append(f"{n} lost records at recovery (its log held {bx} bytes, up to epoch {be}; "
                           + (f"it ends at {s.get('end')} now)" if n == name else
                              f"{name} ends at {me.get('end')} in epoch {me.get('last_epoch')})"))
            elif n in old_leaders:
                why.append(f"{n} led epoch {s.get('led_epoch')} and holds records beyond {name}'s end")
            else:
                why.append(f"{n} is ahead of {name}")
        problems.append((f"only {len(copies)} of {followers_total} follower(s) answered with a log {name} is sure to "
                         f"hold" + (f" ({'; '.join(why)})" if why else "")
                         + f"; with ack_replicas = {ack_replicas} at least {need} must answer with one, to be sure {name} holds "
                         "every acknowledged write",
                         copy_advice))
    majority = len(statuses) // 2 + 1
    if len(reachable) < majority:
        problems.append((f"only {len(reachable)} of {len(statuses)} nodes answered; a promotion needs the votes of a "
                         f"majority ({majority}) so that two promotions can never both win",
                         "bring more nodes back, or use --force and run no other promotion"))
    return _Assessment(epoch, problems, warnings)


def decide(name: str, statuses: dict[str, dict[str, Any] | None], ack_replicas: int, force: bool,
           old_leaders: frozenset[str] = frozenset(), no_vote: frozenset[str] = frozenset()) -> Decision:
    """The promotion rules, free of I/O. `statuses` maps node -> status or None.

    Safe (no acknowledged write lost) when, with F followers and ack_replicas
    K >= 1, at least F - K + 1 answering nodes are copies of `name`'s log
    (`is_copy`): each acknowledged record sits on K + 1 nodes, so one copy
    held it. Copies are the intact nodes at or behind `name` by (last_epoch,
    end), former leaders included once truncated to a prefix, and the damaged
    nodes whose whole pre-cut log `name` reaches (`damage_bound`). A damaged
    node is never a copy of itself. A majority must answer (one vote each per
    epoch), and `name` must not be behind any answering follower that is no
    former leader. Equal positions are all accepted; suggestions pick by name.

    `old_leaders` are nodes that led before fencing with records of their own
    epoch at the end of their logs (`deposed_leaders`): they are followers
    now, and like `former_leaders` their tails never set the bar.

    A refusal names another node only if decide() accepts it (`instead`), so
    no message sends an operator to a command that would be refused.
    `force` turns every overridable problem into a warning. `no_vote`: nodes
    that answered but refused the fence (None in `statuses` after fencing).
    """
    a = _assess(name, statuses, ack_replicas, old_leaders, no_vote)
    if isinstance(a, Decision):
        if name in statuses and statuses[name] is None and (alt := promotable(statuses, ack_replicas, old_leaders)):
            return Decision(False, f"{a.reason}; promote {alt} instead", instead=alt)
        return a
    if not a.problems:
        return Decision(True, f"promote {name} to epoch {a.epoch}", a.epoch, a.warnings)
    if force:
        return Decision(True, f"promote {name} to epoch {a.epoch}", a.epoch, a.warnings + [m for m, _ in a.problems])
    instead = promotable(statuses, ack_replicas, old_leaders, exclude=name)
    msg, advice = a.problems[0]
    return Decision(False, msg + (f"; promote {instead} instead" if instead else f" ({advice})"), instead=instead)


def promotable(statuses: dict[str, dict[str, Any] | None], ack_replicas: int,
               old_leaders: frozenset[str] = frozenset(), exclude: str | frozenset[str] | None = None) -> str | None:
    """The most advanced answering follower decide() accepts without --force (ties by name), or None.

    `exclude`: nodes that may not be the pick (they still count as copies)."""
    out = frozenset([exclude]) if isinstance(exclude, str) else (exclude or frozenset())
    fol = {n: s for n, s in statuses.items() if s is not None and s["role"] == "follower" and n not in out}
    for n, _ in _ranked(fol):
        a = _assess(n, statuses, ack_replicas, old_leaders)
        if isinstance(a, _Assessment) and not a.problems:
            return n
    return None


def accepts(name: str, statuses: dict[str, dict[str, Any] | None], ack_replicas: int) -> bool:
    """Would `zwal promote name` (without --force) accept `name` now: an answering follower with no problem?"""
    st = statuses.get(name)
    if st is None or st["role"] != "follower":
        return False
    a = _assess(name, statuses, ack_replicas, deposed_leaders(statuses))
    return isinstance(a, _Assessment) and not a.problems


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

    Former leaders of their last epoch are chosen only when nobody else is;
    equal positions go to the first name, whatever order `statuses` has.
    """
    reachable = {n: s for n, s in statuses.items() if s is not None}
    fol = {n: s for n, s in reachable.items() if s["role"] == "follower"}
    others = {n: s for n, s in fol.items() if n not in former_leaders(reachable)}
    fol = others or fol
    if not fol:
        return None
    return _ranked(fol)[0][0]


# -- a split vote: retry once, later, higher -----------------------------------------------------

# Two promotions of one epoch that each fence their own candidate first split
# the votes when the old leader is gone: neither gets a majority. The loser
# tries once more at a higher epoch after a pause, as a Raft candidate whose
# election timed out starts a new term after a randomized election timeout
# (Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm",
# §5.2). Raft's evaluation (§9.3) found ranking candidates alone fragile (a
# high-ranked server that fails stalls the election) and randomization simple
# and fast; we take randomization, and use the rank only so that two
# different candidates can never collide twice:
# - each candidate's pause window is offset by its rank (its name's place
#   among the cluster's names); within the window the pause is random;
# - each retries at its own epoch, lost + 1 + rank: two retries never ask
#   for the same epoch, and the newer one's fence overrides the older one's
#   votes, so whatever the timing one of them ends up leading;
# - like a Raft candidate that hears of a newer term, a loser that finds a
#   node at an epoch above the one it lost stands back and watches the
#   promotion under way there, and retries only if that one never leads;
# - a loser that finds a leader of its lost epoch or later stops: the other
#   promotion won.
RETRY_BASE_S = 0.05  # the shortest pause
RETRY_SLOT_S = 0.5  # from the end of one candidate's window (plus a status timeout) to the next
RETRY_JITTER_S = 0.15  # the random part of a window; below RETRY_SLOT_S, so windows never overlap
RETRIES_AFTER_LOST_VOTE = 1

RETRY, WATCH, STOP = "retry", "watch", "stop"


def retry_pause(name: str, names: list[str], u: float, timeout: float = 0.0) -> float:
    """Seconds to wait before the retry of `name`'s promotion; `u` is uniform in [0, 1).

    The windows are `timeout` + RETRY_SLOT_S apart: a retry reads every
    node's status (up to `timeout` when one is down) before it fences, so the
    next candidate looks only once the earlier one's fence has landed.
    """
    rank = sorted(names).index(name)
    return RETRY_BASE_S + rank * (timeout + RETRY_SLOT_S) + min(max(u, 0.0), 1.0) * RETRY_JITTER_S


def retry_bounds(name: str, names: list[str], timeout: float = 0.0) -> tuple[float, float]:
    """The window `retry_pause` draws from."""
    return retry_pause(name, names, 0.0, timeout), retry_pause(name, names, 1.0, timeout)


def winner(lost_epoch: int, statuses: dict[str, dict[str, Any] | None]) -> tuple[str, int] | None:
    """The node that leads `lost_epoch` or a later epoch (the newest), if one answers."""
    won = sorted((s["epoch"], n) for n, s in statuses.items()
                 if s is not None and s.get("role") == "leader" and s["epoch"] >= lost_epoch)
    return (won[-1][1], won[-1][0]) if won else None


@dataclass(frozen=True)
class RetryPlan:
    action: str  # RETRY (at `epoch`), WATCH (another promotion is under way) or STOP
    reason: str
    epoch: int = 0


def after_lost_vote(name: str, names: list[str], lost_epoch: int, statuses: dict[str, dict[str, Any] | None],
                    retried: int, retries: int = RETRIES_AFTER_LOST_VOTE, watched: bool = False,
                    votes: dict[str, str] | None = None) -> RetryPlan:
    """What `name`'s promoter does after losing the vote of `lost_epoch` and pausing (pure).

    `votes`: whom each node said it voted for in `lost_epoch` (fence replies).
    A candidate with a majority of them won that vote and is about to lead:
    that was no split vote, so stand back. `watched`: it already stood back
    once and the promotion it watched never led.
    """
    won = winner(lost_epoch, statuses)
    if won is not None:
        return RetryPlan(STOP, f"{won[0]} leads epoch {won[1]}: another promotion ran at the same time and won")
    if retried >= retries:
        return RetryPlan(STOP, f"the vote was lost {retried + 1} time(s)" if retries else
                         "no retry after a lost vote (retries = 0)")
    top = max([lost_epoch, *(s["epoch"] for s in statuses.values() if s is not None)])
    tally: dict[str, int] = {}
    for c in (votes or {}).values():
        tally[c] = tally.get(c, 0) + 1
    won_vote = [c for c, k in sorted(tally.items()) if c != name and k >= len(names) // 2 + 1]
    if won_vote and not watched:
        return RetryPlan(WATCH, f"{won_vote[0]} won the votes of epoch {lost_epoch}")
    if top > lost_epoch and not watched:
        return RetryPlan(WATCH, f"a promotion at epoch {top} is under way")
    return RetryPlan(RETRY, "a split vote", top + 1 + sorted(names).index(name))


@dataclass
class PromoteResult:
    ok: bool
    name: str
    epoch: int
    message: str
    start_offset: int | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lost_vote: bool = False  # another promotion took the votes of `epoch`
    attempts: int = 1
    votes: dict[str, str] = field(default_factory=dict)  # node -> whom it voted for in `epoch`


# -- the retry loop as a sans-I/O generator -------------------------------------------------------
# `retrying` decides; its driver performs each step it yields and sends back the
# result: `run_promote` over ZeroMQ and the host clock, the simulator
# (tests/sim/workload.py) over its network and clock. Both run this one loop.


@dataclass(frozen=True)
class Attempt:
    """Run one promotion at `min_epoch` or above (`sts`: statuses just read); send back its PromoteResult."""
    min_epoch: int
    sts: dict[str, dict[str, Any] | None] | None


@dataclass(frozen=True)
class Pause:
    """Sleep `seconds`; send back None."""
    seconds: float


@dataclass(frozen=True)
class ReadStatuses:
    """Read every node's status; send back the statuses (None for a node that does not answer)."""


@dataclass(frozen=True)
class ReadClock:
    """Send back the driver's monotonic clock, in seconds."""


@dataclass(frozen=True)
class Say:
    """Tell the operator `text`; send back None."""
    text: str


Step = Attempt | Pause | ReadStatuses | ReadClock | Say


def retrying(name: str, names: list[str], timeout: float, retries: int = RETRIES_AFTER_LOST_VOTE,
             rng: Callable[[], float] = random.random) -> Generator[Step, Any, PromoteResult]:
    """A promotion of `name` that, after a split vote, retries once at a higher epoch (after_lost_vote)."""
    retried, min_epoch = 0, 0
    now: dict[str, dict[str, Any] | None] | None = None
    while True:
        res: PromoteResult = yield Attempt(min_epoch, now)
        res.attempts = retried + 1
        if not res.lost_vote:
            return res
        lost = res.epoch
        # After the pause (a short one when no retry is left: the winner may
        # be between its fence and its promote), see who won, if anyone.
        pause = retry_pause(name, names, rng(), timeout) if retried < retries else RETRY_BASE_S
        yield Say(f"lost the vote in epoch {lost}; looking again in {pause:.2f} s")
        yield Pause(pause)
        now = yield ReadStatuses()
        plan = after_lost_vote(name, names, lost, now, retried, retries, votes=res.votes)
        if plan.action == WATCH:
            # Stand back while the newer promotion finishes (it needs a few status rounds).
            yield Say(f"{plan.reason}: waiting for it to finish")
            until = (yield ReadClock()) + 3 * timeout + 1
            while plan.action == WATCH and (yield ReadClock()) < until:
                yield Pause(0.1)
                now = yield ReadStatuses()
                plan = after_lost_vote(name, names, lost, now, retried, retries, votes=res.votes)
            if plan.action == WATCH:
                plan = after_lost_vote(name, names, lost, now, retried, retries, watched=True)
        if plan.action == STOP:
            if now is not None and winner(lost, now) is not None:
                res = PromoteResult(False, name, lost, f"{plan.reason}; nothing more to do ('zwal status' shows "
                                    "the leader)", lost_vote=True, attempts=retried + 1)
            return res
        yield Say(f"{plan.reason}: trying once more at epoch {plan.epoch} (Raft's randomized retry)")
        retried, min_epoch = retried + 1, plan.epoch


def run_promote(cfg: ClusterConfig, name: str, *, force: bool = False, timeout: float = 2.0,
                statuses_fn: Callable[[ClusterConfig, float], dict[str, dict[str, Any] | None]] | None = None,
                say: Callable[[str], None] = lambda s: None, cert: str | None = None,
                retries: int = RETRIES_AFTER_LOST_VOTE, rng: Callable[[], float] = random.random,
                sleep: Callable[[float], None] = time.sleep) -> PromoteResult:
    t0 = time.monotonic()
    if statuses_fn is None and cert is not None:
        # Only the given (admin) certificate may exist on this machine.
        def statuses_fn(c: ClusterConfig, t: float) -> dict[str, dict[str, Any] | None]:
            return fetch_statuses([(n.name, n.client_endpoint) for n in c.nodes], t, operator_creds(c, "admin", cert))
    get_statuses = statuses_fn or statuses_of
    steps = retrying(name, cfg.names, timeout, retries, rng)
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            res: PromoteResult = done.value
            break
        reply = None
        match step:
            case Attempt():
                reply = _attempt(cfg, name, force, timeout, get_statuses, say, cert, step.min_epoch, step.sts)
            case Pause():
                sleep(step.seconds)
            case ReadStatuses():
                reply = get_statuses(cfg, timeout)
            case ReadClock():
                reply = time.monotonic()
            case Say():
                say(step.text)
            case _:
                assert_never(step)
    res.seconds = time.monotonic() - t0
    return res


def _attempt(cfg: ClusterConfig, name: str, force: bool, timeout: float,
             get_statuses: Callable[[ClusterConfig, float], dict[str, dict[str, Any] | None]],
             say: Callable[[str], None], cert: str | None, min_epoch: int = 0,
             sts: dict[str, dict[str, Any] | None] | None = None) -> PromoteResult:
    """One promotion (at `min_epoch` or above): check, fence (the vote), check again, promote, repoint.

    `sts`: statuses just read (a retry's), so that its fence follows its look at once."""
    sts = sts if sts is not None else get_statuses(cfg, timeout)
    d = decide(name, sts, cfg.ack_replicas, force)
    if not d.ok:
        return PromoteResult(False, name, 0, d.reason)
    for w in d.warnings:
        say(f"WARNING: {w}")
    epoch = max(d.epoch, min_epoch)
    eps = {n.name: n.client_endpoint for n in cfg.nodes}
    majority = len(cfg.nodes) // 2 + 1
    with Client(list(eps.values()), timeout=timeout, deadline=timeout, creds=operator_creds(cfg, "admin", cert)) as c:
        # The fence is a vote for `name` in `epoch` (one per node per epoch,
        # like Raft's): a majority of votes makes this the only promotion of
        # `epoch` that can win, whatever else runs at the same time.
        fenced: list[str] = []
        votes: dict[str, str] = {}
        no_vote: set[str] = set()  # answered the fence with a refusal (a rebuilt node not yet following)
        for n in ([name] + [n for n in sts if n != name]):
            if sts.get(n) is None:
                continue
            try:
                r = c.admin("fence", eps[n], deadline=timeout, epoch=epoch, candidate=name)
                if r.get("voted_for") not in (None, name):
                    votes[n] = str(r.get("voted_for"))
                    say(f"{n} voted for {r.get('voted_for')} in epoch {epoch}")
                    continue
                fenced.append(n)
                votes[n] = name
            except ZwalError as e:
                if isinstance(e.reply.get("voted_for"), str) and e.reply.get("epoch") == epoch:
                    votes[n] = e.reply["voted_for"]
                elif getattr(e, "code", None) == "refused":
                    no_vote.add(n)
                say(f"could not fence {n}: {e}")
        say(f"fenced {', '.join(fenced)} at epoch {epoch} (votes for {name})")
        if name not in fenced:
            return PromoteResult(False, name, epoch, f"{name} could not be fenced for itself; nothing promoted "
                                                     f"(nodes fenced: {fenced}): another promotion is running. "
                                                     "Check 'zwal status': if no node leads, run promote again",
                                 lost_vote=True, votes=votes)
        if len(fenced) < majority and not force:
            return PromoteResult(False, name, epoch,
                                 f"only {len(fenced)} of {len(cfg.nodes)} nodes voted for {name} in epoch {epoch} "
                                 f"(a majority is {majority}); nothing promoted: another promotion is running. "
                                 "Check 'zwal status': if no node leads, run promote again", lost_vote=True,
                                 votes=votes)
        # The ends are frozen now: check again before acting.
        sts2 = get_statuses(cfg, timeout)
        old = deposed_leaders(sts)
        d2 = decide(name, {n: (s if n in fenced else None) for n, s in sts2.items()}, cfg.ack_replicas, force, old,
                    frozenset(no_vote))
        if not d2.ok and not force:
            return PromoteResult(False, name, epoch,
                                 f"after fencing: {d2.reason}. The cluster is fenced at epoch {epoch} with no leader")
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
                             "check 'zwal status'", r.get("end"), d.warnings)
    return PromoteResult(True, name, epoch, f"{name} leads epoch {epoch} from offset {r.get('end')}",
                         r.get("end"), d.warnings)


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
