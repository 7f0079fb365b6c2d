"""`zwal promote` and `zwal drill`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from daemon.cli.cmd_log import CLIError, load_cluster


# etcd allocates every epoch in that mode (docs/failover.md): a promotion by votes could give one to a second node,
# so there `zwal promote NAME` is a switchover: the leader hands its lease to NAME, and the election picks NAME.
ETCD_MODE_FORCE = ("--force has no meaning when the cluster fails over through etcd ([coordinator] kind = \"etcd\"): "
                   "'zwal promote NAME' moves the lease to NAME only when the copies vouch for it, and the election "
                   "picks the leader by itself when the old one is gone")


def cmd_promote(args: argparse.Namespace) -> int:
    """A promotion by votes; in etcd mode a switchover, which moves the lease (daemon/failover/switchover.py)."""
    from daemon.auth.keys import KeyError_
    from daemon.failover.promote import run_promote
    from daemon.failover.switchover import run_switchover

    cfg = load_cluster(args.config)
    switchover = cfg.coordinator.enabled
    if switchover and args.force:
        raise CLIError(ETCD_MODE_FORCE, 2, "usage")
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    try:
        if switchover:
            res = run_switchover(cfg, args.name, timeout=args.timeout, catch_up=args.catch_up, say=say, cert=args.cert)
        else:
            res = run_promote(cfg, args.name, force=args.force, timeout=args.timeout, say=say, cert=args.cert)
    except KeyError_ as e:
        raise CLIError(f"{e} (promote needs an admin certificate: --cert FILE)", 2, "credentials") from None
    if not res.ok:
        raise CLIError(f"refusing to promote {args.name}: {res.message}", 1, "refused")
    if args.json:
        doc = {"ok": True, "name": res.name, "epoch": res.epoch, "start_offset": res.start_offset,
               "message": res.message, "warnings": res.warnings, "seconds": round(res.seconds, 3)}
        print(json.dumps({**doc, "switchover": True} if switchover else doc))
    else:
        print(f"promoted: {res.message} ({res.seconds:.2f} s)")
    return 0


def parse_faults(text: str) -> list[str]:
    from daemon.failover.drill import FAULTS

    faults = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULTS]
    if bad or not faults:
        raise CLIError(f"--fault takes a comma-separated list of {', '.join(FAULTS)} (got {text!r})", 2)
    return faults


def refuse_k0(cfg) -> None:
    """A drill on a K = 0 cluster cannot pass: refuse before touching anything, saying why."""
    if cfg.ack_replicas == 0:
        raise CLIError(
            f"refusing to drill {cfg.path}: ack_replicas = 0, so writes are acknowledged before any follower has "
            "them and no follower is guaranteed to hold every acknowledged write; 'zwal promote' refuses such a "
            "cluster without --force, and a drill could only report losses. Set ack_replicas = 1 or more in "
            "[cluster] and restart the nodes, or run 'zwal drill' without --config (a scratch cluster, K = 1)",
            2, "ack_replicas_0")


def _report_doc(r) -> dict[str, object]:
    c = r.check
    return {"round": r.round, "fault": r.fault, "old_leader": r.old_leader, "new_leader": r.new_leader,
            "epoch": r.epoch, "acked": c.acked, "lost": c.lost, "unacked_present": c.unacked_present,
            "unacked_absent": c.unacked_absent, "duplicated": [k.decode("utf-8", "replace") for k in c.duplicated],
            "promote_seconds": round(r.promote_s, 3), "converge_seconds": round(r.converge_s, 3),
            "logs_identical": r.logs_identical, "logs_clean": r.logs_clean, "client_errors": r.errors,
            "reads_checked": r.reads, "linearizable": r.verdict.ok,
            "linearizability_undecided": bool(r.verdict.ok and r.verdict.unknown),
            "healed_by_itself": r.healed_by_itself, "heal_seconds": round(r.heal_s, 3), "heal_note": r.heal_note,
            "injected": r.injected, "auto": r.auto, "overlaps": r.overlaps}


def cmd_drill(args: argparse.Namespace) -> int:
    import random
    import tempfile

    from daemon.cli.cmd_log import FromEnv
    from daemon.failover.drill import AUTO_FAULTS, AUTO_ONLY, NEEDS_ROOT, NEEDS_SCRATCH, SOAK_FAULTS, Drill, DrillError
    from daemon.failover.faults import FaultUnavailable

    # With --json, progress goes to stderr and stdout holds one JSON document.
    out = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    # A soak mixes the faults the drill heals by promoting; rebuild and damage are asked for by name.
    faults = parse_faults(args.fault) if args.fault else (list(SOAK_FAULTS) if args.soak else ["kill"])
    needs_scratch = [f for f in faults if f in NEEDS_SCRATCH]
    needs_root = [f for f in faults if f in NEEDS_ROOT]
    if args.auto:
        other = [f for f in faults if f not in AUTO_FAULTS]
        if other:
            raise CLIError(f"--auto drills {', '.join(AUTO_FAULTS)} (the election's own faults); --fault "
                           f"{','.join(other)} is not drilled with --auto yet", 2)
    else:
        only = [f for f in faults if f in AUTO_ONLY]
        if only:
            raise CLIError(f"--fault {','.join(only)} cuts the leader off from etcd: it is a fault of automatic "
                           "failover, drilled with --auto", 2)
    if isinstance(args.config, FromEnv):
        if needs_scratch:
            print(f"zwal: not using $ZWAL_CONFIG ({args.config}): --fault {','.join(needs_scratch)} runs on a "
                  "scratch cluster the drill builds itself", file=sys.stderr)
            args.config = None
        else:
            print(f"zwal: drilling the cluster of $ZWAL_CONFIG ({args.config})", file=sys.stderr)
    scratch_needed = bool(needs_scratch) or args.config is None
    if scratch_needed and args.config is not None:
        raise CLIError(f"--fault {','.join(needs_scratch)} runs on a scratch cluster the "
                       "drill builds itself (it plays the supervisor, and partition and disk need network "
                       "namespaces and failing disks): leave out --config", 2)
    if args.config is not None:
        cfg = load_cluster(args.config)
        refuse_k0(cfg)  # at once, before any fault: a K = 0 promotion is refused
        if len(cfg.nodes) < 2:
            raise CLIError("a drill needs at least 2 nodes", 2)
    if scratch_needed and os.geteuid() != 0:
        if args.soak and not args.fault:
            faults = [f for f in SOAK_FAULTS if f not in NEEDS_ROOT]
            say(f"zwal: not root: the soak mixes {', '.join(faults)} only (partition and disk need root "
                "for network namespaces and loop devices)")
        elif needs_root:
            raise CLIError(f"--fault {','.join(needs_root)} needs root: it builds "
                           "network namespaces and loop-device disks. Run it as root, or use --fault kill,pause", 1)
    scratch = None
    passed = False
    if args.config is None:
        import signal

        def _stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt  # unwind, so the scratch cluster is removed (mounts, loop devices, namespaces)

        signal.signal(signal.SIGTERM, _stop)
        from daemon.failover.faults.scratch import ScratchCluster

        root = tempfile.mkdtemp(prefix="zwal-drill-")
        netns = "partition" in faults or "etcd" in faults
        say(f"building a scratch cluster of 3 nodes in {root} (K = 1"
            + (", network namespaces" if netns else "")
            + (", failing disks" if "disk" in faults else "")
            + (", a 3-member etcd and 1 s leases: the nodes elect their leader" if args.auto else "") + ")")
        scratch = ScratchCluster(root, 3, 1, netns=netns, disks="disk" in faults, etcd=args.auto, say=say)
        try:
            cfg = scratch.start()
        except FaultUnavailable as e:
            scratch.close()
            raise CLIError(f"cannot build the scratch cluster: {e}", 1) from None
    try:
        try:
            d = Drill(cfg, clients=args.clients, load_seconds=args.seconds, timeout=args.timeout, say=say,
                      scratch=scratch, auto=args.auto)
        except DrillError as e:
            raise CLIError(str(e), 2) from None
        seed = args.seed if args.seed is not None else random.randrange(1 << 31)
        try:
            if args.soak:
                reports, rerun = soak(d, faults, args.soak * 60, seed)
            else:
                reports, rerun = d.run(args.rounds, faults), ""
        except DrillError as e:
            raise CLIError(f"drill failed: {e}", 1, "drill_failed") from None
        lost = sum(len(r.check.lost) for r in reports)
        rounds = args.rounds if not args.soak else len(reports)
        ok = len(reports) == rounds and all(r.passed(cfg.ack_replicas) for r in reports) and lost == 0
        acked = sum(r.check.acked for r in reports)
        reads = sum(r.reads for r in reports)
        kinds = ", ".join(f"{f} x{sum(r.fault == f for r in reports)}" for f in dict.fromkeys(r.fault for r in reports))
        why = [f"round {r.round}: {', '.join(r.failures(cfg.ack_replicas))}" for r in reports
               if r.failures(cfg.ack_replicas)]
        if len(reports) != rounds:
            why.append(f"{len(reports)} of {rounds} round(s) ran")
        if args.json:
            doc = {"ok": ok, "rounds": [_report_doc(r) for r in reports], "acked": acked, "lost": lost,
                   "reads_checked": reads, "linearizable": all(r.verdict.ok for r in reports),
                   "seed": seed if args.soak else None, "rerun": rerun or None}
            if not ok:
                doc.update(error="drill_failed", message="; ".join(why) or "a round failed", exit_code=1)
            print(json.dumps(doc))
        else:
            print(f"drill {'PASSED' if ok else 'FAILED'}: {len(reports)} round(s) ({kinds}), {acked} writes "
                  f"acknowledged, {lost} acknowledged writes lost, {reads} fresh reads checked"
                  + ("" if all(r.verdict.ok for r in reports) else ", reads NOT linearizable")
                  + (f" ({'; '.join(why)})" if why else ""))
            if not ok and rerun:
                print(rerun)
        passed = ok
        return 0 if ok else 1
    finally:
        if scratch is not None:
            scratch.close()
            if passed:
                shutil.rmtree(scratch.root, ignore_errors=True)
            else:
                say(f"the scratch cluster's files (node and etcd logs, data) are kept for inspection in "
                    f"{scratch.root}; remove it when done")


def soak(d, faults: list[str], seconds: float, seed: int):
    """Rounds with faults drawn at random until time is up or a round fails."""
    import random
    import time

    rng = random.Random(seed)
    end = time.monotonic() + seconds
    reports = []
    rnd = 0
    while time.monotonic() < end:
        rnd += 1
        fault = rng.choice(faults)
        rep = d.run_round(rnd, fault)
        d.say(rep.text())
        reports.append(rep)
        if not rep.passed(d.cfg.ack_replicas):
            order = [r.fault for r in reports]
            return reports, (f"soak stopped at round {rnd} ({fault}), seed {seed}. Rerun the same order of faults: "
                             f"zwal drill --fault {','.join(order)} --rounds {len(order)}")
    d.say(f"soak: {len(reports)} rounds in {seconds / 60:.1f} min, seed {seed}, no violation")
    return reports, ""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "promote", help="make a follower the leader of a new epoch (refuses when unsafe)",
        description="Fence every reachable node at a new epoch, then promote NAME and point the others at it. "
        "Refuses when NAME is not the most advanced reachable follower, when too few nodes answer with a log "
        "NAME is sure to hold (with F followers and ack_replicas K, F-K+1 must; a node whose recovery cut its "
        "log counts once NAME's log reaches its damaged_end, a deposed leader once it truncated its tail), "
        "when fewer than a majority of the nodes answer, or when ack_replicas = 0 (without --force). A refusal "
        "names another node only if promoting it would succeed. If another promotion runs at the same time and "
        "the votes split, it retries once at a higher epoch after a short random pause. "
        "On a cluster that fails over through etcd ([coordinator] kind = \"etcd\") it is a switchover instead: "
        "the leader stops taking writes, waits until NAME holds all of its log (--catch-up), names NAME in etcd "
        "and gives its lease up; the election then picks NAME if the same rules accept it (docs/failover.md). "
        "Progress goes to stderr. Exit 0 promoted; 1 refused (the message says why); 2 for a usage, "
        "cluster-file or certificate error.",
        epilog="  zwal status --config mycluster/cluster.toml          # which follower is the most advanced\n"
        "  zwal promote node2 --config mycluster/cluster.toml\n"
        "  zwal promote node2 --json        # {\"ok\": true, \"name\", \"epoch\", \"start_offset\", ...}",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--config", required=True, help="cluster file")
    p.add_argument("--cert", help="admin certificate (default: the cluster's keys/admins/admin.key_secret)")
    p.add_argument("--force", action="store_true", help="promote even when the checks fail (may lose acknowledged writes)")
    p.add_argument("--catch-up", type=float, default=10.0, metavar="SECONDS",
                   help="etcd mode: how long the leader waits, with writes paused, for NAME to hold all of its log "
                   "before it gives up the switchover (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each node (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON document on stdout: {"ok": true, "name", "epoch", "start_offset", "message", '
                   '"warnings", "seconds"}; a refusal is {"ok": false, "error": "refused", "message", "exit_code": 1} '
                   "(docs/cli.md)")
    p.set_defaults(func=cmd_promote)

    d = sub.add_parser(
        "drill", help="failover drill: a fault on the leader under load, promote, rejoin, prove nothing acknowledged was lost",
        description="Run load with a ledger of acknowledged writes and a history of fresh reads, cause a fault on "
        "the leader (kill, pause, partition or disk), promote the most advanced follower (with --auto: nobody; "
        "the cluster elects through etcd), let the old leader "
        "rejoin and all logs converge, then check every acknowledged write is on the new leader, every log is "
        "byte-identical, and the writes and fresh reads are linearizable. With --config (or $ZWAL_CONFIG) it "
        "runs against that running cluster (e.g. the one 'make run' starts under supervisord, which restarts "
        "killed nodes; it must run on the cluster's host: it kills by PID and reads the log files). Without it, "
        "or for partition, disk and etcd faults, it builds a scratch cluster of its own (those three need root) "
        "and removes it afterwards when the drill passes. A cluster with "
        "ack_replicas = 0 is refused at once (exit 2): its promotions are refused without --force. Exit 0 "
        "passed; 1 on any loss or failed step; 2 for a usage or cluster-file error.",
        epilog="  zwal drill --config var/cluster.toml --rounds 3\n"
        "  zwal drill --auto --config c/cluster.toml --fault kill,pause --rounds 2   # etcd elects; nobody promotes\n"
        "  zwal drill --fault kill,pause --rounds 2              # a scratch cluster, K = 1\n"
        "  zwal drill --auto --fault partition,etcd --rounds 2  # as root: a scratch cluster with its own etcd\n"
        "  zwal drill --config var/cluster.toml --json           # progress on stderr, the verdict on stdout",
    )
    d.add_argument("--config", help="cluster file (kill and pause faults only; without it the drill builds a "
                   "scratch cluster of 3 nodes, K = 1, in a temporary directory; $ZWAL_CONFIG is not used for "
                   "partition and disk faults)")
    d.add_argument("--fault", metavar="LIST",
                   help="comma-separated faults, used in turn each round: kill (SIGKILL the leader), pause "
                   "(SIGSTOP it, SIGCONT after the promotion), partition (cut it off from its followers; needs "
                   "root), disk (fill and fail its disk; needs root), rebuild (stop a follower, or the bootstrap "
                   "node in even rounds, move its data directory aside, start it under load: it must rebuild "
                   "from its peers), damage (stop the leader, flip bytes in its last record, start it; the drill "
                   "does not promote, it reports whether the cluster healed by itself), etcd (with --auto: cut the "
                   "leader off from etcd only; needs root). rebuild and damage run on a scratch cluster, no root "
                   "needed. Default: kill")
    d.add_argument("--auto", action="store_true",
                   help="the cluster fails over by itself through etcd ([coordinator] kind = \"etcd\"): the drill "
                   "causes the fault and promotes nobody, measures the time from the fault to an elected leader "
                   "that accepts a write, and checks that no two leaders acknowledged writes at overlapping times. "
                   "Faults kill, pause (on the cluster of --config, or a scratch cluster), partition and etcd (on a "
                   "scratch cluster with its own 3-member etcd and 1 s leases, as root)")
    d.add_argument("--soak", type=float, metavar="MINUTES",
                   help="mix the faults at random for this long; stop at the first violation and print how to rerun")
    d.add_argument("--seed", type=int, help="seed of the soak's random choice of faults")
    d.add_argument("--rounds", type=int, default=1, help="rounds; leadership moves each round (default: %(default)s)")
    d.add_argument("--clients", type=int, default=4, help="concurrent writers (default: %(default)s)")
    d.add_argument("--seconds", type=float, default=3.0, help="load before the kill (default: %(default)s)")
    d.add_argument("--timeout", type=float, default=60.0, help="give up a step after this long (default: %(default)s)")
    d.add_argument("--json", action="store_true",
                   help='progress on stderr, and one JSON document on stdout: {"ok", "rounds": [{"round", "fault", '
                   '"old_leader", "new_leader", "epoch", "acked", "lost", ..., "healed_by_itself", "heal_seconds"}], '
                   '"acked", "lost", "reads_checked", "linearizable", "seed", "rerun"} (docs/cli.md)')
    d.set_defaults(func=cmd_drill)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """`zwal snapshot`: ask one node (the leader by default) to snapshot its state now, wait until durable."""
    from daemon.auth.creds import for_config
    from daemon.auth.keys import KeyError_
    from daemon.client.blocking import Client, ZwalError, fetch_statuses

    cfg = load_cluster(args.config)
    try:
        creds = for_config(cfg, "admin", cert=args.cert)
    except KeyError_ as e:
        raise CLIError(f"{e} (snapshot needs an admin certificate: --cert FILE)", 2, "credentials") from None
    name = args.name
    if name is None:
        sts = fetch_statuses([(n.name, n.client_endpoint) for n in cfg.nodes], min(2.0, args.timeout), creds,
                             cfg.cluster_id or None)
        leaders = [n for n, s in sts.items() if s is not None and s.get("role") == "leader"]
        if not leaders:
            raise CLIError("no leader answered: name the node to snapshot with --name NAME "
                           "('zwal status' shows which nodes are up)", 1, "no_leader")
        name = max(leaders, key=lambda n: sts[n]["epoch"])  # type: ignore[index]
    try:
        ep = cfg.node(name).client_endpoint
    except Exception:
        raise CLIError(f"--name {name!r} is not a node of {args.config} (nodes: {', '.join(cfg.names)})", 2) from None
    with Client([ep], timeout=args.timeout, deadline=args.timeout, creds=creds,
                cluster_id=cfg.cluster_id or None) as c:
        try:
            r = c.admin("snapshot", ep, deadline=args.timeout)
        except ZwalError as e:
            raise CLIError(f"{name} took no snapshot: {e}", 1, e.code) from None
    if args.json:
        print(json.dumps({"ok": True, "name": name, "offset": r["offset"], "file": r["file"]}))
    else:
        print(f"snapshot of {name} at offset {r['offset']}: {r['file']}")
    return 0


def add_snapshot_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "snapshot", help="snapshot a node's state now, so its next restart replays only the log after it",
        description="Ask a node (the leader unless --name says which) to write a snapshot of its key-value state, "
        "retry windows and epoch history at the newest offset it knows to be committed, and wait until the file "
        "is durable. Nodes also snapshot by themselves every snapshot_bytes of new log; each keeps its two newest "
        "snapshots in DATA_DIR/snapshots/ (docs/format.md, \"Snapshots\"). Prints the offset and the file. "
        "Needs an admin certificate. Exit 0 written; 1 when the node refused, failed or did not answer within "
        "--timeout; 2 for a usage, cluster-file or certificate error.",
        epilog="  zwal snapshot --config var/cluster.toml             # the leader\n"
        "  zwal snapshot --config var/cluster.toml --name node2\n"
        "  zwal snapshot --json                                  # {\"ok\": true, \"name\", \"offset\", \"file\"}")
    s.add_argument("--config", required=True, help="cluster file")
    s.add_argument("--name", metavar="N", help="the node to snapshot (default: the leader)")
    s.add_argument("--cert", help="admin certificate (default: the cluster's keys/admins/admin.key_secret)")
    s.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the snapshot to be durable (default: %(default)s)")
    s.add_argument("--json", action="store_true",
                   help='print one JSON document on stdout: {"ok": true, "name", "offset", "file"}; an error is '
                   '{"ok": false, "error": KIND, "message": TEXT, "exit_code": N} (docs/cli.md)')
    s.set_defaults(func=cmd_snapshot)
