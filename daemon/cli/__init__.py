"""The `zwal` command line: one module per command family."""

from daemon.cli.main import main

__all__ = ["main"]
