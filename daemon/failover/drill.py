"""`zwal drill`: prove on a running cluster that failover loses nothing acknowledged.

Each round: load from several clients with a ledger of every acknowledged
write; SIGKILL the leader; promote the most advanced follower; let the
supervisor restart the old node so it rejoins; wait for convergence; then
check the ledger against the new leader (by offset in its log and by `get`)
and compare every log byte for byte.
"""

from __future__ import annotations

import glob
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from daemon.client.blocking import Client, ZwalError
from daemon.config import ClusterConfig
from daemon.failover.linearizability import Op, Verdict, check
from daemon.failover.promote import most_advanced, operator_creds, promotable, run_promote, statuses_of
from daemon.wal import CLEAN
from daemon.wal.format import header_size
from daemon.wal.reader import LogOpenError
from daemon.wal.segments import iter_log_frames as iter_frames, locate, log_size, scan_log as scan_path
from daemon.wal.segments import log_files


@dataclass
class Ack:
    key: bytes
    value: bytes
    offset: int
    epoch: int
    invoked: float = 0.0  # monotonic: when the client sent it ...
    done: float = 0.0  # ... and when it read the `ok`


@dataclass
class Ledger:
    """Every write a client sent, and what it was told; and the history of
    every operation with its invoke and reply times, for the linearizability
    check of reads (daemon/failover/linearizability.py)."""

    acked: list[Ack] = field(default_factory=list)
    unacked: list[tuple[bytes, bytes, str]] = field(default_factory=list)
    history: list[Op] = field(default_factory=list)
    reads: int = 0  # fresh reads recorded in the history
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, a: Ack) -> None:
        with self.lock:
            self.acked.append(a)

    def fail(self, key: bytes, value: bytes, why: str) -> None:
        with self.lock:
            self.unacked.append((key, value, why))

    def op(self, o: Op) -> None:
        with self.lock:
            self.history.append(o)
            if o.kind == "get":
                self.reads += 1


def check_reads(ledger: Ledger) -> Verdict:
    """Could every fresh read and every write have happened on one copy, in real time?

    A read answered `stale: false` with a value some later write had already
    replaced, or a value no write gave, fails this. Failed writes are
    indeterminate (they may or may not have taken effect)."""
    with ledger.lock:
        history = list(ledger.history)
    return check(history)


@dataclass
class Check:
    """The verdict of one round, computed from the ledger and the logs (pure)."""

    acked: int
    lost: list[str]
    unacked_present: int
    unacked_absent: int
    duplicated: list[bytes] = field(default_factory=list)


def check_ledger(ledger: Ledger, log_records: dict[int, tuple[bytes, bytes | None]],
                 read: Callable[[bytes], bytes | None]) -> Check:
    """Every acknowledged write must sit at its offset, once, and be readable."""
    lost = []
    seen: dict[tuple[bytes, bytes | None], int] = {}
    final: dict[bytes, bytes | None] = {}
    for off in sorted(log_records):
        k, v = log_records[off]
        seen[(k, v)] = seen.get((k, v), 0) + 1
        final[k] = v
    # Every drill write has a unique value: a (key, value) twice in the log is
    # a retry that was appended again instead of answered from the retry window.
    duplicated = [k for (k, _), n in seen.items() if n > 1 and k.startswith(b"drill-")]
    checked: dict[bytes, bytes | None] = {}
    for a in ledger.acked:
        rec = log_records.get(a.offset)
        if rec != (a.key, a.value):
            lost.append(f"{a.key!r} acknowledged at offset {a.offset} (epoch {a.epoch}) but the log has {rec!r} there")
            continue
        if a.key not in checked:
            checked[a.key] = read(a.key)
        got = checked[a.key]
        if got != final[a.key]:
            lost.append(f"{a.key!r} is in the log at {a.offset} but get returns {got!r}, "
                        f"not the last value the log holds for it ({final[a.key]!r})")
    present = sum(1 for k, v, _ in ledger.unacked if (k, v) in seen)
    return Check(len(ledger.acked), lost, present, len(ledger.unacked) - present, duplicated)


def check_leaders(acked: list[Ack]) -> list[str]:
    """No two leaders acknowledged writes at overlapping times (pure).

    An old leader's lease ends before a newer epoch exists, so every write it
    acknowledged was decided before the newer leader's first `ok`. A write
    acknowledged in epoch e that the client sent only after it had read an
    `ok` of a later epoch e' was decided while both led: that is the
    violation. (A reply of epoch e that arrives late is not: it may have been
    decided before the pause that delayed it.)"""
    first_done: dict[int, Ack] = {}
    last_sent: dict[int, Ack] = {}
    for a in acked:
        if a.epoch not in first_done or a.done < first_done[a.epoch].done:
            first_done[a.epoch] = a
        if a.epoch not in last_sent or a.invoked > last_sent[a.epoch].invoked:
            last_sent[a.epoch] = a
    out = []
    epochs = sorted(first_done)
    for i, e in enumerate(epochs):
        for later in epochs[i + 1:]:
            a, b = last_sent[e], first_done[later]
            if a.invoked > b.done:
                out.append(f"epoch {e} acknowledged {a.key!r} (sent {a.invoked - b.done:.3f} s after epoch {later} "
                           f"had acknowledged {b.key!r}): two leaders at once")
    return out


