"""A real 3-member etcd cluster for tests (Debian's etcd-server 3.4, installed by `make sysdeps`).

Each cluster picks its own ports (daemon/ops/ports.free_base_port) and keeps
its data under the test's tmp_path. The members run with a 50 ms heartbeat
and a 500 ms election timeout, so etcd grants a 1 s lease as asked (it
raises any TTL below ceil(1.5 x election timeout)).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from daemon.failover.etcd import EtcdClient, EtcdUnavailable
from daemon.ops.ports import free_base_port

ETCD = shutil.which("etcd")


def require_etcd() -> str:
    if ETCD is None:
        pytest.skip("etcd is not installed (make sysdeps installs Debian's etcd-server as root)")
    return ETCD


class EtcdCluster:
    def __init__(self, root: str, members: int = 3, host: str = "127.0.0.1") -> None:
        self.host = host  # another address (a network namespace's bridge) lets a test cut nodes off from etcd
        self.bin = require_etcd()
        base = free_base_port(span=2 * members + 2)
        self.names = [f"e{i}" for i in range(members)]
        self.client_port = {n: base + 1 + 2 * i for i, n in enumerate(self.names)}
        self.peer_port = {n: base + 2 + 2 * i for i, n in enumerate(self.names)}
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.initial = ",".join(f"{n}=http://{host}:{self.peer_port[n]}" for n in self.names)
        self.token = f"zwal-test-{base}"

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{self.client_port[n]}" for n in self.names]

    def start(self, name: str | None = None) -> None:
        for n in ([name] if name else self.names):
            data = os.path.join(self.root, n)
            os.makedirs(self.root, exist_ok=True)
            log = open(os.path.join(self.root, f"{n}.log"), "ab")
            self.procs[n] = subprocess.Popen(
                [self.bin, "--name", n, "--data-dir", data,
                 "--listen-client-urls", f"http://{self.host}:{self.client_port[n]}",
                 "--advertise-client-urls", f"http://{self.host}:{self.client_port[n]}",
                 "--listen-peer-urls", f"http://{self.host}:{self.peer_port[n]}",
                 "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port[n]}",
                 "--initial-cluster", self.initial, "--initial-cluster-token", self.token,
                 "--initial-cluster-state", "new",
                 "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"],
                stdout=log, stderr=log)
            log.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        c = EtcdClient(self.endpoints, timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.put("/ready", b"1")
                c.close()
                return
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not come up in {timeout} s; logs in {self.root}") from None
                time.sleep(0.1)

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None:
            p.kill()
            p.wait()

    def stop_all(self) -> None:
        for n in list(self.procs):
            p = self.procs.pop(n)
            p.send_signal(signal.SIGKILL)
            p.wait()

    def client(self, timeout: float = 0.5) -> EtcdClient:
        return EtcdClient(self.endpoints, timeout=timeout)


@pytest.fixture
def etcd3(tmp_path):
    c = EtcdCluster(str(tmp_path / "etcd"))
    c.start()
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop_all()
