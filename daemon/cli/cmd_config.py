"""`zwal config check FILE`: validate a cluster file offline, before any node starts.

It runs the same parser every node runs (daemon/config.py: every key, type
and rule), then what a node would only find out at start: endpoints that
parse and do not collide (also spelled differently, e.g. localhost vs
127.0.0.1), metrics ports that do not collide with them, data directories
that are writable or can be created, and with security = "curve" the keys:
each node's public key file present and equal to its public_key, each
secret that is on this machine matching it (with safe permissions), the
client and admin certificates the CLI uses. It contacts no node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from daemon.cli.cmd_log import CLIError

OK, WARN, FAIL = "ok", "warn", "FAIL"
EXIT_VALID, EXIT_INVALID = 0, 1


@dataclass
class Report:
    checks: list[dict[str, str]] = field(default_factory=list)

    def add(self, status: str, what: str, message: str = "") -> None:
        self.checks.append({"status": status, "check": what, "message": message})

    @property
    def failed(self) -> list[dict[str, str]]:
        return [c for c in self.checks if c["status"] == FAIL]


_LOOPBACK_NAMES = {"localhost": "127.0.0.1", "::1": "::1", "[::1]": "::1"}


def parse_endpoint(ep: str) -> tuple[str, str, int | None, str]:
    """(transport, host, port, problem) of a ZeroMQ endpoint; problem is "" when it is usable."""
    if "://" not in ep:
        return "", "", None, "is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)"
    transport, rest = ep.split("://", 1)
    if transport in ("ipc", "inproc"):
        return transport, rest, None, "" if rest else "names no path"
    if transport != "tcp":
        return transport, "", None, f"uses transport {transport!r}; zwal nodes listen on tcp:// (or ipc://)"
    if ";" in rest:
        return transport, "", None, "has a source address (';'), which a node cannot bind"
    if ":" not in rest:
        return transport, rest, None, "has no port (tcp://HOST:PORT)"
    host, port_s = rest.rsplit(":", 1)
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        return transport, host, None, f"has port {port_s!r}; a port is 1..65535"
    if not host:
        return transport, host, None, "has no host"
    return transport, _LOOPBACK_NAMES.get(host, host.strip("[]")), int(port_s), ""


def _dir_problem(path: str) -> tuple[str, str]:
    """(status, message) for a data directory: usable as it is, creatable, or not."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return FAIL, f"{path} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return FAIL, f"{path} is not writable by this user (uid {os.getuid()})"
        for log in (os.path.join(path, "wal.log"), os.path.join(path, "log")):
            if os.path.exists(log) and not os.access(log, os.R_OK | os.W_OK):
                return FAIL, f"{log} exists and is not readable and writable by this user"
        return OK, f"{path} exists and is writable"
    parent = path
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        return FAIL, f"{path} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return FAIL, f"{path} does not exist and cannot be created: {parent} is not writable by this user"
    return OK, f"{path} does not exist yet; the node creates it (under {parent}, writable)"


def check_file(path: str) -> tuple[Report, Any]:
    """Every check on the cluster file at `path`; the parsed config (or None when it does not parse)."""
    from daemon import config as config_mod

    rep = Report()
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as e:
        rep.add(FAIL, "parse and rules (daemon/config.py)", str(e))
        return rep, None
    rep.add(OK, "parse and rules (daemon/config.py)",
            f"TOML parses; every key known and of the right type; {len(cfg.nodes)} node(s), bootstrap_leader = "
            f"{cfg.bootstrap_leader}, ack_replicas = {cfg.ack_replicas}, fsync_mode = {cfg.fsync_mode}, "
            f"security = {cfg.security}")
    if cfg.ack_replicas == 0 and len(cfg.nodes) > 1:
        rep.add(WARN, "[cluster] ack_replicas",
                "0: writes are acknowledged before any follower has them; a leader crash can lose acknowledged "
                "writes, 'zwal promote' needs --force and 'zwal drill' refuses to run")
    _check_endpoints(cfg, rep)
    _check_dirs(cfg, rep)
    if cfg.security == "curve":
        _check_keys(cfg, rep)
    else:
        rep.add(OK, "[cluster] security", "\"none\": every endpoint is on loopback (no keys to check)")
    return rep, cfg


