"""Clients and operators: generators that talk to nodes over the simulated network.

An actor is a generator that yields `Call` (one request, one reply or a
timeout: None), `CallAll` (requests in parallel: a list of replies) or
`Sleep`. Clients write with a client id and retry with the same request id
and the same content (`daemon/client/blocking.py`'s Lazy Pirate); the
operator runs the steps of `daemon/failover/promote.py` run_promote with the
real `decide`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator

import msgpack

from daemon.failover import promote as promote_mod
from daemon.wire.client import Err

from daemon.failover.linearizability import Op
from .node import ClientReply, ToClientSock

if TYPE_CHECKING:
    from .cluster import Sim


@dataclass
class Call:
    node: str
    msg: dict[str, Any]
    timeout: float = 0.5


@dataclass
class CallAll:
    calls: list[tuple[str, dict[str, Any]]]
    timeout: float = 0.5


@dataclass
class Sleep:
    seconds: float


Gen = Generator[Any, Any, Any]


class Actor:
    def __init__(self, sim: "Sim", name: str, gen: Gen) -> None:
        self.sim = sim
        self.w = sim.world
        self.name = name
        self.gen = gen
        self.done = False
        self.result: Any = None
        self.token = 0
        self.calls: dict[int, tuple[int, int, dict[str, Any]]] = {}  # call id -> (token, slot, request)
        self.results: list[Any] = []
        self.single = True
        self.w.net.handlers[name] = self.on_net

    def start(self, delay: float = 0.0) -> "Actor":
        self.w.after(delay, self._resume, self.token, None)
        return self

    def _resume(self, token: int, value: Any) -> None:
        if self.done or token != self.token:
            return
        self.token += 1
        try:
            cmd = self.gen.send(value)
        except StopIteration as e:
            self.done = True
            self.result = e.value
            return
        tok = self.token
        if isinstance(cmd, Sleep):
            self.w.after(cmd.seconds, self._resume, tok, None)
            return
        calls = [(cmd.node, cmd.msg)] if isinstance(cmd, Call) else cmd.calls
        self.single = isinstance(cmd, Call)
        self.results = [None] * len(calls)
        self._missing = len(calls)
        for i, (node, msg) in enumerate(calls):
            cid = self.w.next_id()
            self.calls[cid] = (tok, i, msg)
            ident = f"c:{self.name}:{cid}".encode()
            m = ToClientSock(ident, _pack(msg))
            self.w.log(self.name, f"-> {node}", m)
            self.w.net.send(self.name, node, m)
        self.w.after(cmd.timeout, self._timeout, tok)

    def _deliver(self) -> None:
        self._resume(self.token, self.results[0] if self.single else list(self.results))

    def _timeout(self, tok: int) -> None:
        if tok == self.token and not self.done:
            self._deliver()

    def on_net(self, src: str, msg: Any) -> None:
        if not isinstance(msg, ClientReply):
            return
        cid = int(msg.ident.decode().split(":")[2])
        entry = self.calls.get(cid)
        if entry is None:
            return
        tok, slot, req = entry
        reply = msgpack.unpackb(msg.body, raw=False)
        self.w.log(self.name, f"<- {src}", msg)
        if req.get("cid") is not None:
            self.sim.inv.on_reply(req, reply, self.sim.originals.get((req["cid"], req["id"])))
        if tok != self.token or self.results[slot] is not None:
            return  # a late reply
        self.results[slot] = reply
        self._missing -= 1
        if self._missing == 0:
            self._deliver()


def _pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


# -- clients ----------------------------------------------------------------------------


class Client:
    """One client: a write or a read at a time, retried like daemon/client/blocking.py."""

    def __init__(self, sim: "Sim", name: str) -> None:
        self.sim = sim
        self.name = name
        self.cid = name.encode()
        self.rid = 0
        self.target = sim.names[0]
        self.epoch = 0
        self.last_ok: dict[str, Any] | None = None
        self.timeout = 0.4
        self.deadline = 3.0

    def _retarget(self, reply: dict[str, Any] | None) -> None:
        names = self.sim.names
        leader = reply.get("leader") if reply else None
        if leader in names and leader != self.target:
            self.target = leader
        else:
            self.target = names[(names.index(self.target) + 1) % len(names)]

    def _note(self, reply: dict[str, Any] | None) -> None:
        if reply and isinstance(reply.get("epoch"), int):
            self.epoch = max(self.epoch, reply["epoch"])

    def write(self, op: str, key: bytes, value: bytes | None, rid: int | None = None,
              epoch: int | None = None) -> Gen:
        """Returns the final reply (or None); records the op for the checker."""
        sim, w = self.sim, self.sim.world
        if rid is None:
            self.rid += 1
            rid = self.rid
        msg: dict[str, Any] = {"id": rid, "op": op, "key": key, "cid": self.cid,
                               "epoch": self.epoch if epoch is None else epoch}
        if value is not None:
            msg["value"] = value
        sim.originals.setdefault((self.cid, rid), msg)
        invoke = w.now
        maybe = False
        why = ""
        final = last = None
        while w.now < invoke + self.deadline:
            r = yield Call(self.target, msg, self.timeout)
            self._note(r)
            last = r
            if r is None:
                maybe, why = True, "timeout"
                self._retarget(None)
                continue
            if r.get("ok"):
                final = r
                break
            err = r.get("error")
            why = f"{err}: {r.get('message', '')[:60]}"
            if r.get("written") is True:
                maybe = True
            if err == Err.NOT_LEADER:
                self._retarget(r)
                yield Sleep(0.02)
            elif err in Err.RETRYABLE:
                yield Sleep(0.05)
            else:
                final = r
                break
        kind = "set" if op == "set" else "del"
        if final is not None and final.get("ok"):
            sim.inv.history.append(Op(key, kind, value, invoke, w.now, self.name))
            self.last_ok = msg
        elif maybe:
            sim.inv.history.append(Op(key, kind, value, invoke, None, self.name))
        elif final is None or final.get("error") != Err.BAD_REQUEST:
            sim.inv.definite_fail[(self.cid, rid)] = why
        return final if final is not None else last

    def read(self, key: bytes) -> Gen:
        w = self.sim.world
        self.rid += 1
        msg = {"id": self.rid, "op": "get", "key": key, "epoch": self.epoch}
        invoke = w.now
        for _ in range(4):
            r = yield Call(self.target, msg, self.timeout)
            self._note(r)
            if r is None:
                self._retarget(None)
                continue
            if r.get("ok"):
                if r.get("linearizable"):
                    self.sim.inv.history.append(Op(key, "get", r.get("value"), invoke, w.now, self.name))
                elif r.get("stale"):
                    self._retarget({"leader": r.get("leader_endpoint")})
                    continue
                return r
            if r.get("error") == Err.NOT_LEADER:
                self._retarget(r)
            yield Sleep(0.03)
        return None

    def conflicting_retry(self) -> Gen:
        """Repeat the last acknowledged request id with other content: must never get ok."""
        orig = self.last_ok
        if orig is None:
            return None
        msg = dict(orig)
        msg["op"] = "set"
        msg["value"] = b"conflict-" + (orig.get("value") or b"del")
        for _ in range(3):
            r = yield Call(self.target, msg, self.timeout)
            if r is None:
                self._retarget(None)
                continue
            if r.get("error") == Err.NOT_LEADER:
                self._retarget(r)
                continue
            return r
        return None

    def run(self, until: float, keys: list[bytes], think: float = 0.03) -> Gen:
        rng = self.sim.world.rng
        while self.sim.world.now < until:
            yield Sleep(rng.expovariate(1 / think))
            key = rng.choice(keys)
            r = rng.random()
            if r < 0.45:
                self.rid += 1
                yield from self.write("set", key, f"{self.name}.{self.rid}".encode(), self.rid)
            elif r < 0.52:
                yield from self.write("del", key, None)
            elif r < 0.985:
                yield from self.read(key)
            else:
                yield from self.conflicting_retry()


# -- the operator: zwal promote ----------------------------------------------------------------


def watcher(sim: "Sim", until: float) -> Gen:
    """Streams the log with `watch` like Client.watch (from the last `next`, following redirects);
    the stream must be contiguous from 0 (invariant 11)."""
    c = Client(sim, "watcher")
    pos, rid = 0, 0
    while sim.world.now < until:
        rid += 1
        r = yield Call(c.target, {"id": rid, "op": "watch", "from": pos, "max_bytes": 2048, "wait_ms": 200,
                                  "epoch": c.epoch}, 0.6)
        c._note(r)
        if r is None:
            c._retarget(None)
            continue
        if not r.get("ok"):
            if r.get("error") == Err.NOT_LEADER:
                c._retarget(r)
            yield Sleep(0.03)
            continue
        for rec in r["records"]:
            if rec["offset"] != pos:
                sim.inv.fail("watch-stream", f"watch from {pos} got a record at {rec['offset']} (gap or duplicate)")
            pos = rec["end"]
        if r["next"] != pos:
            sim.inv.fail("watch-stream", f"watch reply's next {r['next']} is not {pos}")


def statuses(sim: "Sim", timeout: float = 0.3) -> Gen:
    rs = yield CallAll([(n, {"id": sim.world.next_id(), "op": "status"}) for n in sim.names], timeout)
    return {n: (r["status"] if r and r.get("ok") else None) for n, r in zip(sim.names, rs)}


def promote(sim: "Sim", name: str | None = None, timeout: float = 0.3) -> Gen:
    """daemon/failover/promote.py run_promote: its retry loop (`retrying`) driven here, each
    attempt's steps below with the real `decide`; name None = the most advanced follower."""
    looked = None  # the statuses `name` was chosen from: the first attempt checks those, as it did before
    if name is None:
        looked = yield from statuses(sim, timeout)
        name = promote_mod.most_advanced(looked)
        if name is None:
            return "no follower answers"
    steps = promote_mod.retrying(name, sim.names, timeout, rng=sim.world.rng.random)
    reply: Any = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value.message
        reply = None
        if isinstance(step, promote_mod.Attempt):
            reply = yield from _attempt(sim, name, timeout, step.min_epoch, step.sts or looked)
            looked = None
        elif isinstance(step, promote_mod.Pause):
            yield Sleep(step.seconds)
        elif isinstance(step, promote_mod.ReadStatuses):
            reply = yield from statuses(sim, timeout)
        elif isinstance(step, promote_mod.ReadClock):
            reply = sim.world.now
        elif isinstance(step, promote_mod.Say):
            sim.world.log("op", f"promote {name}: {step.text}")


