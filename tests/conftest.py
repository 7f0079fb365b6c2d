"""Shared fixtures. Tests use real files, real fsync, real processes."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZWAL = [sys.executable, "-m", "daemon.cli"]


@pytest.fixture
def log_path(tmp_path) -> str:
    return str(tmp_path / "test.wal")


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(nodes=3, ack_replicas=1, **cluster_settings) -> a started-on-demand Cluster."""
    from harness import Cluster

    made = []

    def make(nodes: int = 3, ack_replicas: int | None = None, **settings):
        c = Cluster(str(tmp_path / f"cluster{len(made)}"), nodes, ack_replicas, **settings)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
