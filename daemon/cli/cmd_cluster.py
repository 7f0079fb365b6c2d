"""`zwal cluster init` and `zwal node`: create a cluster directory, run a node.

The templates ship inside the package (daemon/templates/, read with
importlib.resources), so an installed wheel needs no checkout;
deploy/templates/ and deploy/systemd/ in the repository link to them.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
import sys
from importlib import resources

from daemon import config as config_mod
from daemon.cli.cmd_log import CLIError
from daemon.wal.segments import log_size

SYSTEMD_UNIT = "systemd/zwal@.service"
SYSUSERS = "systemd/zwal.sysusers.conf"


def template_text(name: str) -> str:
    """A file of daemon/templates/ (`name` may be `systemd/...`), from the installed package."""
    node = resources.files("daemon").joinpath("templates")
    for part in name.split("/"):
        node = node.joinpath(part)
    try:
        return node.read_text(encoding="utf-8")
    except OSError:
        raise CLIError(f"template daemon/templates/{name} is missing from this installation of zwal "
                       "(reinstall it: pip install zwal, or pip install . in a checkout)") from None


_template = template_text


def zwal_command() -> str:
    """How supervisord should start `zwal`: the script beside this interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "zwal")
    if os.path.exists(script):
        return os.path.abspath(script)
    found = shutil.which("zwal")
    if found:
        return os.path.abspath(found)
    return f"{sys.executable} -m daemon.cli"


def create_keys(dir_: str, nodes: int) -> dict[str, str]:
    """A certificate per node, one client and one admin certificate, under DIR/keys/;
    returns each node's public key (Z85) for its [[node]] section."""
    from daemon.auth import keys

    kd = os.path.join(dir_, "keys")
    os.makedirs(kd, mode=0o700, exist_ok=True)
    out = {}
    try:
        for i in range(1, nodes + 1):
            out[f"node{i}"] = keys.create(kd, "node", f"node{i}").public
        keys.create(kd, "client", "client")
        keys.create(kd, "admin", "admin")
    except keys.KeyError_ as e:
        raise CLIError(str(e), 1) from None
    return out


def layout(nodes: int, base_port: int, hosts: list[str] | None = None,
           data_root: str | None = None) -> list[dict]:
    """Where each node lives: name, host, its three ports and its data_dir.

    Node i is on host i (127.0.0.1 without `hosts`). Ports count from BASE on
    each host separately: nodes on different hosts share the same ports, nodes
    on one host get BASE+1..3, BASE+4..6, ... Without `data_root` a node's data
    lives in DIR/<node> (relative to the cluster file); with it, in the
    absolute <data_root>/<node>."""
    if hosts is not None and len(hosts) != nodes:
        raise ValueError("one host per node")
    out: list[dict] = []
    seen: dict[str, int] = {}
    for i in range(nodes):
        name = f"node{i + 1}"
        host = hosts[i] if hosts else "127.0.0.1"
        slot = seen.get(host, 0)
        seen[host] = slot + 1
        port = base_port + 3 * slot
        out.append({"node": name, "host": host, "client_port": port + 1, "repl_port": port + 2,
                    "metrics_port": port + 3,
                    "data_dir": os.path.join(data_root, name) if data_root else name})
    return out


def _endpoint_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def new_cluster_id() -> str:
    """A random id naming one cluster on the wire: requests for another cluster are refused (wrong_cluster)."""
    import secrets

    return secrets.token_hex(8)


