"""The invariants the simulator checks, after every step and at the end of a run.

1. acknowledged writes: when a leader sends `ok` for a write, the frame at
   [offset, end) is durable (byte-identical) on at least K+1 nodes; two acks
   never name different frames at one offset; every leader of the acknowledging
   leader's epoch or a later one (once it takes writes) holds it; a follower truncation never
   removes a byte-identical copy of it;
2. logs agree: every byte a leader counted as acknowledged by a follower
   (its fetch offset) equals the leader's own bytes, while that follower is
   still in the leader's epoch;
3. one leader per epoch: every node that leads epoch E, or sends an `ok`
   for a write of epoch E, is the same node;
4. linearizability of each key's ok reads and writes (tests/sim/linearizability.py),
   and a linearizable read is served only from committed state;
5. a retry with other content than the original never gets `ok`;
6. a write all of whose attempts were answered `written: false` is never in a log's committed prefix;
7. no node's epoch is above the highest epoch an operator fenced or promoted at;
8. exactly once: a (cid, id) acknowledged at one offset is never acknowledged at
   another (a retry is answered from the retry window, not written again);
9. once the faults stop, one node leads (a deposed leader steps down by itself); no log bytes go
   to a node whose key the sender revoked; in per-record mode a leader fsyncs each record alone;
10. a node's saved epoch is never below the epoch of records its saved history holds;
11. watch streams only committed records: each record a `watch` reply carries is held
    by K+1 nodes and then counts as acknowledged (1 applies to it: every later leader
    holds it, so a deposed leader's uncommitted tail never appears in a stream), and a
    watcher's stream is contiguous from offset 0 (no gap, no duplicate: workload.watcher).

Liveness (writes resume once the faults stop) is tests/sim/liveness.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.node.kv import KVState
from daemon.wal.format import decode_payload, iter_frames_in, parse_frame
from daemon.wal.reader import scan_buffer

from daemon.failover.linearizability import Op, check
from .world import Violation

if TYPE_CHECKING:
    from daemon.node.leader_core import LeaderCore

    from .cluster import Sim
    from .node import SimNode


@dataclass(frozen=True)
class Ack:
    offset: int
    end: int
    epoch: int
    frame: bytes
    node: str
    at: float
    lead: int  # the epoch of the leader that gave the ack (a retry of an older record is acked later)


def pristine(node: "SimNode", a: int, b: int, cache: bool = False) -> bytes:
    """Durable (or cached) bytes [a, b) of a node with injected flips undone."""
    d = node.disk
    out = bytes((d.cache if cache else d.durable)[a:b])
    if d.flips and any(a <= p < b for p in d.flips):
        buf = bytearray(out)
        for p, m in d.flips.items():
            if a <= p < b and p - a < len(buf):
                buf[p - a] ^= m
        out = bytes(buf)
    return out


class Invariants:
    def __init__(self, sim: "Sim") -> None:
        self.sim = sim
        self.acks: dict[int, Ack] = {}  # offset -> the acknowledged frame there
        self.ack_list: list[Ack] = []
        self.epoch_owner: dict[int, str] = {}
        self.max_admin_epoch = 1
        self.history: list[Op] = []
        self.definite_fail: dict[tuple[bytes, int], str] = {}
        self._leader_seen: dict[int, tuple[int, int]] = {}  # id(role) -> (disk version, acks checked)
        self._agree_seen: dict[tuple[int, str], tuple[int, int, int]] = {}
        self.acked_at: dict[tuple[bytes, int], tuple[int, str]] = {}  # (cid, id) -> (offset, who said so)

    def fail(self, invariant: str, message: str) -> None:
        raise Violation(invariant, message)

    # -- hooks called by the glue ------------------------------------------------------

    def note_leader(self, epoch: int, name: str) -> None:
        owner = self.epoch_owner.setdefault(epoch, name)
        if owner != name:
            self.fail("one-leader-per-epoch", f"{name} leads epoch {epoch}, which {owner} led before")

    def on_write_ack(self, node: "SimNode", m: dict[str, Any]) -> None:
        off, end, epoch = m["offset"], m["end"], m["epoch"]
        # `epoch` is the record's; a retry of an older record is answered by a later leader.
        lead = node.role.core.epoch if node.state.role == "leader" else None  # type: ignore[union-attr]
        if lead is None or epoch > lead:
            self.fail("one-leader-per-epoch", f"{node.name} ({node.state.role}, epoch {node.state.epoch}) "
                                              f"acknowledged a write of epoch {epoch}")
        self.note_leader(lead, node.name)
        frame = pristine(node, off, end, cache=True)
        status, f = parse_frame(frame, 0)
        if f is None or f.size != len(frame) or f.epoch != epoch:
            self.fail("acked-write", f"{node.name} acknowledged [{off},{end}) epoch {epoch} but its log holds "
                                     f"no such frame there ({status})")
        prev = self.acks.get(off)
        if prev is not None:
            if prev.frame != frame:
                self.fail("acked-write", f"offset {off} acknowledged twice with different records: epoch "
                                         f"{prev.epoch} by {prev.node} at {prev.at:.4f}, epoch {epoch} by {node.name}")
            return
        k = self.sim.cfg.ack_replicas
        # A holder is a node with the frame durable now, or one that had it
        # durable until an injected bit flip destroyed it (a fault after its
        # acknowledgement, which no protocol can undo: it only costs a copy).
        holders = [n.name for n in self.sim.nodes.values()
                   if pristine(n, off, end) == frame or any(
                       o <= off and data[off - o:end - o] == frame for o, data in n.disk.destroyed)]
        if len(holders) < k + 1:
            self.fail("acked-write", f"{node.name} acknowledged [{off},{end}) epoch {epoch} while only "
                                     f"{holders} hold it durably (K+1 = {k + 1} needed)")
        a = Ack(off, end, epoch, frame, node.name, self.sim.world.now, lead)
        self.acks[off] = a
        self.ack_list.append(a)

    def on_recovered(self, node: "SimNode", kv: "KVState", snapshot: int, buf: bytes) -> None:
        """A node's state after recovery from a snapshot and the log's tail is the state a full replay gives."""
        if snapshot == 0:
            return
        self.sim.stats["snapshot_recoveries"] += 1
        full = KVState(node.cfg.retry_window_seconds)
        scan_buffer(buf, on_frame=full.apply_frame)
        if kv_state(kv) != kv_state(full):
            self.fail("snapshot-recovery", f"{node.name}: the state recovered from the snapshot at {snapshot} and "
                      f"the log's tail differs from a full replay of its log ({kv.records} vs {full.records} "
                      f"records, {len(kv.data)} vs {len(full.data)} keys, window {kv.window.bytes} vs "
                      f"{full.window.bytes} bytes)")

    def on_retire(self, node: "SimNode", upto: int) -> None:
        """Retention deletes only below a durable snapshot the node keeps (the older of its two)."""
        self.sim.stats["retirements"] += 1
        kept = sorted(node.snapshot_files.files)[-2:]
        if not kept or upto > min(kept):
            self.fail("retention", f"{node.name} deletes its log below {upto}, but its kept snapshots are at "
                                   f"{kept}: a restart could not rebuild its state")
    def on_streamed(self, node: "SimNode", m: dict[str, Any]) -> None:
        for r in m["records"]:
            if r["end"] > node.role.core.commit:  # type: ignore[union-attr]
                self.fail("watch-committed", f"{node.name} streamed [{r['offset']},{r['end']}) past its commit "
                                             f"point {node.role.core.commit}")  # type: ignore[union-attr]
            self.on_write_ack(node, {"offset": r["offset"], "end": r["end"], "epoch": r["epoch"]})

    def on_truncate(self, node: "SimNode", offset: int) -> None:
        for a in self.ack_list:
            if a.end > offset and pristine(node, a.offset, a.end) == a.frame:
                self.fail("acked-write", f"{node.name} truncates its log to {offset}, removing its copy of the "
                                         f"acknowledged record [{a.offset},{a.end}) of epoch {a.epoch}")

    def on_cut(self, node: "SimNode", offset: int) -> None:
        """Recovery cut a torn tail: only bytes that fail their checks may go."""
        for a in self.ack_list:
            if a.end > offset and bytes(node.disk.durable[a.offset:a.end]) == a.frame:
                self.fail("acked-write", f"{node.name}'s recovery cut an intact acknowledged record "
                                         f"[{a.offset},{a.end})")

    def on_fresh_read(self, node: "SimNode", core: "LeaderCore") -> None:
        if node.kv.end > core.commit:
            self.fail("linearizable-read", f"{node.name} serves a linearizable read from state at {node.kv.end} "
                                           f"beyond its commit point {core.commit}")

    def on_reply(self, sent: dict[str, Any], reply: dict[str, Any], original: dict[str, Any] | None) -> None:
        if reply.get("ok") and isinstance(reply.get("offset"), int) and "found" not in reply:
            self._exactly_once(sent, reply)
        if original is None or not reply.get("ok"):
            return
        same = all(sent.get(k) == original.get(k) for k in ("op", "key", "value"))
        if not same:
            self.fail("retry-content", f"a retry of (cid={sent.get('cid')!r}, id={sent.get('id')}) with other "
                                       f"content {sent.get('op')} {sent.get('key')!r}={sent.get('value')!r} "
                                       f"got ok: {reply}")

    def _exactly_once(self, sent: dict[str, Any], reply: dict[str, Any]) -> None:
        key = (sent.get("cid"), sent.get("id"))
        if key[0] is None:
            return
        now = self.sim.world.now
        first = self.acked_at.setdefault(key, (reply["offset"], f"epoch {reply.get('epoch')} at {now:.4f}"))  # type: ignore[arg-type]
        if first[0] != reply["offset"]:
            self.fail("exactly-once", f"(cid={key[0]!r}, id={key[1]}) was acknowledged at offset {first[0]} "
                                      f"({first[1]}) and again at offset {reply['offset']} (epoch "
                                      f"{reply.get('epoch')} at {now:.4f}): the retry was written twice")

    # -- after every step -------------------------------------------------------------

    def check_step(self) -> None:
        sim = self.sim
        for n in sim.nodes.values():
            if n.state.epoch > self.max_admin_epoch or n.stored.epoch > self.max_admin_epoch:
                self.fail("epoch-hint", f"{n.name} is at epoch {n.state.epoch}, above any epoch an operator set "
                                        f"({self.max_admin_epoch})")
            h = n.stored.history
            if h and h[-1][0] > n.stored.epoch:
                self.fail("epoch-saved-first", f"{n.name}'s saved state holds records of epoch {h[-1][0]} but "
                                               f"its saved epoch is {n.stored.epoch}: it took data of an epoch "
                                               "before saving it")
            if not n.up or n.role is None or n.state.role != "leader":
                continue
            core = n.role.core  # type: ignore[union-attr]
            self.note_leader(core.epoch, n.name)
            if core.confirming is not None:
                continue
            self._leader_holds_acks(n, core)
            self._followers_agree(n, core)

    def _leader_holds_acks(self, n: "SimNode", core: "LeaderCore") -> None:
        key = id(n.role)
        version, done = self._leader_seen.get(key, (-1, 0))
        if version != n.disk.version:
            done = 0
        lied = getattr(n.disk, "lied", ())  # faults.LyingDisk: bytes it said were durable and lost
        for a in self.ack_list[done:]:
            if lied and any(o < a.end and a.offset < o + len(b) for o, b in lied):
                continue  # the leader cannot know; harm shows as a second ack, a truncation or a stale read
            if a.lead <= core.epoch and pristine(n, a.offset, a.end) != a.frame:
                self.fail("acked-write", f"{n.name} leads epoch {core.epoch} without the record acknowledged by "
                                         f"{a.node} at {a.at:.4f}: [{a.offset},{a.end}) epoch {a.epoch}")
        self._leader_seen[key] = (n.disk.version, len(self.ack_list))

    def _followers_agree(self, n: "SimNode", core: "LeaderCore") -> None:
        for f in core.followers.values():
            if f.acked == 0:
                continue
            m = self.sim.nodes[f.name]
            if m.stored.epoch != core.epoch:
                continue
            key = (id(n.role), f.name)
            sig = (n.disk.version, m.disk.version, f.acked)
            if self._agree_seen.get(key) == sig:
                continue
            self._agree_seen[key] = sig
            # Not past the follower's valid end: bytes its recovery cut since
            # (a damaged tail, now marked by damaged_end: no copy) are no claim.
            upto = min(f.acked, len(m.disk.durable), m.end)
            if pristine(m, 0, upto) != pristine(n, 0, upto):
                a, b = pristine(m, 0, upto), pristine(n, 0, upto)
                i = next(i for i in range(upto) if a[i] != b[i])
                lied = getattr(m.disk, "lied", ())  # faults.LyingDisk: the follower's ack was a lie of its disk
                if lied and i >= min(o for o, _ in lied):
                    continue
                self.fail("logs-agree", f"{f.name} acknowledged up to {f.acked} to {n.name} (epoch {core.epoch}) "
                                        f"but their logs differ at byte {i}")

    # -- at the end ---------------------------------------------------------------------

    def check_end(self) -> None:
        v = check(self.history)
        if not v.ok:
            self.fail("linearizable", v.message)
        sim = self.sim
        leading = sorted((n.state.epoch, n.name) for n in sim.nodes.values()
                         if n.up and n.role is not None and n.state.role == "leader")
        if len(leading) > 1:
            # Faults stopped seconds ago: a deposed leader hears of the newer
            # epoch from its peers within a few probe intervals.
            self.fail("one-leader-after-heal", f"after the faults stopped, {leading} all still lead")
        for n in sim.nodes.values():
            if not (n.up and n.role is not None and n.state.role == "leader"):
                continue
            core = n.role.core  # type: ignore[union-attr]
            for f in iter_frames_in(bytes(n.disk.cache[:core.commit])):
                rec = decode_payload(f.payload)
                why = self.definite_fail.get((rec.client_id, rec.request_id))  # type: ignore[arg-type]
                if why is not None:
                    self.fail("written-false", f"({rec.client_id!r}, {rec.request_id}) is committed at {f.offset} "
                                               f"on {n.name}, but every attempt was told written: false ({why})")


def kv_state(kv: "KVState") -> tuple[Any, ...]:
    """Everything replay rebuilds, comparable."""
    w = kv.window
    clients = [(cid, c.ts, list(c.ids.items())) for cid, c in w._by_client.items()]
    return (kv.data, kv.records, kv.end, kv.last, kv.epoch_starts, w.clock, w._first, w.bytes, clients)
