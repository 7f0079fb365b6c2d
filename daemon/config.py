"""The cluster file: one TOML document that describes every node.

Every tool takes `--config` and finds all nodes from it. Relative data
directories are resolved against the file's own directory, so a cluster
directory can be moved as a whole. README.md documents every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field

FSYNC_MODES = ("group", "per-record")
SECURITY_MODES = ("curve", "none")
LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")
# The retry window (docs/protocol.md, "Retries"): how long a client's recent
# request ids are remembered after its last write, and how many bytes all
# remembered windows may use. Kafka's anchors: producer.id.expiration.ms
# (KIP-854, default one day) and its throttle on new producer ids (KIP-936).
# 300 s is thirty times a client's default deadline of 10 s (every retry of a
# write falls inside it) and short enough that the default budget holds the
# one-off ids of about 560 `zwal set` calls a second (docs/protocol.md).
RETRY_WINDOW_SECONDS = 300.0
RETRY_BUDGET_BYTES = 64 * 1024 * 1024
# A log segment rolls once it holds this many bytes (between batches, so a
# batch may overflow it). Kafka's log.segment.bytes is 1 GiB; 64 MiB keeps
# the unit of retention small while a 350 MB log is still only 6 files.
SEGMENT_BYTES = 64 * 1024 * 1024
MIN_SEGMENT_BYTES = 64 * 1024
# A node snapshots its state after this much new log (docs/format.md,
# "Snapshots"): a restart then replays at most about this much. 0: only on
# demand (`zwal snapshot`).
SNAPSHOT_BYTES = 256 * 1024 * 1024
SNAPSHOT_BYTES_MIN = 1024 * 1024
# How much log a node keeps below its snapshots (docs/format.md,
# "Retention"): sealed segments wholly below the older kept snapshot go
# while at least this much log stays; -1 keeps everything.
RETAIN_BYTES = 1024 * 1024 * 1024


COORDINATOR_KINDS = ("none", "etcd")
LEASE_TTL = 3  # seconds: Patroni's ttl is 30 with a 10 s loop; ours fits a log that fails over in seconds


class ConfigError(Exception):
    """The cluster file is missing, unreadable or has a wrong key; the message says which."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: str
    client_endpoint: str
    repl_endpoint: str
    metrics_port: int | None = None
    public_key: str | None = None  # Z85 CURVE public key: clients know which server they talk to

    @property
    def log_dir(self) -> str:
        """The segmented log (daemon/wal/segments.py): `<data_dir>/log/<base>.seg`."""
        return os.path.join(self.data_dir, "log")

    @property
    def state_path(self) -> str:
        return os.path.join(self.data_dir, "node-state.json")


@dataclass(frozen=True)
class CoordinatorConfig:
    """[coordinator] (docs/failover.md): who holds the leader lease and allocates epochs."""

    kind: str = "none"  # "none": failover by 'zwal promote'; "etcd": automatic, through etcd
    endpoints: tuple[str, ...] = ()
    lease_ttl: int = LEASE_TTL
    prefix: str = ""  # the etcd keys: <prefix>/leader, <prefix>/epoch; includes the cluster id
    allow_data_loss: bool = False  # with ack_replicas = 0, fail over anyway (acknowledged writes may be lost)
    # The election's winner waits out an old lease etcd may have ended early (etcd#15247); off only for an
    # etcd with the fix (docs/failover.md, "An etcd that revokes early").
    early_revoke_guard: bool = True

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


@dataclass(frozen=True)
class ClusterConfig:
    path: str
    name: str
    bootstrap_leader: str
    nodes: tuple[NodeConfig, ...]
    ack_replicas: int = 0
    replication_timeout: float = 2.0
    fsync_mode: str = "group"
    batch_max_records: int = 1024
    batch_max_bytes: int = 4 * 1024 * 1024
    heartbeat_interval: float = 0.5
    fetch_max_bytes: int = 4 * 1024 * 1024
    max_uncommitted_bytes: int = 64 * 1024 * 1024
    peer_probe_interval: float = 1.0
    security: str = "curve"
    keys_dir: str = ""  # absolute; "" = <cluster file's directory>/keys
    metrics_bind: str = "127.0.0.1"
    # Connections from client keys each node accepts at once (0: its file limit
    # minus FD_HEADROOM, so peers, admins, the log and the state file always
    # have descriptors left). Only enforced with security = "curve".
    max_client_connections: int = 0
    # Names this cluster on the wire (docs/protocol.md): a node answers a
    # request that names another cluster with wrong_cluster and changes
    # nothing. "" (a file from before cluster ids): not checked.
    cluster_id: str = ""
    retry_window_seconds: float = RETRY_WINDOW_SECONDS
    retry_budget_bytes: int = RETRY_BUDGET_BYTES
    segment_bytes: int = SEGMENT_BYTES
    snapshot_bytes: int = SNAPSHOT_BYTES
    retain_bytes: int = RETAIN_BYTES
    coordinator: CoordinatorConfig = CoordinatorConfig()
    extra: dict = field(default_factory=dict)

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"{self.path}: no node named {name!r} (nodes: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def peers(self, name: str) -> list[NodeConfig]:
        return [n for n in self.nodes if n.name != name]


