"""A simulated cluster and its random fault schedule, all from one seed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .invariants import Invariants
from .node import SimNode
from daemon.failover.linearizability import Op
from .workload import Actor, Call, Client, Gen, Sleep, promote, watcher
from .world import World

from daemon.config import RETRY_BUDGET_BYTES, RETRY_WINDOW_SECONDS

MAX_EPOCH = 2**63 - 1


@dataclass
class SimConfig:
    ack_replicas: int
    replication_timeout: float = 0.5
    heartbeat_interval: float = 0.1
    peer_probe_interval: float = 0.25
    fetch_max_bytes: int = 400  # small: catch-up takes several chunks
    max_uncommitted_bytes: int = 1 << 20
    batch_max_records: int = 8
    batch_max_bytes: int = 1 << 16
    fsync_mode: str = "group"
    cluster_id: str = ""
    names: list[str] = field(default_factory=list)
    retry_window_seconds: float = RETRY_WINDOW_SECONDS
    retry_budget_bytes: int = RETRY_BUDGET_BYTES
    segment_bytes: int = 1500  # small: logs roll often, and catch-up reads stop at segment ends
    snapshot_bytes: int = 2000  # small: snapshots are taken, cut below and recovered from in every run
    retain_bytes: int = 0  # segments below the older kept snapshot go as soon as retention allows


class Sim:
    def __init__(self, seed: int, nodes: int | None = None, ack_replicas: int | None = None,
                 keep: int = 200, full_trace: bool = False, all_flips: bool = True) -> None:
        self.world = World(seed, keep, full_trace)
        rng = self.world.rng
        n = nodes or rng.randint(3, 5)
        self.names = [f"n{i + 1}" for i in range(n)]
        k = ack_replicas if ack_replicas is not None else rng.randint(1, n - 1)
        # From the seed, not the world's rng: the runs of every seed stay as they were without snapshots.
        self.cfg = SimConfig(k, names=list(self.names), snapshot_bytes=(600, 2000, 6000)[seed % 3],
                             retain_bytes=(-1, 0, 0, 3000)[(seed // 3) % 4])
        self.inv = Invariants(self)
        self.nodes = {name: SimNode(self, name) for name in self.names}
        self.originals: dict[tuple[bytes, int], dict[str, Any]] = {}
        self.stats: Counter[str] = Counter()
        self.p_enospc = 0.0
        self.p_emfile = 0.0  # admin ops' state saves meet EMFILE
        self.revoked: set[str] = set()  # node keys out of the allow-list
        # Bit flips anywhere (off by default: only in a leader's own last record; README.md, finding 1).
        self.all_flips = all_flips
        self.disk_latency: float | None = None  # a fixed leader write + fsync time (scenarios)
        self.clients: list[Client] = []
        self.actors: list[Actor] = []
        self.world.log("sim", f"seed {seed}: {n} nodes, ack_replicas = {k}")

    # -- plumbing -----------------------------------------------------------------------

    def note_leader(self, epoch: int, name: str) -> None:
        self.inv.note_leader(epoch, name)

    def start(self) -> None:
        for n in self.nodes.values():
            n.start()

    def spawn(self, name: str, gen: Gen, delay: float = 0.0) -> Actor:
        a = Actor(self, f"{name}{self.world.next_id()}" if name in ("op", "x") else name, gen).start(delay)
        self.actors.append(a)
        return a

    def schedule_restart(self, node: SimNode, delay: float | None = None) -> None:
        d = delay if delay is not None else self.world.rng.uniform(0.1, 1.5)
        self.world.after(d, self._restart, node, node.inc)

    def _restart(self, node: SimNode, inc: int) -> None:
        if not node.up and node.refused is None and node.inc == inc:
            node.start()

    def run_until(self, t: float) -> None:
        w = self.world
        q = w._q
        while q and q[0][0] <= t:
            w.step()
            self.inv.check_step()
        w.now = max(w.now, t)

    def run_for(self, d: float) -> None:
        self.run_until(self.world.now + d)

    def client(self, name: str) -> Client:
        c = Client(self, name)
        self.clients.append(c)
        return c

    def write(self, c: Client, key: bytes, value: bytes | None, rid: int | None = None,
              target: str | None = None) -> Actor:
        """Start one client write (with retries); the actor's `result` is the last reply."""
        if target is not None:
            c.target = target
        return self.spawn(c.name, c.write("set" if value is not None else "del", key, value, rid))

    def read(self, c: Client, key: bytes, target: str | None = None) -> Actor:
        if target is not None:
            c.target = target
        return self.spawn(c.name, c.read(key))

    def crash(self, name: str) -> None:
        self.nodes[name].crash("killed by the scenario")

    def restart(self, name: str) -> None:
        n = self.nodes[name]
        if not n.up:
            n.start()

    def isolate(self, name: str) -> list[tuple[str, str]]:
        """Cut a node off from the other nodes (clients still reach it)."""
        self.world.log("sim", f"isolate {name}")
        return self.world.net.cut({name}, set(self.names) - {name})

    def leader(self) -> SimNode | None:
        """The up, unpaused leader of the highest epoch, if any."""
        best = None
        for n in self.nodes.values():
            if n.up and not n.paused and n.state.role == "leader":
                if best is None or n.state.epoch > best.state.epoch:
                    best = n
        return best

    def promote(self, name: str | None = None, delay: float = 0.0) -> Actor:
        def go() -> Gen:
            result = yield from promote(self, name)
            self.world.log("op", f"promote {name or '(most advanced)'}: {result}")
            self.stats["promotions" if " leads epoch " in result else "promotions_refused"] += 1
            return result
        return self.spawn("op", go(), delay)

    # -- the random run --------------------------------------------------------------------

    def random_run(self, duration: float = 12.0, settle: float = 4.0, clients: int = 3) -> None:
        rng = self.world.rng
        if rng.random() < 0.2:
            self.cfg.fsync_mode = "per-record"  # the leader's batches hold one record each
            self.world.log("sim", "fsync_mode = per-record")
        self.start()
        keys = [f"k{i}".encode() for i in range(rng.randint(2, 5))]
        for i in range(clients):
            c = Client(self, f"c{i + 1}")
            self.clients.append(c)
            self.spawn(c.name, c.run(duration, keys), rng.uniform(0, 0.05))
        self.spawn("chaos", self.chaos(duration))
        self.spawn("watcher", watcher(self, duration + settle))
        self.run_until(duration)
        self.heal_all()
        self.spawn("x", self.ensure_leader(settle / 2))
        self.run_until(duration + settle)
        self.inv.check_end()

    def heal_all(self) -> None:
        w = self.world
        w.log("chaos", "heal everything")
        w.net.heal()
        w.net.loss = w.net.slow = 0.0
        self.p_enospc = 0.0
        self.p_emfile = 0.0
        if self.revoked:
            self._restore_keys()
        for n in self.nodes.values():
            n.fail_fsync = False
            n.disk_full = False
            if n.paused:
                n.resume()
            elif not n.up and n.refused is None:
                n.start()

    def ensure_leader(self, until_in: float) -> Gen:
        end = self.world.now + until_in
        while self.world.now < end:
            yield Sleep(0.6)
            if self.leader() is None:
                yield from self._promote_most_advanced()

    def _promote_most_advanced(self) -> Gen:
        result = yield from promote(self, None)
        self.world.log("op", f"promote (most advanced): {result}")

    def chaos(self, until: float) -> Gen:
        w, rng, net = self.world, self.world.rng, self.world.net
        flipped = False
        while w.now < until:
            yield Sleep(rng.expovariate(1 / 0.35))
            if w.now >= until:
                return  # no fault after the healing began: it would land in the settled cluster
            leader = self.leader()
            pick = rng.choices(
                ["crash", "pause", "partition", "disconnect", "loss", "slow", "fsync", "flip", "promote",
                 "promote2", "enospc", "bigepoch", "nothing", "revoke", "forge", "rogue", "emfile", "diskfull"],
                [3, 2, 3, 2, 1, 1, 0.5, 0.4, 2, 0.5, 0.4, 0.3, 2, 0.4, 0.6, 0.3, 0.3, 0.3])[0]
            target = leader if leader is not None and rng.random() < 0.5 else self.nodes[rng.choice(self.names)]
            self.stats[pick] += 1
            if pick == "crash" and target.up:
                target.crash("killed")
                self.schedule_restart(target, rng.uniform(0.1, 2.0))
            elif pick == "pause" and target.up:
                target.pause()
                w.after(rng.uniform(0.1, 2.5), target.resume)
            elif pick == "partition":
                side = set(rng.sample(self.names, rng.randint(1, len(self.names) - 1)))
                one_way = rng.random() < 0.3
                pairs = net.cut(side, set(self.names) - side, one_way)
                w.log("chaos", f"partition {sorted(side)} | rest{' (one way)' if one_way else ''}")
                w.after(rng.uniform(0.2, 3.0), self._heal, pairs)
            elif pick == "disconnect":
                a, b = rng.sample(self.names, 2)
                pairs = net.cut({a}, {b})
                w.log("chaos", f"disconnect {a} {b}")
                w.after(rng.uniform(0.02, 0.3), self._heal, pairs)
            elif pick == "loss":
                net.loss = rng.uniform(0.01, 0.15)
                w.log("chaos", f"loss {net.loss:.3f}")
                w.after(rng.uniform(0.2, 2.0), setattr, net, "loss", 0.0)
            elif pick == "slow":
                net.slow = rng.uniform(0.05, 0.3)
                w.log("chaos", f"delay spikes {net.slow:.2f}")
                w.after(rng.uniform(0.2, 2.0), setattr, net, "slow", 0.0)
            elif pick == "fsync" and target.up:
                w.log("chaos", f"{target.name}'s next fsync fails")
                target.fail_fsync = True
            elif pick == "flip" and not flipped:
                if self.all_flips:
                    flipped = self.flip(target)
                elif leader is not None and leader.role is not None:
                    flipped = self.flip(leader, own_epoch=leader.state.epoch)
            elif pick == "promote":
                self.promote(None if rng.random() < 0.8 else rng.choice(self.names))
            elif pick == "promote2":
                a, b = rng.sample(self.names, 2)
                w.log("chaos", f"two concurrent promotes: {a} and {b}")
                self.promote(a)
                self.promote(b, rng.uniform(0, 0.01))
            elif pick == "enospc":
                self.p_enospc = 0.3
                w.log("chaos", "disk full")
                w.after(rng.uniform(0.1, 1.0), setattr, self, "p_enospc", 0.0)
            elif pick == "bigepoch":
                self.spawn("x", self.big_epoch(rng.choice(self.names), rng.choice(["get", "set", "ping"])))
            elif pick == "revoke" and not self.revoked:
                self.revoke({rng.choice(self.names)}, rng.uniform(0.2, 2.0))
            elif pick == "forge" and leader is not None and leader.role is not None:
                self.forge(leader, *rng.sample([n for n in self.names if n != leader.name], 2))
            elif pick == "rogue":
                self.spawn(f"rogue{w.next_id()}", self.rogue_fence(rng.choice(self.names)))
            elif pick == "emfile":
                self.p_emfile = 0.5
                w.log("chaos", "descriptors run out for admin ops' state saves")
                w.after(rng.uniform(0.2, 1.5), setattr, self, "p_emfile", 0.0)
            elif pick == "diskfull" and target.up and target.state.role != "leader":
                target.disk_full = True
                w.log("chaos", f"{target.name}'s disk is full")
                w.after(rng.uniform(0.2, 2.0), setattr, target, "disk_full", False)

    def revoke(self, names: set[str], for_s: float) -> None:
        """An operator removes node keys from the allow-list and SIGHUPs every node; later restores them."""
        self.revoked = set(names)
        self.world.log("chaos", f"revoke the keys of {sorted(names)} for {for_s:.2f}s")
        for n in self.nodes.values():
            n.reload_keys(self.revoked)
        self.world.after(for_s, self._restore_keys)

    def _restore_keys(self) -> None:
        self.revoked = set()
        self.world.log("chaos", "keys restored")
        for n in self.nodes.values():
            n.reload_keys(set())

    def forge(self, leader: SimNode, key: str, name: str) -> None:
        """Node `key` sends the leader a fetch in `name`'s name, claiming the leader's whole log."""
        from daemon.node.answers import last_log_epoch
        from daemon.wire.replication import Fetch, encode_fetch
        from .node import ToReplSock

        core = leader.role.core if leader.role is not None and hasattr(leader.role, "core") else None
        end = getattr(core, "end", leader.end)
        f = Fetch(name, leader.state.epoch, end, last_log_epoch(leader), 0, self.cfg.fetch_max_bytes)
        self.world.log("chaos", f"{key} forges a fetch as {name} to {leader.name} at {end}")
        self.world.net.send(key, leader.name, ToReplSock([f"f:{key}:{self.world.next_id()}".encode(),
                                                          encode_fetch(f)]))

    def rogue_fence(self, node: str) -> Gen:
        """A client key sends an admin op: `forbidden`, and no epoch moves."""
        msg = {"id": self.world.next_id(), "op": "fence",
               "args": {"epoch": self.inv.max_admin_epoch + 7, "candidate": node}}
        yield Call(node, msg, 0.3)

    def _heal(self, pairs: list[tuple[str, str]]) -> None:
        self.world.log("chaos", f"heal {len(pairs)} links")
        self.world.net.heal(pairs)

    def flip(self, node: SimNode, last: bool | None = None, own_epoch: int | None = None) -> bool:
        """Flip one bit of a node's synced log, mostly in its last record.

        With `own_epoch`, only the last record, and only if that epoch wrote it
        (a leader's own record): the fault the cluster is built to survive.
        Other flips can destroy the one intact follower copy of an
        acknowledged record (README.md, finding 1).
        """
        from daemon.wal.format import iter_frames_in

        rng = self.world.rng
        d = node.disk
        frames = list(iter_frames_in(bytes(d.durable)))
        if not frames or own_epoch is not None and frames[-1].epoch != own_epoch:
            return False
        if own_epoch is not None:
            last = True
        if last is None:
            last = rng.random() < 0.8
        f = frames[-1] if last else rng.choice(frames)
        pos = rng.randrange(f.offset, f.end)
        d.flip(pos, 1 << rng.randrange(8))
        self.world.log("chaos", f"bit flip in {node.name}'s record [{f.offset},{f.end}) at byte {pos}")
        if rng.random() < 0.6 and node.up:
            w = self.world
            w.after(rng.uniform(0.0, 0.5), self._crash_restart, node)
        return True

    def _crash_restart(self, node: SimNode) -> None:
        if node.up:
            node.crash("killed after a bit flip")
            self.schedule_restart(node, 0.2)

    def big_epoch(self, node: str, op: str) -> Gen:
        msg: dict[str, Any] = {"id": self.world.next_id(), "op": op, "epoch": MAX_EPOCH}
        if op != "ping":
            msg["key"] = b"k0"
        if op == "set":
            msg["value"] = f"hostile.{msg['id']}".encode()
            self.inv.history.append(Op(b"k0", "set", msg["value"], self.world.now, None, "hostile"))
        yield Call(node, msg, 0.3)
