"""Run the simulator: `python -m sim.run --seeds N [--start S]` or `--seed S --trace` (from tests/).

`--faults rebuild,damage,lying,churn,promotes` (or `all`) adds issue 19's faults to
the random mix (tests/sim/faults.py); `--liveness operator|self` checks that
writes resume within `--bound` seconds once the faults stop (tests/sim/liveness.py).
`--scenario NAME` runs one named scenario (tests/sim/scenarios.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sim.cluster import Sim  # noqa: E402
from sim.faults import FaultSim, parse_faults  # noqa: E402
from sim.world import Violation  # noqa: E402


def run_seed(seed: int, duration: float = 12.0, full_trace: bool = False, keep: int = 200,
             all_flips: bool = True, faults: frozenset[str] = frozenset(), liveness: str | None = None,
             bound: float | None = None) -> Sim:
    """One seed; raises Violation (or any bug) with the sim attached as `e.sim`."""
    if faults or liveness:
        sim: Sim = FaultSim(seed, faults, liveness, bound, keep=keep, full_trace=full_trace, all_flips=all_flips)
    else:
        sim = Sim(seed, keep=keep, full_trace=full_trace, all_flips=all_flips)
    try:
        sim.random_run(duration)
    except BaseException as e:
        e.sim = sim  # type: ignore[attr-defined]
        raise
    return sim


def report(seed: int, e: BaseException) -> str:
    sim = getattr(e, "sim", None)
    lines = [f"seed {seed} FAILED at t={sim.world.now:.4f} step {sim.world.steps}" if sim else f"seed {seed} FAILED"]
    if isinstance(e, Violation):
        lines.append(f"invariant violated: {e.invariant}")
        lines.append(e.detail)
    else:
        lines.append("".join(traceback.format_exception(e)))
    if sim is not None:
        lines.append(f"--- last {len(sim.world.recent)} events ---")
        lines.extend(sim.world.trace()[-len(sim.world.recent):])
        flag = "" if sim.all_flips else " --own-tail-flips"
        if getattr(sim, "faults", None):
            flag += f" --faults {','.join(sorted(sim.faults))}"  # type: ignore[attr-defined]
        if getattr(sim, "liveness_mode", None):
            flag += f" --liveness {sim.liveness_mode}"  # type: ignore[attr-defined]
            if sim.bound:  # type: ignore[attr-defined]
                flag += f" --bound {sim.bound}"  # type: ignore[attr-defined]
        lines.append(f"replay: python -m sim.run --seed {seed}{flag} --trace")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.run", description=__doc__)
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, help="run this one seed")
    ap.add_argument("--trace", action="store_true", help="print the whole trace of --seed")
    ap.add_argument("--duration", type=float, default=12.0, help="simulated seconds of faults per seed")
    ap.add_argument("--own-tail-flips", dest="all_flips", action="store_false",
                    help="flip bits only in a leader's own last record (the fault model of seeds found before "
                         "the damage mark; by default a flip hits any node's log, any record)")
    ap.add_argument("--faults", default="",
                    help="add issue 19's faults to the random mix: comma-separated from "
                         "rebuild,damage,lying,churn,promotes, or all (several fail on code without its fixes)")
    ap.add_argument("--liveness", choices=["operator", "self"], default=None,
                    help="once the faults stop, writes must resume within --bound seconds: 'operator' lets a "
                         "person do what docs/ say (promote when no node leads), 'self' lets nobody promote")
    ap.add_argument("--bound", type=float, default=None, help="the liveness bound in simulated seconds (5)")
    ap.add_argument("--scenario", help="run this named scenario of sim/scenarios.py (with --seed, or seed 0)")
    a = ap.parse_args(argv)
    faults = parse_faults(a.faults)
    kw = dict(faults=faults, liveness=a.liveness, bound=a.bound)
    if a.scenario:
        from sim.scenarios import ALL, NEW

        try:
            sim = {**ALL, **NEW}[a.scenario](a.seed or 0)
        except Violation as e:
            print(f"scenario {a.scenario} seed {a.seed or 0} FAILED\ninvariant violated: {e.invariant}\n{e.detail}")
            return 1
        if a.trace:
            print("\n".join(sim.world.trace()))
        print(f"scenario {a.scenario} seed {a.seed or 0}: ok ({sim.world.steps} steps, {dict(sim.stats)})")
        return 0
    if a.seed is not None:
        try:
            sim = run_seed(a.seed, a.duration, full_trace=a.trace, all_flips=a.all_flips, **kw)
        except BaseException as e:
            if a.trace and getattr(e, "sim", None) is not None:
                print("\n".join(e.sim.world.trace()))  # type: ignore[attr-defined]
                e.sim.world.recent.clear()  # type: ignore[attr-defined]
            print(report(a.seed, e))
            return 1
        if a.trace:
            print("\n".join(sim.world.trace()))
        print(f"seed {a.seed}: ok ({sim.world.steps} steps, {len(sim.inv.ack_list)} acked writes, "
              f"{dict(sim.stats)})")
        return 0
    t0 = time.perf_counter()
    steps = acks = 0
    for seed in range(a.start, a.start + a.seeds):
        try:
            sim = run_seed(seed, a.duration, all_flips=a.all_flips, **kw)
        except BaseException as e:
            print(report(seed, e))
            return 1
        steps += sim.world.steps
        acks += len(sim.inv.ack_list)
        done = seed - a.start + 1
        if done % 50 == 0 or done == a.seeds:
            el = time.perf_counter() - t0
            print(f"{done} seeds ok in {el:.1f}s ({done / el * 60:.0f} seeds/minute, {steps} steps, "
                  f"{acks} acknowledged writes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
