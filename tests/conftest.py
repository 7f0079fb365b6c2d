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
