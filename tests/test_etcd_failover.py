"""Automatic failover through a real 3-member etcd (docs/failover.md): no operator promotes anyone."""

import signal
import threading
import time

import pytest

from daemon.client.blocking import Client, ZwalError
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.harness import Cluster, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def auto(tmp_path, etcd3):  # noqa: F811
    c = Cluster(str(tmp_path / "c"), 3, ack_replicas=1,
                coordinator={"kind": "etcd", "endpoints": etcd3.endpoints, "lease_ttl": 1})
    c.start_all()
    try:
        wait_until(lambda: (st := c.status("node1"))["role"] == "leader" and st.get("lease_remaining_s", 0) > 0,
                   15, "node1 holding the leader lease")
        yield c
    finally:
        c.close()


def test_kill_9_of_the_leader_elects_a_new_one_and_loses_no_acknowledged_write(auto):
    c = auto
    cl = c.client(deadline=20.0)
    acked = {}
    for i in range(30):
        acked[f"k{i}"] = cl.set(f"k{i}", b"v%d" % i)
    c.kill("node1")
    t0 = time.monotonic()
    new = wait_until(lambda: next((n for n in ("node2", "node3") if c.status(n, 0.5)["role"] == "leader"), None),
                     15, "a new leader elected through etcd")
    r = cl.set("after", b"x")  # accepted by the new leader
    took = time.monotonic() - t0
    st = c.status(new)
    assert st["epoch"] >= 2 and st["lease_holder"] == new
    for k in acked:
        assert cl.get(k) == b"v" + k[1:].encode()
    assert cl.get("after") == b"x" and r.epoch == st["epoch"]
    assert took < 10, took
    out = c.zwal("status", "--config", c.config).stdout
    assert f"coordinator etcd: lease held by {new} (epoch {st['epoch']})" in out, out
    import urllib.request

    def scrape() -> str | None:
        t = urllib.request.urlopen(c.metrics_url(new), timeout=2).read().decode()
        return t if 'zwal_elections_total{node="%s"} 1.0' % new in t else None

    text = wait_until(scrape, 5, "the election in the metrics")
    assert "zwal_lease_renewals_total" in text and "zwal_lease_remaining_seconds" in text
    c.start("node1")  # the old leader comes back as a follower of the new epoch
    wait_until(lambda: c.status("node1")["role"] == "follower" and c.status("node1")["epoch"] == st["epoch"],
               15, "node1 following the new leader")
    c.wait_converged()


def test_etcd_lost_the_leader_stops_acknowledging_within_the_lease(auto, etcd3):  # noqa: F811
    c = auto
    cl = c.client(deadline=1.5)
    cl.set("before", b"1")
    etcd3.stop_all()
    t0 = time.monotonic()
    last_ok = t0
    while time.monotonic() - t0 < 4:
        try:
            cl.set("during", b"%f" % time.monotonic())
            last_ok = time.monotonic()
        except ZwalError:
            pass
        time.sleep(0.05)
    assert last_ok - t0 <= 1.0, f"a write was acknowledged {last_ok - t0:.2f} s after etcd went (lease_ttl 1 s)"
    st = c.status("node1")
    assert st["role"] == "follower", st["role"]


def test_a_paused_leader_resumes_and_acknowledges_nothing(auto):
    c = auto
    cl = c.client(deadline=20.0)
    cl.set("a", b"1")
    c.signal("node1", signal.SIGSTOP)
    acks_from_old: list[str] = []

    def pinned_writer() -> None:  # requests queue in the paused node's socket
        with Client([c.endpoint("node1")], config=c.config, timeout=4.0, deadline=4.0) as old:
            for i in range(3):
                try:
                    old.request("set", endpoint=c.endpoint("node1"), deadline=4.0, key=b"stale%d" % i, value=b"v")
                    acks_from_old.append(f"stale{i}")
                except ZwalError:
                    pass

    t = threading.Thread(target=pinned_writer)
    try:
        t.start()
        new = wait_until(lambda: next((n for n in ("node2", "node3") if c.status(n, 0.5)["role"] == "leader"),
                                      None), 15, "a new leader while node1 is paused")
        cl.set("b", b"2")
    finally:
        c.signal("node1", signal.SIGCONT)
    t.join(30)
    assert acks_from_old == [], f"the paused leader acknowledged after it resumed: {acks_from_old}"
    wait_until(lambda: c.status("node1")["role"] == "follower", 10, "node1 stepping down")
    assert c.status(new)["role"] == "leader"
    assert cl.get("b") == b"2" and cl.get("a") == b"1"


def test_promote_by_hand_is_refused_in_etcd_mode_and_changes_nothing(auto):
    from daemon.config import load
    from daemon.failover.promote import operator_creds

    c = auto
    r = c.zwal("promote", "node2", "--config", c.config)
    assert r.returncode == 1 and "fails over by itself through etcd" in r.stderr, r.stderr
    ep = c.endpoint("node2")
    with Client([ep], timeout=1.0, deadline=1.0, creds=operator_creds(load(c.config), "admin")) as adm:
        with pytest.raises(ZwalError) as e:
            adm.admin("fence", ep, deadline=1.0, epoch=2, candidate="node2")
    assert e.value.code == "refused" and "through etcd" in str(e.value)
    st = c.status("node2")
    assert st["role"] == "follower" and st["epoch"] == 1
    assert c.status("node1")["role"] == "leader"


def test_a_batch_that_lands_after_the_lease_ran_out_is_not_acknowledged(tmp_path, etcd3):  # noqa: F811
    """fdatasync takes 2 s on the leader, so a batch is always on its way to disk when the lease runs out:
    the reply is decided after the deadline and must not be `ok` (the step-down waits for the batch).
    One node with ack_replicas = 0 (allow_data_loss): its fsync alone decides the reply."""
    import shutil
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make sysdeps installs it as root)")
    slow = [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync", "-e", "inject=fdatasync:delay_exit=2000000"]
    c = Cluster(str(tmp_path / "c"), 1, ack_replicas=0, wraps={"node1": slow},
                coordinator={"kind": "etcd", "endpoints": etcd3.endpoints, "lease_ttl": 1, "allow_data_loss": True})
    try:
        c.start("node1")
        wait_until(lambda: (st := c.status("node1"))["role"] == "leader" and st.get("lease_remaining_s", 0) > 0,
                   30, "node1 holding the leader lease")
        acks: list[float] = []
        stop = threading.Event()

        def writer(i: int) -> None:
            with Client([c.endpoint("node1")], config=c.config, timeout=5.0, deadline=5.0) as w:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        w.request("set", endpoint=c.endpoint("node1"), deadline=5.0, key=b"w%d-%d" % (i, n), value=b"v")
                        acks.append(time.monotonic())
                    except ZwalError:
                        time.sleep(0.05)

        ts = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        wait_until(lambda: len(acks) >= 4, 20, "writes acknowledged through the slow disk")
        etcd3.stop_all()
        # The last renewal was sent before this, so the lease's deadline is at most TTL - margin from now.
        from daemon.failover.lease import margin
        deadline = time.monotonic() + 1 - margin(1)
        time.sleep(4.5)
        stop.set()
        for t in ts:
            t.join(10)
        late = [round(a - deadline, 3) for a in acks if a > deadline + 0.2]
        assert not late, f"acknowledged after the lease ran out (seconds past it): {late}"
    finally:
        c.close()
