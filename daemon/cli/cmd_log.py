"""`zwal demo` and `zwal log ...`: the engine, used directly on a log.

A PATH is a single log file (the lesson's `zwal demo` log), or a node's data
directory or its log/ directory of segments (daemon/wal/segments.py)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys

from daemon.wal import CLEAN, CORRUPT, TORN, Record, RecordError, WalError, open_log
from daemon.wal.format import VERSION_V1, FrameStatus, decode_payload, frame_payload, parse_frame, trusted_frame_end
from daemon.wal.reader import (LogOpenError, ScanResult, _Mapped, classify_tail, find_valid_frame_after, open_for_read,
                               scan_buffer)
from daemon.wal.segments import iter_log_frames, log_dir_of, log_files, open_segments, read_all, scan_log
from daemon.wal.writer import WalLocked, fsync_dir, lock_exclusive, unsynced_note_path, write_full

EXIT_OK, EXIT_TORN, EXIT_CORRUPT, EXIT_CANNOT_OPEN = 0, 1, 2, 3
_EXIT_FOR = {CLEAN: EXIT_OK, TORN: EXIT_TORN, CORRUPT: EXIT_CORRUPT}


class CLIError(Exception):
    """A one-line error for the user, with the exit code to leave with, and a
    short machine-readable kind (the "error" field of --json output)."""

    def __init__(self, msg: str, code: int = 1, kind: str | None = None) -> None:
        super().__init__(msg)
        self.exit_code = code
        self.kind = kind or ("usage" if code == 2 else "error")


class FromEnv(str):
    """A --config value taken from $ZWAL_CONFIG rather than given on the command line."""


def load_cluster(path: str):
    """The cluster file, or a one-line error (exit 2) that says what is wrong with it."""
    from daemon import config as config_mod

    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        raise CLIError(str(e), 2, "config") from None


def _show(b: bytes) -> object:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode("ascii")}


def cmd_demo(args: argparse.Namespace) -> int:
    steps = [
        Record("set", b"foo", b"bar"),
        Record("set", b"name", b"alice"),
        Record("set", b"count", b"42"),
        Record("del", b"name"),
    ]
    w, scan = _open(args.path)
    print(f"wal_open: ok ({args.path}, {scan.records} records already there, end offset {w.end})")
    for r in steps:
        offset, size = w.append(r)
        what = f"{r.op.upper()} {r.key.decode()}" + (f"={r.value.decode()}" if r.value else "")
        print(f"append {what} -> {size} bytes at offset {offset}")
    total = w.end
    w.close()
    print("wal_close: ok")
    print(f"total offset: {total}")
    return 0


def _damage_marks(path: str, data_dir: str | None = None):
    """When the log belongs to a node (node-state.json beside it), a cut made
    here is recorded exactly as the node's own recovery records it
    (damaged_end, and confirm_from for a leader), durably before the bytes go,
    so promotion never counts this node as a copy of what the cut removed."""
    from daemon.node import identity as nodestate

    state_path = os.path.join(data_dir or os.path.dirname(os.path.abspath(path)), "node-state.json")
    if not os.path.exists(state_path):
        return None
    st = nodestate.load(state_path)

    def before_cut(scan):
        if st is not None:
            nodestate.save(state_path, st.recovered(scan))
            print(f"{state_path}: recorded the cut (damaged_end={scan.file_size})", file=sys.stderr)

    return before_cut


def _open(path: str, create: bool = True):
    """The log, recovered; `create=False` for the repair tools: a mistyped PATH must fail, not
    become a new empty log that reports itself clean."""
    try:
        ldir = log_dir_of(path)
        if ldir is not None:
            data_dir = os.path.dirname(os.path.abspath(ldir))
            return open_segments(ldir, before_cut=_damage_marks(path, data_dir), create=create)
        return open_log(path, before_cut=_damage_marks(path), create=create)
    except LogOpenError as e:
        raise CLIError(str(e), EXIT_CANNOT_OPEN) from None
    except WalError as e:
        code = EXIT_CORRUPT if getattr(e, "code", "") == "log_corrupt" else EXIT_CANNOT_OPEN
        raise CLIError(str(e), code) from None
    except OSError as e:
        raise CLIError(f"{path}: {e.strerror or e}", EXIT_CANNOT_OPEN) from None


def cmd_append(args: argparse.Namespace) -> int:
    try:
        if args.op == "set":
            if args.value is None:
                raise CLIError("usage: zwal log append PATH set KEY VALUE", 2)
            rec = Record("set", os.fsencode(args.key), os.fsencode(args.value))
        else:
            if args.value is not None:
                raise CLIError("usage: zwal log append PATH del KEY (a del takes no value)", 2)
            rec = Record("del", os.fsencode(args.key))
    except RecordError as e:
        raise CLIError(f"invalid record: {e}", 2) from None
    existed = os.path.exists(args.path)
    w, _ = _open(args.path)
    try:
        offset, size = w.append(rec)
    except WalError as e:
        raise CLIError(str(e), 1) from None
    finally:
        w.close()
    if not existed:  # a mistyped path must not pass for the log it was meant to be
        print(f"{args.path}: did not exist; created a new log for this record", file=sys.stderr)
    print(f"offset={offset} size={size}")
    return 0


def _scan(path: str) -> ScanResult:
    try:
        return scan_log(path)
    except LogOpenError as e:
        raise CLIError(str(e), EXIT_CANNOT_OPEN) from None
    except OSError as e:
        raise CLIError(f"{path}: {e.strerror or e}", EXIT_CANNOT_OPEN) from None


EXIT_BAD_FROM = 4  # dump --from OFFSET is not where a frame starts (without --skip-damaged)


def _record_obj(f) -> dict[str, object]:
    rec = decode_payload(f.payload)
    obj: dict[str, object] = {"offset": f.offset, "size": f.size, "epoch": f.epoch, "op": rec.op, "key": _show(rec.key)}
    if rec.value is not None:
        obj["value"] = _show(rec.value)
    if rec.client_id is not None:
        obj["client_id"] = _show(rec.client_id)
        obj["request_id"] = rec.request_id
    return obj


def _boundary(buf, offset: int) -> tuple[str, int, int]:
    """Is `offset` where a frame starts? Walks the valid frames from 0:
    ("yes", offset, 0); ("inside", frame offset, frame size) when it falls inside
    a valid frame; ("unknown", damage offset, 0) when damage comes first."""
    pos = 0
    while pos < offset:
        _, frame = parse_frame(buf, pos)
        if frame is None:
            return "unknown", pos, 0
        if frame.end > offset:
            return "inside", pos, frame.size
        pos = frame.end
    return "yes", offset, 0


def dump_from(buf, start: int, skip_damaged: bool, emit, warn) -> tuple[str, int]:
    """Print every valid record from `start` (read-only). Without skip_damaged, stop at the first bad
    frame; with it, report each damaged range (offset, length) and resync at the next offset where a
    whole frame parses with a good CRC (the corruption scanner's own search). Returns the worst status
    seen (CLEAN, TORN: bad bytes with nothing valid after them, CORRUPT) and the damaged-range count."""
    size = len(buf)
    pos = start
    worst = CLEAN
    ranges = 0
    last_epoch = None
    while pos < size:
        status, frame = parse_frame(buf, pos)
        reason = status
        if frame is not None:
            try:
                obj = _record_obj(frame)
            except RecordError as e:
                reason = f"frame passes its checksum but its payload is invalid: {e}"
                frame_len = frame.size
            else:
                if last_epoch is not None and frame.epoch < last_epoch:
                    warn(f"offset {pos}: epoch goes backwards ({last_epoch} -> {frame.epoch})")
                    if not skip_damaged:
                        return CORRUPT, ranges
                    worst = CORRUPT
                last_epoch = frame.epoch
                emit(obj)
                pos = frame.end
                continue
        else:
            frame_len = 0
        if frame_len:
            nxt = find_valid_frame_after(buf, pos + frame_len - 1)
        elif status == FrameStatus.SHORT_BODY:
            nxt = None  # a checksummed header's bytes are its own record's: nothing to resync inside them
        elif status == FrameStatus.BAD_BODY_CRC:
            nxt = find_valid_frame_after(buf, trusted_frame_end(buf, pos) - 1)
        else:
            nxt = find_valid_frame_after(buf, pos)
        verdict = CORRUPT if nxt is not None else classify_tail(buf, pos, status)[0]
        if frame_len and nxt is None:
            verdict = CORRUPT  # a checksummed frame with a bad payload is never a torn write
        end = nxt if nxt is not None else size
        why = reason if frame is not None else {
            FrameStatus.BAD_HEADER: "bad header (magic, version, flags or length)",
            FrameStatus.BAD_HEADER_CRC: "header checksum mismatch",
            FrameStatus.BAD_BODY_CRC: "payload checksum mismatch (the header is valid)",
            FrameStatus.SHORT_BODY: "incomplete frame (the header is valid)",
            FrameStatus.BAD_CRC: "checksum mismatch", FrameStatus.SHORT: "incomplete frame"}.get(status, status)
        if not skip_damaged:
            warn(f"offset {pos}: {why}; " + (f"the next valid frame is at offset {nxt}: " if nxt is not None else
                                              "no valid frame after it: ")
                 + ("corruption" if verdict == CORRUPT else "a torn tail")
                 + ("; add --skip-damaged to go past it" if nxt is not None else ""))
            return verdict, ranges
        ranges += 1
        emit({"damaged": True, "offset": pos, "length": end - pos, "reason": why, "resync": nxt})
        warn(f"offset {pos}: {end - pos} damaged byte(s) ({why}); "
             + (f"resynced at offset {nxt}" if nxt is not None else "nothing valid after them"))
        worst = CORRUPT if CORRUPT in (worst, verdict) else TORN
        if nxt is None:
            break
        pos = nxt
        last_epoch = None  # the frame after damage starts a fresh comparison
    return worst, ranges


def cmd_dump(args: argparse.Namespace) -> int:
    out = sys.stdout

    def emit(obj: dict[str, object]) -> None:
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")

    if args.from_offset is None and not args.skip_damaged:
        result = _scan(args.path)
        for f in iter_log_frames(args.path):
            if f.offset >= result.valid_end:
                break
            emit(_record_obj(f))
        if result.status != CLEAN:
            hint = (f" (to go past it: zwal log dump --skip-damaged {args.path}, or --from OFFSET)"
                    if result.status == CORRUPT else "")
            print(f"{args.path}: {result.describe()}{hint}", file=sys.stderr)
        return _EXIT_FOR[result.status]

    start = args.from_offset or 0
    if start < 0:
        raise CLIError("--from takes a byte offset of 0 or more", 2)
    if os.path.isdir(args.path):
        # A segmented log: its segments' bytes, concatenated, so offsets stay global.
        try:
            whole = read_all(args.path)
        except LogOpenError as e:
            raise CLIError(str(e), EXIT_CANNOT_OPEN) from None
        return _dump_buf(args, whole, start, emit)
    try:
        fd = open_for_read(args.path)
    except LogOpenError as e:
        raise CLIError(str(e), EXIT_CANNOT_OPEN) from None
    try:
        with _Mapped(fd) as m:
            return _dump_buf(args, m.buf, start, emit)
    finally:
        os.close(fd)


def _dump_buf(args: argparse.Namespace, buf, start: int, emit) -> int:
    if True:
        if True:
            if start > len(buf):
                raise CLIError(f"--from {start} is past the end of {args.path} ({len(buf)} bytes)", EXIT_BAD_FROM)
            where, at, size = _boundary(buf, start) if start else ("yes", 0, 0)
            if where == "inside":
                msg = (f"--from {start} is inside the frame at offset {at} ({size} bytes); frames start at "
                       f"{at} and {at + size}")
                if not args.skip_damaged:
                    raise CLIError(msg, EXIT_BAD_FROM, "not_a_frame_boundary")
                print(f"{args.path}: {msg}: resyncing", file=sys.stderr)
            elif where == "unknown":
                status, _ = parse_frame(buf, start)
                print(f"{args.path}: damage at offset {at} before --from {start}: cannot confirm a frame starts "
                      f"there" + ("; a valid frame parses there" if status == FrameStatus.OK else ""),
                      file=sys.stderr)
                if status != FrameStatus.OK and not args.skip_damaged:
                    raise CLIError(f"--from {start}: no valid frame starts there ({status}); add --skip-damaged "
                                   "to resync from it", EXIT_BAD_FROM, "not_a_frame_boundary")
            status, ranges = dump_from(buf, start, args.skip_damaged,
                                       emit, lambda t: print(f"{args.path}: {t}", file=sys.stderr))
    if args.skip_damaged and ranges:
        print(f"{args.path}: {ranges} damaged range(s) skipped (listed as {{\"damaged\": true, ...}} lines); "
              "nothing was changed", file=sys.stderr)
    return _EXIT_FOR[status]


def cmd_verify(args: argparse.Namespace) -> int:
    result = _scan(args.path)
    print(f"{args.path}: {result.describe()}")
    try:
        note = unsynced_note_path(log_files(args.path)[-1][1])
    except LogOpenError:
        note = unsynced_note_path(args.path)
    if os.path.exists(note):
        print(f"{note}: a process's fsync failed on this log; the bytes after the durable end it names were "
              "never acknowledged, and the next recovery cuts them (docs/format.md)")
    return _EXIT_FOR[result.status]


def cmd_recover(args: argparse.Namespace) -> int:
    w, result = _open(args.path, create=False)
    w.close()
    if result.status == TORN:
        last_base, last_path = log_files(args.path)[-1]
        print(
            f"{args.path}: dropped {result.dropped} bytes at offset {result.valid_end} "
            f"({result.reason}); saved to {last_path}.torn-{result.valid_end - last_base}; "
            f"{result.records} records, end offset {result.valid_end}"
        )
    else:
        print(f"{args.path}: clean, nothing to do: {result.records} records, end offset {result.valid_end}")
    return 0


def upgrade_bytes(buf) -> tuple[bytes, dict[int, int]]:
    """A clean log's bytes with every v1 frame re-framed as v2 (payload and
    epoch unchanged), and the map old offset -> new offset of every frame
    start and of the end. Deterministic: equal logs give equal results, and
    a prefix of a log gives a prefix of its result."""
    out: list[bytes] = []
    where: dict[int, int] = {}
    pos = new = 0
    while pos < len(buf):
        _, frame = parse_frame(buf, pos)
        assert frame is not None, "upgrade_bytes takes a clean log"
        where[pos] = new
        data = frame_payload(frame.payload, frame.epoch) if frame.version == VERSION_V1 else bytes(buf[pos:frame.end])
        out.append(data)
        new += len(data)
        pos = frame.end
    where[pos] = new
    return b"".join(out), where


def _write_durable(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_full(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from daemon.node import identity as nodestate

    path = args.path
    d = os.path.dirname(os.path.abspath(path))
    state_path = os.path.join(d, "node-state.json")
    stop_path = os.path.join(d, nodestate.CLEAN_STOP)
    files = [state_path, stop_path, path]  # renamed in this order: the state before the log (docs/format.md)
    if os.path.isdir(path):
        raise CLIError(f"{path}: a segmented log (a data or log directory) is not upgraded in place: its v1 frames "
                       "are read and replicated as they are, and new records are v2 (docs/format.md, \"Upgrading to "
                       "version 2\"). Upgrade a single-file log: a node's wal.log before its first start on this "
                       "version; nothing was changed", EXIT_CANNOT_OPEN)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file (nothing was changed)", EXIT_CANNOT_OPEN) from None
    except OSError as e:
        raise CLIError(f"{path}: {e.strerror or e}", EXIT_CANNOT_OPEN) from None
    try:
        try:
            lock_exclusive(fd, path)  # the lock a running node holds: upgrade only a stopped node's log
        except WalLocked as e:
            raise CLIError(f"{e}; stop the node (every node of the cluster: docs/format.md, "
                           "\"Upgrading to version 2\") and run this again", 1, "locked") from None
        if os.path.exists(f"{path}.upgrading"):
            # An earlier run stopped between its renames: put the originals back, then start over.
            for f in files:
                if os.path.exists(f"{f}.v1"):
                    os.replace(f"{f}.v1", f)
                if os.path.exists(f"{f}.upgrading"):
                    os.unlink(f"{f}.upgrading")
            fsync_dir(d)
            print(f"{path}: an interrupted upgrade was found; the originals are back in place, upgrading again",
                  file=sys.stderr)
            os.close(fd)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            lock_exclusive(fd, path)
        if os.path.exists(unsynced_note_path(path)):
            raise CLIError(f"{path}: a failed fsync left {unsynced_note_path(path)}; run 'zwal log recover {path}' "
                           "first, then upgrade", 1)
        with _Mapped(fd) as m:
            scan = scan_buffer(m.buf)
            if scan.status != CLEAN:
                what = (f"run 'zwal log recover {path}' first, then upgrade" if scan.status == TORN
                        else "restore it from a replica first")
                raise CLIError(f"{path}: {scan.describe()}; only a clean log is upgraded: {what}; nothing was changed",
                               _EXIT_FOR[scan.status])
            if scan.v1_records == 0:
                print(f"{path}: already version 2 ({scan.records} records, end offset {scan.valid_end}); nothing to do")
                return 0
            data, where = upgrade_bytes(m.buf)
        st = nodestate.load(state_path)
        new_files: dict[str, bytes] = {}
        if st is not None:
            if st.damaged_end is not None or st.confirm_from is not None or st.resume_at is not None:
                raise CLIError(f"{state_path}: the node is still repairing its log (damaged_end, confirm_from or "
                               "resume_at is set); start the cluster, let it heal (zwal status shows it), stop it "
                               "and upgrade then; nothing was changed", 1)
            bad = [o for _, o in st.history if o not in where and o <= scan.valid_end]
            if bad:
                raise CLIError(f"{state_path}: epoch history offsets {bad} are not frame starts of {path}; "
                               "nothing was changed", 1)
            st = st.with_(history=[(e, where.get(o, len(data) + o - scan.valid_end)) for e, o in st.history])
            new_files[state_path] = st.to_json()
        if os.path.exists(stop_path):
            with open(stop_path, "rb") as f:
                try:
                    stop_end = json.loads(f.read(4096)).get("end")
                except (ValueError, AttributeError):
                    stop_end = None
            if stop_end == scan.valid_end:
                new_files[stop_path] = json.dumps({"end": len(data)}).encode()
        for f in files:
            if os.path.exists(f"{f}.v1"):
                raise CLIError(f"{f}.v1 exists (an earlier upgrade's original?); move it aside first; "
                               "nothing was changed", 1)
        new_files[path] = data
        for f in files:
            if f in new_files:
                _write_durable(f"{f}.upgrading", new_files[f])
        fsync_dir(d)
        for f in files:
            if os.path.exists(f):
                os.link(f, f"{f}.v1")  # the original stays, under its .v1 name
        fsync_dir(d)
        for f in files:
            if f in new_files:
                os.replace(f"{f}.upgrading", f)
            elif os.path.exists(f):
                os.unlink(f)  # a clean-stop note of another end: the next start is unclean, the safe side
        fsync_dir(d)
    finally:
        os.close(fd)
    print(f"{path}: upgraded {scan.v1_records} of {scan.records} records to format version 2; end offset "
          f"{scan.valid_end} -> {len(data)} (an offset from before is now 4 bytes later per v1 frame before it); "
          f"the original is {path}.v1")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the lesson's run: append 3 SETs and a DEL durably, print sizes and the total offset",
        description="Open (or create) a log, append SET foo=bar, SET name=alice, SET count=42 and "
        "DEL name, each written and fdatasynced before the next, then close. Run it twice: the "
        "second run appends after the first (the log is append-only).",
    )
    p.add_argument("--path", default="test.wal", help="log file to append to (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    log = sub.add_parser("log", help="inspect or repair a log directly (no daemon needed)",
                         description="Tools that work on one log: PATH is a node's data directory, its log/ "
                         "directory of segments, or a single log file. Stop the node that owns the log before "
                         "append or recover: they take its lock.")
    ls = log.add_subparsers(dest="log_cmd", required=True, metavar="COMMAND")
    a = ls.add_parser("append", help="append one durable record, print its offset and size",
                      description="Append one record (after recovering a torn tail) and fdatasync it.")
    a.add_argument("path", metavar="PATH")
    a.add_argument("op", choices=["set", "del"])
    a.add_argument("key", metavar="KEY")
    a.add_argument("value", nargs="?", metavar="VALUE")
    a.set_defaults(func=cmd_append)
    d = ls.add_parser(
        "dump", help="one JSON object per record: offset, size, epoch, op, key, value",
        description="Print every valid record as a JSON line. Keys and values are UTF-8 text where valid, else "
        "{\"base64\": ...}. Read-only: nothing is changed, whatever the damage. By default the dump stops at the "
        "first bad frame. --from OFFSET starts at a byte offset, which must be where a frame starts (the byte "
        "offsets of the dump, a status's end, or an error message's offset). --skip-damaged goes on past damage: "
        "each damaged range is printed as {\"damaged\": true, \"offset\", \"length\", \"reason\", "
        "\"resync\"} (and on stderr), and the dump resumes at the next offset where a whole frame with a good "
        "checksum starts; with --from it also resyncs from an OFFSET that is not a frame start. Exit codes as "
        "for verify (0 clean, 1 torn tail, 2 corruption, 3 cannot open; with --from, of the part dumped), and 4 "
        "when --from is not a frame start (without --skip-damaged).",
        epilog="  zwal log dump node1                      # a node's data directory (its log/ segments)\n"
        "  zwal log dump node1 --skip-damaged        # every readable record, damaged ranges listed\n"
        "  zwal log dump node1 --from 4096           # from the frame at byte 4096 on\n"
        "  zwal log dump test.wal                    # a single log file (zwal demo's)")
    d.add_argument("path", metavar="PATH")
    d.add_argument("--from", dest="from_offset", type=int, metavar="OFFSET",
                   help="start at this byte offset (a frame boundary; with --skip-damaged, resync from it)")
    d.add_argument("--skip-damaged", action="store_true",
                   help="report each damaged range (offset, length) and resync at the next valid frame")
    d.set_defaults(func=cmd_dump)
    v = ls.add_parser("verify", help="read-only check: exit 0 clean, 1 torn tail, 2 corruption",
                      description="Read the whole log without changing it. Exit 0: clean. Exit 1: "
                      "torn tail (a crash cut the last write; 'zwal log recover' fixes it). Exit 2: "
                      "corruption before the end (restore from a replica). Exit 3: cannot open.")
    v.add_argument("path", metavar="PATH")
    v.set_defaults(func=cmd_verify)
    r = ls.add_parser("recover", help="truncate a torn tail (saved beside the log first)",
                      description="Cut a torn tail back to the last valid record. The dropped bytes "
                      "are saved to PATH.torn-OFFSET (for a directory: beside its last segment, OFFSET counted in "
                      "that segment) first. A corrupt log is refused (exit 2) and left untouched; a PATH that "
                      "does not exist is exit 3, and nothing is created.")
    r.add_argument("path", metavar="PATH")
    r.set_defaults(func=cmd_recover)
    u = ls.add_parser(
        "upgrade", help="rewrite a stopped node's log in format version 2 (offsets change)",
        description="Rewrite every version-1 frame of a clean log as a version-2 frame (same payload and epoch). "
        "Frames grow by 4 bytes, so offsets change: run it on EVERY node of a cluster while the whole cluster is "
        "stopped (the rewrite is deterministic, so byte-identical logs stay byte-identical), never on some nodes "
        "only. The epoch history in node-state.json and clean-stop.json beside the log are rewritten with it. "
        "The originals are kept as PATH.v1 (and node-state.json.v1). Refused, with nothing changed: a log a "
        "running node holds (locked), a torn or corrupt log, a node still repairing its log. If interrupted, run "
        "it again before starting the node. Not needed for a rolling upgrade: new code reads v1 frames and "
        "writes v2 after them (docs/format.md).",
        epilog="  zwal log upgrade node1/wal.log")
    u.add_argument("path", metavar="PATH")
    u.set_defaults(func=cmd_upgrade)
