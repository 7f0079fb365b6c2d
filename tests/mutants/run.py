"""Mutation testing: apply each catalogued mutant to a copy of the tree and run its killers.

    python -m tests.mutants.run [--only ID ...] [--list] [--jobs N]     (from the repo root)

Every `tests/mutants/catalogue_*.py` defines `MUTANTS`, a list of
`tests.mutants.model.Mutant`. For each mutant, one at a time per worker:
- the worker's private copy of the tree (daemon/, follower/, tests/, ...,
  not .venv or .git) gets the mutant: `find` must occur exactly once in
  `file`, else the mutant is STALE (the code moved; the catalogue must follow);
- its killers run in order until one fails: `sim:N` runs the deterministic
  simulator over N seeds (`cd tests && python -m sim.run --seeds N`), any
  other killer is a pytest node id. A killer that fails, or hangs past its
  timeout, kills the mutant;
- the file is restored.

The mutated copy is what runs, subprocesses included: PYTHONPATH names the
copy (the venv's editable install of the main tree is a meta-path finder
that Python consults only after PYTHONPATH), and before any mutant the
runner proves it with a canary that only a grandchild process (`python -m
daemon.cli`, as tests/harness.py starts nodes) can see. Every pytest killer
also loads tests/mutants/selfcheck.py, which refuses to run unless `daemon`
and `follower` are imported from the copy.

Each distinct killer first runs once on the unmutated copy: a killer that
fails there is a "broken killer" and proves nothing. Its duration sets its
timeout for the mutants (10x + 60 s, at least 120 s).

Prints a table (id, file, result, seconds), the kill rate and the
simulator's seeds per minute, and writes it to tests/mutants/last-report.txt.
Exits 1 if any mutant survived, is stale or has only broken killers; 2 if the
copy could not be shown to run.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tests.mutants.model import Mutant

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(ROOT, "tests", "mutants", "last-report.txt")
# Not copied: the venv, git metadata, caches and local clusters.
IGNORE = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "var", "build",
                                "*.egg-info", "results", "mycluster", "last-report.txt", "*.wal.torn-*")
SIM = re.compile(r"^sim:(\d+)$")
CANARY_EXIT = 97
# Process groups of killers now running: ended if the runner itself is stopped (Ctrl-C, SIGTERM).
LIVE: set[int] = set()


def _end_live_killers() -> None:
    for pgid in list(LIVE):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def load_catalogues(root: str = ROOT) -> list[Mutant]:
    """Every MUTANTS of tests/mutants/catalogue_*.py, in file order; ids must be unique."""
    out: list[Mutant] = []
    for path in sorted(glob.glob(os.path.join(root, "tests", "mutants", "catalogue_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        mod = importlib.import_module(f"tests.mutants.{name}")
        for m in mod.MUTANTS:
            if not isinstance(m, Mutant):
                raise SystemExit(f"{path}: {m!r} is not a tests.mutants.model.Mutant")
            out.append(m)
    seen: set[str] = set()
    for m in out:
        if m.id in seen:
            raise SystemExit(f"mutant id {m.id!r} is defined twice")
        seen.add(m.id)
    return out


def occurrences(root: str, m: Mutant) -> int:
    try:
        with open(os.path.join(root, m.file), encoding="utf-8") as f:
            return f.read().count(m.find)
    except FileNotFoundError:
        return 0


@dataclass
class Outcome:
    code: int | None  # None: timed out
    seconds: float
    detail: str  # one line saying why it failed (empty when it passed)
    output: str


class Copy:
    """A private copy of the tree: the killers run here, with PYTHONPATH naming it."""

    def __init__(self, base: str, index: int) -> None:
        self.root = os.path.join(base, f"tree{index}")
        shutil.copytree(ROOT, self.root, ignore=IGNORE, symlinks=True)
        self.pycache = os.path.join(base, f"pycache{index}")
        os.makedirs(self.pycache)
        self.env = {**os.environ, "PYTHONPATH": self.root, "PYTHONPYCACHEPREFIX": self.pycache,
                    "ZWAL_MUTANT_ROOT": self.root, "PYTHONUNBUFFERED": "1"}
        self.env.pop("PYTHONHOME", None)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def forget_bytecode(self, rel: str) -> None:
        """Drop the cached bytecode of one source file (it changed, maybe within the same second)."""
        d, name = os.path.split(self.path(rel))
        stem = os.path.splitext(name)[0]
        for pyc in glob.glob(os.path.join(self.pycache + d, f"{stem}.*.pyc")):
            os.unlink(pyc)

    def run(self, argv: list[str], cwd: str, timeout: float) -> Outcome:
        t0 = time.monotonic()
        log = tempfile.TemporaryFile(mode="w+", dir=os.path.dirname(self.root))
        p = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        LIVE.add(p.pid)
        try:
            code: int | None = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            LIVE.discard(p.pid)
        # The killer's own process group (nodes its tests started included): nothing outlives it.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()
        log.seek(0)
        output = log.read()
        log.close()
        return Outcome(code, time.monotonic() - t0, "" if code == 0 else summarize(output, code), output)

    def killer(self, killer: str, timeout: float) -> Outcome:
        py = sys.executable
        s = SIM.match(killer)
        if s:
            return self.run([py, "-m", "sim.run", "--seeds", s.group(1)], self.path("tests"), timeout)
        return self.run([py, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "tests.mutants.selfcheck",
                         killer], self.root, timeout)


def summarize(output: str, code: int | None) -> str:
    if code is None:
        return "timeout"
    lines = output.splitlines()
    for pat in (r"^invariant violated: .*", r"^seed \d+ FAILED.*", r"^(FAILED|ERROR) .*", r"^E  +\S.*",
                r".*Error: .*"):
        for ln in lines:
            if re.match(pat, ln):
                return ln.strip()[:110]
    return f"exit {code}: " + (lines[-1].strip()[:100] if lines else "no output")


def self_check(c: Copy) -> str | None:
    """None if the copy's code is what runs, in this interpreter's children and grandchildren; else why not."""
    py = sys.executable
    probe = "import daemon, follower; print(daemon.__file__); print(follower.__file__)"
    for cwd in ("/", c.path("tests")):
        r = subprocess.run([py, "-c", probe], cwd=cwd, env=c.env, capture_output=True, text=True, timeout=60)
        files = r.stdout.split()
        if r.returncode != 0 or len(files) != 2 or not all(f.startswith(c.root + os.sep) for f in files):
            return f"from {cwd}, daemon/follower import from {files or r.stderr.strip()}, not the copy {c.root}"
    # A canary only a grandchild runs: `python -m daemon.cli`, started the way tests/harness.py starts nodes.
    main = c.path("daemon/cli/__main__.py")
    with open(main, encoding="utf-8") as f:
        original = f.read()
    try:
        with open(main, "w", encoding="utf-8") as f:
            f.write(f"raise SystemExit({CANARY_EXIT})\n" + original)
        c.forget_bytecode("daemon/cli/__main__.py")
        spawn = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-m', 'daemon.cli', '--help']).returncode)"
        r = subprocess.run([py, "-c", spawn], cwd="/", env=c.env, capture_output=True, text=True, timeout=60)
        if r.returncode != CANARY_EXIT:
            return f"a grandchild `python -m daemon.cli` did not run the copy's code (exit {r.returncode}, not {CANARY_EXIT})"
    finally:
        with open(main, "w", encoding="utf-8") as f:
            f.write(original)
        c.forget_bytecode("daemon/cli/__main__.py")
    return None


@dataclass
class Result:
    mutant: Mutant
    verdict: str  # killed, SURVIVED, STALE, INVALID, BROKEN-KILLERS
    by: str = ""
    detail: str = ""
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.verdict == "killed"


def timeout_for(unmutated: Outcome) -> float:
    """Ten times the killer's unmutated run, plus a minute: two shared cores can slow a run several-fold,
    and a survivor reported as a 'timeout' kill would hide a missing test."""
    return max(120.0, 10 * unmutated.seconds + 60)


def run_mutant(c: Copy, m: Mutant, baseline: dict[str, Outcome], every: bool = False) -> Result:
    t0 = time.monotonic()
    n = occurrences(c.root, m)
    if n != 1:
        return Result(m, "STALE", detail=f"`find` occurs {n} times in {m.file}", seconds=time.monotonic() - t0)
    usable = [k for k in m.killers if baseline[k].code == 0]
    if not usable:
        return Result(m, "BROKEN-KILLERS", detail="no killer passes on the unmutated tree",
                      seconds=time.monotonic() - t0)
    path = c.path(m.file)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    try:
        compile(original.replace(m.find, m.replace, 1), m.file, "exec")
    except SyntaxError as e:
        return Result(m, "INVALID", detail=f"the mutated file does not compile ({e.msg}): a kill would prove nothing",
                      seconds=time.monotonic() - t0)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original.replace(m.find, m.replace, 1))
        c.forget_bytecode(m.file)
        kills: list[tuple[str, str]] = []
        for k in usable:
            o = c.killer(k, timeout_for(baseline[k]))
            if o.code != 0:
                kills.append((k, o.detail))
                if not every:
                    break
        if kills:
            return Result(m, "killed", " + ".join(k for k, _ in kills), kills[0][1], time.monotonic() - t0)
        return Result(m, "SURVIVED", detail=f"{len(usable)} killer(s) passed", seconds=time.monotonic() - t0)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)
        c.forget_bytecode(m.file)


def seeds_per_minute(baseline: dict[str, Outcome]) -> str:
    rates = []
    for k, o in baseline.items():
        found = re.findall(r"\((\d+) seeds/minute", o.output)
        if SIM.match(k) and o.code == 0 and found:
            rates.append(int(found[-1]))
    return f"{min(rates)}..{max(rates)}" if len(rates) > 1 and min(rates) != max(rates) else (
        str(rates[0]) if rates else "n/a")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutants.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants (ids or id prefixes ending in *)")
    ap.add_argument("--list", action="store_true", help="list the mutants and whether each applies, run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="mutants at once, each in its own copy (default 1)")
    ap.add_argument("--every-killer", action="store_true",
                    help="run every killer of each mutant, not only up to the first that kills (which killers guard it)")
    ap.add_argument("--report", default=REPORT, help=f"where to write the table (default {os.path.relpath(REPORT)})")
    a = ap.parse_args(argv)

    mutants = load_catalogues()
    if a.only:
        def wanted(m: Mutant) -> bool:
            return any(m.id == o or (o.endswith("*") and m.id.startswith(o[:-1])) for o in a.only)
        unknown = [o for o in a.only if not o.endswith("*") and o not in {m.id for m in mutants}]
        if unknown:
            print(f"no such mutant: {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if wanted(m)]
    if a.list:
        for m in mutants:
            n = occurrences(ROOT, m)
            state = "ok" if n == 1 else f"STALE ({n} matches)"
            print(f"{m.id:40} {m.file:32} {state:16} {' '.join(m.killers)}")
        return 0
    if not mutants:
        print("no mutants selected", file=sys.stderr)
        return 2

    jobs = max(1, min(a.jobs, len(mutants)))
    base = tempfile.mkdtemp(prefix="zwal-mutants-")
    t_start = time.monotonic()

    def stop(signum: int, _frame: object) -> None:
        # Worker threads wait on killers: end the killers' process groups and the copies, then leave at once.
        _end_live_killers()
        shutil.rmtree(base, ignore_errors=True)
        print(f"\nstopped by signal {signum}; no report written", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        copies: queue.Queue[Copy] = queue.Queue()
        for i in range(jobs):
            c = Copy(base, i)
            why = self_check(c)
            if why:
                print(f"SELF-CHECK FAILED: {why}; the mutants would not be what runs", file=sys.stderr)
                return 2
            copies.put(c)
        print(f"{len(mutants)} mutant(s), {jobs} job(s); copies in {base} run their own code (self-check passed)",
              flush=True)

        def with_copy(fn, *args):  # type: ignore[no-untyped-def]
            c = copies.get()
            try:
                return fn(c, *args)
            finally:
                copies.put(c)

        killers = sorted({k for m in mutants for k in m.killers if occurrences(ROOT, m) == 1})
        baseline: dict[str, Outcome] = {}
        lock = threading.Lock()

        def base_one(c: Copy, k: str) -> None:
            o = c.killer(k, 1800.0)
            with lock:
                baseline[k] = o
                state = "ok" if o.code == 0 else f"BROKEN KILLER ({o.detail})"
                print(f"  unmutated: {k}: {state} in {o.seconds:.1f}s", flush=True)

        print(f"running {len(killers)} distinct killer(s) on the unmutated tree first", flush=True)
        with ThreadPoolExecutor(jobs) as ex:
            list(ex.map(lambda k: with_copy(base_one, k), killers))

        results: list[Result] = []

        def mut_one(c: Copy, m: Mutant) -> Result:
            r = run_mutant(c, m, baseline, a.every_killer)
            with lock:
                results.append(r)
                print(f"  [{len(results)}/{len(mutants)}] {m.id}: {r.verdict} {r.by} {r.detail} ({r.seconds:.0f}s)",
                      flush=True)
            return r

        with ThreadPoolExecutor(jobs) as ex:
            ordered = list(ex.map(lambda m: with_copy(mut_one, m), mutants))
    finally:
        _end_live_killers()
        shutil.rmtree(base, ignore_errors=True)

    broken = sorted(k for k, o in baseline.items() if o.code != 0)
    lines = [f"{'id':42} {'file':28} {'result':80} {'s':>5}", "-" * 158]
    for r in ordered:
        res = f"killed by {r.by.replace('tests/', '')}" if r.killed else f"{r.verdict}: {r.detail}"
        if r.killed and "timeout" in r.detail:
            res += " (timeout)"
        lines.append(f"{r.mutant.id:42} {r.mutant.file:28} {res[:80]:80} {r.seconds:5.0f}")
    killed = sum(r.killed for r in ordered)
    lines.append("-" * 158)
    lines.append(f"kill rate: {killed}/{len(ordered)} ({100 * killed / len(ordered):.0f}%)"
                 f"; survived {sum(r.verdict == 'SURVIVED' for r in ordered)}"
                 f", stale {sum(r.verdict == 'STALE' for r in ordered)}"
                 f", invalid {sum(r.verdict == 'INVALID' for r in ordered)}"
                 f", only broken killers {sum(r.verdict == 'BROKEN-KILLERS' for r in ordered)}")
    lines.append(f"simulator on the unmutated tree: {seeds_per_minute(baseline)} seeds/minute")
    if broken:
        lines.append("broken killers (fail on the unmutated tree): " + ", ".join(broken))
    lines.append(f"wall time {time.monotonic() - t_start:.0f}s with {jobs} job(s)")
    text = "\n".join(lines)
    print("\n" + text)
    for r in ordered:
        if r.verdict == "SURVIVED":
            print(f"SURVIVED {r.mutant.id}: {r.mutant.why}")
        elif r.verdict in ("STALE", "INVALID", "BROKEN-KILLERS"):
            print(f"{r.verdict} {r.mutant.id}: {r.detail}; fix its catalogue entry")
    with open(a.report, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return 0 if killed == len(ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
