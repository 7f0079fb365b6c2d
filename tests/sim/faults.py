"""Faults of issue 19 item 8, each selectable, on top of the random run of cluster.py.

- rebuild:  a node's data directory is moved aside while it is down (its log
            and node-state.json are gone) and it is started again, as the
            refusal message of daemon/node/node.py tells an operator to do;
            the bootstrap node (names[0]) included.
- damage:   bytes flipped in the last record(s) of a leader's log while it is
            down, then it is started again.
- lying:    a disk whose fdatasync returns success while the last appended
            bytes never land (a loop device over a full tmpfs); the loss is
            revealed at the node's next crash.
- churn:    thousands of one-off client ids writing once, then a retry of an
            earlier acknowledged write with the same (cid, id).
- promotes: two promotes of different nodes at the same moment.

Every fault draws from the world's RNG, so a run stays a pure function of its
seed. `FaultSim` with no faults and no liveness is the plain `Sim`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from daemon.node import kv as kv_mod
from daemon.wal.format import iter_frames_in

from .cluster import Sim
from .liveness import REBUILT
from .world import Disk
from .workload import Call, CallAll, Client, Gen, Sleep

if TYPE_CHECKING:
    from .node import SimNode

FAULTS = ("rebuild", "damage", "lying", "churn", "promotes")


def parse_faults(spec: str | None) -> frozenset[str]:
    if not spec:
        return frozenset()
    names = {s.strip() for s in spec.split(",") if s.strip()}
    if "all" in names:
        return frozenset(FAULTS)
    bad = names - set(FAULTS)
    if bad:
        raise ValueError(f"unknown fault(s) {sorted(bad)}: choose from {', '.join(FAULTS)} or all")
    return frozenset(names)


# -- rebuilding a data directory ------------------------------------------------------------


def fresh_node(sim: Sim, name: str) -> "SimNode":
    """A node process started on an empty data directory (no log, no node-state.json).

    Built exactly as the cluster builds a node that never ran: whatever state
    the node's own code gives itself on an empty directory is what a rebuilt
    node gets (today: the bootstrap node makes itself leader of epoch 1, as
    daemon/node/node.py _bootstrap_state does).
    """
    from .node import SimNode

    return SimNode(sim, name, first_start=False)


def rebuild(sim: Sim, name: str) -> "SimNode":
    """Stop `name`, move its whole data directory aside; the caller starts it again."""
    old = sim.nodes[name]
    if old.up:
        old.crash("stopped for a rebuild")
    # The old process and its data directory are gone for good: no pending
    # restart may revive them.
    old.inc += 1
    old.refused = old.refused or REBUILT
    was = f"{len(old.disk.durable)} bytes, {old.stored.role} epoch {old.stored.epoch}"
    new = fresh_node(sim, name)  # registers the node's network handler again
    sim.nodes[name] = new
    sim.stats["rebuilds"] += 1
    sim.world.log("chaos", f"rebuild {name}: data directory moved aside ({was}); it starts empty")
    return new


# -- damage in a leader's last records ------------------------------------------------------


def damage_tail(sim: Sim, node: "SimNode", records: int = 1, own_epoch: int | None = None) -> bool:
    """Flip one byte in each of the last `records` frames of a (down) node's log.

    With `own_epoch`, only frames that epoch wrote are damaged (a leader's own
    records, which its followers hold intact when they were acknowledged).
    """
    rng = sim.world.rng
    d = node.disk
    frames = list(iter_frames_in(bytes(d.durable)))
    if own_epoch is not None:
        tail = []
        for f in reversed(frames):
            if f.epoch != own_epoch or len(tail) == records:
                break
            tail.append(f)
    else:
        tail = list(reversed(frames[-records:]))
    if not tail:
        return False
    for f in tail:
        pos = rng.randrange(f.offset, f.end)
        d.flip(pos, 1 << rng.randrange(8))
    spans = ", ".join(f"[{f.offset},{f.end})" for f in reversed(tail))
    sim.stats["damaged_records"] += len(tail)
    sim.world.log("chaos", f"damage {node.name}'s last {len(tail)} record(s) {spans} while it is down")
    return True


# -- a disk that acknowledges lost bytes ----------------------------------------------------


class LyingDisk(Disk):
    """A Disk whose fsync can say yes while the bytes never land.

    Once `lie()` is called, at most `budget` more bytes land; every fsync
    still returns, so the node (and `durable`, which is what the node was told
    is safe) believes they did. The next crash reveals the truth: the durable
    log ends where the bytes stopped landing, possibly mid-frame. The bytes
    lost are kept in `lied` (and in `destroyed`, as a fault that took copies
    the node held when it acknowledged them).
    """

    landed: int | None = None  # while lying: where the bytes that really landed end
    lied: list[tuple[int, bytes]]

    def lie(self, budget: int) -> None:
        if self.landed is None:
            self.landed = len(self.durable) + budget

    def truncate(self, n: int) -> None:
        super().truncate(n)
        if self.landed is not None:
            self.landed = min(self.landed, n)

    def crash(self, rng: random.Random, lose_unsynced: bool = False) -> str:
        note = ""
        if self.landed is not None:
            landed, self.landed = self.landed, None
            if landed < len(self.durable):
                lost = self.pristine()[landed:]
                self.lied.append((landed, lost))
                super().truncate(landed)  # cache and durable: nothing after `landed` is on the platter
                self.destroyed.append((landed, lost))
                note = f"the disk lied: {len(lost)} fsynced bytes from {landed} never landed; "
            else:
                lose_unsynced = True
        return note + super().crash(rng, lose_unsynced)


def make_lying(node: "SimNode") -> LyingDisk:
    """Make a node's disk a liar in place (whatever holds a reference to it writes through the liar)."""
    d = node.disk
    if not isinstance(d, LyingDisk):
        d.__class__ = LyingDisk
        d.landed, d.lied = None, []  # type: ignore[attr-defined]
    return d  # type: ignore[return-value]


