"""The `zwal` command: one entry point, each command family in its own module."""

from __future__ import annotations

import argparse
import sys

from daemon.cli import cmd_client, cmd_cluster, cmd_failover, cmd_keys, cmd_log
from daemon.ops import logs
from daemon.cli.cmd_log import CLIError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zwal",
        description="zwal: a replicated write-ahead log. Every write is CRC-framed, appended and "
        "fdatasynced before it is acknowledged, then replicated to followers.",
        epilog="Run 'zwal COMMAND --help' for a command's options.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    cmd_log.add_parsers(sub)
    cmd_cluster.add_parsers(sub)
    cmd_client.add_parsers(sub)
    cmd_failover.add_parsers(sub)
    cmd_keys.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"zwal: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("zwal: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
