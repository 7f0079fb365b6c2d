"""A linearizability checker for per-key register histories (set / del / get).

What it checks: that a history of client operations on a key-value store could
have come from one copy of the data, each operation taking effect atomically at
some instant between the time its client sent it (``invoke``) and the time the
client got its reply (``complete``). The model is one register per key: ``set``
writes a value, ``del`` makes the key absent (``None``), ``get`` returns the
current value or ``None``. Linearizability is compositional (a history is
linearizable iff each object's sub-history is), so the history is split by key
and every key is checked on its own.

The search is Wing & Gong's (J. Wing and C. Gong, "Testing and verifying
concurrent objects", JPDC 17(1), 1993): repeatedly pick an operation that may
come next (one invoked no later than the earliest reply of any operation not yet
placed), apply it to the model if its result agrees, and backtrack on failure;
with Lowe's memoization of visited (placed operations, model state) pairs
(G. Lowe, "Testing for linearizability", Concurrency and Computation: Practice
and Experience 29(4), 2017). A get that agrees with the model is placed at once
without branching: reads do not change the state, and one that may come next
can be moved to the front of any successful order.

Indeterminate operations (``complete is None``: timed out, client crashed,
"may have been written") are treated as Knossos (K. Kingsbury's checker for
Jepsen, github.com/jepsen-io/knossos) treats ``:info`` operations: an indeterminate write may take effect at any instant after its
invoke, or never, so it never has to be placed; an indeterminate get carries no
information and is ignored. An indeterminate write whose value no later get
observed is dropped, since placing it can never help.

Times are closed intervals: an operation that completes at t and one invoked at
t are concurrent (either may take effect first). Give a client's successive
operations strictly increasing times if their order must count.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Op", "Verdict", "check", "check_key"]

KINDS = ("set", "del", "get")


@dataclass(frozen=True, slots=True)
class Op:
    key: bytes
    kind: str  # "set", "del" or "get"
    value: bytes | None  # set: the value written; get: the value observed (None = not found); del: None
    invoke: float  # time the client sent it
    complete: float | None  # time of the reply; None = indeterminate (may take effect after invoke, or never)
    client: str = ""  # optional, for messages


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    key: bytes | None = None  # the first key whose history is not linearizable
    message: str = ""  # the ops of that key, sorted by invoke, and which op could not be placed
    unknown: bool = False  # True if the search budget ran out (then ok is True and message says so)


def check(
    history: Iterable[Op], initial: Mapping[bytes, bytes] | None = None, budget: int = 200_000
) -> Verdict:
    """Check every key's history; report the first bad key (in sorted key order).

    ``initial`` gives the value of keys before the history (absent keys: None).
    The budget is per key. A bad key wins over a key whose search ran out.
    """
    by_key: dict[bytes, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    initial = initial or {}
    unknown: Verdict | None = None
    for key in sorted(by_key):
        v = check_key(by_key[key], initial.get(key), budget)
        if not v.ok:
            return v
        if v.unknown and unknown is None:
            unknown = v
    return unknown or Verdict(ok=True)


def check_key(ops: Sequence[Op], initial: bytes | None = None, budget: int = 200_000) -> Verdict:
    """Check one key's history (all ``ops`` must share one key) starting from ``initial``."""
    for op in ops:
        _validate(op)
    if len({op.key for op in ops}) > 1:
        raise ValueError("check_key: ops for more than one key; use check()")
    if not ops:
        return Verdict(ok=True)
    key = ops[0].key
    listed = sorted(ops, key=lambda o: o.invoke)  # stable: ties keep the caller's order
    live = _relevant(listed)
    result, state, placed, stuck_at = _search(live, initial, budget)
    if result == "ok":
        return Verdict(ok=True)
    if result == "unknown":
        return Verdict(
            ok=True, key=key, unknown=True,
            message=f"key {key!r}: search budget of {budget} steps exhausted on its "
            f"{len(live)} ops; linearizability unknown (not checked)",
        )
    done = {id(live[i]) for i in range(len(live)) if placed >> i & 1}
    stuck = live[stuck_at]
    lines = [
        f"key {key!r} (initially {initial!r}) is not linearizable: {_fmt(stuck)} could not be placed.",
        f"At the furthest point the search reached, {len(done)} op(s) were placed and the register "
        f"held {state!r}; the op above must take effect by {stuck.complete:g}, and no order of the "
        f"ops allowed before it lets it see what it saw.",
        f"The {len(listed)} op(s) of this key, sorted by invoke:",
    ]
    for o in listed:
        note = ""
        if o is stuck:
            note = "   <-- could not be placed"
        elif o.kind == "get" and o.complete is None:
            note = "   (indeterminate get: ignored)"
        elif id(o) in done:
            note = "   (placed)"
        lines.append(f"  {_fmt(o)}{note}")
    return Verdict(ok=False, key=key, message="\n".join(lines))


