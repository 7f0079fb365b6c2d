"""`zwal cluster init --coordinator etcd`: a local cluster with automatic failover under real supervisord."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from daemon.client.blocking import Client
from harness import free_base_port, wait_until
from tests.etcd_cluster import require_etcd

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)
ZWAL = [sys.executable, "-m", "daemon.cli"]


def ctl(conf: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "supervisorctl"), "-c", conf, *args], capture_output=True, text=True,
                          timeout=60)


def holder(cfg: str) -> str | None:
    r = subprocess.run([*ZWAL, "status", "--config", cfg, "--json", "--timeout", "2"], capture_output=True,
                       text=True, timeout=30)
    import json
    doc = json.loads(r.stdout)
    for st in (doc.get("nodes") or {}).values():
        st = st or {}
        if st.get("role") == "leader" and st.get("lease_remaining_s", 0) > 0:
            return st["name"]
    return None


def test_init_with_etcd_runs_a_cluster_that_fails_over_by_itself(tmp_path):
    require_etcd()
    d = str(tmp_path / "c")
    r = subprocess.run([*ZWAL, "cluster", "init", d, "--coordinator", "etcd", "--base-port",
                        str(free_base_port(40))], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "failover:  automatic, through etcd" in r.stdout
    conf, cfg = os.path.join(d, "supervisord.conf"), os.path.join(d, "cluster.toml")
    subprocess.run([os.path.join(BIN, "supervisord"), "-c", conf], check=True, timeout=30)
    try:
        first = wait_until(lambda: holder(cfg), 30, "a leader holding the etcd lease")
        with Client(config=cfg, timeout=1.0, deadline=30.0) as c:
            c.set("k", "v1")
            assert ctl(conf, "stop", f"zwal:{first}").returncode == 0
            second = wait_until(lambda: (h := holder(cfg)) not in (None, first) and h, 30, "a new lease holder")
            c.set("k2", "v2")
            assert c.get("k") == b"v1" and c.get("k2") == b"v2"
        out = subprocess.run([*ZWAL, "status", "--config", cfg], capture_output=True, text=True, timeout=30).stdout
        assert f"coordinator etcd: lease held by {second}" in out, out
        assert ctl(conf, "start", f"zwal:{first}").returncode == 0
        # The drill of automatic failover: it kills, then pauses, the leader under load and promotes nobody.
        r = subprocess.run([*ZWAL, "drill", "--auto", "--config", cfg, "--fault", "kill,pause", "--rounds", "2",
                            "--seconds", "1", "--timeout", "45", "--json"], capture_output=True, text=True,
                           timeout=240)
        import json
        doc = json.loads(r.stdout)
        assert r.returncode == 0 and doc["ok"], (r.stdout, r.stderr[-3000:])
        assert [x["fault"] for x in doc["rounds"]] == ["kill", "pause"]
        for x in doc["rounds"]:
            assert x["auto"] and x["healed_by_itself"] and x["overlaps"] == [] and x["lost"] == []
            assert x["acked"] > 0 and 0 < x["promote_seconds"] < 30, x
        assert "promote:" not in r.stderr  # nobody ran zwal promote
    finally:
        ctl(conf, "shutdown")