# -- client-id churn ----------------------------------------------------------------------------


CHURN = 5000  # issue 19's measurement: 5,000 one-off client ids


def churn_count() -> int:
    """More one-off client ids than any count limit of the retry window (4,096 before issue 19's fix)."""
    return max(CHURN, getattr(kv_mod, "WINDOW_CLIENTS", 0) + 200)


def churn(sim: Sim, n: int, wave: int = 64, tag: str = "", deadline: float = 10.0) -> Gen:
    """`n` one-off client ids, each writing once (in waves to whoever leads).

    A write that gets no `ok` is retried with its own (cid, id) until the
    deadline, so that (faults permitting) all `n` ids reach the log.
    """
    w = sim.world
    end = w.now + deadline
    todo = list(range(n))
    while todo and w.now < end:
        ld = sim.leader()
        if ld is None:
            yield Sleep(0.05)
            continue
        batch, todo = todo[:wave], todo[wave:]
        calls = [(ld.name, {"id": 1, "op": "set", "key": b"churn", "value": b"v%d" % j,
                            "cid": f"one-off{tag}-{j}".encode(), "epoch": ld.state.epoch}) for j in batch]
        rs = yield CallAll(calls, 0.5)
        failed = [j for j, r in zip(batch, rs) if not (r and r.get("ok"))]
        todo = failed + todo
        if failed:
            yield Sleep(0.05)
    sim.stats["churn_ok"] += n - len(todo)
    w.log("chaos", f"client churn: {n - len(todo)} of {n} one-off client ids wrote once")
    return n - len(todo)


def retry_of(sim: Sim, cid: bytes, rid: int, deadline: float = 3.0) -> Gen:
    """Retry (cid, rid) with its original content, as daemon/client/blocking.py would.

    Not recorded as a new operation: it is the same write (the invariants
    check its answer: the original offset, or no `ok`).
    """
    from daemon.wire.client import Err

    w = sim.world
    msg = dict(sim.originals[(cid, rid)])
    target = (sim.leader() or sim.nodes[sim.names[0]]).name
    end = w.now + deadline
    r = None
    while w.now < end:
        r = yield Call(target, msg, 0.4)
        if r is None or r.get("error") == Err.NOT_LEADER or r.get("error") in Err.RETRYABLE:
            ld = sim.leader()
            target = ld.name if ld is not None else sim.names[(sim.names.index(target) + 1) % len(sim.names)]
            yield Sleep(0.05)
            continue
        return r
    return r


# -- the random run with the new faults --------------------------------------------------------


