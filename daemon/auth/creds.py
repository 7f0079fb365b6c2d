"""A client's side of CurveZMQ: its own certificate and each server's public key.

Resolved from the cluster file (`for_config`) or given by hand (`--cert`,
`--server-key`). With security = "none" there are no credentials (None).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import zmq

from daemon.auth.keys import KeyError_, load_secret, secret_path
from daemon.auth.zap import as_client


@dataclass(frozen=True)
class Credentials:
    public: bytes
    secret: bytes
    server_keys: dict[str, str] = field(default_factory=dict)  # endpoint -> Z85 public key
    default_server_key: str | None = None
    cluster_id: str = ""  # the cluster these keys are for: clients name it in every request

    def apply(self, sock: zmq.Socket, endpoint: str) -> None:
        key = self.server_keys.get(endpoint, self.default_server_key)
        if key is None:
            raise KeyError_(f"no public key known for {endpoint}: add public_key to its [[node]] in the cluster "
                            "file, or pass --server-key")
        as_client(sock, self.public, self.secret, key)


@dataclass(frozen=True)
class Plain:
    """security = "none": no keys, but every request still names the cluster."""

    cluster_id: str = ""

    def apply(self, sock: zmq.Socket, endpoint: str) -> None:
        pass


def for_config(cfg, role: str = "client", name: str | None = None,
               cert: str | None = None) -> "Credentials | Plain":
    """The credentials a `role` uses to reach this cluster's nodes (`Plain`,
    carrying only the cluster id, for security = "none")."""
    if cfg.security == "none":
        return Plain(cfg.cluster_id)
    path = cert or secret_path(cfg.keys_dir, role, name or role)
    if not os.path.exists(path):
        raise KeyError_(f"{path}: no such certificate. The cluster uses CURVE (security = \"curve\"): "
                        f"create one with 'zwal keys new {name or role} --role {role} --config {cfg.path}', "
                        "or pass --cert FILE")
    public, secret = load_secret(path)
    keys: dict[str, str] = {}
    for n in cfg.nodes:
        if n.public_key:
            keys[n.client_endpoint] = n.public_key
            keys[n.repl_endpoint] = n.public_key
    return Credentials(public, secret, keys, cluster_id=cfg.cluster_id)


def by_hand(cert: str, server_key: str | None) -> Credentials:
    public, secret = load_secret(cert)
    return Credentials(public, secret, {}, server_key)
