# PYTHON_ARGCOMPLETE_OK
"""The `zwal` command: one entry point, each command family in its own module.

Conventions every command follows (docs/cli.md):
- `zwal --version`;
- `--config` defaults to the ZWAL_CONFIG environment variable (an explicit
  --config wins);
- with `--json`, one JSON document on stdout, errors included
  ({"ok": false, "error": KIND, "message": TEXT, "exit_code": N});
- shell completion through argcomplete (`zwal completion bash|zsh`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from daemon.cli import cmd_client, cmd_cluster, cmd_config, cmd_failover, cmd_keys, cmd_log
from daemon.ops import logs
from daemon.cli.cmd_log import CLIError, FromEnv

CONFIG_ENV = "ZWAL_CONFIG"


class ZwalFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs as usual but keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.split("\n")
            if any(ln.startswith(" ") for ln in lines):
                out.append("\n".join(indent + ln for ln in lines))
            else:
                out.append(textwrap.fill(" ".join(ln.strip() for ln in lines), width,
                                         initial_indent=indent, subsequent_indent=indent))
        return "\n\n".join(out)


class ZwalParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become a CLIError (JSON with --json) and
    whose help keeps example blocks as written."""

    def __init__(self, *a, **kw) -> None:
        kw.setdefault("formatter_class", ZwalFormatter)
        super().__init__(*a, **kw)

    def error(self, message: str):
        if _JSON_REQUESTED:
            raise CLIError(f"{self.prog}: {message}", 2, "usage")
        super().error(message)


_JSON_REQUESTED = False


def _subparsers(p: argparse.ArgumentParser):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in dict.fromkeys(a.choices.values()):
                yield sp
                yield from _subparsers(sp)


def apply_config_env(p: argparse.ArgumentParser, environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Every --config option (whichever module added it) defaults to $ZWAL_CONFIG."""
    env = environ.get(CONFIG_ENV) or None
    for sp in [p, *_subparsers(p)]:
        for a in sp._actions:
            if a.dest != "config" or not a.option_strings:
                continue
            a.help = (a.help or "cluster file") + f" (default: ${CONFIG_ENV}" + (f", now {env}" if env else "") + \
                "; an explicit --config wins)"
            if env:
                a.default = FromEnv(env)
                a.required = False


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["zwal"], shell=args.shell))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zwal")
    except PackageNotFoundError:
        return "unknown (the zwal distribution is not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    p = ZwalParser(
        prog="zwal",
        description="zwal: a replicated write-ahead log. Every write is CRC-framed, appended and "
        "fdatasynced before it is acknowledged, then replicated to followers.",
        epilog=f"Run 'zwal COMMAND --help' for a command's options. Every --config defaults to "
        f"${CONFIG_ENV}. set, get, del, status, promote, drill and config check take --json "
        "(shapes in docs/cli.md).\n\n"
        "  export ZWAL_CONFIG=var/cluster.toml\n"
        "  zwal status\n"
        "  zwal set greeting hello && zwal get greeting\n"
        "  eval \"$(zwal completion bash)\"      # tab completion in this shell",
    )
    p.add_argument("--version", action="version", version=f"zwal {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    cmd_log.add_parsers(sub)
    cmd_cluster.add_parsers(sub)
    cmd_config.add_parsers(sub)
    cmd_client.add_parsers(sub)
    cmd_failover.add_parsers(sub)
    cmd_failover.add_snapshot_parser(sub)
    cmd_keys.add_parsers(sub)
    c = sub.add_parser("completion", help="print the shell code for tab completion (bash, zsh, fish)",
                       description="Print the code that makes the shell complete zwal's commands and options "
                       "(argcomplete). Load it in the current shell, or save it where your shell reads "
                       "completions.",
                       epilog="  eval \"$(zwal completion bash)\"                 # this shell only\n"
                       "  zwal completion bash > ~/.local/share/bash-completion/completions/zwal\n"
                       "  eval \"$(zwal completion zsh)\"                  # zsh (after compinit)")
    c.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to print code for")
    c.set_defaults(func=cmd_completion)
    apply_config_env(p)
    return p


def _error(msg: str, code: int, kind: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": kind, "message": msg, "exit_code": code}))
    else:
        print(f"zwal: {msg}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    global _JSON_REQUESTED
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)  # answers the shell and exits
    logs.setup()
    raw = sys.argv[1:] if argv is None else argv
    _JSON_REQUESTED = "--json" in raw
    try:
        args = parser.parse_args(argv)
    except CLIError as e:
        return _error(str(e), e.exit_code, e.kind, True)
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        return _error(str(e), e.exit_code, e.kind, as_json)
    except KeyboardInterrupt:
        return _error("interrupted", 130, "interrupted", as_json)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