class FaultSim(Sim):
    """The random run of cluster.py plus the faults of issue 19 item 8, and (optionally) liveness."""

    def __init__(self, seed: int, faults: frozenset[str] = frozenset(), liveness: str | None = None,
                 bound: float | None = None, **kw: Any) -> None:
        super().__init__(seed, **kw)
        self.faults = faults
        self.liveness_mode = liveness
        self.live: Any = None
        self.bound = bound
        self._once: set[str] = set()
        self.healed = False
        self.churner: Any = None

    def random_run(self, duration: float = 12.0, settle: float = 4.0, clients: int = 3) -> None:
        if not self.faults and self.liveness_mode is None:
            return super().random_run(duration, settle, clients)
        from .liveness import BOUND, Liveness

        rng = self.world.rng
        self.start()
        keys = [f"k{i}".encode() for i in range(rng.randint(2, 5))]
        for i in range(clients):
            c = Client(self, f"c{i + 1}")
            self.clients.append(c)
            self.spawn(c.name, c.run(duration, keys), rng.uniform(0, 0.05))
        self.spawn("chaos", self.chaos(duration))
        if self.faults:
            self.spawn("faults", self.more_chaos(duration))
        self.run_until(duration)
        self.heal_all()
        if self.liveness_mode is None:
            self.spawn("x", self.ensure_leader(settle / 2))
            self.run_until(duration + settle)
        else:
            bound = self.bound or BOUND
            self.live = Liveness(self, bound, operator=self.liveness_mode == "operator")
            self.live.start()
            self.run_until(duration + max(settle, bound + 0.5))
            self.live.check()
        # Churn outlasts the fault period (thousands of writes): its retry is checked when it is done.
        while self.churner is not None and not self.churner.done and self.world.now < duration + 40.0:
            self.run_for(0.5)
        self.inv.check_end()

    # Faults that take copies of acknowledged records (a flip, a rebuild, a lie,
    # damage): one per run, so no record loses more copies than K + 1 allow
    # (a second one could take the last copy, which no protocol can prevent).
    COPY_FAULTS = frozenset({"rebuild", "damage", "lying"})

    def _copies_intact(self) -> bool:
        return not (self._once & self.COPY_FAULTS) and not any(
            n.disk.flips or n.disk.destroyed for n in self.nodes.values())

    def heal_all(self) -> None:
        self.healed = True
        super().heal_all()

    def _crash_restart(self, node: "SimNode") -> None:
        if not self.healed:  # a crash after a flip that was due after the faults stopped
            super()._crash_restart(node)

    def flip(self, node: "SimNode", last: bool | None = None, own_epoch: int | None = None) -> bool:
        if self._once & self.COPY_FAULTS:
            return False  # cluster.py's chaos flip, after one of ours took copies
        return super().flip(node, last, own_epoch)

    def more_chaos(self, until: float) -> Gen:
        w, rng = self.world, self.world.rng
        picks = sorted(self.faults)
        while w.now < until - 1.0:
            yield Sleep(rng.expovariate(1 / 1.5))
            if w.now >= until - 1.0:
                return
            pick = rng.choice(picks)
            self.stats[f"fault_{pick}"] += 1
            leader = self.leader()
            if pick == "rebuild" and self._copies_intact() and leader is not None:
                # The documented procedure: stop it, move the data directory aside,
                # start it while the cluster has a leader. Any node, the bootstrap node included.
                name = rng.choice(self.names)
                self._once.add("rebuild")
                new = rebuild(self, name)
                w.after(rng.uniform(0.05, 1.0), self._start_rebuilt, new)
            elif pick == "damage" and leader is not None and self._copies_intact():
                self._once.add("damage")
                leader.crash("stopped (its last records will be damaged)")
                damage_tail(self, leader, rng.randint(1, 3), own_epoch=leader.state.epoch)
                self.schedule_restart(leader, rng.uniform(0.05, 0.5))
            elif pick == "lying" and self._copies_intact():
                node = leader if leader is not None and rng.random() < 0.7 else self.nodes[rng.choice(self.names)]
                if node.up:
                    self._once.add("lying")
                    budget = rng.choice([0, rng.randrange(1, 400)])
                    make_lying(node).lie(budget)
                    w.log("chaos", f"{node.name}'s disk starts lying: {budget} more bytes land")
                    w.after(rng.uniform(0.05, 1.0), self._crash_liar, node)
            elif pick == "churn" and "churn" not in self._once:
                done = [c for c in self.clients if c.last_ok is not None]
                if done:
                    self._once.add("churn")
                    c = rng.choice(done)
                    orig = dict(c.last_ok)  # type: ignore[arg-type]
                    self.churner = self.spawn("x", self._churn_then_retry(c.cid, orig["id"]))
            elif pick == "promotes":
                a, b = rng.sample(self.names, 2)
                w.log("chaos", f"two promotes at once: {a} and {b}")
                self.promote(a)
                self.promote(b)

    def _start_rebuilt(self, node: "SimNode") -> None:
        if self.nodes.get(node.name) is node and not node.up and node.refused is None:
            node.start()

    def _crash_liar(self, node: "SimNode") -> None:
        if self.nodes.get(node.name) is node and node.up and not self.healed:
            node.crash("killed (the lie is revealed)")
            self.schedule_restart(node, 0.2)

    def _churn_then_retry(self, cid: bytes, rid: int) -> Gen:
        yield from churn(self, churn_count(), wave=256, deadline=30.0)
        r = yield from retry_of(self, cid, rid)
        self.world.log("chaos", f"retry of ({cid!r}, {rid}) after churn: {r}")
        return r
