"""Network partitions with real namespaces (tests/netns.py), real processes and
real clients; the verdict of each scenario comes from the drill's ledger and
the linearizability checker over every write and fresh read.

After each scenario and its heal:
- no acknowledged write is lost (each sits at its offset in the leader's
  log, and a read returns the last value the log holds for its key);
- no write was acknowledged by a deposed leader (it would be lost: the
  deposed leader's suffix is cut when it rejoins);
- no read was answered `stale: false` with a stale value (the history of
  writes and fresh reads is linearizable);
- every log is byte-identical.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from daemon.client.blocking import Client
from daemon.failover.drill import Ledger, Load, check_ledger, check_reads, log_records
from harness import Cluster, wait_until
from daemon.failover.faults.netns import Net
from netns import make_net

pytestmark = pytest.mark.slow

NAMES = ["node1", "node2", "node3"]


@pytest.fixture
def net():
    n = make_net(NAMES)
    yield n
    n.down()


def netcluster(make_cluster, net: Net, k: int) -> Cluster:
    c = make_cluster(3, ack_replicas=k, hosts=net.ip, wraps=net.wraps())
    c.start_all()
    wait_until(lambda: c.leader() == "node1", 15, "node1 to lead")
    return c


def load_on(c: Cluster, ledger: Ledger, tag: str, clients: int = 4) -> Load:
    load = Load([c.endpoint(n) for n in c.names], clients, tag, ledger, deadline=3.0, creds=c.creds())
    load.start()
    return load


def one_leader(c: Cluster) -> str | None:
    sts = {}
    for n in c.names:
        try:
            sts[n] = c.status(n, 1.0)
        except Exception:
            return None
    leaders = [n for n, s in sts.items() if s["role"] == "leader"]
    top = max(s["epoch"] for s in sts.values())
    ends = {s["end"] for s in sts.values()}
    if len(leaders) == 1 and sts[leaders[0]]["epoch"] == top and len(ends) == 1:
        return leaders[0]
    return None


def verify(c: Cluster, ledger: Ledger) -> dict:
    """The checks every scenario ends with, after the heal."""
    leader = wait_until(lambda: one_leader(c), 60, "one leader and every log at the same end")
    c.wait_converged()
    with Client([c.endpoint(leader)], config=c.config, timeout=2.0, deadline=10.0) as cl:
        chk = check_ledger(ledger, log_records(c.log_path(leader)), lambda k: cl.read(k).value)
    assert not chk.lost, chk.lost[:5]
    assert not chk.duplicated, chk.duplicated[:5]
    verdict = check_reads(ledger)
    assert verdict.ok and not verdict.unknown, verdict.message
    assert chk.acked > 0 and ledger.reads > 0
    out = {"acked": chk.acked, "reads": ledger.reads, "unacked": len(ledger.unacked), "leader": leader}
    print(f"\n{out}")
    return out


def promote_from(net: Net | None, c: Cluster, candidates: list[str]) -> str:
    """An operator runs `zwal promote` from inside `net`'s namespace of the
    first candidate (None: from the root namespace)."""
    last = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for name in candidates:
            wrap = net.wrap(candidates[0]) if net is not None else []
            r = subprocess.run([*wrap, sys.executable, "-m", "daemon.cli", "promote", name, "--config", c.config,
                                "--timeout", "1"], capture_output=True, text=True, timeout=60, cwd=c.root)
            if r.returncode == 0:
                return name
            last = r.stdout + r.stderr
        time.sleep(0.3)
    raise AssertionError(f"no promotion succeeded: {last}")


def test_leader_cut_off_from_its_followers_then_promotion_on_the_majority_side(make_cluster, net):
    c = netcluster(make_cluster, net, k=1)
    ledger = Ledger()
    load = load_on(c, ledger, "iso")
    time.sleep(1.5)
    net.isolate("node1", ["node2", "node3"])  # clients still reach node1
    t_cut = time.monotonic()
    time.sleep(1.0)
    new = promote_from(net, c, ["node2", "node3"])
    t_promoted = time.monotonic()
    time.sleep(2.0)
    net.heal_all()
    time.sleep(2.0)
    load.finish()
    out = verify(c, ledger)
    assert out["leader"] == new
    # Acknowledged in node1's epoch after the cut: only writes whose followers'
    # copies were already fetched before it (none may come after promotion).
    epoch1_late = [o for o in ledger.history if o.kind == "set" and o.complete is not None
                   and o.invoke > t_promoted and o.complete > t_promoted
                   and any(a.value == o.value and a.epoch == 1 for a in ledger.acked)]
    assert not epoch1_late, epoch1_late[:3]
    assert t_cut < t_promoted


@pytest.mark.parametrize("k", [1, 2])
def test_one_follower_cut_off_k1_goes_on_k2_refuses(make_cluster, net, k):
    c = netcluster(make_cluster, net, k=k)
    ledger = Ledger()
    load = load_on(c, ledger, f"one{k}")
    time.sleep(1.0)
    net.isolate("node3", ["node1", "node2"])
    t_cut = time.monotonic()
    time.sleep(3.0)
    t_heal = time.monotonic()
    during = [o for o in ledger.history
              if o.kind == "set" and o.complete is not None and t_cut + 1.0 < o.invoke and o.complete < t_heal]
    net.heal_all()
    time.sleep(2.0)
    load.finish()
    if k == 1:
        assert len(during) > 10, f"K = 1 should go on with one follower: {len(during)} writes acknowledged"
    else:
        assert during == [], f"K = 2 acknowledged {len(during)} writes with a follower cut off"
    verify(c, ledger)


def test_a_link_that_flaps_every_second_for_20_s_under_load(make_cluster, net):
    c = netcluster(make_cluster, net, k=1)
    ledger = Ledger()
    load = load_on(c, ledger, "flap")
    end = time.monotonic() + 20
    up = True
    flips = 0
    while time.monotonic() < end:
        time.sleep(1.0)
        up = not up
        net.link("node1", up)  # the leader's only cable: clients and followers both
        flips += 1
    net.heal_all()
    time.sleep(3.0)
    load.finish()
    assert flips >= 18
    verify(c, ledger)


def test_leader_cut_off_from_clients_only_then_promotion(make_cluster, net):
    c = netcluster(make_cluster, net, k=1)
    ledger = Ledger()
    load = load_on(c, ledger, "cli")
    time.sleep(1.5)
    net.cut_from_clients("node1")  # node1 still talks to node2 and node3
    time.sleep(1.5)
    new = promote_from(None, c, ["node2", "node3"])  # the operator is with the clients
    time.sleep(2.0)
    net.heal_all()
    time.sleep(2.0)
    load.finish()
    out = verify(c, ledger)
    assert out["leader"] == new