def render(dir_: str, nodes: int, base_port: int, ack_replicas: int | None, name: str,
           public_keys: dict[str, str] | None = None, *, hosts: list[str] | None = None,
           data_root: str | None = None, etcd: "LocalEtcd | list[str] | None" = None,
           lease_ttl: int = 3) -> tuple[str, str]:
    """The cluster file and supervisord.conf; `public_keys` (from create_keys) turns
    CURVE on, None writes security = "none" (loopback only). `hosts` and
    `data_root`: see layout()."""
    k = ack_replicas if ack_replicas is not None else (1 if nodes > 1 else 0)
    node_t = _template("node.toml.tmpl")
    prog_t = _template("program.conf.tmpl")
    node_txt, progs = [], []
    places = layout(nodes, base_port, hosts, data_root)
    names = [p["node"] for p in places]
    for p in places:
        n = p["node"]
        key_line = f'public_key = "{public_keys[n]}"\n' if public_keys else ""
        node_txt.append(node_t.format(**{**p, "host": _endpoint_host(p["host"])}, public_key_line=key_line))
        progs.append(prog_t.format(node=n, zwal=zwal_command()))
    # One dict of fields for the cluster template, so a new [cluster] key is one entry here.
    cluster_fields = {"name": name, "cluster_id": new_cluster_id(), "ack_replicas": k, "nodes": "".join(node_txt),
                      "security": "curve" if public_keys else "none"}
    cluster = _template("cluster.toml.tmpl").format(**cluster_fields)
    extra_programs = ""
    if etcd is not None:
        eps = etcd.endpoints if isinstance(etcd, LocalEtcd) else etcd
        cluster += ("\n# Automatic failover: the leader lease and the epochs are held in etcd (docs/failover.md).\n"
                    "[coordinator]\nkind = \"etcd\"\nendpoints = [" + ", ".join(f'"{e}"' for e in eps) + "]\n"
                    f"lease_ttl = {lease_ttl}\n")
        if isinstance(etcd, LocalEtcd):
            extra_programs = etcd.programs()
    sup = _template("supervisord.conf.tmpl").format(dir=os.path.abspath(dir_), programs=",".join(names),
                                                    program_sections="".join(progs)) + extra_programs
    return cluster, sup


class LocalEtcd:
    """A 3-member etcd on 127.0.0.1 for a local cluster with automatic failover (`cluster init --coordinator etcd`)."""

    MEMBERS = 3

    def __init__(self, binary: str, base_port: int, host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.base = base_port + 30
        self.host = host  # the drill's scratch cluster puts it on its network's service address
        self.names = [f"etcd{i + 1}" for i in range(self.MEMBERS)]

    def client_port(self, i: int) -> int:
        return self.base + 1 + 2 * i

    def peer_port(self, i: int) -> int:
        return self.base + 2 + 2 * i

    @property
    def ports(self) -> list[int]:
        return [p for i in range(self.MEMBERS) for p in (self.client_port(i), self.peer_port(i))]

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{self.client_port(i)}" for i in range(self.MEMBERS)]

    def command(self, i: int, data_dir: str) -> list[str]:
        """Member i's command line, its data in `data_dir`."""
        h, n = self.host, self.names[i]
        initial = ",".join(f"{m}=http://{h}:{self.peer_port(j)}" for j, m in enumerate(self.names))
        return [self.binary, "--name", n, "--data-dir", data_dir,
                "--listen-client-urls", f"http://{h}:{self.client_port(i)}",
                "--advertise-client-urls", f"http://{h}:{self.client_port(i)}",
                "--listen-peer-urls", f"http://{h}:{self.peer_port(i)}",
                "--initial-advertise-peer-urls", f"http://{h}:{self.peer_port(i)}",
                "--initial-cluster", initial, "--initial-cluster-token", f"zwal-local-{self.base}",
                # A 50 ms heartbeat and a 500 ms election timeout (local members: sub-millisecond round
                # trips): etcd then grants a lease of 1 s as asked (it raises any TTL below 1.5 x the
                # election timeout; docs/failover.md, "The TTL etcd grants").
                "--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500",
                "--log-level", "warn"]

    def programs(self) -> str:
        out = ["\n; A local 3-member etcd for automatic failover (docs/failover.md); it starts before the nodes.\n"
               f"[group:etcd]\nprograms={','.join(self.names)}\n"]
        for i, n in enumerate(self.names):
            out.append(
                f"\n[program:{n}]\n"
                f"command={' '.join(self.command(i, f'%(here)s/etcd/{n}'))}\n"
                "directory=%(here)s\npriority=100\nautostart=true\nautorestart=true\nstartsecs=1\n"
                "stopsignal=TERM\nstopwaitsecs=10\nredirect_stderr=true\n"
                f"stdout_logfile=%(here)s/log/{n}.log\nstdout_logfile_maxbytes=20MB\nstdout_logfile_backups=2\n")
        return "".join(out)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could not bind host:port now (SO_REUSEADDR, as ZeroMQ and the metrics
    server set it, so a connection in TIME_WAIT does not count; a listener does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def check_ports_free(places: list[dict]) -> None:
    """Refuse, naming the port, when a port of a local cluster is taken (another cluster,
    e.g. `make run`'s on 7100, would answer its clients instead)."""
    for p in places:
        for what in ("client_port", "repl_port", "metrics_port"):
            port = p[what]
            if port_in_use(port, p["host"]):
                raise CLIError(
                    f"port {port} ({p['node']}'s {what.replace('_', ' ')}) is already in use on {p['host']}: "
                    "another cluster or program is listening there (make run's cluster uses 7100-7109). "
                    "Choose other ports with --base-port, or stop that program", 1)


def parse_hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",")]
    for h in hosts:
        if not h or any(c in h for c in ' "\'/\t[]') or h.startswith("-"):
            raise CLIError(f"--hosts: {h!r} is not a host name or address (give them comma-separated: h1,h2,h3)", 2)
    return hosts


