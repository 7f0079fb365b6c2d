"""Asking the other nodes who leads, without blocking the role loop.

A leader uses this to learn that a newer epoch exists (it was paused or
partitioned during a promotion) and steps down; a follower uses it to find
the current leader after it missed a `follow`. `PeerView` is the pure part,
shared by both roles and the simulator: which statuses count, and what they
say. `PeerProbe` is its ZeroMQ port: one DEALER per peer, status requests
sent on a timer, replies read when the poller says so.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import zmq

from daemon.config import NodeConfig


class PeerView:
    """The latest status each peer reported, as far as it can be believed."""

    def __init__(self, names: set[str], cluster_id: str = "") -> None:
        self.names = names  # every node of the cluster
        self.cluster_id = cluster_id  # a peer of another cluster answers wrong_cluster: its epoch is never heard
        self.latest: dict[str, dict[str, Any]] = {}

    def heard(self, peer: str, body: bytes) -> bool:
        """A status reply from `peer`; malformed or foreign ones are ignored (False)."""
        try:
            m = msgpack.unpackb(body, raw=False)
            st = m["status"]
            if self.cluster_id and st.get("cluster_id") not in (None, "", self.cluster_id):
                return False  # another cluster's node: its epochs are not ours
            if st.get("leader") is not None and st["leader"] not in self.names:
                return False  # names a leader that is not one of our nodes
            if isinstance(st.get("epoch"), int) and isinstance(st.get("role"), str):
                self.latest[peer] = st
                return True
        except Exception:
            pass
        return False

    def newer_epoch(self, epoch: int) -> tuple[int, str | None] | None:
        """The highest epoch above `epoch` any peer reported, and its leader."""
        best: tuple[int, str | None] | None = None
        for name, st in self.latest.items():
            e = st["epoch"]
            if e > epoch and (best is None or e > best[0]):
                leader = name if st["role"] == "leader" else st.get("leader")
                best = (e, leader)
            elif best is not None and e == best[0] and st["role"] == "leader":
                best = (e, name)
        return best

    def leader_at(self, epoch: int, exact: bool = False) -> str | None:
        """A peer that says it leads `epoch` (or, unless `exact`, a later one)."""
        for name, st in self.latest.items():
            if st["role"] == "leader" and (st["epoch"] == epoch if exact else st["epoch"] >= epoch):
                return name
        return None


def status_probe(msg_id: int, my_epoch: int, cluster_id: str) -> bytes:
    msg: dict[str, Any] = {"id": msg_id, "op": "status", "epoch": my_epoch}
    if cluster_id:
        msg["cluster"] = cluster_id
    return msgpack.packb(msg)


class PeerProbe:
    def __init__(self, ctx: zmq.Context, peers: list[NodeConfig], interval: float, creds: Any = None,
                 cluster_id: str = "", names: set[str] | None = None) -> None:
        self.interval = interval
        self.cluster_id = cluster_id
        self.view = PeerView(names if names is not None else {p.name for p in peers}, cluster_id)
        self.next_at = 0.0
        self._ids = itertools.count(1)
        self.socks: dict[zmq.Socket, NodeConfig] = {}
        for p in peers:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 4)
            s.setsockopt(zmq.RCVHWM, 16)
            s.setsockopt(zmq.IMMEDIATE, 1)  # never queue probes for a peer that is down
            s.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
            if creds is not None:
                creds.apply(s, p.client_endpoint)
            s.connect(p.client_endpoint)
            self.socks[s] = p

    def ask_now(self) -> None:
        self.next_at = 0.0

    def maybe_send(self, now: float, my_epoch: int) -> None:
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        body = status_probe(next(self._ids), my_epoch, self.cluster_id)
        for s in self.socks:
            try:
                s.send(body, zmq.NOBLOCK)
            except zmq.Again:
                pass

    def read(self, sock: zmq.Socket) -> int:
        """Take the statuses that arrived on sock; how many counted."""
        n = 0
        while True:
            try:
                body = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += self.view.heard(self.socks[sock].name, body)

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=0)
        self.socks.clear()
