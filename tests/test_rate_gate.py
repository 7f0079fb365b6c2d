"""The one rate limiter for log lines (daemon/ops/logs.RateGate) and the
host-clock form the roles use (daemon/node/ports.Limited)."""

from daemon.node.ports import Limited
from daemon.ops.logs import RateGate


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def event(self, name, **kv):
        self.lines.append(("info", name, kv))

    def warn(self, name, **kv):
        self.lines.append(("warn", name, kv))

    def error(self, name, **kv):
        self.lines.append(("error", name, kv))


def test_a_gate_admits_a_burst_per_period_and_reports_what_it_suppressed():
    g = RateGate(burst=3, period=10.0)
    admitted = []
    for i in range(10):
        kv: dict = {}
        if g.admit(0.0 + i * 0.1, kv):
            admitted.append(kv)
    assert admitted == [{}, {}, {}]
    assert g.suppressed == 7
    kv = {}
    assert g.admit(10.5, kv)  # a new period: the count of what was dropped goes with the next line
    assert kv == {"suppressed": 7} and g.suppressed == 0
    kv = {}
    assert g.admit(10.6, kv) and kv == {}


def test_the_roles_limiter_uses_the_host_clock_and_level():
    ev = Recorder()
    lim = Limited(burst=2, period=60.0)
    assert lim.warn(ev, 5.0, "x", a=1)
    assert lim.warn(ev, 5.0, "x", error=True, a=2)
    assert not lim.warn(ev, 6.0, "x", a=3)
    assert lim.warn(ev, 65.0, "x", a=4)  # simulated time moved on: the period rolled
    assert ev.lines == [("warn", "x", {"a": 1}), ("error", "x", {"a": 2}), ("warn", "x", {"a": 4, "suppressed": 1})]
