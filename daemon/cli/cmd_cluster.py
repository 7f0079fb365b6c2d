"""`zwal cluster init` and `zwal node`: create a cluster directory, run a node."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from daemon import config as config_mod
from daemon.cli.cmd_log import CLIError

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "deploy", "templates")


def _template(name: str) -> str:
    path = os.path.join(TEMPLATES, name)
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        raise CLIError(f"template {path} is missing: run zwal from a checkout of the zwal repository") from None


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


def render(dir_: str, nodes: int, base_port: int, ack_replicas: int | None, name: str,
           public_keys: dict[str, str] | None = None) -> tuple[str, str]:
    """The cluster file and supervisord.conf; `public_keys` (from create_keys) turns
    CURVE on, None writes security = "none" (loopback only)."""
    k = ack_replicas if ack_replicas is not None else (1 if nodes > 1 else 0)
    node_t = _template("node.toml.tmpl")
    prog_t = _template("program.conf.tmpl")
    node_txt, progs = [], []
    names = [f"node{i}" for i in range(1, nodes + 1)]
    for i, n in enumerate(names):
        port = base_port + 3 * i
        key_line = f'public_key = "{public_keys[n]}"\n' if public_keys else ""
        node_txt.append(node_t.format(node=n, client_port=port + 1, repl_port=port + 2, metrics_port=port + 3,
                                      public_key_line=key_line))
        progs.append(prog_t.format(node=n, zwal=zwal_command()))
    cluster = _template("cluster.toml.tmpl").format(name=name, ack_replicas=k, nodes="".join(node_txt),
                                                    security="curve" if public_keys else "none")
    sup = _template("supervisord.conf.tmpl").format(dir=os.path.abspath(dir_), programs=",".join(names),
                                                    program_sections="".join(progs))
    return cluster, sup


def cmd_init(args: argparse.Namespace) -> int:
    d = args.dir
    cluster_path = os.path.join(d, "cluster.toml")
    sup_path = os.path.join(d, "supervisord.conf")
    for p in (cluster_path, sup_path):
        if os.path.exists(p):
            raise CLIError(f"{p} already exists: refusing to overwrite a cluster (remove {d} to start afresh)")
    if not 1 <= args.nodes <= 9:
        raise CLIError("--nodes must be between 1 and 9", 2)
    if args.ack_replicas is not None and not 0 <= args.ack_replicas < args.nodes:
        raise CLIError(f"--ack-replicas must be between 0 and {args.nodes - 1}", 2)
    if not 1024 <= args.base_port <= 65000:
        raise CLIError("--base-port must be between 1024 and 65000", 2)
    keys_dir = os.path.join(d, "keys")
    if os.path.exists(keys_dir):
        raise CLIError(f"{keys_dir} already exists: refusing to overwrite keys (remove {d} to start afresh)")
    cluster, sup = render(d, args.nodes, args.base_port, args.ack_replicas, args.name,
                          create_keys(d, args.nodes))
    os.makedirs(os.path.join(d, "log"), exist_ok=True)
    with open(cluster_path, "w") as f:
        f.write(cluster)
    with open(sup_path, "w") as f:
        f.write(sup)
    cfg = config_mod.load(cluster_path)  # what we wrote must load
    print(f"wrote {cluster_path} ({len(cfg.nodes)} node(s), ack_replicas = {cfg.ack_replicas}) and {sup_path}")
    print(f"keys:      {keys_dir}/ (nodes/, clients/client.key_secret, admins/admin.key_secret; "
          "CurveZMQ on every socket, docs/security.md)")
    print(f"start it:  supervisord -c {sup_path}")
    print(f"then:      zwal status --config {cluster_path}")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from daemon.node.node import main_node

    try:
        return main_node(args.config, args.name)
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2) from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cluster", help="create a cluster directory (cluster.toml + supervisord.conf)")
    cs = c.add_subparsers(dest="cluster_cmd", required=True, metavar="COMMAND")
    i = cs.add_parser(
        "init", help="write DIR/cluster.toml and DIR/supervisord.conf for a local cluster",
        description="Write a cluster file and a supervisord configuration for N nodes on 127.0.0.1. "
        "Node i uses ports BASE+3(i-1)+1 (clients), +2 (replication), +3 (metrics); its data lives in "
        "DIR/node<i>/ and its log in DIR/log/node<i>.log. Refuses to overwrite an existing cluster.",
    )
    i.add_argument("dir", metavar="DIR")
    i.add_argument("--nodes", type=int, default=3, help="number of nodes (default: %(default)s)")
    i.add_argument("--base-port", type=int, default=7100, help="first port (default: %(default)s)")
    i.add_argument("--ack-replicas", type=int, default=None,
                   help="K: followers that must fsync before a write is acknowledged (default: 1 if there are followers)")
    i.add_argument("--name", default="zwal-local", help="cluster name (default: %(default)s)")
    i.set_defaults(func=cmd_init)

    n = sub.add_parser(
        "node", help="run one node of a cluster (what supervisord or systemd starts)",
        description="Run the node NAME of the cluster file: recover its log, then lead or follow as its "
        "node-state.json says. SIGTERM/SIGINT: finish the batch in flight, fsync, exit 0. Exit 3 after an "
        "fsync failure (restart it: recovery re-reads the log), exit 2 when the log is corrupt.",
    )
    n.add_argument("--config", required=True, help="cluster file")
    n.add_argument("--name", required=True, help="this node's name in the cluster file")
    n.set_defaults(func=cmd_node)
