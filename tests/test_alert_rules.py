"""deploy/prometheus/zwal-alerts.yml: valid for promtool, and every metric it uses is one a node exports."""

import os
import re
import shutil
import subprocess

import pytest

RULES = os.path.join(os.path.dirname(__file__), "..", "deploy", "prometheus", "zwal-alerts.yml")
METRICS = os.path.join(os.path.dirname(__file__), "..", "daemon", "ops", "metrics.py")


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make sysdeps installs Debian's prometheus as root)")
    r = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 5 rules found" in r.stdout, r.stdout


def test_every_metric_the_rules_use_is_exported():
    used = set(re.findall(r"\b(zwal_[a-z_]+)\b", open(RULES).read()))
    exported = set(re.findall(r'"(zwal_[a-z_]+)"', open(METRICS).read()))
    assert used and used <= exported, used - exported
    for name in ("zwal_self_fence_total", "zwal_lease_remaining_seconds", "zwal_damaged", "zwal_follower_lag_seconds"):
        assert name in used
