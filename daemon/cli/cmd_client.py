"""`zwal set|del|get|status`: the client library from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from daemon import config as config_mod
from daemon.client.blocking import Client, Unavailable, ZwalError, fetch_statuses
from daemon.cli.cmd_log import CLIError


def _endpoints(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, endpoint) pairs from --config or --endpoint."""
    if args.endpoint:
        return [(ep, ep) for ep in args.endpoint]
    if args.config:
        try:
            cfg = config_mod.load(args.config)
        except config_mod.ConfigError as e:
            raise CLIError(str(e), 2) from None
        return [(n.name, n.client_endpoint) for n in cfg.nodes]
    raise CLIError("say where the cluster is: --config CLUSTER.toml or --endpoint tcp://HOST:PORT", 2)


def _creds(args: argparse.Namespace) -> Any:
    """CurveZMQ credentials: the cluster's client certificate (or --cert) with
    --config; --cert and --server-key with --endpoint; none for security = "none"."""
    from daemon.auth.creds import by_hand, for_config
    from daemon.auth.keys import KeyError_

    try:
        if args.endpoint:
            if args.cert is None:
                return None  # a plain socket: only a security = "none" cluster answers it
            if args.server_key is None:
                raise CLIError("--cert needs --server-key: the node's public key (public_key in its [[node]])", 2)
            return by_hand(args.cert, args.server_key)
        if args.config:
            return for_config(config_mod.load(args.config), "client", cert=args.cert)
    except KeyError_ as e:
        raise CLIError(str(e), 2) from None
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2) from None
    return None


def _client(args: argparse.Namespace) -> Client:
    return Client([ep for _, ep in _endpoints(args)], timeout=min(1.0, args.timeout), deadline=args.timeout,
                  creds=_creds(args))


def _fail(e: ZwalError) -> CLIError:
    if isinstance(e, Unavailable):
        return CLIError(f"{e} (is the cluster running? try 'zwal status')", 1)
    return CLIError(str(e), 1)


