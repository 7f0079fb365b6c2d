"""The lesson's demo, run as a user runs it: a real process, a real file."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import ROOT, ZWAL


def run(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ZWAL, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": ROOT})


def test_demo_appends_and_total_equals_file_size(tmp_path):
    first = run("demo", cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    sizes = [int(m) for m in re.findall(r"-> (\d+) bytes", first.stdout)]
    assert len(sizes) == 4
    total1 = int(re.search(r"total offset: (\d+)", first.stdout).group(1))
    assert total1 == sum(sizes) == os.path.getsize(tmp_path / "test.wal")

    second = run("demo", cwd=str(tmp_path))
    assert second.returncode == 0, second.stderr
    total2 = int(re.search(r"total offset: (\d+)", second.stdout).group(1))
    assert total2 == 2 * total1 == os.path.getsize(tmp_path / "test.wal")

    verify = run("log", "verify", "test.wal", cwd=str(tmp_path))
    assert verify.returncode == 0
    assert "8 records" in verify.stdout
