"""`zwal set|del|get|status`: the client library from the command line."""

from __future__ import annotations

import argparse
import os
import base64
import json
import sys
import time
from typing import Any

from daemon import config as config_mod
from daemon.client.blocking import (Client, NoLeader, NotEnoughReplicas, OffsetCompacted, Unavailable, ZwalError,
                                    fetch_statuses)
from daemon.cli.cmd_log import CLIError
from daemon.wal.format import MAX_KEY, MAX_VALUE


def _endpoints(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, endpoint) pairs from --config or --endpoint."""
    if args.endpoint:
        return [(ep, ep) for ep in args.endpoint]
    if args.config:
        try:
            cfg = config_mod.load(args.config)
        except config_mod.ConfigError as e:
            raise CLIError(str(e), 2, "config") from None
        return [(n.name, n.client_endpoint) for n in cfg.nodes]
    raise CLIError("say where the cluster is: --config CLUSTER.toml or --endpoint tcp://HOST:PORT", 2)


def _creds(args: argparse.Namespace) -> Any:
    """CurveZMQ credentials: the cluster's client certificate (or --cert) with
    --config; --cert and --server-key with --endpoint; none for security = "none"."""
    from daemon.auth.creds import by_hand, for_config
    from daemon.auth.keys import KeyError_

    try:
        if args.endpoint:
            if args.cert is None and args.config:
                # --endpoint narrows the cluster file's nodes: keep its keys (and cluster id).
                return for_config(config_mod.load(args.config), "client")
            if args.cert is None:
                return None  # a plain socket: only a security = "none" cluster answers it
            if args.server_key is None:
                raise CLIError("--cert needs --server-key: the node's public key (public_key in its [[node]])", 2)
            return by_hand(args.cert, args.server_key)
        if args.config:
            return for_config(config_mod.load(args.config), "client", cert=args.cert)
    except KeyError_ as e:
        raise CLIError(str(e), 2, "credentials") from None
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2, "config") from None
    return None


def _client(args: argparse.Namespace) -> Client:
    return Client([ep for _, ep in _endpoints(args)], timeout=min(1.0, args.timeout), deadline=args.timeout,
                  creds=_creds(args))


def _fail(e: ZwalError, key: str | None = None) -> CLIError:
    """The CLI's error for a failed request; `key` for a write, whose outcome may be unknown."""
    check = (f"check with 'zwal get {key}' before running this command again: a new command is a new request "
             "and may write a second copy") if key is not None else ""
    if isinstance(e, Unavailable):
        return CLIError(f"{e} (is the cluster running? try 'zwal status')"
                        + (f"; the write may or may not have been applied: {check}" if check else ""), 1, e.code)
    if isinstance(e, NotEnoughReplicas) and e.reply.get("written") and check:
        # The node's own advice ("retry with the same request id") is for a library client.
        return CLIError(
            f"not_enough_replicas: the record is on the leader's disk at offset {e.reply.get('offset')} (epoch "
            f"{e.reply.get('epoch')}), but too few followers acknowledged it within --timeout; it may still "
            f"become committed: {check}", 1, e.code)
    return CLIError(str(e), 1, e.code)


def show_bytes(b: bytes) -> object:
    """A key or value in JSON: its text when it is UTF-8, else {"base64": ...} (as `zwal log dump`)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode("ascii")}


def _emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, ensure_ascii=False, default=str))


def _write(args: argparse.Namespace, value: bytes | None) -> int:
    """`zwal set` and `zwal del`: one acknowledged write, printed with where it landed."""
    with _client(args) as c:
        try:
            r = c.set(os.fsencode(args.key), value) if value is not None else c.delete(os.fsencode(args.key))
        except ZwalError as e:
            raise _fail(e, args.key) from None
    if args.json:
        _emit({"ok": True, "op": "set" if value is not None else "del", "key": args.key, "offset": r.offset,
               "end": r.end, "epoch": r.epoch})
    else:
        print(f"ok offset={r.offset} end={r.end} epoch={r.epoch}")
    return 0


def read_value(args: argparse.Namespace) -> bytes:
    """The value of `zwal set`: the VALUE argument, stdin for "-", or --value-file; binary-safe,
    refused before anything is sent when it is empty or over the protocol's limit."""
    if args.value_file is not None and args.value is not None:
        raise CLIError("give the value once: VALUE, '-' (stdin) or --value-file FILE", 2)
    if args.value_file is not None:
        try:
            with open(args.value_file, "rb") as f:
                data = f.read(MAX_VALUE + 1)
        except OSError as e:
            raise CLIError(f"--value-file {args.value_file}: {e.strerror or e}", 2) from None
        source = args.value_file
    elif args.value == "-":
        data = sys.stdin.buffer.read(MAX_VALUE + 1)
        source = "stdin"
    elif args.value is not None:
        data = os.fsencode(args.value)
        source = "VALUE"
    else:
        raise CLIError("zwal set KEY VALUE: give VALUE, '-' to read it from stdin, or --value-file FILE", 2)
    if len(data) > MAX_VALUE:
        raise CLIError(f"the value from {source} is over the protocol's limit of {MAX_VALUE} bytes (1 MiB); "
                       "nothing was written", 2, "value_too_large")
    if not data:
        raise CLIError(f"the value from {source} is empty; a value is 1..{MAX_VALUE} bytes "
                       "(to remove a key use 'zwal del')", 2, "invalid_record")
    return data