def first_ack_after(ledger: Ledger, t_fault: float, old_epoch: int, restarted: bool = True) -> float | None:
    """Seconds from the fault to the first write acknowledged by the leadership after it: of a newer epoch,
    or, when the fault ended the old leader's process (`restarted`), of the old epoch but sent after the
    fault (its node restarted and kept its lease). A leader cut off from its followers or from etcd is the
    same process: what it still acknowledges of its epoch is the old leadership, not the next one."""
    with ledger.lock:
        dones = [a.done for a in ledger.acked
                 if a.done > t_fault and (a.epoch > old_epoch or (restarted and a.epoch == old_epoch
                                                                  and a.invoked > t_fault))]
    return min(dones) - t_fault if dones else None


class Load:
    """Clients writing unique keys until stopped, recording every answer."""

    def __init__(self, cfg: ClusterConfig | list[str], clients: int, tag: str, ledger: Ledger, *,
                 read_share: float = 0.3, registers: int = 8, deadline: float = 20.0, creds: Any = None) -> None:
        self.endpoints = cfg if isinstance(cfg, list) else [n.client_endpoint for n in cfg.nodes]
        if creds is None and not isinstance(cfg, list):
            from daemon.auth.creds import for_config

            creds = for_config(cfg, "client")
        self.creds = creds
        self.read_share = read_share
        self.registers = registers
        self.deadline = deadline
        self.n = clients
        self.tag = tag
        self.ledger = ledger
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        # One reader pinned to each node: it keeps asking that node, whatever
        # happens, so a deposed leader that still answered `stale: false`
        # would be caught (followers answer `stale: true`, which is not checked).
        self.threads += [threading.Thread(target=self._pinned, args=(ep, j), daemon=True)
                         for j, ep in enumerate(self.endpoints)]
        self.sent = 0

    def _run(self, i: int) -> None:
        c = Client(self.endpoints, timeout=1.0, deadline=self.deadline, creds=self.creds)
        rng = random.Random(f"{self.tag}-{i}")
        seq = 0
        try:
            while not self.stop.is_set():
                seq += 1
                value = f"c{i}-{seq}-{os.urandom(4).hex()}".encode()  # unique: the ledger matches on it
                pick = rng.random()
                if pick < self.read_share:
                    self._get(c, f"drill-{self.tag}-r{rng.randrange(self.registers)}".encode(), i)
                    continue
                if pick < self.read_share + (1 - self.read_share) / 2:
                    key = f"drill-{self.tag}-r{rng.randrange(self.registers)}".encode()  # a shared register
                else:
                    key = f"drill-{self.tag}-c{i}-{seq}".encode()
                self.sent += 1
                t0 = time.monotonic()
                try:
                    r = c.set(key, value)
                    t1 = time.monotonic()
                    self.ledger.ok(Ack(key, value, r.offset, r.epoch, t0, t1))
                    self.ledger.op(Op(key, "set", value, t0, t1, f"c{i}"))
                except ZwalError as e:
                    self.ledger.fail(key, value, e.code)
                    # It may still take effect (a timeout, too few replicas yet): indeterminate.
                    self.ledger.op(Op(key, "set", value, t0, None, f"c{i}"))
                    c.close()  # the next request starts on the next node
        finally:
            c.close()

    def _get(self, c: Client, key: bytes, i: int | str, endpoint: str | None = None) -> None:
        t0 = time.monotonic()
        try:
            r = c.read(key, endpoint=endpoint, stale=endpoint is not None)  # a pinned follower answers stale
        except ZwalError:
            c.close()
            return  # a failed read says nothing
        if r.linearizable:  # the reply claims freshness: the check holds it to that
            self.ledger.op(Op(key, "get", r.value, t0, time.monotonic(), f"c{i}"))

    def _pinned(self, endpoint: str, j: int) -> None:
        c = Client([endpoint], timeout=1.0, deadline=1.0, creds=self.creds)
        rng = random.Random(f"{self.tag}-p{j}")
        try:
            while not self.stop.is_set():
                self._get(c, f"drill-{self.tag}-r{rng.randrange(self.registers)}".encode(), f"p{j}", endpoint)
                time.sleep(0.002)
        finally:
            c.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def first_offset(path: str) -> int:
    """The first offset a node's log holds (above 0 after a snapshot install or retention)."""
    return log_files(path)[0][0]


def sha256_file(path: str, start: int = 0) -> str:
    """Digest of the log's bytes from offset `start` on: how replicas are compared byte for byte.

    A node rebuilt from the leader's snapshot holds no log below the
    snapshot's offset, so logs are compared from the highest first offset."""
    h = hashlib.sha256()
    for base, p in log_files(path):
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if base + size <= start:
                continue
            f.seek(max(0, start - base))
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def log_records(path: str) -> dict[int, tuple[bytes, bytes | None]]:
    return {f.offset: (r.key, r.value) for f in iter_frames(path) for r in [f.record()]}


