"""Tools that tell a person the truth (issue 19, build item 6), with real processes.

- With the leader stopped, `zwal get` used to print a follower's answer as a plain
  read (`yes`, exit 0). Now it fails (exit 3, what to do), unless `--stale` is
  given; then it says on stderr (or in --json) which node answered and that the
  answer is stale. `Client.read` likewise (`NoLeader`, `stale=True`).
- A node whose log is damaged (recovery cut bytes: `damaged_end`) never answers a
  stale read: it used to say `key 'k3' not found` while k3 was intact elsewhere.
- `zwal log recover missing.wal` used to create an empty file and report "clean,
  nothing to do"; dump, verify and recover of a missing path now fail and create
  nothing.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from daemon.client.blocking import Client, NoLeader, NotEnoughReplicas, stale_order
from harness import wait_until

pytestmark = pytest.mark.slow

GET_NO_LEADER = 3  # docs/cli.md, "Exit codes"


def _get(c, *args: str, timeout: float = 3.0):  # type: ignore[no-untyped-def]
    return c.zwal("get", *args, "--config", c.config, "--timeout", str(timeout), timeout=60)


def _cluster_without_leader(make_cluster, stop: bool = True):  # type: ignore[no-untyped-def]
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    c.start_all()
    cl = c.client()
    for i in range(1, 4):
        cl.set(f"k{i}", "yes")
    cl.close()
    c.wait_converged()
    if stop:
        c.stop("node1")
    return c


def test_get_with_the_leader_stopped_fails_unless_stale_and_then_says_so(make_cluster):
    c = _cluster_without_leader(make_cluster, stop=False)
    fresh = _get(c, "k1", "--stale")  # a leader answers: --stale changes nothing
    assert fresh.returncode == 0 and fresh.stdout == "yes\n" and "stale" not in fresh.stderr, fresh.stderr
    assert c.client().read("k1", stale=True).node == "node1"
    c.stop("node1")

    r = _get(c, "k1")
    assert r.returncode == GET_NO_LEADER, r.stdout + r.stderr
    assert r.stdout == ""  # no value printed as if it were a read
    assert "no leader answered within 3s" in r.stderr and "zwal get --stale k1" in r.stderr, r.stderr
    assert "node2: a follower" in r.stderr or "node3: a follower" in r.stderr, r.stderr

    j = json.loads(_get(c, "k1", "--json").stdout)
    assert j["ok"] is False and j["error"] == "no_leader" and j["exit_code"] == GET_NO_LEADER, j

    s = _get(c, "k1", "--stale")
    assert s.returncode == 0 and s.stdout == "yes\n", s.stdout + s.stderr  # stdout stays the value
    assert "a stale answer from node" in s.stderr and "it may miss acknowledged writes" in s.stderr, s.stderr
    sj = json.loads(_get(c, "k1", "--stale", "--json").stdout)
    assert sj["ok"] is True and sj["stale"] is True and sj["linearizable"] is False, sj
    assert sj["node"] in ("node2", "node3") and sj["value"] == "yes", sj
    absent = _get(c, "nope", "--stale")
    assert absent.returncode == 1 and "not found in a stale answer from node" in absent.stderr, absent.stderr

    cl = c.client(deadline=2.0)
    with pytest.raises(NoLeader) as e:
        cl.read("k1")
    assert set(e.value.answered) <= {"node2", "node3"} and e.value.answered, e.value.answered
    with pytest.raises(NoLeader) as pinned_e:  # pinned to a follower: the same rule
        cl.read("k1", endpoint=c.endpoint("node2"))
    assert "node2 is a follower" in str(pinned_e.value) and "stale=True" in str(pinned_e.value), pinned_e.value
    r2 = cl.read("k1", stale=True)
    assert r2.value == b"yes" and r2.stale and not r2.linearizable and r2.node in ("node2", "node3"), r2
    pinned = cl.read("k1", endpoint=c.endpoint("node3"), stale=True)
    assert pinned.node == "node3" and pinned.stale and pinned.value == b"yes", pinned


def test_a_stale_read_falls_back_to_a_follower_when_the_leader_cannot_confirm(make_cluster):
    """K = 2 with a follower down: the leader is up but cannot confirm a read. A plain read
    fails (the leader's not_enough_replicas); a stale read gets a follower's answer, in time."""
    c = make_cluster(3, ack_replicas=2, replication_timeout=0.5, heartbeat_interval=0.2)
    c.start_all()
    c.client().set("k", "v")
    c.wait_converged()
    c.kill("node3")
    wait_until(lambda: not next(f for f in c.status("node1")["followers"] if f["name"] == "node3")["in_sync"],
               10, "node3 to drop out of sync")
    cl = c.client(deadline=4.0)
    with pytest.raises((NotEnoughReplicas, NoLeader)):
        cl.read("k")
    t0 = time.monotonic()
    r = cl.read("k", stale=True)
    assert r.value == b"v" and r.stale and r.node == "node2", r
    assert time.monotonic() - t0 < 4.0


def _damage_tail(c, name: str) -> None:  # type: ignore[no-untyped-def]
    """Cut the last record of `name`'s log mid-frame (as a crash can), restart it: its
    recovery cuts the partial frame and marks the node damaged until a leader catches it up."""
    c.stop(name)
    path = c.log_path(name)
    os.truncate(path, os.path.getsize(path) - 3)
    c.start(name)
    st = wait_until(lambda: (s := c.status(name)).get("damaged_end") and s, 15, f"{name} to report damaged_end")
    assert st["end"] < st["damaged_end"], st


def test_a_damaged_node_never_answers_a_stale_read(make_cluster):
    c = _cluster_without_leader(make_cluster)
    _damage_tail(c, "node3")  # node3 lost k3, the last record; the leader is down, so it cannot catch up

    s = _get(c, "k3", "--stale", "--json")
    assert json.loads(s.stdout)["node"] == "node2", s.stdout  # the intact copy

    c.stop("node2")  # only the damaged node is left: fail, do not say "k3 not found"
    r = _get(c, "k3", "--stale")
    assert r.returncode == GET_NO_LEADER, r.stdout + r.stderr
    assert "not found" not in r.stderr and "no node with an intact log" in r.stderr, r.stderr
    assert "node3: damaged: recovery cut its log" in r.stderr, r.stderr
    cl = c.client(deadline=3.0)
    with pytest.raises(NoLeader) as e:
        cl.read("k3", stale=True)
    assert "node3" in e.value.answered and "damaged" in e.value.answered["node3"], e.value.answered
    with pytest.raises(NoLeader):
        cl.read("k3", endpoint=c.endpoint("node3"), stale=True)


def test_stale_order_skips_damaged_nodes_however_far_they_reach():
    sts = {
        "a": {"name": "n1", "end": 900, "damaged_end": 1000},  # the most log, but cut at recovery
        "b": {"name": "n2", "end": 500, "damaged_end": None},
        "c": {"name": "n3", "end": 700, "damaged_end": 600},  # caught up past its old end: intact again
        "d": None,
    }
    order, skipped = stale_order(sts)
    assert order == ["c", "b"]
    assert set(skipped) == {"n1", "d"} and skipped["n1"].startswith("damaged"), skipped


def test_a_stale_answer_that_carries_its_own_damaged_flag_is_judged_by_it():
    """A node may say in its `get` reply whether its log is damaged (then no status round
    trips are needed); without the flag and without a status taken before the read, the
    answer is not trusted."""
    c = Client(["tcp://127.0.0.1:9"])
    assert c._run(c._damaged({"damaged": True}, "tcp://127.0.0.1:9", None)) is not None
    assert c._run(c._damaged({"damaged": False}, "tcp://127.0.0.1:9", None)) is None
    assert c._run(c._damaged({}, "tcp://127.0.0.1:9", None)) is not None
    assert c._run(c._damaged({}, "tcp://127.0.0.1:9", {"name": "n", "end": 5, "damaged_end": 9})).startswith("damaged")


def test_a_write_without_an_answer_says_its_outcome_is_unknown(make_cluster):
    """The leader wrote the record and waits for followers that never acknowledge: the
    command gets no answer. "Is the cluster running?" alone invited running it again,
    which may write a second copy (a new command is a new request)."""
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2, replication_timeout=3.0)
    c.start_all()
    c.client().set("warm", "up")
    for f in ("node2", "node3"):  # in sync a moment ago, so the leader writes; they never acknowledge
        c.signal(f, signal.SIGSTOP)
    try:
        r = c.zwal("set", "k", "v", "--config", c.config, "--timeout", "2", timeout=60)
    finally:
        for f in ("node2", "node3"):
            c.signal(f, signal.SIGCONT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no answer within 2s" in r.stderr and "the write may or may not have been applied" in r.stderr \
        and "check with 'zwal get k' before running this command again" in r.stderr, r.stderr


def test_a_write_not_acknowledged_by_enough_replicas_says_to_check_before_running_it_again():
    """The node's advice, "retry with the same request id", is for a library client: from
    the command line a new `zwal set` is a new request, and would write a second copy."""
    from daemon.cli.cmd_client import _fail
    from daemon.client.blocking import NotEnoughReplicas

    e = NotEnoughReplicas("not_enough_replicas: ... retry with the same request id",
                          {"written": True, "offset": 83, "epoch": 2})
    msg = str(_fail(e, "user:1"))
    assert "on the leader's disk at offset 83 (epoch 2)" in msg and "may still become committed" in msg, msg
    assert "check with 'zwal get user:1' before running this command again" in msg, msg
    assert "same request id" not in msg
    nothing = NotEnoughReplicas("not_enough_replicas: only 0 follower(s) in sync; nothing was written",
                                {"written": False})
    assert str(_fail(nothing, "user:1")) == str(nothing)  # nothing was written: the node's word stands


@pytest.mark.parametrize("tool", ["dump", "verify", "recover"])
def test_log_tools_refuse_a_missing_path_and_create_nothing(tmp_path, tool):
    import subprocess
    import sys

    from conftest import ROOT

    path = tmp_path / "missing.wal"
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "log", tool, str(path)], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 3, r.stdout + r.stderr  # docs/cli.md: 3 cannot open
    assert "no such file" in r.stderr and "clean" not in r.stdout, r.stdout + r.stderr
    assert not path.exists() and os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_log_append_says_when_it_created_the_log(tmp_path):
    """append may start a log by hand, but says so: a mistyped path is not the log meant."""
    import subprocess
    import sys

    from conftest import ROOT

    path = str(tmp_path / "new.wal")
    run = [sys.executable, "-m", "daemon.cli", "log", "append", path, "set", "k", "v"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert first.returncode == 0 and first.stdout.startswith("offset=0 "), first.stdout + first.stderr
    assert "did not exist; created a new log" in first.stderr, first.stderr
    again = subprocess.run(run, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert again.returncode == 0 and "created" not in again.stderr, again.stderr