def _check_endpoints(cfg: Any, rep: Report) -> None:
    used: dict[tuple[str, str, int | str], str] = {}
    problems = 0

    def claim(key: tuple[str, str, int | str], who: str) -> None:
        nonlocal problems
        if key in used:
            problems += 1
            what = f"port {key[2]} on {key[1]}" if key[0] == "tcp" else f"{key[0]}://{key[1]}"
            rep.add(FAIL, f"{who}", f"{what} is also {used[key]}: two sockets cannot bind it")
        else:
            used[key] = who

    for n in cfg.nodes:
        hosts = set()
        for setting in ("client_endpoint", "repl_endpoint"):
            ep = getattr(n, setting)
            transport, host, port, problem = parse_endpoint(ep)
            who = f"[[node]] {n.name} {setting}"
            if problem:
                problems += 1
                rep.add(FAIL, who, f"{ep} {problem}")
                continue
            claim((transport, host, port if port is not None else ""), f"{who} ({ep})")
            hosts.add(host)
        if n.metrics_port is not None:
            who = f"[[node]] {n.name} metrics_port"
            if not 1 <= n.metrics_port <= 65535:
                problems += 1
                rep.add(FAIL, who, f"{n.metrics_port} is not a port (1..65535)")
                continue
            bind = _LOOPBACK_NAMES.get(cfg.metrics_bind, cfg.metrics_bind)
            # The listener binds metrics_bind on the node's own machine: it collides with
            # another socket there on the same port (a node's machine = its endpoints' host).
            for h in hosts or {bind}:
                claim(("tcp", h, n.metrics_port), f"{who} ({cfg.metrics_bind}:{n.metrics_port})")
    if not problems:
        rep.add(OK, "endpoints and ports",
                f"{len(used)} endpoint(s) and metrics port(s), each well formed and used once per host")


def _check_dirs(cfg: Any, rep: Report) -> None:
    seen: dict[str, str] = {}
    for n in cfg.nodes:
        who = f"[[node]] {n.name} data_dir"
        real = os.path.realpath(n.data_dir)
        if real in seen:
            rep.add(FAIL, who, f"{n.data_dir} is also {seen[real]}'s data_dir: two nodes cannot share a log")
            continue
        seen[real] = n.name
        status, msg = _dir_problem(n.data_dir)
        host = parse_endpoint(n.client_endpoint)[1]
        from daemon.config import is_loopback

        if status == FAIL and not is_loopback(n.client_endpoint):
            status, msg = WARN, msg + f" (checked on this machine; {n.name} runs on {host}: check it there)"
        rep.add(status, who, msg)