@dataclass
class RoundReport:
    round: int
    old_leader: str
    new_leader: str
    epoch: int
    check: Check
    promote_s: float
    converge_s: float
    logs_identical: bool
    logs_clean: bool
    errors: dict[str, int]
    fault: str = "kill"
    reads: int = 0
    verdict: Verdict = field(default_factory=lambda: Verdict(ok=True))
    # Did the cluster recover with no operator action (the drill's promotions
    # are one), and how long from the fault until it had: for rebuild, the
    # rebuilt node byte-identical again; for damage, a leader accepting writes.
    healed_by_itself: bool = False
    heal_s: float = 0.0
    heal_note: str = ""
    injected: dict[str, Any] = field(default_factory=dict)  # what the fault did, for the record
    overlaps: list[str] = field(default_factory=list)  # check_leaders: two leaders acknowledging at once
    auto: bool = False  # the cluster elected its leader itself (etcd); the drill promoted nobody

    def passed(self, k: int) -> bool:
        return not self.failures(k)

    def failures(self, k: int) -> list[str]:
        """Which checks this round failed (empty when it passed)."""
        why = []
        if not self.logs_identical:
            why.append("logs not byte-identical")
        if not self.logs_clean:
            why.append("a log does not verify")
        if self.check.duplicated:
            why.append(f"{len(self.check.duplicated)} write(s) recorded twice")
        if self.check.lost and k != 0:
            why.append(f"{len(self.check.lost)} acknowledged write(s) lost")
        if not self.verdict.ok and k != 0:
            why.append("reads not linearizable")
        if self.overlaps:
            why.append(f"two leaders acknowledged writes at overlapping times ({len(self.overlaps)})")
        if (self.fault in SELF_HEALING or self.auto) and not self.healed_by_itself:
            why.append(f"did not heal by itself ({self.heal_note})")
        return why

    def text(self) -> str:
        c = self.check
        what = {"kill": "killed (SIGKILL)", "pause": "paused (SIGSTOP, then SIGCONT after the promotion)",
                "partition": "cut off from its followers (then healed)",
                "etcd": "cut off from etcd (then healed)",
                "disk": "stopped by its failing disk (then given room)"}.get(self.fault, self.fault)
        if self.auto:
            what = what.replace("the promotion", "the election")
        if self.fault == "rebuild":
            head = (f"round {self.round}: {self.injected.get('node')} rebuilt from its peers (data directory moved "
                    f"to {self.injected.get('moved_to')}) under load; {self.new_leader} leads epoch {self.epoch}")
        elif self.fault == "damage":
            head = (f"round {self.round}: leader {self.old_leader} stopped, {self.injected.get('bytes')} byte(s) "
                    f"flipped in its last record (offset {self.injected.get('record_offset')}), restarted; "
                    + (f"{self.new_leader} leads epoch {self.epoch}" if self.healed_by_itself else "no promotion"))
        elif self.auto:
            head = (f"round {self.round}: leader {self.old_leader} {what}, {self.new_leader} leads epoch "
                    f"{self.epoch} ({self.heal_note})")
        else:
            head = f"round {self.round}: leader {self.old_leader} {what}, {self.new_leader} promoted to epoch {self.epoch}"
        healed = (f"yes, in {self.heal_s:.2f} s" if self.healed_by_itself else "NO") + (
            f" ({self.heal_note})" if self.heal_note else "")
        lines = [
            head,
            f"  healed by itself:               {healed}",
            f"  writes acknowledged:            {c.acked}",
            f"  acknowledged but lost:          {len(c.lost)}",
            f"  unacknowledged but present:     {c.unacked_present}",
            f"  unacknowledged and absent:      {c.unacked_absent}",
            f"  written twice (retry dupes):    {len(c.duplicated)}",
            f"  time to elect:                  {self.promote_s:.2f} s (fault -> new leader accepts writes)"
            if self.auto else
            f"  time to promote:                {self.promote_s:.2f} s (fault -> new leader accepts writes)"
            if self.fault not in SELF_HEALING else "  time to promote:                - (the drill promotes nobody in this mode)",
            f"  time to converge:               {self.converge_s:.2f} s "
            + ("(election -> all logs identical)" if self.auto else "(promotion -> all logs identical)"
               if self.fault not in SELF_HEALING else "(healed -> all logs identical)"),
            f"  logs byte-identical:            {'yes' if self.logs_identical else 'NO'}",
            f"  logs verify clean:              {'yes' if self.logs_clean else 'NO'}",
            f"  client errors seen (retried):   {self.errors or 'none'}",
            f"  fresh reads checked:            {self.reads}",
            "  reads and writes linearizable:  "
            + ("yes" if self.verdict.ok and not self.verdict.unknown else
               "undecided (search budget ran out)" if self.verdict.ok else "NO"),
            f"  one leader at a time:           {'NO' if self.overlaps else 'yes'}",
        ]
        lines.extend(f"  OVERLAP: {x}" for x in self.overlaps[:5])
        lines.extend(f"  LOST: {x}" for x in c.lost[:20])
        if not self.verdict.ok:
            lines.append("  NOT LINEARIZABLE: " + self.verdict.message.replace("\n", "\n    "))
        return "\n".join(lines)


