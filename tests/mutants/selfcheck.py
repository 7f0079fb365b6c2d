"""A pytest plugin the mutant runner loads into every pytest killer (`-p tests.mutants.selfcheck`).

It stops the session unless `daemon` and `follower` come from the copy the
runner mutated (ZWAL_MUTANT_ROOT): a killer that tested the unmutated tree
would report every mutant as a survivor, or worse, prove nothing.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    root = os.environ.get("ZWAL_MUTANT_ROOT")
    if not root:
        return
    import daemon
    import follower

    for mod in (daemon, follower):
        if not os.path.abspath(mod.__file__ or "").startswith(os.path.join(root, "")):
            raise pytest.UsageError(f"mutant self-check: {mod.__name__} is imported from {mod.__file__}, "
                                    f"not from the mutated copy {root}")
