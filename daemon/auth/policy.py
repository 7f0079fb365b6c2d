"""Which role may do what (pure; docs/security.md has the table).

- `client`: set, del, get, status, ping (and watch, once it exists);
- `admin`: all a client may, plus fence, promote, follow and snapshot;
- `node`: fetch on the replication endpoint; status and ping on the client
  endpoint (peer probes).

Invariant: an op is carried out only when `allowed` says so for the
authenticated key's current role; everything else gets `forbidden` (known
key) or nothing (unknown or revoked key) and changes nothing.
"""

from __future__ import annotations

ROLES = ("node", "client", "admin")

CLIENT_OPS = frozenset({"set", "del", "batch", "get", "status", "ping", "watch"})
ADMIN_OPS = CLIENT_OPS | {"fence", "promote", "follow", "snapshot", "handoff"}
NODE_CLIENT_OPS = frozenset({"status", "ping"})


def allowed(role: str, op: str) -> bool:
    """May a key of `role` send `op` to a node's client endpoint?"""
    if role == "admin":
        return op in ADMIN_OPS
    if role == "client":
        return op in CLIENT_OPS
    if role == "node":
        return op in NODE_CLIENT_OPS
    return False


def may_replicate(role: str) -> bool:
    """May a key of `role` use a node's replication endpoint (fetch)?"""
    return role == "node"
