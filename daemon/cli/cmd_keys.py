"""`zwal keys new|list`: CurveZMQ certificates of a cluster (docs/security.md)."""

from __future__ import annotations

import argparse

from daemon.cli.cmd_log import CLIError, load_cluster


def cmd_new(args: argparse.Namespace) -> int:
    from daemon.auth import keys

    cfg = load_cluster(args.config)
    try:
        ident = keys.create(cfg.keys_dir, args.role, args.name)
    except keys.KeyError_ as e:
        raise CLIError(str(e), 1) from None
    sec = keys.secret_path(cfg.keys_dir, args.role, args.name)
    print(f"created {args.role} key {args.name}: public {ident.public}")
    print(f"secret:  {sec} (mode 0600: give it to the {args.role} only)")
    print("the nodes let it in after they re-read their keys: send them SIGHUP "
          "(supervisorctl signal HUP all, or systemctl reload zwal@NODE)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from daemon.auth import keys

    cfg = load_cluster(args.config)
    reg = keys.load_registry(cfg.keys_dir)
    for ident in sorted(reg.values(), key=lambda i: (i.role, i.name)):
        print(f"{ident.role:7} {ident.name:20} {ident.public}")
    if not reg:
        print(f"no keys under {cfg.keys_dir}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="CurveZMQ certificates: create, list (revoke = remove the .key file, SIGHUP)")
    ks = k.add_subparsers(dest="keys_cmd", required=True, metavar="COMMAND")
    n = ks.add_parser("new", help="create a certificate for a client or an admin",
                      description="Create keys/<role>s/NAME.key (public) and NAME.key_secret (mode 0600) in the "
                      "cluster's keys directory. Nodes accept it after SIGHUP. To revoke a key later, remove its "
                      ".key file and send SIGHUP: its open connections stop working at once.")
    n.add_argument("name", metavar="NAME")
    n.add_argument("--role", required=True, choices=("client", "admin"),
                   help="client: set, del, get, status, ping; admin: also fence, promote, follow")
    n.add_argument("--config", required=True, help="cluster file")
    n.set_defaults(func=cmd_new)
    ls = ks.add_parser("list", help="every key the nodes let in, with its role")
    ls.add_argument("--config", required=True, help="cluster file")
    ls.set_defaults(func=cmd_list)
