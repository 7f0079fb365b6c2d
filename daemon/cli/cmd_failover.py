"""`zwal promote` and `zwal drill`."""

from __future__ import annotations

import argparse
import sys

from daemon import config as config_mod
from daemon.cli.cmd_log import CLIError


def _cfg(path: str) -> config_mod.ClusterConfig:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2) from None


def cmd_promote(args: argparse.Namespace) -> int:
    from daemon.failover.promote import run_promote

    cfg = _cfg(args.config)
    res = run_promote(cfg, args.name, force=args.force, timeout=args.timeout,
                      say=lambda s: print(s, file=sys.stderr))
    if not res.ok:
        raise CLIError(f"refusing to promote {args.name}: {res.message}", 1)
    print(f"promoted: {res.message} ({res.seconds:.2f} s)")
    return 0


def cmd_drill(args: argparse.Namespace) -> int:
    from daemon.failover.drill import Drill, DrillError

    cfg = _cfg(args.config)
    if cfg.ack_replicas == 0:
        print("WARNING: ack_replicas = 0: acknowledged writes may be lost on failover; the drill reports, "
              "it cannot pass a loss-free verdict", file=sys.stderr)
    if len(cfg.nodes) < 2:
        raise CLIError("a drill needs at least 2 nodes", 2)
    d = Drill(cfg, clients=args.clients, load_seconds=args.seconds, timeout=args.timeout,
              say=lambda s: print(s, flush=True))
    try:
        reports = d.run(args.rounds)
    except DrillError as e:
        raise CLIError(f"drill failed: {e}", 1) from None
    lost = sum(len(r.check.lost) for r in reports)
    ok = len(reports) == args.rounds and all(r.passed(cfg.ack_replicas) for r in reports) and lost == 0
    acked = sum(r.check.acked for r in reports)
    print(f"drill {'PASSED' if ok else 'FAILED'}: {len(reports)} round(s), {acked} writes acknowledged, "
          f"{lost} acknowledged writes lost")
    return 0 if ok else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote", help="make a follower the leader of a new epoch (refuses when unsafe)",
        description="Fence every reachable node at a new epoch, then promote NAME and point the others at it. "
        "Refuses when NAME is not the most advanced reachable follower, or when too few followers answer to be "
        "sure one of them holds every acknowledged write (with F followers and ack_replicas K, F-K+1 must answer).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--config", required=True, help="cluster file")
    p.add_argument("--force", action="store_true", help="promote even when the checks fail (may lose acknowledged writes)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each node (default: %(default)s)")
    p.set_defaults(func=cmd_promote)

    d = sub.add_parser(
        "drill", help="failover drill: kill the leader under load, promote, rejoin, prove nothing acknowledged was lost",
        description="Against a running cluster (e.g. the one 'make run' starts under supervisord, which restarts "
        "killed nodes): run load with a ledger of acknowledged writes, SIGKILL the leader, promote the most "
        "advanced follower, wait for the old leader to rejoin and all logs to converge, then check every "
        "acknowledged write is on the new leader and every log is byte-identical. Must run on the cluster's host "
        "(it kills by PID and reads the log files). Exit 1 on any loss.",
    )
    d.add_argument("--config", required=True, help="cluster file")
    d.add_argument("--rounds", type=int, default=1, help="rounds; leadership moves each round (default: %(default)s)")
    d.add_argument("--clients", type=int, default=4, help="concurrent writers (default: %(default)s)")
    d.add_argument("--seconds", type=float, default=3.0, help="load before the kill (default: %(default)s)")
    d.add_argument("--timeout", type=float, default=60.0, help="give up a step after this long (default: %(default)s)")
    d.set_defaults(func=cmd_drill)