def _check_keys(cfg: Any, rep: Report) -> None:
    import zmq.auth
    from zmq.utils import z85

    from daemon.auth import keys

    kd = cfg.keys_dir
    if not os.path.isdir(kd):
        rep.add(FAIL, "[cluster] keys_dir", f"{kd} does not exist; 'zwal cluster init' makes it (docs/security.md)")
        return
    try:
        keys.load_registry(kd)
        rep.add(OK, "[cluster] keys_dir", f"{kd}: key folders safe (not writable by others, no symlinked keys)")
    except keys.KeyError_ as e:
        rep.add(FAIL, "[cluster] keys_dir", str(e))
    for n in cfg.nodes:
        who = f"[[node]] {n.name} public_key"
        try:
            if len(z85.decode(n.public_key.encode("ascii"))) != 32:
                raise ValueError("not 32 bytes")
        except Exception:
            rep.add(FAIL, who, f"{n.public_key!r} is not the Z85 text of a CURVE public key")
            continue
        pub_file = os.path.join(keys.folder(kd, "node"), f"{n.name}.key")
        try:
            public, _ = zmq.auth.load_certificate(pub_file)
        except (OSError, ValueError) as e:
            rep.add(FAIL, who, f"{pub_file} is missing or unreadable ({e}): the other nodes will not let "
                    f"{n.name} in; copy its .key file there")
            continue
        if public.decode("ascii") != n.public_key:
            rep.add(FAIL, who, f"does not match {pub_file} ({public.decode('ascii')}): clients would refuse "
                    f"the node, or it would refuse to start")
            continue
        sec_file = keys.secret_path(kd, "node", n.name)
        if not os.path.exists(sec_file):
            rep.add(WARN, who, f"matches {pub_file}; no secret {sec_file} on this machine ({n.name} cannot start "
                    "here; fine if it runs on another host)")
            continue
        try:
            spub, _ = keys.load_secret(sec_file)
        except keys.KeyError_ as e:
            rep.add(FAIL, who, str(e))
            continue
        if spub.decode("ascii") != n.public_key:
            rep.add(FAIL, who, f"does not match the secret {sec_file}: {n.name} would refuse to start")
            continue
        rep.add(OK, who, f"matches {pub_file} and the secret beside it (mode 0600)")
    for role in ("client", "admin"):
        sec = keys.secret_path(kd, role, role)
        what = "set, get, del, status" if role == "client" else "promote, drill"
        if not os.path.exists(sec):
            rep.add(WARN, f"{role} certificate", f"no {sec}: {what} need --cert FILE on this machine")
            continue
        try:
            keys.load_secret(sec)
            rep.add(OK, f"{role} certificate", f"{sec} (used by {what})")
        except keys.KeyError_ as e:
            rep.add(FAIL, f"{role} certificate", str(e))


def cmd_check(args: argparse.Namespace) -> int:
    path = args.file or os.environ.get("ZWAL_CONFIG") or None
    if path is None:
        raise CLIError("zwal config check FILE: name the cluster file (or set ZWAL_CONFIG)", 2)
    rep, cfg = check_file(path)
    bad = rep.failed
    if args.json:
        print(json.dumps({"ok": not bad, "file": os.path.abspath(path), "checks": rep.checks,
                          "errors": len(bad), "warnings": sum(c["status"] == WARN for c in rep.checks)}))
        return EXIT_INVALID if bad else EXIT_VALID
    print(f"checking {path} (offline: no node is contacted)")
    for c in rep.checks:
        print(f"  {c['status']:<4} {c['check']}" + (f": {c['message']}" if c["message"] else ""))
    if bad:
        print(f"zwal: {path}: {len(bad)} problem(s); the first: {bad[0]['check']}: {bad[0]['message']}",
              file=sys.stderr)
        return EXIT_INVALID
    warns = sum(c["status"] == WARN for c in rep.checks)
    print(f"{path}: valid" + (f" ({warns} warning(s))" if warns else ""))
    return EXIT_VALID


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("config", help="check a cluster file offline (zwal config check FILE)")
    cs = c.add_subparsers(dest="config_cmd", required=True, metavar="COMMAND")
    k = cs.add_parser(
        "check", help="validate a cluster file without contacting any node",
        description="Check a cluster file offline and print each check: it parses, every rule the nodes enforce "
        "holds (known keys and types, bootstrap_leader, ack_replicas, fsync_mode, security and loopback, unique "
        "names and endpoints), endpoints are well formed and no port is used twice on a host (also spelled "
        "differently, and metrics ports included), every data_dir is writable or can be created, and with "
        "security = \"curve\" each node's public_key matches keys/nodes/NAME.key and the secret when it is on "
        "this machine. Exit 0 when valid (warnings allowed), 1 when a check fails (each failure names the "
        "setting), 2 for a usage error.",
        epilog="  zwal config check mycluster/cluster.toml\n"
        "  ZWAL_CONFIG=mycluster/cluster.toml zwal config check\n"
        "  zwal config check cluster.toml --json         # {\"ok\", \"file\", \"checks\": [...], ...}")
    k.add_argument("file", metavar="FILE", nargs="?", help="the cluster file (default: $ZWAL_CONFIG)")
    k.add_argument("--json", action="store_true",
                   help='print {"ok", "file", "errors", "warnings", "checks": [{"status": "ok"|"warn"|"FAIL", '
                   '"check", "message"}]} (docs/cli.md)')
    k.set_defaults(func=cmd_check)
