"""The mutant catalogues (tests/mutants/catalogue_*.py) stay true as the code moves.

Fast and static: no mutant is run here (that is `make mutants`). Each entry
must still apply to the current tree (`find` exactly once), still be a
change that compiles (a syntax error is killed by anything and proves
nothing), and name killers that exist.
"""

from __future__ import annotations

import ast
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.mutants.model import Mutant  # noqa: E402
from tests.mutants.run import SIM, load_catalogues  # noqa: E402

MUTANTS = load_catalogues(ROOT)
ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def _source(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def _test_names(rel: str) -> set[str]:
    """Test functions of a test file: top level, and `Class::method` for classes."""
    tree = ast.parse(_source(rel))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{n.name}" for n in node.body
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


def test_there_are_catalogues_and_ids_are_unique():
    assert len(MUTANTS) >= 25
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("m", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_is_well_formed_and_applies_to_the_current_tree(m: Mutant):
    assert isinstance(m, Mutant)
    assert ID.match(m.id), f"id {m.id!r}: lower-case words joined by '-'"
    assert m.file.startswith(("daemon/", "follower/")) and m.file.endswith(".py"), m.file
    assert os.path.isfile(os.path.join(ROOT, m.file)), f"{m.file} does not exist"
    assert m.find and m.find != m.replace
    assert m.why.strip(), "say which rule the mutant breaks"
    src = _source(m.file)
    n = src.count(m.find)
    assert n == 1, f"`find` occurs {n} times in {m.file}: the code moved, update the mutant (do not weaken it)"
    compile(src.replace(m.find, m.replace, 1), m.file, "exec")  # a mutant that does not compile proves nothing


@pytest.mark.parametrize("m", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_killer_exists(m: Mutant):
    assert m.killers, "a mutant needs at least one killer"
    for k in m.killers:
        if SIM.match(k):
            assert int(k.split(":")[1]) >= 1
            continue
        path, _, name = k.partition("::")
        assert path.startswith("tests/") and path.endswith(".py"), f"killer {k!r}: sim:N or a pytest node id"
        assert os.path.isfile(os.path.join(ROOT, path)), f"killer {k!r}: no file {path}"
        if name:
            name = re.sub(r"\[.*\]$", "", name)  # a parametrized case: the function must exist
            assert name in _test_names(path), f"killer {k!r}: no test {name} in {path}"
