"""Prometheus metrics for one node, served on its `metrics_port`.

Histograms are observed where the event happens (per batch, never per
record). Everything else is read at scrape time from a snapshot the main
loop publishes about once a second, so the HTTP thread never touches live
role state.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LAT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _Snapshot:
    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        s = self.metrics.snapshot
        node = self.metrics.node
        role = GaugeMetricFamily("zwal_role", "1 for the role this node has now", labels=["node", "role"])
        for r in ("leader", "follower"):
            role.add_metric([node, r], 1.0 if s.get("role") == r else 0.0)
        yield role
        for name, help_, key in (
            ("zwal_epoch", "current epoch of this node", "epoch"),
            ("zwal_end_offset_bytes", "durable end offset of the local log", "end"),
            ("zwal_commit_offset_bytes", "leader: offset below which writes are acknowledged", "commit"),
            ("zwal_records", "records in the local log's applied state", "records"),
            ("zwal_damaged", "1 while recovery has cut this node's log and it has not caught up past the cut",
             "damaged"),
            ("zwal_lease_remaining_seconds", "etcd coordinator: seconds the leader lease is still proven for",
             "lease_remaining_s"),
        ):
            if s.get(key) is not None:
                g = GaugeMetricFamily(name, help_, labels=["node"])
                g.add_metric([node], float(s[key]))
                yield g
        for name, help_, key in (
            ("zwal_records_appended_total", "records appended to the local log", "records_appended"),
            ("zwal_bytes_appended_total", "bytes appended to the local log", "bytes_appended"),
            ("zwal_writes_acknowledged_total", "client writes answered with success", "acked"),
            ("zwal_lease_renewals_total", "etcd coordinator: leader lease grants and renewals", "lease_renewals"),
            ("zwal_elections_total", "etcd coordinator: elections this node won", "elections"),
            ("zwal_self_fence_total", "etcd coordinator: times this leader stopped for want of a lease", "self_fences"),
        ):
            c = CounterMetricFamily(name, help_, labels=["node"])
            c.add_metric([node], float(s.get(key, 0)))
            yield c
        errs = CounterMetricFamily("zwal_client_errors_total", "error replies by code", labels=["node", "code"])
        for code, n in s.get("errors", {}).items():
            errs.add_metric([node, code], float(n))
        yield errs
        lag_b = GaugeMetricFamily("zwal_follower_lag_bytes", "leader: bytes a follower still lacks", labels=["node", "follower"])
        lag_s = GaugeMetricFamily("zwal_follower_lag_seconds", "leader: seconds since a follower's last fetch",
                                  labels=["node", "follower"])
        for f in s.get("followers", []):
            lag_b.add_metric([node, f["name"]], float(f["lag_bytes"]))
            if f.get("seconds_since_ack") is not None:
                lag_s.add_metric([node, f["name"]], float(f["seconds_since_ack"]))
        yield lag_b
        yield lag_s


class Metrics:
    def __init__(self, node: str, port: int | None, bind: str = "127.0.0.1") -> None:
        self.node = node
        self.port = port
        self.bind = bind  # metrics_bind in the cluster file; loopback unless an operator opens it
        self.registry = CollectorRegistry()
        self.fsync_seconds = Histogram("zwal_fsync_seconds", "fdatasync latency per batch", ["node"],
                                       buckets=_LAT_BUCKETS, registry=self.registry).labels(node)
        self.append_seconds = Histogram("zwal_append_seconds", "write + fdatasync latency per batch", ["node"],
                                        buckets=_LAT_BUCKETS, registry=self.registry).labels(node)
        self.batch_records = Histogram("zwal_batch_records", "records per appended batch", ["node"],
                                       buckets=_BATCH_BUCKETS, registry=self.registry).labels(node)
        self.snapshot: dict[str, Any] = {}
        self._next = 0.0
        self.registry.register(_Snapshot(self))
        self.records_appended = 0
        self.bytes_appended = 0

    def start(self) -> None:
        if self.port:
            start_http_server(self.port, addr=self.bind, registry=self.registry)

    def batch(self, records: int, nbytes: int, append_s: float, fsync_s: float) -> None:
        self.records_appended += records
        self.bytes_appended += nbytes
        self.batch_records.observe(records)
        self.append_seconds.observe(append_s)
        self.fsync_seconds.observe(fsync_s)

    def due(self, now: float) -> bool:
        if now >= self._next:
            self._next = now + 1.0
            return True
        return False

    def publish(self, snap: dict[str, Any]) -> None:
        snap["records_appended"] = self.records_appended
        snap["bytes_appended"] = self.bytes_appended
        self.snapshot = snap  # one reference swap: the scrape thread sees old or new, whole
