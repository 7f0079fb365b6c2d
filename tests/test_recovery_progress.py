"""Long recoveries say how far they are; operators see it in the node's log."""

from __future__ import annotations

from daemon.wal import Record, open_log
from daemon.wal import reader


def test_scan_reports_progress_while_replaying(log_path, monkeypatch):
    w, _ = open_log(log_path)
    w.append_batch([Record("set", f"k{i}".encode(), b"v" * 20) for i in range(5000)], 1)
    w.close()
    monkeypatch.setattr(reader, "PROGRESS_EVERY_S", 0.0)
    seen: list[tuple[int, int]] = []
    w, result = open_log(log_path, progress=lambda pos, size: seen.append((pos, size)))
    w.close()
    assert result.records == 5000
    assert len(seen) >= 4  # every 1024 records when the interval has passed
    assert all(size == result.file_size for _, size in seen)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and seen[-1][0] < result.file_size


def test_node_logs_follower_connect_and_disconnect(make_cluster):
    import signal

    from harness import wait_until

    c = make_cluster(2, ack_replicas=0, replication_timeout=0.5, heartbeat_interval=0.1)
    c.start_all()
    log = c.node_log("node1")
    wait_until(lambda: "event=follower_connected follower=node2" in open(log).read(), 10, "connect line")
    c.signal("node2", signal.SIGSTOP)
    wait_until(lambda: "event=follower_disconnected follower=node2" in open(log).read(), 10, "disconnect line")
    c.signal("node2", signal.SIGCONT)