def _attempt(sim: "Sim", name: str, timeout: float, min_epoch: int,
             sts: dict[str, Any] | None) -> Gen:
    """daemon/failover/promote.py _attempt, step by step: check, fence (the vote), check again,
    promote, repoint. Returns its PromoteResult (the message says what happened)."""
    w = sim.world
    k = sim.cfg.ack_replicas
    PR = promote_mod.PromoteResult
    if sts is None:
        sts = yield from statuses(sim, timeout)
    d = promote_mod.decide(name, sts, k, False)
    if not d.ok:
        return PR(False, name, 0, f"refused: {d.reason}")
    epoch = max(d.epoch, min_epoch)
    sim.inv.max_admin_epoch = max(sim.inv.max_admin_epoch, epoch)
    majority = len(sim.names) // 2 + 1
    fenced = []
    votes: dict[str, str] = {}
    no_vote: set[str] = set()
    for n in [name] + [n for n in sim.names if n != name]:
        if sts.get(n) is None:
            continue
        r = yield Call(n, {"id": w.next_id(), "op": "fence", "args": {"epoch": epoch, "candidate": name}}, timeout)
        if r is None:
            continue
        if not r.get("ok"):
            if isinstance(r.get("voted_for"), str) and r.get("epoch") == epoch:
                votes[n] = r["voted_for"]
            elif r.get("error") == "refused":
                no_vote.add(n)
            continue
        if r.get("voted_for") not in (None, name):
            votes[n] = str(r.get("voted_for"))
            continue
        fenced.append(n)
        votes[n] = name
    if name not in fenced:
        return PR(False, name, epoch, f"{name} could not be fenced for itself at {epoch} (fenced {fenced})",
                  lost_vote=True, votes=votes)
    if len(fenced) < majority:
        return PR(False, name, epoch, f"only {fenced} voted for {name} in epoch {epoch}", lost_vote=True,
                  votes=votes)
    sts2 = yield from statuses(sim, timeout)
    old = promote_mod.deposed_leaders(sts)
    d2 = promote_mod.decide(name, {n: (s if n in fenced else None) for n, s in sts2.items()}, k, False, old,
                            frozenset(no_vote))
    if not d2.ok:
        return PR(False, name, epoch, f"after fencing at {epoch}: {d2.reason}")
    r = yield Call(name, {"id": w.next_id(), "op": "promote",
                          "args": {"epoch": epoch, "end": (sts2.get(name) or {}).get("end", 0)}}, timeout)
    if r is None or not r.get("ok"):
        return PR(False, name, epoch, f"{name} refused promotion to {epoch}: {r}")
    for n in fenced:
        if n != name:
            yield Call(n, {"id": w.next_id(), "op": "follow", "args": {"epoch": epoch, "leader": name}}, timeout)
    return PR(True, name, epoch, f"{name} leads epoch {epoch}")
