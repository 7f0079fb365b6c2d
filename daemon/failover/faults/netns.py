"""Real network partitions: each node in its own network namespace.

Layout, made by `Net.up()` and removed by `Net.down()`:

    root namespace (the test: clients, operator)  bridge zb<tag> 10.A.B.1/24
        |-- veth zv<tag><i>a == zv<tag><i>b -- namespace zw<tag>n<i>: 10.A.B.(10+i)/24

The subnet and the names are chosen per test, so runs never collide. Node
processes are started with `ip netns exec`. Faults:

- `cut(a, b)`: blackhole routes both ways between two nodes' namespaces
  (packets vanish; established TCP connections hang, as in a real
  partition, rather than being reset);
- `cut_from_clients(a)`: a blackhole route in the root namespace only, so
  the node still talks to its peers (bridged traffic between namespaces
  does not pass the root namespace's routing);
- `link(a, up)`: the node's veth down or up (a flapping cable);
- `cut_from_service(a)`: a blackhole route in the node's namespace to the
  bridge's second address, 10.A.B.2 (`service_ip`), where a test runs a
  shared service such as etcd: the node loses etcd and nothing else.

Needs root and iproute2; `Net.make` raises FaultUnavailable saying why.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

from daemon.failover.faults import FaultUnavailable


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise NetError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class NetError(Exception):
    pass


class Net:
    def __init__(self, names: list[str]) -> None:
        self.tag = os.urandom(2).hex()
        a, b = random.randrange(100, 250), random.randrange(1, 250)
        self.subnet = f"10.{a}.{b}"
        self.gateway = f"{self.subnet}.1"
        self.service_ip = f"{self.subnet}.2"  # a second address on the bridge, in the root namespace
        self._service_cuts: set[str] = set()
        self.bridge = f"zb{self.tag}"
        self.names = list(names)
        self.ns = {n: f"zw{self.tag}n{i}" for i, n in enumerate(names, 1)}
        self.ip = {n: f"{self.subnet}.{10 + i}" for i, n in enumerate(names, 1)}
        self.veth = {n: f"zv{self.tag}{i}" for i, n in enumerate(names, 1)}
        self._cuts: set[tuple[str, str]] = set()
        self._client_cuts: set[str] = set()

    @classmethod
    def make(cls, names: list[str]) -> "Net":
        if os.geteuid() != 0:
            raise FaultUnavailable("network partitions need root (network namespaces); run as root")
        if shutil.which("ip") is None:
            raise FaultUnavailable("iproute2 is not installed (apt-get install iproute2)")
        net = cls(names)
        try:
            net.up()
        except NetError as e:
            net.down()
            raise FaultUnavailable(f"cannot build network namespaces here: {e}") from None
        return net

    def up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("addr", "add", f"{self.service_ip}/32", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n in self.names:
            ns, v = self.ns[n], self.veth[n]
            _ip("netns", "add", ns)
            _ip("link", "add", f"{v}a", "type", "veth", "peer", "name", f"{v}b")
            _ip("link", "set", f"{v}a", "master", self.bridge)
            _ip("link", "set", f"{v}a", "up")
            _ip("link", "set", f"{v}b", "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.ip[n]}/24", "dev", f"{v}b")
            _ip("-n", ns, "link", "set", f"{v}b", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.gateway)

    def down(self) -> None:
        for n in self.names:
            _ip("netns", "del", self.ns[n], check=False)
        _ip("link", "del", self.bridge, check=False)
        for c in list(self._client_cuts):
            _ip("route", "del", "blackhole", f"{self.ip[c]}/32", check=False)
        self._client_cuts.clear()

    def wrap(self, name: str) -> list[str]:
        """The command prefix that runs a program in the node's namespace."""
        return ["ip", "netns", "exec", self.ns[name]]

    def wraps(self) -> dict[str, list[str]]:
        return {n: self.wrap(n) for n in self.names}

    # -- faults -------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        if (a, b) in self._cuts:
            return
        _ip("-n", self.ns[a], "route", "add", "blackhole", f"{self.ip[b]}/32")
        _ip("-n", self.ns[b], "route", "add", "blackhole", f"{self.ip[a]}/32")
        self._cuts |= {(a, b), (b, a)}

    def heal(self, a: str, b: str) -> None:
        if (a, b) not in self._cuts:
            return
        _ip("-n", self.ns[a], "route", "del", "blackhole", f"{self.ip[b]}/32", check=False)
        _ip("-n", self.ns[b], "route", "del", "blackhole", f"{self.ip[a]}/32", check=False)
        self._cuts -= {(a, b), (b, a)}

    def isolate(self, a: str, others: list[str]) -> None:
        for b in others:
            self.cut(a, b)

    def cut_from_clients(self, a: str) -> None:
        if a not in self._client_cuts:
            _ip("route", "add", "blackhole", f"{self.ip[a]}/32")
            self._client_cuts.add(a)

    def heal_clients(self, a: str) -> None:
        if a in self._client_cuts:
            _ip("route", "del", "blackhole", f"{self.ip[a]}/32", check=False)
            self._client_cuts.discard(a)

    def cut_from_service(self, a: str) -> None:
        if a not in self._service_cuts:
            _ip("-n", self.ns[a], "route", "add", "blackhole", f"{self.service_ip}/32")
            self._service_cuts.add(a)

    def heal_service(self, a: str) -> None:
        if a in self._service_cuts:
            _ip("-n", self.ns[a], "route", "del", "blackhole", f"{self.service_ip}/32", check=False)
            self._service_cuts.discard(a)

    def link(self, a: str, up: bool) -> None:
        _ip("link", "set", f"{self.veth[a]}a", "up" if up else "down")

    def heal_all(self) -> None:
        for a, b in list(self._cuts):
            self.heal(a, b)
        for a in list(self._client_cuts):
            self.heal_clients(a)
        for a in list(self._service_cuts):
            self.heal_service(a)
        for n in self.names:
            self.link(n, True)