_CLUSTER_KEYS = {
    "name": str,
    "cluster_id": str,
    "bootstrap_leader": str,
    "ack_replicas": int,
    "replication_timeout": (int, float),
    "fsync_mode": str,
    "batch_max_records": int,
    "batch_max_bytes": int,
    "heartbeat_interval": (int, float),
    "fetch_max_bytes": int,
    "max_uncommitted_bytes": int,
    "peer_probe_interval": (int, float),
    "security": str,
    "keys_dir": str,
    "metrics_bind": str,
    "max_client_connections": int,
    "retry_window_seconds": (int, float),
    "retry_budget_bytes": int,
    "segment_bytes": int,
    "snapshot_bytes": int,
    "retain_bytes": int,
}
_NODE_KEYS = {"name": str, "data_dir": str, "client_endpoint": str, "repl_endpoint": str, "metrics_port": int,
              "public_key": str}


def _check(where: str, table: dict, schema: dict, required: set[str]) -> None:
    for k, v in table.items():
        if k not in schema:
            raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(schema))})")
        if isinstance(v, bool) or not isinstance(v, schema[k]):
            raise ConfigError(f"{where}: key {k!r} has the wrong type ({type(v).__name__})")
    missing = required - set(table)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(sorted(missing))}")


def load(path: str) -> ClusterConfig:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such cluster file (create one with 'zwal cluster init DIR')") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; pass the cluster.toml inside it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return parse(doc, os.path.abspath(path))


def parse(doc: dict, path: str) -> ClusterConfig:
    base = os.path.dirname(path)
    cluster = doc.get("cluster", {})
    if not isinstance(cluster, dict):
        raise ConfigError(f"{path}: [cluster] must be a table")
    _check(f"{path} [cluster]", cluster, _CLUSTER_KEYS, {"bootstrap_leader"})
    raw_nodes = doc.get("node", [])
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(f"{path}: needs at least one [[node]] table")
    extra = set(doc) - {"cluster", "node", "coordinator"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(extra))}")
    nodes = []
    seen_names: set[str] = set()
    seen_eps: set[str] = set()
    for i, n in enumerate(raw_nodes):
        where = f"{path} [[node]] #{i + 1}"
        if not isinstance(n, dict):
            raise ConfigError(f"{where}: must be a table")
        _check(where, n, _NODE_KEYS, {"name", "data_dir", "client_endpoint", "repl_endpoint"})
        if n["name"] in seen_names:
            raise ConfigError(f"{where}: duplicate node name {n['name']!r}")
        for ep in (n["client_endpoint"], n["repl_endpoint"]):
            if ep in seen_eps:
                raise ConfigError(f"{where}: endpoint {ep} is used twice")
            seen_eps.add(ep)
        seen_names.add(n["name"])
        data_dir = n["data_dir"] if os.path.isabs(n["data_dir"]) else os.path.join(base, n["data_dir"])
        key = n.get("public_key")
        if key is not None and len(key) != 40:
            raise ConfigError(f"{where}: public_key must be the 40-character Z85 text of a CURVE public key")
        nodes.append(NodeConfig(n["name"], data_dir, n["client_endpoint"], n["repl_endpoint"], n.get("metrics_port"),
                                key))
    cfg = ClusterConfig(
        path=path,
        name=cluster.get("name", "zwal"),
        bootstrap_leader=cluster["bootstrap_leader"],
        nodes=tuple(nodes),
        **{k: cluster[k] for k in _CLUSTER_KEYS
           if k in cluster and k not in ("name", "bootstrap_leader", "keys_dir")},
        keys_dir=os.path.join(base, cluster.get("keys_dir", "keys")),
    )
    cfg = _with_coordinator(cfg, doc.get("coordinator", {}), path)
    if cfg.bootstrap_leader not in seen_names:
        raise ConfigError(f"{path}: bootstrap_leader {cfg.bootstrap_leader!r} is not a node")
    if cfg.fsync_mode not in FSYNC_MODES:
        raise ConfigError(f"{path}: fsync_mode must be one of {', '.join(FSYNC_MODES)}")
    followers = len(nodes) - 1
    if not 0 <= cfg.ack_replicas <= followers:
        raise ConfigError(
            f"{path}: ack_replicas = {cfg.ack_replicas} but the cluster has {followers} follower(s); "
            f"it must be between 0 and {followers}"
        )
    if cfg.replication_timeout <= 0 or cfg.heartbeat_interval <= 0:
        raise ConfigError(f"{path}: replication_timeout and heartbeat_interval must be positive")
    if cfg.batch_max_records < 1 or cfg.batch_max_bytes < 1:
        raise ConfigError(f"{path}: batch limits must be at least 1")
    if cfg.cluster_id and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", cfg.cluster_id):
        raise ConfigError(f"{path}: cluster_id must be 1..64 letters, digits, '.', '_' or '-' "
                          "('zwal cluster init' writes a random one)")
    if cfg.max_client_connections < 0:
        raise ConfigError(f"{path}: max_client_connections must be 0 (automatic) or more")
    if cfg.retry_window_seconds <= 0:
        raise ConfigError(f"{path}: retry_window_seconds must be positive (default {RETRY_WINDOW_SECONDS:g}); "
                          "keep it well above every client's deadline")
    if cfg.retry_budget_bytes < 1024 * 1024:
        raise ConfigError(f"{path}: retry_budget_bytes must be at least 1048576 (default {RETRY_BUDGET_BYTES})")
    if cfg.segment_bytes < MIN_SEGMENT_BYTES:
        raise ConfigError(f"{path}: segment_bytes must be at least {MIN_SEGMENT_BYTES} (default {SEGMENT_BYTES})")
    if cfg.retain_bytes < -1:
        raise ConfigError(f"{path}: retain_bytes must be -1 (keep every segment) or at least 0 "
                          f"(default {RETAIN_BYTES})")
    if cfg.snapshot_bytes != 0 and cfg.snapshot_bytes < SNAPSHOT_BYTES_MIN:
        raise ConfigError(f"{path}: snapshot_bytes must be 0 (snapshots only on demand, with 'zwal snapshot') or "
                          f"at least {SNAPSHOT_BYTES_MIN} (default {SNAPSHOT_BYTES})")
    if cfg.security not in SECURITY_MODES:
        raise ConfigError(f"{path}: security must be one of {', '.join(SECURITY_MODES)}")
    if cfg.security == "none":
        for n in cfg.nodes:
            for ep in (n.client_endpoint, n.repl_endpoint):
                if not is_loopback(ep):
                    raise ConfigError(
                        f"{path}: security = \"none\" is allowed only when every endpoint is on loopback, and "
                        f"{n.name}'s {ep} is not: anyone on that network could read, write and fence. "
                        f"Set security = \"curve\" (keys: zwal keys new, docs/security.md)")
    else:
        missing = [n.name for n in cfg.nodes if not n.public_key]
        if missing:
            raise ConfigError(
                f"{path}: security = \"curve\" but node(s) {', '.join(missing)} have no public_key; "
                f"'zwal cluster init' writes them (or copy each node's keys/nodes/<name>.key into its [[node]])")
    return cfg


