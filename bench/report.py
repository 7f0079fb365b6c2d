"""Turn the suite's samples into the report: medians, spread, ratios, targets."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from common import Sample

FLOOR = "disk floor, per record"
GROUP = "zwal 1 node, group commit"
K1 = "zwal 3 nodes, K=1"
REDIS = "Redis, appendfsync always + replica"
REDIS_PY = "Redis, appendfsync always + replica, redis-py load"
GROUP8 = "zwal 1 node, group commit, 8 load processes"
TRANSPORT = "transport floor, CURVE"
ETCD = "etcd, 3 members"


@dataclass
class Row:
    scenario: str
    clients: int
    ops: float  # median over runs
    ops_min: float
    ops_max: float
    p50: float
    p99: float
    p999: float
    gen_cpu: float
    server_cpu: float  # seconds of the leader's (primary's) CPU per write, median over runs
    errors: int
    runs: int
    curve: dict[float, float]  # the percentiles of the run with the median throughput
    notes: list[str]


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def summarise(name: str, clients: int, samples: list[Sample]) -> Row:
    by_ops = sorted(samples, key=lambda s: s.ops)
    ops = statistics.median(s.ops for s in samples)
    mid = min(samples, key=lambda s: abs(s.ops - ops))  # the run nearest the median draws the curve
    notes = sorted({n for s in samples for n in s.notes})
    # A p99.9 from fewer than 1,000 writes is just the slowest one: not shown.
    p999 = _median([s.q(0.999) for s in samples]) if min(s.count for s in samples) >= 1000 else float("nan")
    return Row(name, clients, ops, by_ops[0].ops, by_ops[-1].ops,
               _median([s.q(0.5) for s in samples]), _median([s.q(0.99) for s in samples]), p999,
               _median([s.gen_cpu for s in samples]), _median([s.server_cpu for s in samples]),
               sum(s.errors for s in samples), len(samples),
               mid.quantiles, notes)


def _us(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1e6:,.0f}"


def _us1(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1e6:,.1f}"


def _ratio(a: list[Sample] | None, b: list[Sample] | None) -> str:
    """Ratio of medians, with the range of run-by-run ratios (run i against run i)."""
    if not a or not b or not statistics.median(s.ops for s in b):
        return "not measured"
    med = statistics.median(s.ops for s in a) / statistics.median(s.ops for s in b)
    per = sorted(x.ops / y.ops for x, y in zip(a, b, strict=False) if y.ops)
    spread = f" (runs {per[0]:.2f}-{per[-1]:.2f})" if len(per) > 1 else ""
    return f"{med:.2f}x{spread}"


def markdown(title: str, machine: str, settings: str, rows: list[Row], samples: dict[tuple[str, int], list[Sample]],
             missing: dict[str, str], notes: dict[str, str], plots: list[str]) -> str:
    out = [f"# {title}", "", f"Machine: {machine}", "", settings, ""]
    for p in plots:
        out += [f"![{p}]({p})", ""]
    floor1 = samples.get((FLOOR, 1))
    floor_ops = statistics.median(s.ops for s in floor1) if floor1 else float("nan")
    floor_ops = floor_ops or float("nan")
    floor_p50 = statistics.median(s.q(0.5) for s in floor1) if floor1 else float("nan")
    out += ["Writes/s is the median over runs, with the slowest and fastest run; latency percentiles are medians "
            "over runs; \"x floor\" is against one writer's write+fdatasync per record measured in this run; "
            "\"load CPU\" is the load generator's CPU in cores (the machine has the cores named above, shared "
            "with the servers); \"server CPU/write\" is the leader's (Redis: the primary's) CPU time, every "
            "thread, user + system, over the run divided by the writes acknowledged in it; "
            "p99.9 is left out (-) where a run had fewer than 1,000 writes.", "",
            "| scenario | clients | writes/s | spread (min-max) | x floor | p50 (us) | p99 (us) | p99.9 (us) | load CPU "
            "| server CPU/write (us) | errors |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = "-" if math.isnan(r.gen_cpu) else f"{r.gen_cpu:.2f}"
        out.append(f"| {r.scenario} | {r.clients} | {r.ops:,.0f} | {r.ops_min:,.0f}-{r.ops_max:,.0f} | "
                   f"{r.ops / floor_ops:.2f} | {_us(r.p50)} | {_us(r.p99)} | {_us(r.p999)} | {cpu} | "
                   f"{_us1(r.server_cpu)} | {r.errors or '-'} |")
    out += ["", "## What each scenario is", ""]
    for name, note in notes.items():
        out.append(f"- **{name}**: {note}" if note else f"- **{name}**")
    extra = sorted({(r.scenario, n) for r in rows for n in r.notes})
    if extra:
        out += ["", "Observed during the runs:", ""] + [f"- {s}: {n}" for s, n in extra]
    if missing:
        out += ["", "## Missing or failed", ""] + [f"- **{k}**: {v}" for k, v in missing.items()]

    def get(name: str, n: int) -> list[Sample] | None:
        return samples.get((name, n))

    out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def target(what: str, measured: str, ok: bool | None) -> None:
        out.append(f"| {what} | {measured} | {'-' if ok is None else ('yes' if ok else 'no')} |")

    def med(x: list[Sample] | None, f=lambda s: s.ops) -> float:
        return statistics.median(f(s) for s in x) if x else float("nan")

    g64, r64, k64, e64 = get(GROUP, 64), get(REDIS, 64), get(K1, 64), get(ETCD, 64)
    rp64 = get(REDIS_PY, 64)
    target("zwal 1 node, 64 clients >= 1.0x Redis appendfsync always, 64 clients (redis-benchmark load)",
           _ratio(g64, r64), None if not (g64 and r64) else med(g64) >= med(r64))
    target("the same, Redis loaded by redis-py from the same processes and window", _ratio(g64, rp64),
           None if not (g64 and rp64) else med(g64) >= med(rp64))
    g864 = get(GROUP8, 64)
    if g64 and g864:
        target("the load generator is not the cap: 8 load processes give no more than 1.1x of 4", _ratio(g864, g64),
               med(g864) <= 1.1 * med(g64))
    if g64 and r64:
        zc, rc = med(g64, lambda s: s.server_cpu), med(r64, lambda s: s.server_cpu)
        target("server CPU per write at 64 clients <= 1.5x Redis's", f"{zc * 1e6:.1f} us vs {rc * 1e6:.1f} us: "
               f"{zc / rc:.1f}x", zc <= 1.5 * rc)
    target("zwal K=1 (2 followers), 64 clients >= 10x etcd 3 members, 64 clients", _ratio(k64, e64),
           None if not (k64 and e64) else med(k64) >= 10 * med(e64))
    g1, t1, r1 = get(GROUP, 1), get(TRANSPORT, 1), get(REDIS, 1)
    if g1 and t1:
        gap = med(g1, lambda s: s.q(0.5)) - med(t1, lambda s: s.q(0.5))
        vs_redis = f"; Redis {_us(med(r1, lambda s: s.q(0.5)))} us" if r1 else ""
        target("1 client: p50 <= the transport floor's (CURVE) + 20 us",
               f"{_us(med(g1, lambda s: s.q(0.5)))} us vs {_us(med(t1, lambda s: s.q(0.5)))} us: "
               f"+{_us(gap)} us{vs_redis}", gap <= 20e-6)
    if g1 and floor1:
        gap = med(g1, lambda s: s.q(0.5)) - floor_p50
        target("1 client: p50 within 150 us of the disk floor's p50",
               f"{_us(med(g1, lambda s: s.q(0.5)))} us vs {_us(floor_p50)} us: +{_us(gap)} us", gap <= 150e-6)
    if g64 and floor1:
        target("group commit: zwal 1 node, 64 clients >= 8x the per-record floor", f"{med(g64) / floor_ops:.2f}x",
               med(g64) >= 8 * floor_ops)
    if k64 and g64:
        target("replication cost: K=1, 64 clients >= 0.8x leader-only", _ratio(k64, g64), med(k64) >= 0.8 * med(g64))
    k1 = get(K1, 1)
    if k1 and g1:
        x = med(k1, lambda s: s.q(0.5)) / med(g1, lambda s: s.q(0.5))
        target("replication latency: K=1, 1 client p50 <= 2x leader-only p50", f"{x:.2f}x", x <= 2)
    return "\n".join(out) + "\n"
