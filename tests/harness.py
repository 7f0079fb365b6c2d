"""A real cluster for tests: real node processes, real sockets on 127.0.0.1.

Nothing here fakes zwal: it renders a cluster directory the way
`zwal cluster init` does, starts `zwal node` processes, and talks to them
with the real client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable

from daemon.client.blocking import Client
from daemon import config as config_mod
from daemon.cli.cmd_cluster import create_keys, mark_first_start, render
from daemon.ops.ports import free_base_port  # noqa: F401  (tests import it from here)
from daemon.wal.reader import sha256_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # the condition may poll a node that is restarting
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


sha256 = sha256_file


# Client credentials of every test cluster, by client endpoint: raw sockets in
# tests (secure_raw) speak CURVE to whichever cluster owns the endpoint.
CLIENT_CREDS: dict[str, Any] = {}


def secure_raw(sock: Any, endpoint: str) -> Any:
    creds = CLIENT_CREDS.get(endpoint)
    if creds is not None:
        creds.apply(sock, endpoint)
    return sock


class Cluster:
    def __init__(self, root: str, nodes: int = 3, ack_replicas: int | None = None, *,
                 hosts: dict[str, str] | None = None, wraps: dict[str, list[str]] | None = None,
                 security: str = "curve", coordinator: dict[str, Any] | None = None, **settings: Any) -> None:
        """`hosts` puts a node's endpoints on another address (a network
        namespace's, tests/netns.py); `wraps` prefixes its command line."""
        self.root = root
        self.n = nodes
        self.base_port = free_base_port(3 * nodes + 3)
        keys = create_keys(root, nodes) if security == "curve" else None
        cluster, sup = render(root, nodes, self.base_port, ack_replicas, "test", keys)
        self.hosts = {f"node{i}": "127.0.0.1" for i in range(1, nodes + 1)}
        self.wraps = dict(wraps or {})
        for name, host in (hosts or {}).items():
            i = int(name[4:]) - 1
            for port in (self.base_port + 3 * i + 1, self.base_port + 3 * i + 2):
                cluster = cluster.replace(f"tcp://127.0.0.1:{port}\"", f"tcp://{host}:{port}\"")
            self.hosts[name] = host
        for k, v in settings.items():
            val = f'"{v}"' if isinstance(v, str) else str(v)
            cluster, count = re.subn(rf"(?m)^{k} = [^#\n]*", f"{k} = {val}  ", cluster)
            assert count == 1, f"unknown cluster setting {k}"
        if coordinator is not None:  # [coordinator] (docs/failover.md)
            cluster += "\n[coordinator]\n" + "".join(
                f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}\n"
                for k, v in coordinator.items())
        os.makedirs(os.path.join(root, "log"), exist_ok=True)
        self.config = os.path.join(root, "cluster.toml")
        with open(self.config, "w") as f:
            f.write(cluster)
        mark_first_start(config_mod.load(self.config))  # as `zwal cluster init` does: a new cluster's first start
        with open(os.path.join(root, "supervisord.conf"), "w") as f:
            f.write(sup)
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        if security == "curve":
            creds = self.creds()
            for n in self.names:
                CLIENT_CREDS[self.endpoint(n)] = creds
        self.procs: dict[str, subprocess.Popen] = {}
        self._clients: list[Client] = []

    # -- processes ----------------------------------------------------------------

    def endpoint(self, name: str) -> str:
        i = self.names.index(name)
        return f"tcp://{self.hosts[name]}:{self.base_port + 3 * i + 1}"

    def metrics_url(self, name: str) -> str:
        i = self.names.index(name)
        return f"http://127.0.0.1:{self.base_port + 3 * i + 3}/metrics"

    def log_path(self, name: str) -> str:
        """The node's first segment: its whole log while the log is below segment_bytes (64 MiB by default)."""
        return os.path.join(self.log_dir(name), "00000000000000000000.seg")

    def log_dir(self, name: str) -> str:
        return os.path.join(self.data_dir(name), "log")

    def data_dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def node_log(self, name: str) -> str:
        return os.path.join(self.root, "log", f"{name}.log")

    def start(self, name: str, *, wait: bool = True, wrap: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        assert name not in self.procs or self.procs[name].poll() is not None, f"{name} already running"
        out = open(self.node_log(name), "ab")
        cmd = [*self.wraps.get(name, []), *(wrap or []), sys.executable, "-m", "daemon.cli", "node",
               "--config", self.config, "--name", name]
        # Its own process group: close() kills a wrapper (strace) and the node under it together.
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        out.close()
        self.procs[name] = p
        if wait:
            wait_until(lambda: self.ping(name), 45, f"{name} to answer")  # a cap: returns at the first answer
        return p

    def start_all(self) -> None:
        for n in self.names:
            self.start(n, wait=False)
        for n in self.names:
            wait_until(lambda n=n: self.ping(n), 15, f"{n} to answer")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop(self, name: str, timeout: float = 10) -> int:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def close(self) -> None:
        for c in self._clients:
            c.close()
        for name, p in self.procs.items():
            try:
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if p.poll() is None:
                p.wait(10)

    # -- talking to it ---------------------------------------------------------------

    def creds(self, role: str = "client", name: str | None = None) -> Any:
        """This cluster's CurveZMQ credentials for `role` (None with security = "none")."""
        from daemon import config as config_mod
        from daemon.auth.creds import for_config

        return for_config(config_mod.load(self.config), role, name)

    def secure(self, sock: Any, endpoint: str, role: str = "client", name: str | None = None) -> Any:
        """Make a raw socket (before connect) a CURVE client of `endpoint` as `role`."""
        creds = self.creds(role, name)
        if creds is not None:
            creds.apply(sock, endpoint)
        return sock

    def dealer(self, endpoint: str, role: str = "client", name: str | None = None,
               opts: dict[int, int] | None = None) -> Any:
        """A raw DEALER connected to `endpoint` as `role` (CURVE when the cluster
        uses it); `opts` are socket options set before connecting."""
        import zmq

        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        for k, v in (opts or {}).items():
            s.setsockopt(k, v)
        self.secure(s, endpoint, role, name)
        s.connect(endpoint)
        return s

    def client(self, **kw: Any) -> Client:
        kw.setdefault("timeout", 1.0)
        kw.setdefault("deadline", 15.0)
        c = Client(config=self.config, **kw)
        self._clients.append(c)
        return c

    def ping(self, name: str) -> bool:
        with Client([self.endpoint(name)], config=self.config, timeout=0.5, deadline=0.5) as c:
            try:
                c.ping(endpoint=self.endpoint(name), deadline=0.5)
                return True
            except Exception:
                return False

    def status(self, name: str, timeout: float = 2.0) -> dict[str, Any]:
        with Client([self.endpoint(name)], config=self.config, timeout=timeout, deadline=timeout) as c:
            return c.status(endpoint=self.endpoint(name), deadline=timeout)

    def leader(self) -> str | None:
        for n in self.names:
            if self.alive(n):
                try:
                    st = self.status(n, 1.0)
                except Exception:
                    continue
                if st["role"] == "leader":
                    return n
        return None

    def wait_in_sync(self, leader: str = "node1", timeout: float = 20) -> None:
        """Every follower is in sync with `leader` (a K >= 1 write right after a start needs it)."""
        wait_until(lambda: (st := self.status(leader, 1.0)).get("followers") is not None
                   and all(f.get("in_sync") for f in st["followers"]), timeout, f"the followers in sync with {leader}")

    def wait_converged(self, names: list[str] | None = None, timeout: float = 30) -> None:
        """Every named node's log has the same end, and all are byte-identical (from the
        highest oldest offset on, when retention has pruned some of them)."""
        names = names or self.names

        def same() -> bool:
            ends = {n: self.status(n)["end"] for n in names}
            return len(set(ends.values())) == 1

        wait_until(same, timeout, f"{names} to reach the same end offset")
        from daemon.wal.segments import log_files

        def held(n: str) -> tuple[int, bytes] | None:
            """(first offset, bytes) of a node's log, from one listing; None if retention
            deleted a segment while it was read (a running node prunes by itself)."""
            files = log_files(self.log_dir(n))
            try:
                data = b"".join(open(p, "rb").read() for _, p in files)
            except FileNotFoundError:
                return None
            return files[0][0], data

        hashes: dict[str, str] = {}

        def agree() -> bool:
            logs: dict[str, tuple[int, bytes]] = {}
            for n in names:
                h = held(n)
                if h is None:
                    return False
                logs[n] = h
            start = max(b for b, _ in logs.values())  # bytes every node still holds
            hashes.clear()
            hashes.update({n: hashlib.sha256(d[start - b:]).hexdigest() for n, (b, d) in logs.items()})
            return len(set(hashes.values())) == 1

        for _ in range(20):  # a segment deleted between two nodes' reads: read again
            if agree():
                return
            time.sleep(0.1)
        raise AssertionError(f"logs differ: {hashes}")

    def zwal(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)


def leaders_by_epoch(c: "Cluster") -> dict[int, list[str]]:
    """Who says it leads, per epoch, among the nodes of `c` that answer."""
    out: dict[int, list[str]] = {}
    for n in c.names:
        if not c.alive(n):
            continue
        try:
            st = c.status(n, 0.5)
        except Exception:
            continue
        if st["role"] == "leader":
            out.setdefault(st["epoch"], []).append(n)
    return out