def _with_coordinator(cfg: ClusterConfig, t: object, path: str) -> ClusterConfig:
    import dataclasses

    where = f"{path} [coordinator]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {"kind": str, "endpoints": list, "lease_ttl": int, "prefix": str, "allow_data_loss": bool,
             "early_revoke_guard": bool}
    for k, v in t.items():
        if k not in known:
            raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(known))})")
        if not isinstance(v, known[k]) or (isinstance(v, bool) and known[k] is not bool):
            raise ConfigError(f"{where}: key {k!r} has the wrong type ({type(v).__name__})")
    kind = t.get("kind", "none")
    if kind not in COORDINATOR_KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(COORDINATOR_KINDS)} (got {kind!r})")
    eps = tuple(t.get("endpoints", []))
    if kind == "etcd":
        if not eps or not all(isinstance(e, str) and e.startswith(("http://", "https://")) for e in eps):
            raise ConfigError(f"{where}: kind = \"etcd\" needs endpoints = [\"http://HOST:2379\", ...] "
                              "(every member's client URL)")
        if not cfg.cluster_id:
            raise ConfigError(f"{where}: kind = \"etcd\" needs [cluster] cluster_id (the etcd keys are "
                              "per cluster); 'zwal cluster init' writes one")
    ttl = t.get("lease_ttl", LEASE_TTL)
    if not 1 <= ttl <= 3600:
        raise ConfigError(f"{where}: lease_ttl must be 1..3600 seconds (default {LEASE_TTL})")
    prefix = t.get("prefix", f"/zwal/{cfg.cluster_id}")
    if kind == "etcd" and cfg.cluster_id not in prefix.split("/"):
        raise ConfigError(f"{where}: prefix {prefix!r} must contain the cluster id {cfg.cluster_id!r} as one of its "
                          "parts (for example /zwal/" + cfg.cluster_id + "), so two clusters never share a lease")
    allow = t.get("allow_data_loss", False)
    guard = t.get("early_revoke_guard", True)
    return dataclasses.replace(cfg, coordinator=CoordinatorConfig(kind, eps, ttl, prefix.rstrip("/"), allow, guard))


def is_loopback(endpoint: str) -> bool:
    """Only a literal loopback address (or `localhost`, ipc://) counts: a name
    like 127.0.0.1.example.com resolves wherever DNS says."""
    import ipaddress

    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    rest = endpoint.split("://", 1)[-1]
    if ";" in rest:
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
