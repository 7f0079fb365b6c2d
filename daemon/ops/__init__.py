"""Operating a node: structured logs, Prometheus metrics, sd_notify, latency stats."""