def _write(args: argparse.Namespace, value: bytes | None) -> int:
    """`zwal set` and `zwal del`: one acknowledged write, printed with where it landed."""
    with _client(args) as c:
        try:
            r = c.set(args.key.encode(), value) if value is not None else c.delete(args.key.encode())
        except ZwalError as e:
            raise _fail(e) from None
    print(f"ok offset={r.offset} end={r.end} epoch={r.epoch}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    return _write(args, args.value.encode())


def cmd_del(args: argparse.Namespace) -> int:
    return _write(args, None)


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        try:
            r = c.read(args.key.encode())
        except ZwalError as e:
            raise _fail(e) from None
    if r.value is None:
        print(f"zwal: key {args.key!r} not found", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(r.value + b"\n")
    return 0


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render_status(targets: list[tuple[str, str]], sts: dict[str, dict[str, Any] | None]) -> str:
    rows = [("NODE", "ROLE", "EPOCH", "END", "RECORDS", "LEADER", "ENDPOINT")]
    for name, ep in targets:
        st = sts.get(name)
        if st is None:
            rows.append((name, "unreachable", "-", "-", "-", "-", ep))
        else:
            rows.append((st["name"], st["role"], str(st["epoch"]), str(st["end"]), str(st["records"]),
                         str(st.get("leader") or "-"), ep))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for st in sts.values():
        if st and st.get("role") == "leader" and st.get("followers") is not None:
            lines.append("")
            lines.append(f"leader {st['name']}: epoch {st['epoch']}, end {st['end']}, commit {st.get('commit')}, "
                         f"ack_replicas {st.get('ack_replicas')}, fsync_mode {st.get('fsync_mode')}")
            for f in st["followers"]:
                since = f.get("seconds_since_ack")
                lines.append(
                    f"  follower {f['name']}: acked {f['acked']}, lag {_fmt_bytes(f['lag_bytes'])} / "
                    f"{f['lag_records']} records, last ack "
                    + (f"{since:.1f}s ago" if since is not None else "never")
                    + (", in sync" if f.get("in_sync") else ", NOT in sync")
                )
            c = st.get("counters", {})
            fs = c.get("fsync_seconds", {})
            bs = c.get("batch_size", {})
            if fs.get("p50") is not None:
                lines.append(
                    f"  appends {c.get('appends')}, batches {c.get('batches')}, batch size p50 {bs.get('p50')} "
                    f"p99 {bs.get('p99')}, fsync p50 {fs['p50'] * 1e3:.2f} ms p99 {fs['p99'] * 1e3:.2f} ms"
                )
            if c.get("errors"):
                lines.append(f"  errors: {', '.join(f'{k}={v}' for k, v in sorted(c['errors'].items()))}")
    for st in sts.values():
        d = st.get("damaged_end") if st else None
        if isinstance(d, int) and (st.get("end") or 0) < d:  # type: ignore[union-attr]
            lines.append(f"WARNING: {st['name']} cut bytes from its log at recovery (its end was {d}, now "  # type: ignore[index]
                         f"{st['end']}): until it has caught up from a leader it counts as no copy for promotion")  # type: ignore[index]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    targets = _endpoints(args)
    deadline = time.monotonic() + args.wait
    while True:
        sts = fetch_statuses(targets, min(args.timeout, 2.0), _creds(args))
        up = [s for s in sts.values() if s]
        leaders = [s for s in up if s["role"] == "leader"]
        ready = (len(up) == len(targets) and len(leaders) == 1
                 and all(f.get("in_sync") for f in leaders[0].get("followers", []))
                 and all(s["epoch"] == leaders[0]["epoch"] for s in up))
        if ready or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    if args.json:
        print(json.dumps(sts, indent=1, default=str))
    else:
        print(render_status(targets, sts))
    if not up:
        print("zwal: no node answered (is the cluster running? 'make run' starts the local one)", file=sys.stderr)
        return 1
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="cluster file (finds every node)")
    p.add_argument("--endpoint", action="append", help="a node's client endpoint, e.g. tcp://127.0.0.1:7101 (repeatable)")
    p.add_argument("--timeout", type=float, default=5.0, help="give up after this many seconds (default: %(default)s)")
    p.add_argument("--cert", help="client certificate (.key_secret) to use instead of the cluster's "
                   "keys/clients/client.key_secret; with --endpoint, also give --server-key")
    p.add_argument("--server-key", help="with --endpoint and --cert: the node's public key (Z85, 40 characters)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("set", help="write KEY=VALUE durably; prints its offset and epoch",
                       description="Send a SET to the leader (found from the cluster file). Returns only after "
                       "the record is fsynced on the leader and on ack_replicas followers.")
    s.add_argument("key", metavar="KEY")
    s.add_argument("value", metavar="VALUE")
    _common(s)
    s.set_defaults(func=cmd_set)
    d = sub.add_parser("del", help="delete KEY durably", description="Send a DEL to the leader.")
    d.add_argument("key", metavar="KEY")
    _common(d)
    d.set_defaults(func=cmd_del)
    g = sub.add_parser("get", help="print KEY's value (exit 1 if absent)",
                       description="Read KEY from the leader's state. Exit 1 when the key is absent.")
    g.add_argument("key", metavar="KEY")
    _common(g)
    g.set_defaults(func=cmd_get)
    st = sub.add_parser("status", help="a table of every node: role, epoch, end offset, follower lag",
                        description="Ask every node of the cluster for its status. Exit 1 when no node answers.")
    _common(st)
    st.add_argument("--json", action="store_true", help="print the raw status maps as JSON")
    st.add_argument("--wait", type=float, default=0.0,
                    help="wait up to this many seconds for every node to answer and a leader to exist")
    st.set_defaults(func=cmd_status)
