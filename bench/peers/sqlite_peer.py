"""SQLite in WAL mode with synchronous=FULL: each client its own connection, one row per commit."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import threadload

NOTE = ("embedded, no network hop; WAL mode, synchronous=FULL (an fsync per commit); one INSERT OR REPLACE "
        "per transaction; writers take SQLite's one write lock in turn, so clients are threads of 4 processes "
        "sharing one file")


def make_op(path: str, client: int):
    con = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    value = os.urandom(50).hex()

    def op(i: int) -> None:
        con.execute("INSERT OR REPLACE INTO kv(k, v) VALUES (?, ?)", (f"c{client}-{i % 1000}", value))

    return op


@contextmanager
def running(work: str) -> Iterator:
    path = os.path.join(work, "sqlite-bench.db")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
    con.close()
    yield lambda clients, seconds: threadload.run("peers.sqlite_peer:make_op", (path,), clients, seconds)
