"""Retention on real processes: segments below the snapshots go, in order, and nothing acknowledged is lost."""

from __future__ import annotations

import os
import re

from harness import wait_until

from daemon.wal.segments import OLDEST_NOTE, list_segments, read_oldest

SETTINGS = dict(segment_bytes=65536, snapshot_bytes=1048576, retain_bytes=0)


def deleted(c, name: str) -> list[dict]:
    with open(c.node_log(name), errors="replace") as f:
        return [dict(re.findall(r"(\w+)=(\S+)", ln)) for ln in f if "event=segment_deleted" in ln]


def test_sealed_segments_below_the_older_snapshot_go_and_the_cluster_still_serves_everything(make_cluster):
    c = make_cluster(3, ack_replicas=1, **SETTINGS)
    c.start_all()
    cl = c.client()
    value = "x" * 3000
    for i in range(1200):  # ~3.6 MB: three automatic snapshots at 1 MiB intervals on every node
        cl.set(f"k{i % 400}", f"{i}:{value}")
    cl.delete("k7")
    c.wait_converged()
    for n in c.names:
        wait_until(lambda n=n: deleted(c, n), 20, f"{n} to delete old segments")
    for n in c.names:
        ldir = c.log_dir(n)

        def settled(ldir: str = ldir) -> bool:
            # The oldest offset moves first, durably, and the file goes after (KAFKA-16073's order): a
            # deletion seen between the two has the old first segment still on disk (CI, once).
            o = read_oldest(ldir)
            return o is not None and o > 0 and list_segments(ldir)[0][0] == o

        wait_until(settled, 20, f"{n}'s oldest offset and first segment to agree")
        oldest = read_oldest(ldir)
        segs = list_segments(ldir)
        assert oldest is not None and oldest > 0 and segs[0][0] == oldest, (n, oldest, segs[:2])
        snaps = sorted(int(f.split("-")[1]) for f in os.listdir(os.path.join(c.data_dir(n), "snapshots"))
                       if re.fullmatch(r"snapshot-\d{20}", f))
        assert len(snaps) == 2 and oldest <= snaps[0], (n, oldest, snaps)  # bounded by the OLDER kept snapshot
        assert all(int(d["base"]) < oldest for d in deleted(c, n) if "base" in d)
    # The bytes every node still holds are identical where they overlap.
    from daemon.wal.segments import read_all

    logs = {n: (read_oldest(c.log_dir(n)), read_all(c.log_dir(n))) for n in c.names}
    start = max(o for o, _ in logs.values())
    ends = {n: o + len(b) for n, (o, b) in logs.items()}
    assert len(set(ends.values())) == 1, ends
    tails = {n: b[start - o:] for n, (o, b) in logs.items()}
    assert len(set(tails.values())) == 1
    # Every acknowledged write is served, after a restart from a snapshot too.
    want = {f"k{i % 400}": f"{i}:{value}".encode() for i in range(1200)}
    del want["k7"]
    assert c.stop("node1") == 0
    c.start("node1")
    wait_until(lambda: c.leader() is not None, 30, "a leader")
    cl2 = c.client()
    got = {k: cl2.get(k) for k in want}
    assert got == want
    assert cl2.get("k7") is None
    # status reports what retention did (node2 has run since its deletions)
    st = c.status("node2")
    assert st["retention"]["deleted_segments"] == len([d for d in deleted(c, "node2") if "base" in d]) > 0
    assert os.path.exists(os.path.join(c.log_dir("node2"), OLDEST_NOTE))


def test_a_follower_that_was_away_still_finds_what_it_needs(make_cluster):
    """The leader keeps every segment a follower has not acknowledged, in sync or not: node3 is
    down while the leader writes, snapshots and prunes; when it comes back it catches up by fetch."""
    c = make_cluster(3, ack_replicas=1, **SETTINGS)
    c.start_all()
    cl = c.client()
    cl.set("first", "1")
    c.wait_converged()
    away_at = c.status("node3")["end"]
    assert c.stop("node3") == 0
    for i in range(1200):
        cl.set(f"k{i % 400}", "y" * 3000)
    wait_until(lambda: deleted(c, "node2"), 20, "node2 (in sync) to prune by its own snapshots")
    leader_oldest = read_oldest(c.log_dir("node1")) or 0
    assert leader_oldest <= away_at, (leader_oldest, away_at)  # node3's position holds the leader's log
    c.start("node3")
    c.wait_converged(timeout=60)
    with open(c.node_log("node1"), errors="replace") as f:
        assert "fetch_below_oldest_refused" not in f.read()
    assert c.status("node3")["end"] == c.status("node1")["end"]