def cmd_init(args: argparse.Namespace) -> int:
    d = args.dir
    cluster_path = os.path.join(d, "cluster.toml")
    sup_path = os.path.join(d, "supervisord.conf")
    for p in (cluster_path, sup_path):
        if os.path.exists(p):
            raise CLIError(f"{p} already exists: refusing to overwrite a cluster (remove {d} to start afresh)")
    hosts = parse_hosts(args.hosts) if args.hosts else None
    nodes = args.nodes if args.nodes is not None else (len(hosts) if hosts else 3)
    if hosts and len(hosts) != nodes:
        raise CLIError(f"--nodes {nodes} but --hosts names {len(hosts)} host(s): give one host per node", 2)
    if not 1 <= nodes <= 9:
        raise CLIError("--nodes must be between 1 and 9", 2)
    if args.ack_replicas is not None and not 0 <= args.ack_replicas < nodes:
        raise CLIError(f"--ack-replicas must be between 0 and {nodes - 1}", 2)
    if not 1024 <= args.base_port <= 65000:
        raise CLIError("--base-port must be between 1024 and 65000", 2)
    if args.data_root is not None and not os.path.isabs(args.data_root):
        raise CLIError(f"--data-root must be an absolute path (got {args.data_root!r})", 2)
    keys_dir = os.path.join(d, "keys")
    if os.path.exists(keys_dir):
        raise CLIError(f"{keys_dir} already exists: refusing to overwrite keys (remove {d} to start afresh)")
    etcd: LocalEtcd | list[str] | None = None
    if args.etcd_endpoints and args.coordinator != "etcd":
        raise CLIError("--etcd-endpoints goes with --coordinator etcd", 2)
    if args.lease_ttl != 3 and args.coordinator != "etcd":
        raise CLIError("--lease-ttl goes with --coordinator etcd", 2)
    if not 1 <= args.lease_ttl <= 3600:
        raise CLIError("--lease-ttl must be between 1 and 3600 seconds", 2)
    if args.coordinator == "etcd":
        if args.etcd_endpoints:
            etcd = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
            bad = [e for e in etcd if not e.startswith(("http://", "https://"))]
            if bad or not etcd:
                raise CLIError(f"--etcd-endpoints: {', '.join(bad) or 'none given'}: give client URLs, "
                               "http://HOST:2379,...", 2)
        elif hosts:
            raise CLIError("--coordinator etcd with --hosts needs --etcd-endpoints (the etcd cluster the hosts "
                           "reach); a local etcd is only written for a local cluster", 2)
        else:
            import shutil

            binary = shutil.which("etcd")
            if binary is None:
                raise CLIError("--coordinator etcd: no etcd binary on PATH for the local etcd (Debian: "
                               "apt-get install etcd-server; or give --etcd-endpoints of an etcd you run)", 1)
            etcd = LocalEtcd(binary, args.base_port)
            for port in etcd.ports:
                if port_in_use(port):
                    raise CLIError(f"port {port} (the local etcd's) is already in use on 127.0.0.1: choose other "
                                   "ports with --base-port, or stop that program", 1)
    if not hosts:
        check_ports_free(layout(nodes, args.base_port, None, None))
    cluster, sup = render(d, nodes, args.base_port, args.ack_replicas, args.name,
                          create_keys(d, nodes), hosts=hosts, data_root=args.data_root, etcd=etcd,
                          lease_ttl=args.lease_ttl)
    with open(cluster_path, "w") as f:
        f.write(cluster)
    if not hosts:
        os.makedirs(os.path.join(d, "log"), exist_ok=True)
        with open(sup_path, "w") as f:
            f.write(sup)
    cfg = config_mod.load(cluster_path)  # what we wrote must load
    if not hosts and args.data_root is None:
        mark_first_start(cfg)
    print(f"wrote {cluster_path} ({len(cfg.nodes)} node(s), ack_replicas = {cfg.ack_replicas})"
          + ("" if hosts else f" and {sup_path}"))
    if cfg.coordinator.enabled:
        print("failover:  automatic, through etcd at " + ", ".join(cfg.coordinator.endpoints)
              + (" (a local 3-member etcd in supervisord.conf)" if isinstance(etcd, LocalEtcd) else "")
              + "; docs/failover.md")
    print(f"keys:      {keys_dir}/ (nodes/, clients/client.key_secret, admins/admin.key_secret; "
          "CurveZMQ on every socket, docs/security.md)")
    if hosts:
        for n in cfg.nodes:
            print(f"  {n.name}: {n.client_endpoint} (data {n.data_dir})")
        print(f"on each host: copy {d}/ to /etc/zwal/ (each host needs only its own node's "
              "keys/nodes/<node>.key_secret), then: systemctl enable --now zwal@<node>  (deploy/README.md)")
        print(f"first start: once, on {cfg.bootstrap_leader}'s host, before {cfg.bootstrap_leader} first starts "
              f"(it alone leads epoch 1; the other nodes join it by themselves):")
        print(f"  {BOOTSTRAP_HINT.format(node=cfg.bootstrap_leader)}")
        print(f"then:      zwal status --config {cluster_path}")
        return 0
    if args.data_root is not None:
        print(f"first start: once, before {cfg.bootstrap_leader} first starts (it alone leads epoch 1):")
        print(f"  {BOOTSTRAP_HINT.format(node=cfg.bootstrap_leader)}")
    print(f"start it:  supervisord -c {sup_path}")
    print(f"then:      zwal status --config {cluster_path}")
    return 0


