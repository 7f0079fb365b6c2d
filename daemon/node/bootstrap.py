"""How a node starts when it has no node-state.json: pure decisions, plus the marker file.

A node with no state and an empty log is either brand new (its cluster was
just created by `zwal cluster init`) or rebuilt (an operator moved its data
directory aside). The two look the same on its own disk, and only the first
may lead epoch 1: a rebuilt bootstrap node that led epoch 1 again while
another node led epoch 2 acknowledged writes that were all lost, and its
log stopped being a prefix of anyone's (issue 19).

So a first start is explicit. `zwal cluster init` (or `zwal cluster
bootstrap` on the bootstrap node's host) writes a marker, `first-start.json`,
into each node's data directory. A node that finds it starts in the first
state of a new cluster (the bootstrap leader leads epoch 1, the others
follow it there, having voted for it), saves node-state.json, then removes
the marker. A rebuild moves the data directory aside, marker included, so a
rebuilt node never sees one: it starts `joining`, a follower of no one at
epoch 0 that casts no vote, and takes the leader its peers report
(`join_leader`). It may have voted before it was rebuilt, in an epoch it no
longer knows, so it casts no vote until it follows a leader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from daemon.node.identity import FOLLOWER, LEADER, NodeState, StateError
from daemon.wal.writer import fsync_dir, write_full

MARKER = "first-start.json"


@dataclass(frozen=True, slots=True)
class Marker:
    """What cluster init wrote for a node's first start."""

    cluster_id: str
    bootstrap_leader: str


def marker_path(data_dir: str) -> str:
    return os.path.join(data_dir, MARKER)


def write_marker(data_dir: str, cluster_id: str, bootstrap_leader: str) -> str:
    """Durably write the first-start marker into `data_dir` (created if missing); returns its path."""
    os.makedirs(data_dir, exist_ok=True)
    path = marker_path(data_dir)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_full(fd, json.dumps({"cluster_id": cluster_id, "bootstrap_leader": bootstrap_leader}).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.abspath(data_dir))
    return path


def read_marker(data_dir: str) -> Marker | None:
    """The marker in `data_dir`, None if there is none (StateError if it is unreadable)."""
    path = marker_path(data_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        m = json.loads(raw)
        return Marker(str(m["cluster_id"]), str(m["bootstrap_leader"]))
    except Exception as e:
        raise StateError(f"{path}: unreadable first-start marker ({e}); remove it and run "
                         "'zwal cluster bootstrap' again, or remove it to join the cluster as a follower") from None


def remove_marker(data_dir: str) -> None:
    """The first start is done (node-state.json is saved): the marker goes, durably."""
    try:
        os.unlink(marker_path(data_dir))
    except FileNotFoundError:
        return
    fsync_dir(os.path.abspath(data_dir))


@dataclass(frozen=True, slots=True)
class StartFresh:
    """No node-state.json and an empty log: start in `state` (saved before anything else)."""

    state: NodeState
    why: str


@dataclass(frozen=True, slots=True)
class RefuseStart:
    message: str


def fresh_start(*, name: str, bootstrap_leader: str, cluster_id: str, log_empty: bool,
                marker: Marker | None) -> StartFresh | RefuseStart:
    """The state of a node that has no node-state.json (the caller has checked that).

    - a log with records: refuse (its votes and epoch are gone; starting
      afresh could lead or vote as if new);
    - a first-start marker of this cluster: the first state of a new cluster;
    - otherwise `joining` (rebuilt or never initialised): never a leader on
      its own word, whatever `bootstrap_leader` says.
    """
    if not log_empty:
        return RefuseStart("node-state.json is missing but the log holds records: refusing to start afresh "
                           "(it could lead or vote as if new). Restore node-state.json from a backup; or, to "
                           "rebuild this node from its peers, stop it, move its whole data directory aside and "
                           "start it: it joins as a follower of the leader its peers report")
    if marker is not None:
        if cluster_id and marker.cluster_id != cluster_id:
            return RefuseStart(f"the first-start marker is for cluster {marker.cluster_id}, not {cluster_id}: "
                               "it was copied from another cluster; remove it (the node then joins as a follower)")
        if marker.bootstrap_leader != bootstrap_leader:
            return RefuseStart(f"the first-start marker names {marker.bootstrap_leader} as bootstrap leader but the "
                               f"cluster file names {bootstrap_leader}; remove it, or fix the cluster file")
        if name == bootstrap_leader:
            return StartFresh(NodeState(LEADER, 1, name, [(1, 0)], led_epoch=1, voted_for=name),
                              "first start of a new cluster: leading epoch 1")
        # Epoch 1 with the vote cast for the bootstrap leader: a promotion can
        # never also win epoch 1 while the bootstrap leader is down.
        return StartFresh(NodeState(FOLLOWER, 1, bootstrap_leader, [], voted_for=bootstrap_leader),
                          f"first start of a new cluster: following {bootstrap_leader} at epoch 1")
    return StartFresh(NodeState(FOLLOWER, 0, None, [], joining=True),
                      "no node-state.json, an empty log and no first-start marker: joining as a follower of the "
                      "leader the peers report (no vote until then)")


def join_quorum(nodes: int, ack_replicas: int) -> int:
    """How many peers a joining node must hear before it trusts the highest epoch they report.

    It must see the newest promotion's epoch E, or it could follow (and
    acknowledge for) a deposed leader. A promotion fences a majority of the
    N nodes at E, so at most N - 1 - N//2 of the joiner's peers are below E;
    and it fences at least F - K + 1 followers (promote.decide), so at most
    K of them are below E (the deposed leader and K - 1 unfenced followers).
    Hearing one more than either bound sees E.
    """
    return max(1, min(ack_replicas + 1, nodes - nodes // 2))


def join_leader(me: str, statuses: Mapping[str, Mapping[str, Any]], nodes: int,
                ack_replicas: int) -> tuple[int, str] | None:
    """The (epoch, leader) a joining node follows, from its peers' status answers; None: wait.

    Only the highest epoch any answer reports counts, and only a leader of
    exactly that epoch (a node saying it leads it, or a node following it).
    """
    answers = {n: s for n, s in statuses.items() if n != me and isinstance(s.get("epoch"), int)}
    if len(answers) < join_quorum(nodes, ack_replicas):
        return None
    top = max(s["epoch"] for s in answers.values())
    if top < 1:
        return None
    for n, s in sorted(answers.items()):
        if s["epoch"] == top and s.get("role") == LEADER:
            return top, n
    for _, s in sorted(answers.items()):
        leader = s.get("leader")
        if s["epoch"] == top and isinstance(leader, str) and leader != me:
            return top, leader
    return None
