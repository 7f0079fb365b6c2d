"""`zwal drill`: prove on a running cluster that failover loses nothing acknowledged.

Each round: load from several clients with a ledger of every acknowledged
write; SIGKILL the leader; promote the most advanced follower; let the
supervisor restart the old node so it rejoins; wait for convergence; then
check the ledger against the new leader (by offset in its log and by `get`)
and compare every log byte for byte.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from daemon.client.blocking import Client, ZwalError
from daemon.config import ClusterConfig
from daemon.failover.promote import most_advanced, run_promote, statuses_of
from daemon.wal import CLEAN, iter_frames, scan_path
from daemon.wal.reader import LogOpenError, sha256_file


@dataclass
class Ack:
    key: bytes
    value: bytes
    offset: int
    epoch: int


@dataclass
class Ledger:
    """Every write a client sent, and what it was told."""

    acked: list[Ack] = field(default_factory=list)
    unacked: list[tuple[bytes, bytes, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, a: Ack) -> None:
        with self.lock:
            self.acked.append(a)

    def fail(self, key: bytes, value: bytes, why: str) -> None:
        with self.lock:
            self.unacked.append((key, value, why))


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
    keys_in_log = {k for k, _ in log_records.values()}
    seen: dict[bytes, int] = {}
    for k, _ in log_records.values():
        seen[k] = seen.get(k, 0) + 1
    # Every drill write has a unique key: a key twice in the log is a retry
    # that was appended again instead of answered from the retry window.
    duplicated = [k for k, n in seen.items() if n > 1 and k.startswith(b"drill-")]
    for a in ledger.acked:
        rec = log_records.get(a.offset)
        if rec != (a.key, a.value):
            lost.append(f"{a.key!r} acknowledged at offset {a.offset} (epoch {a.epoch}) but the log has {rec!r} there")
            continue
        got = read(a.key)
        if got != a.value:
            lost.append(f"{a.key!r} is in the log at {a.offset} but get returns {got!r}")
    present = sum(1 for k, _, _ in ledger.unacked if k in keys_in_log)
    return Check(len(ledger.acked), lost, present, len(ledger.unacked) - present, duplicated)


class Load:
    """Clients writing unique keys until stopped, recording every answer."""

    def __init__(self, cfg: ClusterConfig, clients: int, tag: str, ledger: Ledger) -> None:
        self.cfg = cfg
        self.n = clients
        self.tag = tag
        self.ledger = ledger
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        self.sent = 0

    def _run(self, i: int) -> None:
        c = Client(config=self.cfg.path, timeout=1.0, deadline=20.0)
        seq = 0
        try:
            while not self.stop.is_set():
                key = f"drill-{self.tag}-c{i}-{seq}".encode()
                value = os.urandom(8).hex().encode()
                seq += 1
                self.sent += 1
                try:
                    r = c.set(key, value)
                    self.ledger.ok(Ack(key, value, r.offset, r.epoch))
                except ZwalError as e:
                    self.ledger.fail(key, value, e.code)
        finally:
            c.close()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


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

    def passed(self, k: int) -> bool:
        return (self.logs_identical and self.logs_clean and not self.check.duplicated
                and (not self.check.lost or k == 0))

    def text(self) -> str:
        c = self.check
        lines = [
            f"round {self.round}: leader {self.old_leader} killed, {self.new_leader} promoted to epoch {self.epoch}",
            f"  writes acknowledged:            {c.acked}",
            f"  acknowledged but lost:          {len(c.lost)}",
            f"  unacknowledged but present:     {c.unacked_present}",
            f"  unacknowledged and absent:      {c.unacked_absent}",
            f"  written twice (retry dupes):    {len(c.duplicated)}",
            f"  time to promote:                {self.promote_s:.2f} s (kill -> new leader accepts writes)",
            f"  time to converge:               {self.converge_s:.2f} s (promotion -> all logs identical)",
            f"  logs byte-identical:            {'yes' if self.logs_identical else 'NO'}",
            f"  logs verify clean:              {'yes' if self.logs_clean else 'NO'}",
            f"  client errors seen (retried):   {self.errors or 'none'}",
        ]
        lines.extend(f"  LOST: {x}" for x in c.lost[:20])
        return "\n".join(lines)


class Drill:
    def __init__(self, cfg: ClusterConfig, *, clients: int = 4, load_seconds: float = 3.0,
                 timeout: float = 60.0, say: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.clients = clients
        self.load_seconds = load_seconds
        self.timeout = timeout
        self.say = say

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
        sts = self.statuses()
        if any(s is None for s in sts.values()):
            return None
        leaders = [n for n, s in sts.items() if s["role"] == "leader"]
        top = max(s["epoch"] for s in sts.values())
        if len(leaders) != 1 or sts[leaders[0]]["epoch"] != top:
            return None
        return leaders[0]

    def converged(self) -> bool:
        sts = self.statuses()
        if any(s is None for s in sts.values()):
            return False
        ends = {s["end"] for s in sts.values()}
        epochs = {s["epoch"] for s in sts.values()}
        return len(ends) == 1 and len(epochs) == 1 and sum(s["role"] == "leader" for s in sts.values()) == 1

    def run_round(self, rnd: int) -> RoundReport:
        leader = self.wait(self.healthy, "a healthy cluster (every node up, one leader)")
        st = self.statuses()[leader]
        self.say(f"round {rnd}: leader is {leader} (epoch {st['epoch']}, end {st['end']}); starting {self.clients} clients")
        ledger = Ledger()
        load = Load(self.cfg, self.clients, f"r{rnd}-{int(time.time())}", ledger)
        load.start()
        time.sleep(self.load_seconds)
        pid = st["pid"]
        self.say(f"round {rnd}: SIGKILL {leader} (pid {pid}) under load")
        t_kill = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Promote as soon as the followers answer; the supervisor restarts the old node meanwhile.
        res = None
        while res is None or not res.ok:
            sts = self.statuses()
            cand = most_advanced({n: s for n, s in sts.items() if n != leader})
            if cand is not None:
                res = run_promote(self.cfg, cand, timeout=1.0, say=lambda s: self.say(f"  promote: {s}"))
                if res.ok:
                    break
                self.say(f"  promote {cand} refused: {res.message}; retrying")
            if time.monotonic() - t_kill > self.timeout:
                load.finish()
                raise DrillError(f"could not promote a follower within {self.timeout}s")
            time.sleep(0.2)
        new = res.name
        # Time to promote: until the new leader acknowledges a write.
        with Client([self.cfg.node(new).client_endpoint], timeout=1.0, deadline=self.timeout) as c:
            c.set(f"drill-probe-{rnd}".encode(), b"1")
        promote_s = time.monotonic() - t_kill
        self.say(f"round {rnd}: {new} leads epoch {res.epoch} ({promote_s:.2f} s after the kill); load continues")
        time.sleep(min(1.0, self.load_seconds))
        load.finish()
        t_p = time.monotonic()
        self.wait(self.converged, "every node to converge on the new leader's log")
        converge_s = time.monotonic() - t_p
        paths = {n.name: n.log_path for n in self.cfg.nodes}
        logs_clean, hashes = True, {}
        for n, p in paths.items():
            try:
                r = scan_path(p)
                logs_clean &= r.status == CLEAN
                hashes[n] = sha256_file(p)
            except LogOpenError as e:
                self.say(f"  cannot read {p}: {e}")
                logs_clean = False
        identical = len(set(hashes.values())) == 1 and len(hashes) == len(paths)
        with Client([self.cfg.node(new).client_endpoint], timeout=2.0, deadline=10.0) as c:
            check = check_ledger(ledger, log_records(paths[new]), lambda k: c.read(k).value)
        errors: dict[str, int] = {}
        for _, _, why in ledger.unacked:
            errors[why] = errors.get(why, 0) + 1
        return RoundReport(rnd, leader, new, res.epoch, check, promote_s, converge_s, identical, logs_clean, errors)

    def run(self, rounds: int) -> list[RoundReport]:
        reports = []
        for rnd in range(1, rounds + 1):
            rep = self.run_round(rnd)
            self.say(rep.text())
            reports.append(rep)
            if not rep.passed(self.cfg.ack_replicas):
                break
        return reports


class DrillError(Exception):
    pass
