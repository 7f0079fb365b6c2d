"""Imports run one way: follower may import daemon, never the reverse."""

from __future__ import annotations

import ast
import os

from conftest import ROOT


def imported_modules(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_daemon_never_imports_follower():
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "daemon")):
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(dirpath, f)
                if any(m == "follower" or m.startswith("follower.") for m in imported_modules(p)):
                    offenders.append(os.path.relpath(p, ROOT))
    assert offenders == []


def test_daemon_and_follower_never_import_the_public_zwal_package():
    """`zwal` is the public face over `daemon` (from zwal import Client): it imports daemon, not the reverse."""
    offenders = []
    for top in ("daemon", "follower"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    p = os.path.join(dirpath, f)
                    if any(m == "zwal" or m.startswith("zwal.") for m in imported_modules(p)):
                        offenders.append(os.path.relpath(p, ROOT))
    assert offenders == []


def test_follower_role_is_found_through_the_entry_point():
    from daemon.node.node import load_role

    assert load_role("follower").__module__ == "follower.role"
    assert load_role("leader").__module__ == "daemon.node.leader"
