"""The benchmark harness (bench/) keeps working: it is not timed here, only run.

A short end-to-end run checks that figures are medians with their spread,
that plots and the report are written, and that a peer that cannot run is
reported as missing rather than dropped.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

from common import GRID, Sample  # noqa: E402
from peers import Missing  # noqa: E402
from peers.redis_peer import parse  # noqa: E402
from report import summarise  # noqa: E402


def test_redis_benchmark_output_is_read_with_its_percentiles() -> None:
    with open(os.path.join(ROOT, "tests", "data", "redis-benchmark-7.0.txt")) as f:
        ops, qs, count = parse(f.read())
    assert count == 2000
    assert ops == pytest.approx(16666.67)
    assert qs[0.5] == pytest.approx(0.439e-3)
    assert qs[0.999] == pytest.approx(3.751e-3)  # the first line at or above 99.9%
    assert set(qs) == set(GRID)
    assert all(qs[a] <= qs[b] for a, b in zip(GRID, GRID[1:], strict=False))


def test_unreadable_redis_output_is_a_missing_peer_not_a_crash() -> None:
    with pytest.raises(Missing, match="not understood"):
        parse("Could not connect to Redis at 127.0.0.1:1: Connection refused\n")


def test_a_figure_is_the_median_run_with_the_spread() -> None:
    def s(ops: float, p50: float, count: int = 5000) -> Sample:
        return Sample(ops, {0.5: p50, 0.99: 2 * p50, 0.999: 3 * p50}, gen_cpu=0.5, count=count)

    row = summarise("x", 16, [s(300, 1e-3), s(100, 3e-3), s(200, 2e-3)])
    assert (row.ops, row.ops_min, row.ops_max, row.runs) == (200, 100, 300, 3)
    assert row.p50 == 2e-3 and row.p999 == 6e-3
    assert row.curve[0.5] == 2e-3  # the curve comes from the run with the median throughput
    # Too few writes for a p99.9: left out rather than reported as the slowest write.
    assert math.isnan(summarise("x", 1, [s(300, 1e-3, 999), s(200, 2e-3)]).p999)


def test_bench_run_writes_report_plots_and_names_missing_peers(tmp_path) -> None:
    out = tmp_path / "out"
    venv_bin = os.path.dirname(sys.executable)
    # A PATH without the system's directories hides redis-server: Redis must be reported missing.
    env = dict(os.environ, PATH=venv_bin)
    r = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--only", "floor,group commit,redis",
                        "--runs", "2", "--seconds", "0.3", "--clients", "1,4", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "MISSING Redis" in r.stdout
    assert "## Missing or failed" in report and "Redis" in report.split("## Missing")[1]
    assert "setup_peers.sh" in report
    data = json.loads((out / "results.json").read_text())
    rows = {(x["scenario"], x["clients"]): x for x in data["rows"]}
    assert set(rows) == {(n, c) for n in ("disk floor, per record", "disk floor, batched", "transport floor, CURVE",
                                          "transport floor, no CURVE", "zwal 1 node, group commit",
                                          "zwal 1 node, group commit, no CURVE",
                                          "zwal 1 node, group commit, 8 load processes")
                         for c in (1, 4)}
    for x in rows.values():
        assert x["runs"] == 2
        assert 0 < x["ops_min"] <= x["ops"] <= x["ops_max"]
        assert 0 < x["p50"] <= x["p99"]
    assert rows[("zwal 1 node, group commit", 4)]["gen_cpu"] > 0  # the load generator's CPU is reported
    for n in ("zwal 1 node, group commit", "transport floor, CURVE"):  # and the server's, per write
        assert 0 < rows[(n, 4)]["server_cpu"] < 0.1, rows[(n, 4)]
    assert rows[("disk floor, per record", 4)]["server_cpu"] is None  # no server: not measured, not zero
    assert "zwal 1 node, 64 clients >= 1.0x Redis" in report  # a target with a peer missing says so
    assert "issue" not in report.lower()  # targets are named for what they measure, not for a ticket
    for png in ("throughput.png", "latency.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({png})" in report


def test_bench_reports_get_at_1_and_64_clients_with_and_without_readindex(tmp_path) -> None:
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--only", "reads", "--runs", "1",
                        "--seconds", "0.5", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    reads = json.loads((out / "results.json").read_text())["reads"]
    assert set(reads) == {f"K={k} clients={n}" for k in (0, 1) for n in (1, 64)}
    for fig in reads.values():
        assert fig["reads_per_s"] > 0 and 0 < fig["p50_us"] <= fig["p99_us"] and not fig["errors"]
    report = (out / "report.md").read_text()
    assert "## Reads" in report and "| 64 |" in report and "ReadIndex" in report