BOOTSTRAP_HINT = ("sudo install -d -o zwal -g zwal /var/lib/zwal/{node} && "
                  "sudo -u zwal /opt/zwal/.venv/bin/zwal cluster bootstrap --config /etc/zwal/cluster.toml --name {node}")


def mark_first_start(cfg: config_mod.ClusterConfig) -> None:
    """A new local cluster: every node's data directory gets its first-start marker
    (daemon/node/bootstrap.py), so the bootstrap leader leads epoch 1 and the others follow it."""
    from daemon.node.bootstrap import write_marker

    for n in cfg.nodes:
        write_marker(n.data_dir, cfg.cluster_id, cfg.bootstrap_leader)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Mark a node's first start, after checking that it and its peers hold nothing yet."""
    from daemon.client.blocking import fetch_statuses
    from daemon.failover.promote import operator_creds
    from daemon.node.bootstrap import read_marker, write_marker

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2) from None
    name = args.name or cfg.bootstrap_leader
    try:
        me = cfg.node(name)
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2) from None
    if os.path.exists(me.state_path) or log_size(me.data_dir) > 0:
        raise CLIError(f"{me.data_dir} already holds node-state.json or records: {name} has started before, and a "
                       "node that started before never bootstraps again (a rebuilt node joins as a follower by "
                       "itself; nothing to do)", 1)
    sts = fetch_statuses([(n.name, n.client_endpoint) for n in cfg.nodes], args.timeout, operator_creds(cfg))
    if sts.get(name) is not None:
        raise CLIError(f"{name} is running: stop it, run this again, then start it", 1)
    used = sorted(n for n, s in sts.items() if s is not None
                  and (s.get("end") or s.get("epoch", 0) > 1 or s.get("role") == "leader"))
    if used:
        raise CLIError(f"this cluster is not new: {', '.join(used)} already hold records, an epoch above 1 or "
                       f"lead; {name} must join it, not bootstrap it (start it without a marker: it joins as a "
                       "follower by itself)", 1)
    if read_marker(me.data_dir) is None:
        write_marker(me.data_dir, cfg.cluster_id, cfg.bootstrap_leader)
    silent = sorted(n for n, s in sts.items() if s is None and n != name)
    print(f"marked {name}'s first start in {me.data_dir}: on its next start it "
          + ("leads epoch 1" if name == cfg.bootstrap_leader else f"follows {cfg.bootstrap_leader} at epoch 1"))
    if silent:
        print(f"(not answering, so not checked: {', '.join(silent)}; nobody else may hold this cluster's records)")
    return 0


