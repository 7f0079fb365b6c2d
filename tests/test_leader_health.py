"""The leader's report of its own health to the coordinator thread (daemon/node/leader.py `_beat`), under the
simulator running the production roles (tests/sim/): a healthy leader under steady load is never called stuck.

Found by review (2026-12-04): the time "a batch has been on its way to disk" was counted from the first turn
that saw any batch in flight, and under open-loop load the next batch starts as the last one lands, so a
healthy leader stopped renewing its lease after TTL - margin and leadership flapped."""

from __future__ import annotations

from daemon.failover import lease as rules
from sim.cluster import Sim
from sim.workload import Sleep


class Coordinator:
    """An enabled coordinator whose lease always holds; it records what the leader says of its health."""

    enabled = True

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.lease = rules.Lease(deadline=float("inf"), held=True)
        self.problems: list[tuple[float, str]] = []

    def lease_ok(self, now: float) -> bool:
        return True

    def take(self) -> list:
        return []

    def publish(self, role: str, epoch: int) -> None:
        pass

    def heartbeat(self, now: float, problem: str | None = None) -> None:
        if problem:
            self.problems.append((now, problem))

    def release(self, reason: str, self_fence: bool = False) -> None:
        pass

    def status(self, now: float) -> dict:
        return {"coordinator": "test"}


def open_loop(sim: Sim, rate: float, until: float, pool: list):
    rng = sim.world.rng
    i = 0
    while sim.world.now < until:
        yield Sleep(rng.expovariate(rate))
        i += 1
        c = pool[i % len(pool)]
        sim.spawn(c.name, c.write("set", b"k%d" % (i % 20), b"v", None))


def run(rate: float, disk_latency: float, ttl: float, seconds: float) -> tuple[Coordinator, int]:
    sim = Sim(1, nodes=3, ack_replicas=1)
    sim.disk_latency = disk_latency
    coord = Coordinator(ttl)
    for n in sim.nodes.values():
        n.coord = coord
    sim.start()
    sim.run_for(0.3)
    pool = [sim.client(f"c{i}") for i in range(300)]
    for c in pool:
        c.target = "n1"
    sim.spawn("load", open_loop(sim, rate, seconds, pool))
    sim.run_for(seconds)
    return coord, sim.nodes["n1"].kv.records


def test_a_leader_under_steady_load_on_a_healthy_disk_is_never_called_stuck():
    coord, written = run(rate=1000, disk_latency=0.01, ttl=1.0, seconds=3.0)
    assert written > 1000, written  # the disk was busy nearly all the time
    assert not coord.problems, coord.problems[:3]


def test_a_disk_slower_than_the_usable_lease_is_reported():
    coord, _ = run(rate=200, disk_latency=1.0, ttl=1.0, seconds=3.0)  # every fdatasync takes 1 s > 0.8 s usable
    assert coord.problems and "on its way to disk" in coord.problems[0][1], coord.problems[:3]


def nodes_down(nodes: int, k: int, down: list[str], isolate: str | None = None) -> Coordinator:
    sim = Sim(1, nodes=nodes, ack_replicas=k)
    coord = Coordinator(1.0)
    for n in sim.nodes.values():
        n.coord = coord
    sim.start()
    sim.run_for(0.5)
    for name in down:
        sim.crash(name)
    if isolate:
        sim.isolate(isolate)
    sim.run_for(5.0)  # 5 TTLs: more than the 2 x TTL a leader may go without K followers in sync
    return coord


def test_a_leader_short_of_followers_everywhere_keeps_its_lease_but_one_cut_off_from_a_majority_does_not():
    # K = 2 with one of three down, or two nodes with one down: no other node could commit or be elected
    # either, so handing the lease on would only make leadership flap.
    assert not nodes_down(3, 2, ["n3"]).problems
    assert not nodes_down(2, 1, ["n2"]).problems
    # The leader cut off from both followers: they are a majority and could elect one of them.
    cut = nodes_down(3, 1, [], isolate="n1").problems
    assert cut and "cannot commit" in cut[0][1], cut[:2]
