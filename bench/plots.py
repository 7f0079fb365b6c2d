"""The two pictures a user looks at first: throughput against clients, and latency percentiles."""

from __future__ import annotations

import math
import os

from report import Row

STYLE = {"floor": dict(linestyle="--", color=None), "zwal": dict(linestyle="-"), "peer": dict(linestyle="-.")}


def _nines(q: float) -> float:
    return -math.log10(1 - q) if q < 1 else 4.0


def draw(rows: list[Row], groups: dict[str, str], machine: str, out_dir: str) -> list[str]:
    """Write throughput.png and latency.png into out_dir; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.scenario for r in rows))
    cmap = plt.get_cmap("tab10")
    colour = {n: cmap(i % 10) for i, n in enumerate(names)}
    marker = {"floor": "s", "zwal": "o", "peer": "^"}

    fig, ax = plt.subplots(figsize=(10, 6.5))
    for n in names:
        rs = sorted((r for r in rows if r.scenario == n), key=lambda r: r.clients)
        g = groups.get(n, "peer")
        ax.errorbar([r.clients for r in rs], [r.ops for r in rs],
                    yerr=[[r.ops - r.ops_min for r in rs], [r.ops_max - r.ops for r in rs]],
                    label=n, color=colour[n], marker=marker[g], linestyle=STYLE[g]["linestyle"], capsize=3, linewidth=1.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    clients = sorted({r.clients for r in rows})
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set_xlabel("concurrent clients (writes in flight)")
    ax.set_ylabel("acknowledged writes per second (log scale)")
    ax.set_title("Acknowledged writes/s against concurrency (median of runs, bars: slowest-fastest run)\n"
                 "every system fsyncs before it answers except pysyncobj, which is not durable (no fsync)\n" + machine,
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(clients), figsize=(5.2 * len(clients), 6), sharey=True, squeeze=False)
    ticks = [0.0, 0.5, 0.9, 0.99, 0.999]
    for ax, c in zip(axes[0], clients, strict=False):
        for n in names:
            r = next((r for r in rows if r.scenario == n and r.clients == c), None)
            if r is None:
                continue
            pts = sorted((q, v) for q, v in r.curve.items() if q <= 0.999 and not math.isnan(v))
            g = groups.get(n, "peer")
            ax.plot([_nines(q) for q, _ in pts], [v * 1e6 for _, v in pts], label=n, color=colour[n],
                    linestyle=STYLE[g]["linestyle"], linewidth=1.8)
        ax.set_yscale("log")
        ax.set_xticks([_nines(q) for q in ticks], ["p0", "p50", "p90", "p99", "p99.9"])
        ax.set_xlabel("percentile")
        ax.set_title(f"{c} client{'s' if c > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("write latency, microseconds (log scale)")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.suptitle("Latency distribution of acknowledged writes (the run with the median throughput)\n" + machine,
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency.png"), dpi=110)
    plt.close(fig)
    return ["throughput.png", "latency.png"]