def read_batch(stream: Any) -> list[tuple[bytes, bytes]]:
    """`zwal set --batch`: one write per line, KEY, a tab (or spaces), VALUE; blank lines skipped. Every line
    is checked before anything is sent."""
    items: list[tuple[bytes, bytes]] = []
    for n, raw in enumerate(stream, 1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        parts = line.split(b"\t", 1) if b"\t" in line else line.split(None, 1)
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise CLIError(f"stdin line {n}: expected KEY<tab>VALUE (or KEY VALUE); nothing was written", 2,
                           "bad_input")
        key, value = parts
        if len(key) > MAX_KEY or len(value) > MAX_VALUE:
            raise CLIError(f"stdin line {n}: a key is 1..{MAX_KEY} bytes and a value 1..{MAX_VALUE}; nothing was "
                           "written", 2, "invalid_record")
        items.append((key, value))
    if not items:
        raise CLIError("--batch read no KEY VALUE lines from stdin; nothing was written", 2, "bad_input")
    return items


def cmd_set(args: argparse.Namespace) -> int:
    if args.batch:
        if args.key is not None or args.value is not None or args.value_file is not None:
            raise CLIError("--batch reads KEY<tab>VALUE lines from stdin: give no KEY, VALUE or --value-file", 2)
        items = read_batch(sys.stdin.buffer)
        with _client(args) as c:
            try:
                res = c.set_many(items)
            except ZwalError as e:
                raise CLIError(f"{e}; of the {len(items)} writes, those before the failure may have been applied: "
                               "check with 'zwal get KEY' before running this again (a new command sends new "
                               "requests and may write a second copy)", 1, e.code) from None
        if args.json:
            _emit({"ok": True, "op": "batch", "writes": len(res), "first_offset": res[0].offset,
                   "end": res[-1].end, "epoch": res[-1].epoch})
        else:
            print(f"ok writes={len(res)} first_offset={res[0].offset} end={res[-1].end} epoch={res[-1].epoch}")
        return 0
    if args.key is None:
        raise CLIError("zwal set KEY VALUE: give KEY (or --batch to read KEY<tab>VALUE lines from stdin)", 2)
    return _write(args, read_value(args))


def cmd_del(args: argparse.Namespace) -> int:
    return _write(args, None)


# `zwal get` exit codes (documented in its --help and docs/cli.md).
GET_FOUND = 0
GET_ABSENT = 1  # also: refused, or no node answered at all
GET_NO_LEADER = 3  # as `status --check`: nodes answered, none as leader (with --stale: none with an intact log)


def _no_leader(e: NoLeader, args: argparse.Namespace) -> CLIError:
    who = "; ".join(f"{n}: {why}" for n, why in e.answered.items()) or str(e)
    if args.stale:
        return CLIError(f"no leader answered, and no node with an intact log did ({who}). Bring up an intact "
                        "node, or wait for the damaged one to catch up from a leader ('zwal status' shows each "
                        "node's log)", GET_NO_LEADER, e.code)
    return CLIError(f"no leader answered within {args.timeout:g}s ({who}): a plain get answers only from the "
                    "leader. Wait for a leader ('zwal status --wait 30'; 'zwal promote --help' if none comes), "
                    f"or accept an answer that may miss acknowledged writes: 'zwal get --stale {args.key}'",
                    GET_NO_LEADER, e.code)


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as c:
        try:
            r = c.read(os.fsencode(args.key), stale=args.stale)
        except NoLeader as e:
            raise _no_leader(e, args) from None
        except ZwalError as e:
            raise _fail(e) from None
    if args.json:
        doc: dict[str, Any] = {"ok": True, "key": args.key, "found": r.value is not None, "node": r.node,
                               "offset": r.offset, "stale": r.stale, "linearizable": r.linearizable}
        if r.value is not None:
            doc["value"] = show_bytes(r.value)
        _emit(doc)
        return GET_FOUND if r.value is not None else GET_ABSENT
    # stdout carries only the value; what it is worth goes to stderr.
    stale = (f"a stale answer from {r.node} (a follower, log end {r.offset}, not the leader): it may miss "
             "acknowledged writes") if r.stale else None
    if r.value is None:
        print(f"zwal: key {args.key!r} not found" + (f" in {stale}" if stale else ""), file=sys.stderr)
        return GET_ABSENT
    if stale:
        print(f"zwal: {stale}", file=sys.stderr)
    sys.stdout.buffer.write(r.value if args.raw else r.value + b"\n")
    sys.stdout.buffer.flush()
    return GET_FOUND


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render_status(targets: list[tuple[str, str]], sts: dict[str, dict[str, Any] | None]) -> str:
    rows = [("NODE", "ROLE", "EPOCH", "END", "RECORDS", "LEADER", "PID", "ENDPOINT")]
    for name, ep in targets:
        st = sts.get(name)
        if st is None:
            rows.append((name, "unreachable", "-", "-", "-", "-", "-", ep))
        else:
            rows.append((st["name"], st["role"], str(st["epoch"]), str(st["end"]), str(st["records"]),
                         str(st.get("leader") or "-"), str(st.get("pid") or "-"), ep))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    ids = sorted({(st.get("cluster") or "?", st.get("cluster_id") or "-") for st in sts.values() if st})
    if ids:
        lines.append("cluster " + "; ".join(f"{n} (id {i})" for n, i in ids)
                     + ("  WARNING: these nodes belong to different clusters" if len(ids) > 1 else ""))
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
    coord = next((st for st in sts.values() if st and st.get("coordinator") == "etcd"), None)
    if coord is not None:
        holder = coord.get("lease_holder")
        lead = next((st for st in sts.values() if st and st.get("name") == holder), None)
        lines.append("")
        lines.append("coordinator etcd: " + (
            f"lease held by {holder} (epoch {coord.get('lease_epoch')}), "
            + (f"proven for {lead.get('lease_remaining_s', 0):.2f} s more" if lead else "its holder did not answer")
            + f", lease_ttl {coord.get('lease_ttl'):g} s" if holder else
            "no lease holder: an election is due (docs/failover.md)")
            + (f"; etcd error: {coord['coordinator_error']}" if coord.get("coordinator_error") else ""))
    for st in sts.values():
        d = st.get("damaged_end") if st else None
        if isinstance(d, int) and (st.get("end") or 0) < d:  # type: ignore[union-attr]
            lines.append(f"WARNING: {st['name']} cut bytes from its log at recovery (its end was {d}, now "  # type: ignore[index]
                         f"{st['end']}): until it has caught up from a leader it counts as no copy for promotion")  # type: ignore[index]
    return "\n".join(lines)


# `zwal status` exit codes (documented in its --help and docs/cli.md).
STATUS_OK = 0  # some node answered (plain status); a leader answered (--check)
STATUS_NOTHING_ANSWERED = 1  # no node answered at all
STATUS_NO_LEADER = 3  # --check: nodes answered, but none of them is a leader at the highest epoch seen


def leader_of(sts: dict[str, dict[str, Any] | None]) -> str | None:
    """The node that answered as leader at the highest epoch any node reported, if one did."""
    up = {n: s for n, s in sts.items() if s}
    if not up:
        return None
    top = max(s["epoch"] for s in up.values())
    leaders = [n for n, s in up.items() if s["role"] == "leader" and s["epoch"] == top]
    return leaders[0] if len(leaders) == 1 else None


def _status_doc(targets: list[tuple[str, str]], sts: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    up = [s for s in sts.values() if s]
    return {"ok": bool(up), "leader": leader_of(sts), "answered": len(up), "nodes_total": len(targets),
            "endpoints": {n: ep for n, ep in targets}, "nodes": sts}


def _fetch(args: argparse.Namespace, targets: list[tuple[str, str]], creds: Any) -> dict[str, dict[str, Any] | None]:
    return fetch_statuses(targets, args.timeout, creds)


def _watch(args: argparse.Namespace, targets: list[tuple[str, str]], creds: Any) -> int:
    """Refresh the table every --interval seconds until Ctrl-C (exit 0). On a terminal the
    screen is redrawn in place; otherwise (a pipe, a file) each refresh is appended,
    with --json as one JSON line per refresh."""
    tty = sys.stdout.isatty() and not args.json
    try:
        while True:
            t0 = time.monotonic()
            sts = _fetch(args, targets, creds)
            if args.json:
                doc = _status_doc(targets, sts)
                doc["time"] = round(time.time(), 3)
                print(json.dumps(doc, default=str), flush=True)
            else:
                text = (f"{time.strftime('%H:%M:%S')}  every {args.interval:g}s, Ctrl-C to stop\n\n"
                        + render_status(targets, sts))
                # Home, draw, clear what is left of the old frame: no blank flash between frames.
                sys.stdout.write(("\x1b[H" + text.replace("\n", "\x1b[K\n") + "\x1b[K\x1b[J") if tty
                                 else text + "\n\n")
                sys.stdout.flush()
            time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return 0


def cmd_status(args: argparse.Namespace) -> int:
    targets = _endpoints(args)
    creds = _creds(args)
    if args.watch:
        if args.check:
            raise CLIError("--check and --watch do not go together: --check answers once, with its exit code", 2)
        if args.interval <= 0:
            raise CLIError("--interval must be positive", 2)
        return _watch(args, targets, creds)
    deadline = time.monotonic() + args.wait
    while True:
        sts = _fetch(args, targets, creds)
        up = [s for s in sts.values() if s]
        leaders = [s for s in up if s["role"] == "leader"]
        ready = (len(up) == len(targets) and len(leaders) == 1
                 and all(f.get("in_sync") for f in leaders[0].get("followers", []))
                 and all(s["epoch"] == leaders[0]["epoch"] for s in up))
        if ready or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    leader = leader_of(sts)
    if args.json:
        _emit(_status_doc(targets, sts))
    else:
        print(render_status(targets, sts))
    if not up:
        if not args.json:
            print(f"zwal: no node answered within {args.timeout:g}s ({', '.join(ep for _, ep in targets)}; "
                  "is the cluster running? 'make run' starts the local one)", file=sys.stderr)
        return STATUS_NOTHING_ANSWERED
    if leader is None:
        if not args.json:
            print(f"zwal: no leader answered ({len(up)} of {len(targets)} node(s) answered, none leads the "
                  "highest epoch; see 'zwal promote')", file=sys.stderr)
        if args.check:
            return STATUS_NO_LEADER
    return STATUS_OK


def _common(p: argparse.ArgumentParser, json_help: str, timeout: float = 5.0,
            timeout_help: str = "give up after this many seconds in all, retries and failovers included") -> None:
    p.add_argument("--config", help="cluster file (finds every node)")
    p.add_argument("--endpoint", action="append", help="a node's client endpoint, e.g. tcp://127.0.0.1:7101 "
                   "(repeatable; wins over --config and $ZWAL_CONFIG)")
    p.add_argument("--timeout", type=float, default=timeout, help=timeout_help + " (default: %(default)s)")
    p.add_argument("--cert", help="client certificate (.key_secret) to use instead of the cluster's "
                   "keys/clients/client.key_secret; with --endpoint, also give --server-key")
    p.add_argument("--server-key", help="with --endpoint and --cert: the node's public key (Z85, 40 characters)")
    p.add_argument("--json", action="store_true",
                   help=f"print one JSON document on stdout: {json_help}; an error is "
                   '{"ok": false, "error": KIND, "message": TEXT, "exit_code": N} (docs/cli.md)')


_ERRORS = ("Exit 0 on success; 1 when the cluster refused or did not answer within --timeout (the message names "
           "every endpoint tried); 2 for a usage or cluster-file error.")


# `zwal tail` exit codes (documented in its --help and docs/cli.md).
TAIL_COMPACTED = 4


def cmd_tail(args: argparse.Namespace) -> int:
    """One JSON object per committed record, in log order (docs/cli.md)."""
    c = _client(args)
    start = args.from_offset
    try:
        if start is None:
            # kafka-console-consumer's default: with --follow, only what comes next (the commit point now);
            # without, the whole log that is kept (its --from-beginning: the oldest offset retention kept).
            probe: dict[str, Any] = {"from": 0, "max_bytes": 1, "wait_ms": 0}
            try:
                first = c.request("watch", **probe)
                beginning = 0
            except OffsetCompacted as e:
                beginning = int(e.reply["oldest"])
                probe["from"] = beginning
                first = c.request("watch", **probe)
            start = int(first["commit"]) if args.follow else beginning
        for rec in c.watch(start, follow=args.follow):
            doc: dict[str, Any] = {"offset": rec.offset, "end": rec.end, "epoch": rec.epoch, "op": rec.op,
                                   "key": show_bytes(rec.key)}
            if rec.value is not None:
                doc["value"] = show_bytes(rec.value)
            print(json.dumps(doc, ensure_ascii=False), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    except OffsetCompacted as e:
        snap = e.reply.get("snapshot")
        raise CLIError(f"offset {start} is no longer in the log (retention removed it; the oldest offset kept is "
                       f"{e.reply.get('oldest')}): run 'zwal tail --from {e.reply.get('oldest')}' to read what is "
                       "kept" + (f", or restore the snapshot at offset {snap} and tail from there" if snap is not None
                                 else ""), TAIL_COMPACTED, e.code) from None
    except ZwalError as e:
        raise _fail(e) from None
    finally:
        c.close()
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "set", help="write KEY=VALUE durably; prints its offset and epoch",
        description="Send a SET to the leader (found from the cluster file). Returns only after the record is "
        "fsynced on the leader and on ack_replicas followers. The value is VALUE, or stdin when VALUE is '-', or "
        f"the bytes of --value-file FILE: binary-safe, 1 to {MAX_VALUE} bytes (1 MiB, the protocol's limit; a "
        "larger value is refused before anything is sent, exit 2). " + _ERRORS,
        epilog="  zwal set user:1 alice --config var/cluster.toml\n"
        "  zwal set photo - < photo.jpg                 # value from stdin, exactly these bytes\n"
        "  zwal set photo --value-file photo.jpg\n"
        "  zwal set user:1 alice --json                 # {\"ok\": true, \"op\": \"set\", \"offset\": ...}\n"
        "  printf 'k1\\tv1\\nk2\\tv2\\n' | zwal set --batch  # many writes, few messages (the batch op)")
    s.add_argument("key", metavar="KEY", nargs="?")
    s.add_argument("value", metavar="VALUE", nargs="?",
                   help="the value as text; '-' reads it from stdin (to store a literal '-', pipe it in)")
    s.add_argument("--value-file", metavar="FILE", help="read the value from FILE (binary-safe), instead of VALUE")
    s.add_argument("--batch", action="store_true",
                   help="read KEY<tab>VALUE lines (or KEY VALUE) from stdin and write them with the batch op: "
                   "each its own record, up to 1024 in a message, in the order given; every line is checked "
                   "before anything is sent. Prints the count, the first offset, the end and the epoch")
    _common(s, '{"ok": true, "op": "set", "key", "offset", "end", "epoch"}')
    s.set_defaults(func=cmd_set)
    d = sub.add_parser("del", help="delete KEY durably",
                       description="Send a DEL to the leader; acknowledged like a SET (fsynced on the leader and "
                       "on ack_replicas followers). " + _ERRORS,
                       epilog="  zwal del user:1 --config var/cluster.toml")
    d.add_argument("key", metavar="KEY")
    _common(d, '{"ok": true, "op": "del", "key", "offset", "end", "epoch"}')
    d.set_defaults(func=cmd_del)
    g = sub.add_parser(
        "get", help="print KEY's value (exit 1 if absent)",
        description="Read KEY from the leader's state. By default the value is printed followed by a newline; "
        "--raw writes exactly the stored bytes (binary-safe) and nothing else. When no leader answers within "
        f"--timeout, exit {GET_NO_LEADER} and no value: a follower's answer may miss acknowledged writes. "
        "--stale accepts one when no leader answers: from the follower with the most log, never from a node "
        "whose log is damaged (recovery cut it), and stderr (or --json's stale and node) says which node "
        "answered. Exit 1 when the key is absent (with --json too: found is false), the cluster refuses or "
        f"does not answer; 2 for a usage error; {GET_NO_LEADER} no leader answered (with --stale: no node with "
        "an intact log).",
        epilog="  zwal get user:1 --config var/cluster.toml\n"
        "  zwal get photo --raw > photo.jpg             # the exact bytes, no newline added\n"
        "  zwal get photo --json                        # value as text, or {\"base64\": ...} when not UTF-8\n"
        "  zwal get user:1 --stale                      # no leader: a follower's answer, said on stderr")
    g.add_argument("key", metavar="KEY")
    g.add_argument("--raw", action="store_true", help="write the value's bytes exactly, without a newline")
    g.add_argument("--stale", action="store_true",
                   help="when no leader answers, accept a follower's (possibly stale) answer; never a damaged "
                   "node's")
    _common(g, '{"ok": true, "key", "found", "value" (text, or {"base64": ...}), "node", "offset", "stale", '
            '"linearizable"}')
    g.set_defaults(func=cmd_get)
    t = sub.add_parser(
        "tail", help="print committed records from an offset as JSON lines (--follow: keep printing)",
        description="Stream the log's committed records (acknowledged: fsynced on the leader and on ack_replicas "
        "followers) from --from OFFSET, one JSON object per line: offset, end (the next record's offset), epoch, "
        "op, key and (for a set) value; a key or value is a string when it is valid UTF-8, else "
        "{\"base64\": ...}. Without --follow it stops at the commit point; with --follow it waits for new "
        "records until Ctrl-C, following leader changes (no record twice, none skipped). --from defaults to 0 "
        "(the whole log), or with --follow to the commit point now (only new records, as kafka-console-consumer "
        f"and tail -f). Exit 0 at the end or on Ctrl-C; 1 when the cluster refused or did not answer within "
        f"--timeout; 2 for a usage error; {TAIL_COMPACTED} when OFFSET is below the oldest offset the log keeps "
        "(the message says what to do).",
        epilog="  zwal tail --config var/cluster.toml                 # every record so far\n"
        "  zwal tail --follow                                  # new records as they commit; Ctrl-C stops\n"
        "  zwal tail --from 4096 --follow | jq -c .key          # resume at a record's end")
    t.add_argument("--from", dest="from_offset", type=int, metavar="OFFSET", default=None,
                   help="a record's offset (or a printed end); default 0, or with --follow the commit point")
    t.add_argument("--follow", "-f", action="store_true", help="keep waiting for new records until Ctrl-C")
    _common(t, "not available: the output is JSON lines already")
    t.set_defaults(func=cmd_tail)
    st = sub.add_parser(
        "status", help="a table of every node: role, epoch, end offset, PID, follower lag",
        description="Ask every node of the cluster for its status and print a table (with each node's PID), "
        "then the leader's view of its followers. Exit codes: 0 when at least one node answered (plain status "
        "exits 0 even with no leader, and says so on stderr); 1 when no node answered at all; with --check, 3 "
        "when nodes answered but none of them leads the highest epoch seen. --watch redraws the table every "
        "--interval seconds until Ctrl-C (exit 0).",
        epilog="  zwal status --config var/cluster.toml\n"
        "  zwal status --wait 30                        # until every node answers and one leads\n"
        "  zwal status --check || alert 'no leader'     # for scripts and health checks\n"
        "  zwal status --watch --interval 0.5           # a live table; Ctrl-C stops it\n"
        "  kill -9 $(zwal status --json | jq '.nodes[.leader].pid')   # the leader's PID")
    _common(st, '{"ok", "leader" (name or null), "answered", "nodes_total", "endpoints", "nodes": {NAME: '
            'status map or null}}; with --watch, one such line per refresh', 2.0,
            "seconds to wait for each node's answer (all nodes are asked at once)")
    st.add_argument("--wait", type=float, default=0.0,
                    help="wait up to this many seconds for every node to answer and a leader to exist")
    st.add_argument("--check", action="store_true",
                    help=f"exit {STATUS_NO_LEADER} when no leader answers (1 when no node answers at all)")
    st.add_argument("--watch", action="store_true", help="refresh the table until Ctrl-C")
    st.add_argument("--interval", type=float, default=2.0, metavar="S",
                    help="seconds between refreshes with --watch (default: %(default)s)")
    st.set_defaults(func=cmd_status)