def cmd_systemd_unit(args: argparse.Namespace) -> int:
    sys.stdout.write(template_text(SYSUSERS if args.sysusers else SYSTEMD_UNIT))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from daemon.node.node import main_node

    try:
        return main_node(args.config, args.name)
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2) from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cluster", help="create a cluster directory (cluster.toml + supervisord.conf); print the systemd unit")
    cs = c.add_subparsers(dest="cluster_cmd", required=True, metavar="COMMAND")
    i = cs.add_parser(
        "init", help="write DIR/cluster.toml (and DIR/supervisord.conf for a local cluster)",
        description="Write a cluster file, CurveZMQ keys and (for a local cluster) a supervisord "
        "configuration for N nodes. Local (no --hosts): every node on 127.0.0.1, node i on ports "
        "BASE+3(i-1)+1 (clients), +2 (replication), +3 (metrics), its data in DIR/node<i>/ and its log in "
        "DIR/log/node<i>.log; init refuses, naming the port, when one of these ports is already taken. "
        "With --hosts h1,h2,h3: node i on host i, nodes on different hosts use the same ports "
        "(BASE+1..3), no supervisord.conf (run each node with systemd: deploy/README.md). "
        "Refuses to overwrite an existing cluster.",
    )
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--nodes", type=int, default=None,
                   help="number of nodes (default: 3, or one per --hosts entry)")
    i.add_argument("--base-port", type=int, default=7100, help="first port (default: %(default)s)")
    i.add_argument("--ack-replicas", type=int, default=None,
                   help="K: followers that must fsync before a write is acknowledged (default: 1 if there are followers)")
    i.add_argument("--name", default="zwal-local", help="cluster name (default: %(default)s)")
    i.add_argument("--hosts", metavar="H1,H2,...", default=None,
                   help="one host name or address per node, comma-separated: node i listens on host i")
    i.add_argument("--data-root", metavar="PATH", default=None,
                   help="absolute folder holding each node's data directory, PATH/<node> "
                   "(e.g. /var/lib/zwal, what the systemd unit writes); default: DIR/<node>")
    i.add_argument("--coordinator", choices=("none", "etcd"), default="none",
                   help="'etcd': automatic failover through etcd (docs/failover.md). A local cluster also gets a "
                   "3-member etcd under supervisord (ports BASE+31..BASE+36, data in DIR/etcd/; needs the etcd "
                   "binary: Debian's etcd-server); with --hosts, give --etcd-endpoints (default: %(default)s, "
                   "failover by 'zwal promote')")
    i.add_argument("--lease-ttl", type=int, default=3, metavar="SECONDS",
                   help="with --coordinator etcd: the leader lease's [coordinator] lease_ttl; a leader stops "
                   "acknowledging within this long of losing etcd, and a new one is elected about this long after "
                   "the old one is lost (default: %(default)s)")
    i.add_argument("--etcd-endpoints", metavar="URL,...", default=None,
                   help="with --coordinator etcd: the client URLs of an etcd cluster you run "
                   "(http://HOST:2379,...) instead of a local one")
    i.set_defaults(func=cmd_init)

    b = cs.add_parser(
        "bootstrap", help="mark a node's first start of a new cluster (it then leads epoch 1)",
        description="Write the first-start marker (first-start.json) into a node's data directory, so its next "
        "start is the first start of a new cluster: the bootstrap leader leads epoch 1. Without a marker a node "
        "with no node-state.json and an empty log joins as a follower of the leader its peers report, never "
        "leading on its own word (a rebuilt node). 'zwal cluster init' marks every node of a local cluster "
        "itself; run this on the bootstrap node's host for a cluster made with --hosts or --data-root. "
        "Refuses when the node has started before, is running, or a peer already holds records.",
    )
    b.add_argument("--config", required=True, help="cluster file")
    b.add_argument("--name", default=None, help="the node (default: the cluster's bootstrap_leader)")
    b.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each peer's status")
    b.set_defaults(func=cmd_bootstrap)

    u = cs.add_parser(
        "systemd-unit", help="print the systemd template unit zwal@.service shipped with zwal",
        description="Print the systemd template unit (one instance per node: zwal@node1) that ships "
        "inside the zwal package, e.g. zwal cluster systemd-unit | sudo tee /etc/systemd/system/zwal@.service. "
        "--sysusers prints the systemd-sysusers file for the zwal user instead. See deploy/README.md.",
    )
    u.add_argument("--sysusers", action="store_true", help="print zwal.sysusers.conf instead")
    u.set_defaults(func=cmd_systemd_unit)

    n = sub.add_parser(
        "node", help="run one node of a cluster (what supervisord or systemd starts)",
        description="Run the node NAME of the cluster file: recover its log, then lead or follow as its "
        "node-state.json says. SIGTERM/SIGINT: finish the batch in flight, fsync, exit 0. Exit 3 after an "
        "fsync failure (restart it: recovery re-reads the log), exit 2 when the log is corrupt.",
    )
    n.add_argument("--config", required=True, help="cluster file")
    n.add_argument("--name", required=True, help="this node's name in the cluster file")
    n.set_defaults(func=cmd_node)
