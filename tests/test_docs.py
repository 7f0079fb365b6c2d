"""The documentation says what the code does: docs/client.md's example runs
against a real cluster, its tables match the client's classes and
signatures, and the README's example test selections select tests."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

CLIENT_MD = os.path.join(ROOT, "docs", "client.md")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _run_in_walkthrough_cluster(tmp_path, code: str) -> str:
    """Run `code` from the folder that holds the walkthrough's cluster (3 nodes, K = 1, in ./mycluster,
    CURVE keys as cluster init makes them); its stdout."""
    from harness import Cluster

    c = Cluster(str(tmp_path / "mycluster"), 3, 1)
    try:
        c.start_all()
        env = {**os.environ, "PYTHONPATH": ROOT}  # the checkout's zwal package, wherever it is installed
        r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    finally:
        c.close()


@pytest.mark.slow
def test_client_md_example_runs_against_a_real_cluster(tmp_path):
    (code,) = _python_blocks(_section(open(CLIENT_MD).read(), "Example"))
    out = _run_in_walkthrough_cluster(tmp_path, code)
    assert "user:1 written at offset 0, ends at " in out
    assert re.search(r"read b'alice' from node1 at offset \d+, linearizable=True", out), out
    assert "refused: invalid_record" in out
    assert re.search(r"node1 is leader in epoch 1, log end \d+", out), out
    assert "as expected: unavailable" in out


@pytest.mark.slow
def test_client_md_asyncclient_example_runs_against_a_real_cluster(tmp_path):
    (code,) = _python_blocks(_section(open(CLIENT_MD).read(), "`AsyncClient`: the same client for asyncio"))
    out = _run_in_walkthrough_cluster(tmp_path, code)
    offsets = [int(x) for x in re.search(r"batch at offsets \[(\d+), (\d+), (\d+)\]", out).groups()]
    assert offsets == sorted(offsets) and offsets[0] > 0, out
    watched = re.findall(r"watched (\w+) (\S+) at (\d+)", out)
    assert [(op, k) for op, k, _ in watched] == [("set", "async:1"), ("set", "async:2"), ("set", "async:3"),
                                                 ("del", "async:1")], out
    assert [int(o) for _, _, o in watched][1:] == offsets, out
    assert "20 concurrent writes at 20 distinct offsets" in out, out


def _documented_errors() -> dict[str, tuple[str, bool]]:
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (yes|no) \|", _section(open(CLIENT_MD).read(), "Errors"), re.M)
    return {name: (code, flag == "yes") for name, code, flag in rows}


def test_client_md_error_table_matches_the_exception_classes():
    import zwal

    actual = {name: (obj.code, obj.retryable) for name in zwal.__all__
              if isinstance(obj := getattr(zwal, name), type) and issubclass(obj, zwal.ZwalError)
              and obj is not zwal.ZwalError}
    assert _documented_errors() == actual


def test_client_md_documents_every_argument_and_method():
    import zwal

    text = open(CLIENT_MD).read()
    ctor = _section(text, "`Client(...)`")
    for p in list(inspect.signature(zwal.Client.__init__).parameters)[1:]:
        assert f"| `{p}` |" in ctor, f"constructor argument {p} is not documented"
    methods = _section(text, "Methods")
    public = [n for n, f in inspect.getmembers(zwal.Client, inspect.isfunction)
              if not n.startswith("_") and n != "request"]  # request(): the low-level call the others use
    for m in public:
        sig = inspect.signature(getattr(zwal.Client, m))
        shown = ", ".join(f"**{p.name}" if p.kind is p.VAR_KEYWORD
                          else p.name if p.default is inspect.Parameter.empty
                          else f"{p.name}={p.default!r}" for p in list(sig.parameters.values())[1:])
        assert f"| `{m}({shown})` |" in methods, f"method {m}{sig} is not documented as {m}({shown})"
    for cls in ("WriteResult", "ReadResult"):
        fields = ", ".join(getattr(zwal, cls).__dataclass_fields__)
        assert f"{cls}({fields})" in methods, f"{cls}({fields})"


def test_readme_test_selections_select_tests():
    """Every `make test PYTEST_ARGS="..."` in the README selects at least one test."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    selections = re.findall(r'make test PYTEST_ARGS="([^"]+)"', readme)
    assert selections, "the README shows no make test PYTEST_ARGS example"
    for args in selections:
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                            *shlex.split(args)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        m = re.search(r"(\d+)(?:/\d+)? tests? collected", r.stdout)
        assert r.returncode == 0 and m and int(m.group(1)) >= 1, f"{args!r} selects no test:\n{r.stdout[-1500:]}"
