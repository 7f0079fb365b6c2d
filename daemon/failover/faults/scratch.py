"""A scratch cluster that a drill builds on this host, so that it can cause
faults no running cluster lets an outsider cause: a partition (each node in
its own network namespace) and a failing disk (each node's data directory on
its own ext4-on-loop-over-tmpfs, daemon/failover/faults/disk.py).

It plays the supervisor's part too: a node that exits is started again after
`restart_delay` seconds, as supervisord's `autorestart` would.

With `etcd`, it also runs a 3-member etcd (as `zwal cluster init --coordinator
etcd` does) and the nodes fail over through it by themselves (`zwal drill
--auto`). With network namespaces too, etcd listens on the bridge's service
address, so a node can be cut off from etcd and from nothing else.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from daemon import config as config_mod
from daemon.cli.cmd_cluster import LocalEtcd, create_keys, mark_first_start, render
from daemon.failover.faults.disk import FailingDisk
from daemon.failover.faults.netns import Net
from daemon.ops.ports import free_base_port


class ScratchCluster:
    def __init__(self, root: str, nodes: int = 3, ack_replicas: int = 1, *, netns: bool = False,
                 disks: bool = False, etcd: bool = False, lease_ttl: int = 1, restart_delay: float = 0.5,
                 say: Callable[[str], None] = print) -> None:
        self.root = os.path.abspath(root)
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        self.k = ack_replicas
        self.want_netns = netns
        self.want_disks = disks
        self.want_etcd = etcd
        self.lease_ttl = lease_ttl
        self.etcd: LocalEtcd | None = None
        self.etcd_procs: list[subprocess.Popen] = []
        self.restart_delay = restart_delay
        self.say = say
        self.net: Net | None = None
        self.disks: dict[str, FailingDisk] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {n: 0 for n in self.names}
        self.exits: list[tuple[str, int]] = []
        self.held: set[str] = set()  # stopped on purpose: not restarted until release()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self.config_path = os.path.join(self.root, "cluster.toml")
        self.cfg: config_mod.ClusterConfig | None = None

    # -- building -----------------------------------------------------------------------------

    def start(self) -> config_mod.ClusterConfig:
        os.makedirs(os.path.join(self.root, "log"), exist_ok=True)
        if self.want_netns:
            self.net = Net.make(self.names)
            base = random.randrange(20000, 50000)  # each namespace has its own ports
        else:
            base = free_base_port(3 * len(self.names) + 3)
        etcd_eps = self._start_etcd() if self.want_etcd else None
        text, _ = render(self.root, len(self.names), base, self.k, "drill-scratch",
                         create_keys(self.root, len(self.names)), etcd=etcd_eps, lease_ttl=self.lease_ttl)
        if self.net is not None:
            for i, n in enumerate(self.names):
                for port in (base + 3 * i + 1, base + 3 * i + 2):
                    text = text.replace(f"tcp://127.0.0.1:{port}\"", f"tcp://{self.net.ip[n]}:{port}\"")
        with open(self.config_path, "w") as f:
            f.write(text)
        if self.want_disks:
            for n in self.names:
                self.disks[n] = FailingDisk.make(os.path.join(self.root, "disks", n), os.path.join(self.root, n),
                                                 backing_mib=64, image_mib=96)
        self.cfg = config_mod.load(self.config_path)
        mark_first_start(self.cfg)  # a new cluster (daemon/node/bootstrap.py)
        for n in self.names:
            self._spawn(n)
        self._monitor = threading.Thread(target=self._watch, name="zwal-scratch-supervisor", daemon=True)
        self._monitor.start()
        return self.cfg

    def _start_etcd(self) -> list[str]:
        """A 3-member etcd (on the service address with namespaces, else loopback), ready for writes."""
        import shutil

        from daemon.failover.etcd import EtcdClient, EtcdUnavailable
        from daemon.failover.faults import FaultUnavailable

        binary = shutil.which("etcd")
        if binary is None:
            raise FaultUnavailable("no etcd binary on PATH (Debian: apt-get install etcd-server; make sysdeps)")
        host = self.net.service_ip if self.net is not None else "127.0.0.1"
        self.etcd = LocalEtcd(binary, free_base_port(8) - 30, host=host)  # (LocalEtcd counts from base + 30)
        for i, n in enumerate(self.etcd.names):
            out = open(os.path.join(self.root, "log", f"{n}.log"), "ab")
            self.etcd_procs.append(subprocess.Popen(self.etcd.command(i, os.path.join(self.root, "etcd", n)),
                                                    stdout=out, stderr=subprocess.STDOUT))
            out.close()
        c = EtcdClient(self.etcd.endpoints, timeout=0.5)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    c.put("/zwal-scratch-ready", b"1")
                    break
                except EtcdUnavailable:
                    if time.monotonic() > deadline:
                        raise FaultUnavailable(f"etcd did not come up within 20 s (logs in {self.root}/log)") from None
                    time.sleep(0.1)
        finally:
            c.close()
        self.say(f"etcd: 3 members at {', '.join(self.etcd.endpoints)}")
        return self.etcd.endpoints

    def wrap(self, name: str) -> list[str]:
        return self.net.wrap(name) if self.net is not None else []

    def node_log(self, name: str) -> str:
        return os.path.join(self.root, "log", f"{name}.log")

    def _spawn(self, name: str) -> None:
        out = open(self.node_log(name), "ab")
        cmd = [*self.wrap(name), sys.executable, "-m", "daemon.cli", "node", "--config", self.config_path,
               "--name", name]
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out.close()

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                for n, p in list(self.procs.items()):
                    code = p.poll()
                    if code is None or n in self.held:
                        continue
                    self.exits.append((n, code))
                    self.restarts[n] += 1
                    time.sleep(self.restart_delay)
                    if not self._stop.is_set():
                        self._spawn(n)

    def hold(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Stop `name` with `sig` and keep it stopped (its files may be changed) until `release`."""
        with self._lock:
            self.held.add(name)
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(sig)
            return p.wait(30)

    def release(self, name: str) -> None:
        """Start a held node again."""
        with self._lock:
            self.held.discard(name)
            self._spawn(name)

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(5)
        with self._lock:
            for p in self.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait(10)
        for p in self.etcd_procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for d in self.disks.values():
            d.destroy()
        if self.net is not None:
            self.net.down()