FAULTS = ("kill", "pause", "partition", "disk", "rebuild", "damage", "etcd")
# Faults that stop a node and change its files before it starts again: the
# drill must be its supervisor, so they run on a scratch cluster.
NEEDS_SCRATCH = ("partition", "disk", "rebuild", "damage", "etcd")
NEEDS_ROOT = ("partition", "disk", "etcd")
SOAK_FAULTS = ("kill", "pause", "partition", "disk")
# The faults `zwal drill --auto` causes on a cluster that fails over through etcd (it promotes nobody).
AUTO_FAULTS = ("kill", "pause", "partition", "etcd")
AUTO_ONLY = ("etcd",)  # a fault only automatic failover has: the leader cut off from etcd
# Faults after which the cluster must recover with no operator action: the drill only watches.
SELF_HEALING = ("rebuild", "damage")


@dataclass
class Promoted:
    ok: bool
    name: str
    epoch: int
    message: str


class Drill:
    """Rounds of: load, a fault on the leader, promotion, heal, convergence, verdict.

    Faults: `kill` (SIGKILL; the supervisor restarts the node), `pause`
    (SIGSTOP until after the promotion, then SIGCONT: the old leader wakes up
    deposed), `partition` (the leader cut off from its followers while
    clients still reach it; the operator promotes from a follower's side)
    and `disk` (the leader's disk fills and fails under load; it is given
    room again after the promotion). The last two need a scratch cluster
    (daemon/failover/faults/scratch.py) built by the caller.
    """

    def __init__(self, cfg: ClusterConfig, *, clients: int = 4, load_seconds: float = 3.0,
                 timeout: float = 60.0, say: Callable[[str], None] = print, scratch: Any = None,
                 auto: bool = False) -> None:
        if cfg.ack_replicas == 0:
            # Every promotion would be refused (run_promote needs --force with K = 0), so a
            # round could only retry until its timeout: refuse up front, with the reason.
            raise DrillError(f"{cfg.path}: ack_replicas = 0: no follower is guaranteed to hold every acknowledged "
                             "write, so promotion is refused without --force and the drill cannot pass; set "
                             "ack_replicas to 1 or more")
        if auto and cfg.coordinator.kind != "etcd":
            raise DrillError(f"{cfg.path}: --auto drills automatic failover, which needs [coordinator] kind = "
                             f"\"etcd\" (this cluster's is {cfg.coordinator.kind!r}: failover is by 'zwal promote'); "
                             "leave out --auto, or set up a cluster with 'zwal cluster init DIR --coordinator etcd'")
        self.auto = auto
        self.cfg = cfg
        self.clients = clients
        self.load_seconds = load_seconds
        self.timeout = timeout
        self.say = say
        self.scratch = scratch

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        return statuses_of(self.cfg, 1.0)

    def wait(self, cond: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        end = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < end:
            v = cond()
            if v:
                return v
            time.sleep(0.1)
        raise DrillError(f"timed out waiting for {what}")

    def healthy(self) -> str | None:
        """The leader's name once every node answers and exactly one leads."""
        got = self.statuses()
        sts = {n: s for n, s in got.items() if s is not None}
        if len(sts) != len(got):
            return None
        leaders = [n for n, s in sts.items() if s["role"] == "leader"]
        top = max(s["epoch"] for s in sts.values())
        if len(leaders) != 1 or sts[leaders[0]]["epoch"] != top:
            return None
        return leaders[0]

    def converged(self) -> bool:
        got = self.statuses()
        sts = {n: s for n, s in got.items() if s is not None}
        if len(sts) != len(got):
            return False
        ends = {s["end"] for s in sts.values()}
        epochs = {s["epoch"] for s in sts.values()}
        return len(ends) == 1 and len(epochs) == 1 and sum(s["role"] == "leader" for s in sts.values()) == 1

    def run_round(self, rnd: int, fault: str = "kill") -> RoundReport:
        if fault == "rebuild":
            return self._round_rebuild(rnd)
        if fault == "damage":
            return self._round_damage(rnd)
        leader = self.wait(self.healthy, "a healthy cluster (every node up, one leader)")
        st = self.statuses()[leader]
        assert st is not None, f"{leader} stopped answering"  # st["epoch"] below would fail anyway
        self.say(f"round {rnd}: leader is {leader} (epoch {st['epoch']}, end {st['end']}); starting {self.clients} clients")
        ledger = Ledger()
        tag = f"r{rnd}-{int(time.time())}"
        load = Load(self.cfg, self.clients, tag, ledger)
        load.start()
        time.sleep(self.load_seconds)
        pid = st["pid"]
        others = [n for n in self.cfg.names if n != leader]
        t_kill = time.monotonic()
        if fault in ("kill", "pause"):
            sig = signal.SIGSTOP if fault == "pause" else signal.SIGKILL
            self.say(f"round {rnd}: {sig.name} {leader} (pid {pid}) under load")
            os.kill(pid, sig)
        elif fault == "partition":
            self.say(f"round {rnd}: cut {leader} off from {', '.join(others)} (clients"
                     + (" and etcd" if self.auto else "") + " still reach it)")
            self.scratch.net.isolate(leader, others)
        elif fault == "etcd":
            self.say(f"round {rnd}: cut {leader} off from etcd (its followers and clients still reach it)")
            self.scratch.net.cut_from_service(leader)
        elif fault == "disk":
            exits = len(self.scratch.exits)
            self.say(f"round {rnd}: the disk under {leader} fills up under load")
            self.scratch.disks[leader].fail_after(256)
            self.wait(lambda: any(n == leader for n, _ in self.scratch.exits[exits:]),
                      f"{leader} to stop on its failed disk")
            codes = [c for n, c in self.scratch.exits[exits:] if n == leader]
            self.say(f"round {rnd}: {leader}'s disk failed; it exited with code {codes[0]}")
        else:
            raise DrillError(f"unknown fault {fault!r}")
        res = self._await_election(leader, int(st["epoch"]), pid, t_kill, load) if self.auto else None
        # Promote as soon as the followers answer; the supervisor restarts the old node meanwhile.
        while res is None or not res.ok:
            sts = self.statuses()
            # The node `zwal promote` accepts, else the most advanced (its refusal then says why).
            cand = promotable({n: (s if n != leader else None) for n, s in sts.items()}, self.cfg.ack_replicas) \
                or most_advanced({n: s for n, s in sts.items() if n != leader})
            if cand is not None:
                res = self._promote(cand, leader, fault)
                if res.ok:
                    break
                self.say(f"  promote {cand} refused: {res.message}; retrying")
            if time.monotonic() - t_kill > self.timeout:
                load.finish()
                raise DrillError(f"could not promote a follower within {self.timeout}s")
            time.sleep(0.2)
        new = res.name
        # Time to promote: until the new leader acknowledges a write.
        with Client([self.cfg.node(new).client_endpoint], timeout=1.0, deadline=self.timeout,
                    creds=operator_creds(self.cfg)) as c:
            # Its own key per round and run: a later drill on the same cluster
            # must not take this record for a retry written twice.
            c.set(f"drill-probe-{tag}".encode(), b"1")
        promote_s = time.monotonic() - t_kill
        if self.auto:
            # The load's own first `ok` from the new leadership, when it came before the probe's: the time
            # to a leader that accepts writes, not the time the drill's polling took to notice it.
            first = first_ack_after(ledger, t_kill, int(st["epoch"]), restarted=fault == "kill")
            if first is not None:
                promote_s = min(promote_s, first)
        self.say(f"round {rnd}: {new} leads epoch {res.epoch} ({promote_s:.2f} s after the fault); load continues")
        if fault == "pause":
            # The deposed leader wakes up believing it leads, with clients'
            # requests queued: it must step down and acknowledge none of them.
            time.sleep(min(0.5, self.load_seconds))
            self.say(f"round {rnd}: SIGCONT {leader}: it wakes up deposed")
            os.kill(pid, signal.SIGCONT)
        elif fault in ("partition", "etcd"):
            time.sleep(min(0.5, self.load_seconds))
            self.say(f"round {rnd}: the partition heals: {leader} meets the new epoch")
            self.scratch.net.heal_all()
        elif fault == "disk":
            self.say(f"round {rnd}: {leader}'s disk has room again; it restarts and rejoins")
            self.scratch.disks[leader].grow()
        time.sleep(min(1.0, self.load_seconds))
        load.finish()
        t_p = time.monotonic()
        self.wait(self.converged, "every node to converge on the new leader's log")
        converge_s = time.monotonic() - t_p
        paths = {n.name: n.data_dir for n in self.cfg.nodes}
        logs_clean, hashes = True, {}
        try:
            start = max(first_offset(p) for p in paths.values())
        except LogOpenError:
            start = 0
        for n, p in paths.items():
            try:
                r = scan_path(p)
                logs_clean &= r.status == CLEAN
                hashes[n] = sha256_file(p, start)
            except LogOpenError as e:
                self.say(f"  cannot read {p}: {e}")
                logs_clean = False
        identical = len(set(hashes.values())) == 1 and len(hashes) == len(paths)
        with Client([self.cfg.node(new).client_endpoint], timeout=2.0, deadline=10.0,
                    creds=operator_creds(self.cfg)) as c:
            check = check_ledger(ledger, log_records(paths[new]), lambda k: c.read(k).value)
        errors: dict[str, int] = {}
        for _, _, why in ledger.unacked:
            errors[why] = errors.get(why, 0) + 1
        with ledger.lock:
            overlaps = check_leaders(list(ledger.acked))
        return RoundReport(rnd, leader, new, res.epoch, check, promote_s, converge_s, identical, logs_clean, errors,
                           fault, ledger.reads, check_reads(ledger), self.auto, promote_s,
                           (f"etcd's election chose {new}" if res.message == "elected" else res.message)
                           + "; the drill promoted nobody" if self.auto else
                           f"the drill promoted {new}, as an operator would", overlaps=overlaps, auto=self.auto)

    def _await_election(self, old: str, old_epoch: int, old_pid: int, t_fault: float, load: Load) -> Promoted:
        """Wait, promoting nobody, for a leader that etcd's lease names: of a newer epoch, or the old leader's
        node restarted by its supervisor within the TTL, which finds its own key and keeps leading its epoch."""
        while True:
            # A short timeout: a paused node would hold each poll for the whole of it, and the figure measured
            # is the time to a leader that accepts a write, not the drill's polling.
            for n, s in statuses_of(self.cfg, 0.3).items():
                if s and s["role"] == "leader" and s.get("lease_holder") == n and (
                        s["epoch"] > old_epoch or s.get("pid") != old_pid):
                    self.say(f"  {n} leads epoch {s['epoch']} with the lease, {time.monotonic() - t_fault:.2f} s "
                             "after the fault")
                    return Promoted(True, n, int(s["epoch"]), "elected" if s["epoch"] > old_epoch else
                                    f"{n} restarted and kept its lease")
            if time.monotonic() - t_fault > self.timeout:
                load.finish()
                sts = self.statuses()
                roles = ", ".join(f"{n} {s['role']} epoch {s['epoch']}" if s else f"{n} down" for n, s in sts.items())
                raise DrillError(f"no node was elected within {self.timeout:.0f} s of the fault on {old} ({roles}); "
                                 "the nodes' logs say why (grep election_)")
            time.sleep(0.1)

    # -- faults the cluster must heal from by itself -----------------------------------------

    def _logs(self) -> tuple[bool, bool]:
        """(every log byte-identical, every log verifies clean)."""
        clean, hashes = True, {}
        try:
            start = max(first_offset(n.data_dir) for n in self.cfg.nodes)
        except LogOpenError:
            start = 0
        for n in self.cfg.nodes:
            try:
                clean &= scan_path(n.data_dir).status == CLEAN
                hashes[n.name] = sha256_file(n.data_dir, start)
            except LogOpenError as e:
                self.say(f"  cannot read {n.data_dir}: {e}")
                clean = False
        return len(set(hashes.values())) == 1 and len(hashes) == len(self.cfg.nodes), clean

    def _verdict(self, rnd: int, fault: str, old: str, new: str | None, ledger: Ledger, t_fault: float,
                 healed: bool, heal_s: float, note: str, injected: dict[str, Any]) -> RoundReport:
        """Converge (if there is a leader), then check the ledger and the logs."""
        t_c = time.monotonic()
        converged = False
        if new is not None:
            try:
                self.wait(self.converged, "every node to converge on the leader's log", min(self.timeout, 30.0))
                converged = True
            except DrillError as e:
                self.say(f"round {rnd}: {e}")
        converge_s = time.monotonic() - t_c
        identical, clean = self._logs()
        if new is not None:
            with Client([self.cfg.node(new).client_endpoint], timeout=2.0, deadline=10.0,
                        creds=operator_creds(self.cfg)) as c:
                check = check_ledger(ledger, log_records(self.cfg.node(new).data_dir), lambda k: c.read(k).value)
        else:
            # No leader to read from: every acknowledged write must still be in
            # the most advanced log the cluster holds (no `get` to check).
            best = max((n for n in self.cfg.nodes if n.name != old),
                       key=lambda n: log_size(n.data_dir))
            recs = log_records(best.data_dir)
            final = {k: v for _, (k, v) in sorted(recs.items())}
            check = check_ledger(ledger, recs, lambda k: final.get(k))
        errors: dict[str, int] = {}
        for _, _, why in ledger.unacked:
            errors[why] = errors.get(why, 0) + 1
        st = (self.statuses().get(new) or {}) if new else {}
        with ledger.lock:
            overlaps = check_leaders(list(ledger.acked))
        return RoundReport(rnd, old, new or "-", int(st.get("epoch") or 0), check, 0.0, converge_s,
                           identical and converged, clean, errors, fault, ledger.reads, check_reads(ledger),
                           healed, heal_s, note, injected, overlaps=overlaps)

    def _round_rebuild(self, rnd: int) -> RoundReport:
        """Stop a node, move its data directory aside (kept), start it under load: it must rebuild from its peers.

        Odd rounds rebuild a follower other than the bootstrap node; even
        rounds the bootstrap node (`bootstrap_leader`), which is first made a
        follower if it leads (that promotion is set-up, not part of the round).
        """
        leader = self.wait(self.healthy, "a healthy cluster (every node up, one leader)")
        boot = self.cfg.bootstrap_leader
        if rnd % 2 == 0:
            target = boot
            if leader == boot:
                cand = most_advanced({n: s for n, s in self.statuses().items() if n != boot})
                self.say(f"round {rnd}: set-up: moving leadership off the bootstrap node {boot} to {cand}")
                r = run_promote(self.cfg, cand or "", timeout=1.0, say=lambda s: self.say(f"  promote: {s}"))
                if not r.ok:
                    raise DrillError(f"set-up promotion of {cand} failed: {r.message}")
                leader = self.wait(self.healthy, "a healthy cluster after the set-up promotion")
        else:
            target = next((n for n in self.cfg.names if n not in (leader, boot)), None) or \
                next(n for n in self.cfg.names if n != leader)
        ledger = Ledger()
        tag = f"r{rnd}-{int(time.time())}"
        load = Load(self.cfg, self.clients, tag, ledger)
        self.say(f"round {rnd}: leader is {leader}; starting {self.clients} clients, then rebuilding {target}")
        load.start()
        time.sleep(self.load_seconds)
        snap_at = self._leader_snapshot(leader, rnd)
        t_fault = time.monotonic()
        self.scratch.hold(target, signal.SIGTERM)
        data_dir = self.cfg.node(target).data_dir.rstrip("/")
        aside = f"{data_dir}.moved-aside-{time.strftime('%Y%m%dT%H%M%S')}-{rnd}"
        os.rename(data_dir, aside)
        self.say(f"round {rnd}: stopped {target}, moved {data_dir} to {aside} (kept); starting it with no data")
        missed = (self.statuses().get(leader) or {}).get("end") or 0
        self.scratch.release(target)
        # Healed: the rebuilt node's log byte-identical to the leader's, under load, with nobody acting.
        healed, heal_s = False, 0.0
        until = t_fault + self.timeout
        while time.monotonic() < until:
            sts = self.statuses()
            t, lead = sts.get(target), sts.get(leader)
            # Caught up past everything the leader held when it restarted, following it.
            if t and lead and t["role"] == "follower" and t.get("leader") == leader and \
                    (t["end"] or 0) >= missed and lead["role"] == "leader":
                healed, heal_s = True, time.monotonic() - t_fault
                break
            time.sleep(0.1)
        via = first_offset(self.cfg.node(target).data_dir) if healed else 0
        how = (f"by installing {leader}'s snapshot at {via} (docs/protocol.md, 'Snapshot transfer'), then the log "
               "from there" if via else "from an empty log, copying the log from offset 0")
        note = (f"{target} caught up with {leader} {how}: rebuild took {heal_s:.2f} s" if healed else
                f"{target} had not caught up with {leader} {self.timeout:.0f} s after its restart")
        time.sleep(min(1.0, self.load_seconds))
        load.finish()
        now = self.healthy() or self._leader()
        self.say(f"round {rnd}: {note}")
        return self._verdict(rnd, "rebuild", leader, now, ledger, t_fault, healed, heal_s, note,
                             {"node": target, "moved_to": aside, "bootstrap": target == boot,
                              "leader_snapshot": snap_at, "installed_snapshot": via, "rebuild_s": round(heal_s, 3)})

    def _leader_snapshot(self, leader: str, rnd: int) -> int:
        """The leader's newest snapshot, taken now (as `zwal snapshot` does) if it has none: the rebuild fetches it."""
        st = self.statuses().get(leader) or {}
        newest = int((st.get("snapshot") or {}).get("newest") or 0)
        if newest:
            return newest
        ep = self.cfg.node(leader).client_endpoint
        try:
            with Client([ep], timeout=10.0, deadline=30.0, creds=operator_creds(self.cfg, "admin"),
                        cluster_id=self.cfg.cluster_id or None) as c:
                r = c.admin("snapshot", ep, deadline=30.0)
        except ZwalError as e:
            self.say(f"round {rnd}: {leader} took no snapshot ({e}): the rebuild copies the log from offset 0")
            return 0
        self.say(f"round {rnd}: {leader} took a snapshot at {r['offset']}: the rebuilt node fetches it")
        return int(r["offset"])

    def _leader(self) -> str | None:
        sts = {n: s for n, s in self.statuses().items() if s is not None}
        top = max((s["epoch"] for s in sts.values()), default=0)
        leads = [n for n, s in sts.items() if s["role"] == "leader" and s["epoch"] == top]
        return leads[0] if len(leads) == 1 else None

    def _round_damage(self, rnd: int) -> RoundReport:
        """Stop the leader, flip bytes in its last record on disk, start it: watch, never promote.

        Healed means a leader accepts writes again with no operator action;
        the drill waits up to its timeout and says so plainly if not.
        """
        leader = self.wait(self.healthy, "a healthy cluster (every node up, one leader)")
        ledger = Ledger()
        tag = f"r{rnd}-{int(time.time())}"
        load = Load(self.cfg, self.clients, tag, ledger)
        self.say(f"round {rnd}: leader is {leader}; starting {self.clients} clients")
        load.start()
        time.sleep(self.load_seconds)
        # Damage an acknowledged record that the followers hold intact (the
        # case that needs healing, issue 19): the writes pause until every
        # follower has the leader's whole log, then the leader stops.
        load.finish()
        self.wait(self.converged, "the followers to hold the leader's whole log before the damage")
        t_fault = time.monotonic()
        self.scratch.hold(leader, signal.SIGKILL)
        load = Load(self.cfg, self.clients, tag + "-b", ledger)
        load.start()
        path = self.cfg.node(leader).data_dir
        last = None
        for f in iter_frames(path):
            last = f
        if last is None:
            self.scratch.release(leader)
            load.finish()
            raise DrillError(f"{leader}'s log holds no record to damage")
        injected = damage_last_record(path, last.offset, last.size)
        self.say(f"round {rnd}: stopped {leader} (SIGKILL), flipped {injected['bytes']} byte(s) at offset "
                 f"{injected['at']} in its last record ({last.offset}..{last.end}, held intact by every follower); "
                 "starting it again, writes resume")
        self.scratch.release(leader)
        healed, heal_s, new, cut_seen = False, 0.0, None, False
        until = t_fault + self.timeout
        probe = 0
        with Client([n.client_endpoint for n in self.cfg.nodes], timeout=0.5, deadline=1.0,
                    creds=operator_creds(self.cfg)) as c:
            def saw_cut() -> bool:
                # Its recovery saw the damage: it cut the record and saved the bytes aside.
                seg, rel = locate(path, last.offset)
                saved = sorted(glob.glob(f"{seg}.torn-{rel}*"))
                if saved:
                    injected["saved_to"] = saved[0]
                    self.say(f"round {rnd}: {leader}'s recovery cut its damaged last record (saved to {saved[0]})")
                return bool(saved)

            while time.monotonic() < until:
                cut_seen = cut_seen or saw_cut()
                probe += 1
                try:
                    r = c.set(f"drill-heal-{tag}-{probe}".encode(), b"1")
                    healed, heal_s = True, time.monotonic() - t_fault
                    new = self._leader()
                    self.say(f"round {rnd}: a write was acknowledged at epoch {r.epoch} by "
                             f"{new or 'a leader'} {heal_s:.2f} s after the fault, with no operator action")
                    break
                except ZwalError:
                    c.close()
                time.sleep(0.2)
            # Another node may lead before the damaged one has finished its recovery: wait for it too.
            while not cut_seen and time.monotonic() < until + 10:
                cut_seen = saw_cut()
                time.sleep(0.1)
        injected.update(node=leader, record_offset=last.offset, record_end=last.end, recovery_cut_seen=cut_seen)
        if healed:
            note = "a leader accepts writes again" + (f" ({new})" if new else "")
        else:
            sts = self.statuses()
            roles = ", ".join(f"{n} {s['role']} epoch {s['epoch']}" if s else f"{n} down" for n, s in sts.items())
            note = (f"no leader accepted a write within {self.timeout:.0f} s of the fault; the cluster waits "
                    f"for an operator ({roles}); the drill does not promote in this mode")
        self.say(f"round {rnd}: healed by itself: {'yes' if healed else 'NO'}: {note}")
        time.sleep(min(1.0, self.load_seconds) if healed else 0)
        load.finish()
        return self._verdict(rnd, "damage", leader, new if healed else None, ledger, t_fault, healed, heal_s, note,
                             injected)

    def _promote(self, cand: str, leader: str, fault: str) -> Promoted:
        if fault != "partition":
            r = run_promote(self.cfg, cand, timeout=1.0, say=lambda s: self.say(f"  promote: {s}"))
            return Promoted(r.ok, r.name, r.epoch, r.message)
        # The operator is on the majority side: `zwal promote` runs in the
        # candidate's network namespace, where the old leader is unreachable.
        cmd = [*self.scratch.wrap(cand), sys.executable, "-m", "daemon.cli", "promote", cand,
               "--config", self.cfg.path, "--timeout", "1"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        msg = (out.stdout + out.stderr).strip().splitlines()
        self.say(f"  promote (from {cand}'s side of the partition): {msg[-1] if msg else out.returncode}")
        if out.returncode != 0:
            return Promoted(False, cand, 0, msg[-1] if msg else f"exit {out.returncode}")
        st = self.statuses().get(cand) or {}
        return Promoted(True, cand, int(st.get("epoch", 0)), msg[-1] if msg else "")

    def run(self, rounds: int, faults: list[str] | None = None) -> list[RoundReport]:
        reports = []
        for rnd in range(1, rounds + 1):
            fault = (faults or ["kill"])[(rnd - 1) % len(faults or ["kill"])]
            rep = self.run_round(rnd, fault)
            self.say(rep.text())
            reports.append(rep)
            if not rep.passed(self.cfg.ack_replicas):
                break
        return reports


class DrillError(Exception):
    pass


def damage_last_record(path: str, offset: int, size: int) -> dict[str, Any]:
    """Flip the bits of a few payload bytes in the middle of the frame at `offset` (its checksum then fails).

    `path` is a log (a data directory, a log directory or a single file); `offset` is global."""
    vfile, vrel = locate(path, offset + 18)
    with open(vfile, "rb") as f:
        f.seek(vrel)
        hsize = header_size(f.read(1)[0])  # the frame's own version: v1 and v2 headers differ in size
    at = offset + hsize + max(0, (size - hsize) // 2 - 1)
    n = max(1, min(2, offset + size - at))
    file, rel = locate(path, at)
    with open(file, "r+b") as f:
        f.seek(rel)
        old = f.read(n)
        f.seek(rel)
        f.write(bytes(b ^ 0xFF for b in old))
        f.flush()
        os.fsync(f.fileno())
    return {"at": at, "bytes": n}