def _validate(op: Op) -> None:
    if op.kind not in KINDS:
        raise ValueError(f"unknown op kind {op.kind!r}: {op}")
    if op.kind == "set" and not isinstance(op.value, bytes):
        raise ValueError(f"a set needs a bytes value: {op}")
    if op.kind == "del" and op.value is not None:
        raise ValueError(f"a del carries no value: {op}")
    if op.kind == "get" and op.value is not None and not isinstance(op.value, bytes):
        raise ValueError(f"a get observes bytes or None: {op}")
    if op.complete is not None and op.complete < op.invoke:
        raise ValueError(f"op completes before it is invoked: {op}")


def _relevant(listed: list[Op]) -> list[Op]:
    """Drop indeterminate gets, and indeterminate writes no get that could follow them observed."""
    seen_at = [(o.value, o.complete) for o in listed if o.kind == "get" and o.complete is not None]
    return [
        o for o in listed
        if o.complete is not None
        or (o.kind != "get" and any(v == o.value and c >= o.invoke for v, c in seen_at))
    ]


def _search(ops: list[Op], initial: bytes | None, budget: int) -> tuple[str, bytes | None, int, int]:
    """Depth-first search over (placed-ops bitmask, register value), memoized.

    Returns ("ok" | "bad" | "unknown", register value, bitmask, index) where, for
    "bad", these are the state that placed the most completed ops and the get it
    could not place. Sound prunings: a state is dead if an unplaced get observed
    a value that is not the register's and that no unplaced write writes (checked
    for gets that may come next, and for the value a write overwrites); an
    indeterminate write is not tried once no unplaced get could observe its value
    (placing it then cannot help any op that follows).
    """
    n = len(ops)
    invoke = [o.invoke for o in ops]
    deadline = [math.inf if o.complete is None else o.complete for o in ops]
    by_deadline = sorted((i for i in range(n) if ops[i].complete is not None), key=lambda i: deadline[i])
    rank = {i: r for r, i in enumerate(by_deadline)}  # bit of each completed op in the second mask
    writers: dict[bytes | None, int] = {}  # value -> the writes (bitmask) that write it
    getters: dict[bytes | None, int] = {}  # value -> the gets that observed it
    for i, o in enumerate(ops):
        table = getters if o.kind == "get" else writers
        table[o.value] = table.get(o.value, 0) | 1 << i
    readers = [
        sum(1 << j for j, g in enumerate(ops) if g.kind == "get" and g.value == o.value
            and g.complete is not None and g.complete >= o.invoke) if o.complete is None else 0
        for o in ops
    ]
    all_done = (1 << len(by_deadline)) - 1
    # (placed ops by invoke order, placed completed ops by deadline order, register value)
    stack: list[tuple[int, int, bytes | None]] = [(0, 0, initial)]
    seen: set[tuple[int, bytes | None]] = set()
    best = (-1, initial, 0, -1)
    steps = 0
    while stack:
        mask, dmask, state = stack.pop()
        if (mask, state) in seen:
            continue
        seen.add((mask, state))
        steps += 1
        if steps > budget:
            return "unknown", state, mask, -1
        if dmask == all_done:
            return "ok", state, mask, -1
        first = by_deadline[(~dmask & (dmask + 1)).bit_length() - 1]  # earliest reply not placed
        cand = ~mask & ((1 << bisect.bisect_right(invoke, deadline[first])) - 1)
        writes: list[int] = []
        read = dead = -1
        spent = 0  # indeterminate writes that can no longer matter: mark them placed
        while cand:
            low = cand & -cand
            cand ^= low
            i = low.bit_length() - 1
            o = ops[i]
            if o.kind == "get":
                if o.value == state:
                    read = i
                    break
                if not writers.get(o.value, 0) & ~mask:
                    dead = i
                    break
            elif o.complete is not None or readers[i] & ~mask:
                writes.append(i)
            else:
                spent |= low
        depth = dmask.bit_count()
        if depth > best[0]:
            best = (depth, state, mask, dead if dead >= 0 else first)
        if dead >= 0:
            continue
        if read >= 0:
            stack.append((mask | spent | 1 << read, dmask | 1 << rank[read], state))
            continue
        writes.sort(key=lambda i: deadline[i], reverse=True)  # earliest deadline is popped first
        for i in writes:
            child = (mask | spent | 1 << i, dmask | 1 << rank[i] if i in rank else dmask, ops[i].value)
            doomed = getters.get(state, 0) & ~child[0]
            if child[2] != state and doomed and not writers.get(state, 0) & ~child[0]:
                # the register leaves a value that an unplaced get saw and no unplaced write restores
                if child[1].bit_count() >= best[0]:
                    best = (child[1].bit_count(), child[2], child[0], (doomed & -doomed).bit_length() - 1)
                continue
            stack.append(child)
    return "bad", best[1], best[2], best[3]


def _fmt(op: Op) -> str:
    end = "?" if op.complete is None else f"{op.complete:g}"
    who = f"{op.client} " if op.client else ""
    what = f"get -> {op.value!r}" if op.kind == "get" else f"{op.kind} {op.key!r}" + (
        f" = {op.value!r}" if op.kind == "set" else "")
    return f"{who}{what} [{op.invoke:g}, {end}]"
