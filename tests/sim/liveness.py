"""Liveness: once the faults stop, writes resume within a bound.

At `start()` (right after `heal_all`: links healed, loss and delay spikes off,
every node that does not refuse to start is up) a probe client starts writing
a fresh key, one write at a time, until one is acknowledged. No write within
`bound` simulated seconds is a wedge: Violation("liveness"), printed with the
seed and trace like any other failure.

What a person may do meanwhile is only what docs/ and the node's messages tell
them to:
- a node that refuses to start (a corrupt log) is rebuilt as its refusal
  message says: stopped, its data directory moved aside, started while the
  cluster has a leader (always; a node that will never start is no fault of
  the protocol's liveness);
- a node refusing to start while nobody leads leaves docs/ only `zwal promote
  --force` ("accept possible loss"): that run is no wedge (`healed_by` is
  "needs --force", counted in stats);
- with `operator=True`, `zwal promote` (the most advanced follower) whenever
  no node leads: README "Failover by hand", docs/protocol.md "run promote
  again" after a crash between its steps, a stepped-down leader "waits fenced
  for `zwal promote`".
With `operator=False` nobody promotes: the cluster must heal by itself, which
issue 19 item 5 requires wherever the log proves the step safe.

The verdict says which it was: `healed_by` is "itself" when no promotion
completed between the heal and the first acknowledged write, else
"operator" (a promotion, the documented operator's or one still in flight
from the fault period). Promotes are counted through `Sim.promote`'s
`stats["promotions"]`.

The bound, 5 simulated seconds: a restarted follower that hears nothing
reconnects after `silence` = max(3 heartbeats, 1 s); peers probe every
0.25 s; a 12 s run writes a few hundred records (tens of KB, 400-byte fetch
chunks of a few ms each) to catch up; the operator looks every 0.6 s and a
promote is four rounds of 0.3 s timeouts at worst; the probe writes with
0.4 s attempts. That is at most about 3 s when nothing is wrong; 5 s leaves
margin without hiding a wedge (a wedge never heals).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .workload import Gen, Sleep, promote
from .world import Violation

if TYPE_CHECKING:
    from .cluster import Sim

BOUND = 5.0
SUGGESTION = re.compile(r"promote (\w+) instead|run 'zwal promote (\w+)'")
# `SimNode.refused` values that are not a node's own refusal: nobody rebuilds these.
REBUILT = "rebuilt"
GONE = "gone for good (the machine is lost)"


class Liveness:
    def __init__(self, sim: "Sim", bound: float = BOUND, operator: bool = False) -> None:
        self.sim = sim
        self.bound = bound
        self.operator = operator
        self.t0 = 0.0
        self.t_ok: float | None = None
        self.promotions0 = 0
        self.healed_by: str | None = None
        self.actions: list[tuple[float, str]] = []
        self.suggested: str | None = None

    def start(self) -> None:
        sim = self.sim
        self.t0 = sim.world.now
        self.promotions0 = sim.stats["promotions"]
        sim.world.log("live", f"faults stopped: writes must resume within {self.bound:g}s"
                              f"{' (an operator may promote)' if self.operator else ' (nobody promotes)'}")
        self.client = sim.client("live")
        sim.spawn("live", self._probe())
        sim.spawn("operator", self._person())

    def _probe(self) -> Gen:
        sim, w = self.sim, self.sim.world
        c = self.client
        c.deadline, c.timeout = 0.5, 0.4
        i = 0
        while w.now < self.t0 + self.bound:
            i += 1
            r = yield from c.write("set", b"live", b"live.%d" % i)
            if r and r.get("ok"):
                self.t_ok = w.now
                promoted = sim.stats["promotions"] > self.promotions0
                self.healed_by = "operator" if promoted else "itself"
                sim.stats[f"healed_by_{self.healed_by}"] += 1
                w.log("live", f"writes resumed {w.now - self.t0:.3f}s after the faults stopped "
                              f"(healed by {self.healed_by})")
                return r
            yield Sleep(0.05)
        return None

    def _person(self) -> Gen:
        sim, w = self.sim, self.sim.world
        while w.now < self.t0 + self.bound and self.t_ok is None:
            yield Sleep(0.6)
            if self.t_ok is not None:
                return
            leader = sim.leader()
            for n in list(sim.nodes.values()):
                if n.refused is not None and n.refused not in (REBUILT, GONE) and leader is not None:
                    from .faults import rebuild

                    self.actions.append((w.now, f"rebuild {n.name}"))
                    sim.stats["operator_rebuilds"] += 1
                    rebuild(sim, n.name).start()
            if self.operator and leader is None:
                # `zwal promote` of the most advanced follower, or of the node the last
                # refusal (or a stepped-down leader's log) named: a person does what it says.
                name = self.suggested
                self.actions.append((w.now, f"promote {name or '(most advanced)'}"))
                result = yield from promote(sim, name)
                ok = " leads epoch " in result
                sim.stats["promotions" if ok else "promotions_refused"] += 1
                w.log("op", f"promote {name or '(most advanced)'}, as docs/ say: {result}")
                m = SUGGESTION.search(result)
                self.suggested = (m.group(1) or m.group(2)) if m and not ok else None

    def no_proof(self) -> list[str]:
        """The nodes whose logs prove nothing about acknowledged writes: down, refusing to start,
        rebuilt (joining) or short of what their recovery cut (damaged_end)."""
        out = []
        for n in self.sim.nodes.values():
            st = n.state
            cut = st.damaged_end is not None and (n.log is None or n.log.end < st.damaged_end)
            if not n.up or n.refused is not None or st.joining or cut:
                out.append(n.name)
        return out

    def check(self) -> None:
        if self.t_ok is not None:
            return
        sim = self.sim
        refused = [n.name for n in sim.nodes.values() if n.refused is not None and n.refused not in (REBUILT, GONE)]
        if refused and sim.leader() is None:
            # A node refuses to start (a corrupt log) and nobody leads: docs/ leave a person only
            # `zwal promote --force` ("accept possible loss"), or rebuilding it "while the cluster
            # has a leader". No protocol step is proven safe here, so this is no wedge of the protocol.
            self.healed_by = "needs --force"
            sim.stats["liveness_needs_force"] += 1
            sim.world.log("live", f"no write resumed: {refused} refuse to start and nobody leads (needs --force)")
            return
        lost = self.no_proof()
        if sim.leader() is None and len(lost) >= sim.cfg.ack_replicas + 1:
            # An acknowledged record sits on K + 1 nodes; when at least that many cut their logs at
            # recovery, were rebuilt or are down, it may be on none of the rest, so no log can prove a
            # promotion safe: decide() refuses, and its message names `zwal promote NAME --force`.
            self.healed_by = "needs --force"
            sim.stats["liveness_needs_force"] += 1
            sim.world.log("live", f"no write resumed: {lost} hold no provable copy, K = {sim.cfg.ack_replicas}, "
                                  "nobody leads (needs --force)")
            return
        roles = ", ".join(
            f"{n.name}:{'down' if not n.up else n.state.role}@{n.state.epoch}"
            f"{'(gone)' if n.refused == GONE else '(refused)' if n.refused else ''}"
            for n in sim.nodes.values())
        acts = "; ".join(f"{t:.2f} {a}" for t, a in self.actions) or "none"
        raise Violation("liveness", f"no write was acknowledged within {self.bound:g}s after the faults stopped at "
                                    f"t={self.t0:.3f} ({'operator may promote' if self.operator else 'nobody promotes'}"
                                    f"; operator actions: {acts}); nodes {roles}")
