"""zwal as an installed package: a wheel built from this repository, installed
into a fresh venv, creates and runs a cluster without the checkout; the
files under deploy/ are the ones the wheel ships; `from zwal import Client`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from harness import free_base_port

# What a copy of the source tree leaves out: this checkout's venv, its data and build leftovers.
_IGNORE = shutil.ignore_patterns(".venv", ".git", "var", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", "results", "*.wal")


def _run(cmd: list[str], *, cwd: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_deploy_files_are_the_packaged_ones():
    """One source of truth: deploy/systemd and deploy/templates link to daemon/templates (what the wheel ships)."""
    pairs = {
        "deploy/systemd/zwal@.service": "daemon/templates/systemd/zwal@.service",
        "deploy/systemd/zwal.sysusers.conf": "daemon/templates/systemd/zwal.sysusers.conf",
    }
    for name in ("cluster.toml.tmpl", "node.toml.tmpl", "program.conf.tmpl", "supervisord.conf.tmpl"):
        pairs[f"deploy/templates/{name}"] = f"daemon/templates/{name}"
    for shown, packaged in pairs.items():
        a, b = os.path.join(ROOT, shown), os.path.join(ROOT, packaged)
        assert os.path.isfile(b), f"{packaged} is missing"
        assert os.path.realpath(a) == os.path.realpath(b) or open(a).read() == open(b).read(), \
            f"{shown} differs from the packaged {packaged}"


def test_zwal_package_exports_the_client_api():
    import zwal
    from daemon import client

    assert zwal.Client is client.Client
    for name in client.__all__:
        assert getattr(zwal, name) is getattr(client, name), name
    assert issubclass(zwal.NotLeader, zwal.ZwalError)


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_a_cluster(tmp_path):
    t0 = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    src, wheels, venv, work = (str(tmp_path / n) for n in ("src", "wheels", "venv", "work"))
    # Build from a copy, so the build leaves nothing (build/, *.egg-info) in the checkout.
    shutil.copytree(ROOT, src, symlinks=True, ignore=_IGNORE)
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--quiet", "-w", wheels], cwd=str(tmp_path), env=env)
    (wheel,) = [os.path.join(wheels, f) for f in os.listdir(wheels) if f.endswith(".whl")]
    # A fresh venv from the base interpreter, the wheel and its dependencies installed as a user would.
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    _run([base_python, "-m", "venv", venv], cwd=str(tmp_path), env=env)
    vbin = os.path.join(venv, "bin")
    _run([os.path.join(vbin, "pip"), "install", "--quiet", wheel], cwd=str(tmp_path), env=env, timeout=300)
    build_s = time.monotonic() - t0
    os.makedirs(work)
    zwal = os.path.join(vbin, "zwal")

    def installed(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        # From a folder outside the checkout: nothing of the repository is importable there.
        return subprocess.run([zwal, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)

    # The installed code is the wheel's, not this checkout's.
    where = subprocess.run([os.path.join(vbin, "python"), "-c",
                            "import daemon, zwal; print(daemon.__file__); print(zwal.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(venv) for line in where.stdout.split()), where.stdout

    # The systemd files are reachable from the installed wheel, identical to deploy/systemd.
    unit = installed("cluster", "systemd-unit")
    assert unit.returncode == 0, unit.stderr
    assert unit.stdout == open(os.path.join(ROOT, "deploy", "systemd", "zwal@.service")).read()
    sysusers = installed("cluster", "systemd-unit", "--sysusers")
    assert sysusers.stdout == open(os.path.join(ROOT, "deploy", "systemd", "zwal.sysusers.conf")).read()

    d = os.path.join(work, "c")
    init = installed("cluster", "init", d, "--nodes", "1", "--base-port", str(free_base_port(6)))
    assert init.returncode == 0, init.stdout + init.stderr
    sup = open(os.path.join(d, "supervisord.conf")).read()
    assert f"command={zwal} node" in sup  # supervisord would start the installed zwal
    cfg = os.path.join(d, "cluster.toml")

    log = open(os.path.join(d, "log", "node1.log"), "ab")
    node = subprocess.Popen([zwal, "node", "--config", cfg, "--name", "node1"], cwd=d, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        st = installed("status", "--config", cfg, "--wait", "20", timeout=40)
        assert st.returncode == 0, st.stdout + st.stderr
        s = installed("set", "color", "blue", "--config", cfg)
        assert s.returncode == 0 and s.stdout.startswith("ok offset=0 "), s.stdout + s.stderr
        g = installed("get", "color", "--config", cfg)
        assert g.returncode == 0 and g.stdout == "blue\n", g.stdout + g.stderr
        # The documented Python API, from the installed package.
        code = ("import sys\nfrom zwal import Client\n"
                "with Client(config=sys.argv[1]) as c:\n"
                "    w = c.set('shape', 'round')\n"
                "    print(w.offset > 0, c.get('shape'), c.get('color'))\n")
        py = subprocess.run([os.path.join(vbin, "python"), "-c", code, cfg], cwd=work, env=env,
                            capture_output=True, text=True, timeout=60)
        assert py.returncode == 0, py.stderr
        assert py.stdout == "True b'round' b'blue'\n"
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
        try:
            code = node.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(5)
            raise
    assert code == 0, open(os.path.join(d, "log", "node1.log")).read()
    check = subprocess.run([zwal, "log", "verify", os.path.join(d, "node1")], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"wheel built and installed in {build_s:.1f}s; whole test {time.monotonic() - t0:.1f}s")
