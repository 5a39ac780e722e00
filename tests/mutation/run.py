"""`make mutation`: cosmic-ray over the modules that carry ledgergate's promises, each mutant
against the tests that can see it. Not part of `make test`.

The targets (module, functions, tests) are in tests/mutation/targets.toml: the one file to edit when
a module moves. cosmic-ray enumerates the mutants (`cr init`, operator filter) and stores the
results (var/mutation/<target>.sqlite, readable with `cr-report`); this script chooses and runs:

1. a seeded sample of the mutants inside the promise-carrying functions (all of them with --all),
   the same sample for the same source;
2. once per target, the unmutated tests under coverage (tests/mutation/covermap.py): which test
   executes which line, how long each takes, and that they pass (a failing test is left out, so a
   broken or flaky test can never "kill" a mutant);
3. each mutant (cosmic-ray mutates the file in place, and restores it) runs only the tests that
   execute its lines, fastest first, stopping at the first failure (`pytest -x`), with a timeout
   of three times their measured time plus start-up; a mutant that survives them then runs the
   target's `process_tests` (real Envoy and worker processes, which coverage cannot map). A mutant
   whose lines no test executes is not run and is counted as survived ("no test covers it");
4. mutants of all targets are interleaved, so a budget that runs out leaves a fair share of each
   not run, reported as "not run", never as killed.

Results: var/mutation/summary.json and summary.md (kill rate per module, every survivor with its
diff). A timeout counts as killed (the mutant hung the tests) and is counted apart.

    python -m tests.mutation.run [--budget-minutes 28] [--only chain,verify] [--all] [--seed 24]
    python -m tests.mutation.run --recheck [name:]tests/unit/test_x.py ...   # the last survivors again
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_ray.mutating import use_mutation
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "var" / "mutation"
TREE = REPO   # where tests run and mutants are applied: a worker's own copy of the repository
TARGETS_FILE = Path(__file__).with_name("targets.toml")

# Operators left out: the rarer arithmetic/bitwise replacements (Add->Pow, Sub->LShift...) add
# many mutants that die the same way as Add->Sub; VariableReplacer/Inserter rewrite names into
# mostly incompetent code. What stays: + - * swaps, comparisons, boolean and/or/not, True/False,
# numbers, break/continue, exception handlers, zero-iteration loops, removed decorators.
EXCLUDED_OPERATORS = (
    r"core/ReplaceBinaryOperator_.*_(Div|FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceUnaryOperator_.*_(Invert|UAdd)$",
    r"core/VariableReplacer", r"core/VariableInserter",
)
STARTUP_S = 20.0          # pytest start-up and imports, on a loaded 2-core machine
NO_TEST = "no test executes this line"


@dataclass
class Target:
    name: str
    module: str
    tests: list[str]
    sample: int
    functions: list[str] = field(default_factory=list)
    deselect: list[str] = field(default_factory=list)
    process_tests: list[str] = field(default_factory=list)
    process_timeout_s: float = 300.0


def load_targets() -> list[Target]:
    return [Target(name=name, **spec) for name, spec in tomllib.loads(TARGETS_FILE.read_text()).items()]


def test_env() -> dict[str, str]:
    # The worktree first (subprocesses such as `ledgergate up` inherit it); no .pyc written, so a
    # mutant and the original of the same size and second are never confused.
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(TREE), os.environ.get("PYTHONPATH")) if p),
                PYTHONDONTWRITEBYTECODE="1")


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args]


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[str, str]:
    """("passed" | "failed" | "timeout", output tail). Its own process group: a timeout kills Envoy too."""
    proc = subprocess.Popen(cmd, cwd=TREE, env=env or test_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        return "timeout", f"timeout after {timeout:.0f}s"
    text = out.decode(errors="replace")
    return {0: "passed", 1: "failed", 2: "failed"}.get(proc.returncode, "error"), text[-3000:]


class WarmPytest:
    """pytest in a forked child of this process, which has already imported pytest and the
    third-party libraries the tests use, but nothing of ext_proc or tests: each child imports the
    (mutated) source from disk. Saves the interpreter's and the libraries' start-up per mutant
    (seconds each on a shared 2-core machine). The baseline runs the same way, so a test that
    cannot run in a fork fails there and is left out; it cannot kill a mutant."""

    NOT_PRELOADED = ("ext_proc", "tests", "opentelemetry", "__main__")  # tests check what tracing-off imports

    def __init__(self, test_files: list[str]) -> None:
        # Which modules the tests import: collected once, kept (a stale list only costs start-up time).
        listed = OUT / "preload.json"
        names = json.loads(listed.read_text()) if listed.exists() else []
        if not names:
            script = ("import sys, json, pytest; pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
                      "*sys.argv[1:]]); print('MODULES' + json.dumps(sorted(sys.modules)))")
            out = subprocess.run([sys.executable, "-c", script, *test_files], cwd=REPO, env=test_env(),
                                 capture_output=True, text=True).stdout
            names = json.loads(out.rsplit("MODULES", 1)[1]) if "MODULES" in out else []
            listed.write_text(json.dumps(names))
        loaded = 0
        for name in names:
            if name.split(".")[0] in self.NOT_PRELOADED or name in sys.modules:
                continue
            try:
                __import__(name)
                loaded += 1
            except BaseException:   # a module that only imports in its own context: the child will
                pass
        sys.dont_write_bytecode = True
        print(f"   preloaded {loaded} modules for the forked test runs", flush=True)

    def run(self, args: list[str], timeout: float, env: dict | None = None) -> tuple[str, str]:
        log = OUT / f"child-{os.getpid()}.log"
        pid = os.fork()
        if pid == 0:   # the child: its own group (a timeout kills what it started), output to a file
            try:
                os.setsid()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(TREE)
                os.environ.clear()
                os.environ.update(env or test_env())
                # This runner is itself in `tests` (of the original tree): the child imports the
                # tests, and ext_proc, afresh from its own tree.
                for name in [n for n in sys.modules if n.split(".")[0] in ("tests", "ext_proc")]:
                    del sys.modules[name]
                sys.path[:] = [str(TREE)] + [p for p in sys.path if p not in ("", str(REPO))]
                import pytest
                code = int(pytest.main(["-p", "no:cacheprovider", *args]))
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 99
            os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                os.waitpid(pid, 0)
                return "timeout", f"timeout after {timeout:.0f}s"
            time.sleep(0.05)
        text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        log.unlink(missing_ok=True)
        code = os.waitstatus_to_exitcode(status)
        # 1: a test failed; 2: collection failed (a mutant can break an import): both kill. 3-5, 99:
        # pytest itself or this runner failed, or nothing ran: never a kill.
        return {0: "passed", 1: "failed", 2: "failed"}.get(code, "error"), text


def function_lines(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """Line ranges (inclusive) of the named functions, methods and classes."""
    tree = ast.parse(path.read_text())
    found: dict[str, tuple[int, int]] = {}

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + child.name] = (child.lineno, child.end_lineno)
            elif isinstance(child, ast.ClassDef):   # a class name stands for all its methods
                found[prefix + child.name] = (child.lineno, child.end_lineno)
                walk(child, prefix + child.name + ".")
    walk(tree, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path}: no function {missing} (renamed or moved? update tests/mutation/targets.toml)")
    return [found[n] for n in names]


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the type annotations are: `X | None` turned into `X * None` there changes nothing, as
    every target has `from __future__ import annotations` (checked): annotations are never evaluated."""
    source = path.read_text()
    tree = ast.parse(source)
    if not any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body):
        return []
    spans = []
    for node in ast.walk(tree):
        found = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found if a is not None]
    return spans


def write_config(t: Target, path: Path) -> None:
    ops = ", ".join(json.dumps(o) for o in EXCLUDED_OPERATORS)
    # cosmic-ray's own test command is unused (this script runs the tests), but `cr init` wants one.
    path.write_text(f"""[cosmic-ray]
module-path = {json.dumps(t.module)}
timeout = 60
excluded-modules = []
test-command = {json.dumps(shlex.join(pytest_cmd(*t.tests)))}

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = [{ops}]
""")


def select(t: Target, session: Path, *, everything: bool, seed: int) -> list:
    """Skip mutants outside the promise-carrying functions, then all but a seeded sample (drawn by
    operator and occurrence, not by cosmic-ray's random job ids: the same source gives the same sample)."""
    ranges = function_lines(REPO / t.module, t.functions) if t.functions else None
    annotations = annotation_spans(REPO / t.module)
    with use_db(str(session), WorkDB.Mode.open) as db:
        keep = []
        for item in db.pending_work_items:
            m = item.mutations[0]
            line = m.start_pos[0]
            if ranges is not None and not any(a <= line <= b for a, b in ranges):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output="outside the promise-carrying functions"))
            elif any(a <= tuple(m.start_pos) and tuple(m.end_pos) <= b for a, b in annotations):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output="inside an annotation"))
            else:
                keep.append(item)
        keep.sort(key=lambda i: (i.mutations[0].operator_name, i.mutations[0].occurrence))
        if not everything and len(keep) > t.sample:
            chosen = random.Random(seed).sample(keep, t.sample)
            chosen_ids = {i.job_id for i in chosen}
            for item in keep:
                if item.job_id not in chosen_ids:
                    db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not sampled"))
            keep = chosen
        return keep


def selection_args(t: Target) -> list[str]:
    return ["-k", " and ".join(f"not {d}" for d in t.deselect)] if t.deselect else []


@dataclass
class Baseline:
    lines: dict[int, list[str]]      # line -> node ids executing it ("" = at import)
    seconds: dict[str, float]        # node id -> duration, passing tests only
    left_out: list[str]              # tests that failed unmutated
    process_ok: bool


def baseline(t: Target, warm: WarmPytest, same_tests: list[Target], cache: dict) -> Baseline:
    """The unmutated tests once, under coverage: who executes what, how fast, and that they pass.
    One run serves every target with the same tests (SAME_TESTS: their modules are measured together)."""
    key = (tuple(t.tests), tuple(t.deselect))
    if key not in cache:
        sources = [str(REPO / x.module) for x in same_tests]
        # Kept across runs while nothing it depends on changed (the source tree, these tests, this tool).
        stored = OUT / "baselines" / f"{fingerprint('ext_proc', 'tests/mutation', *CONFTESTS, *t.tests, extra=[json.dumps(key), *sources])}.json"
        if not stored.exists():
            cover = OUT / f"{t.name}.cover.json"
            cover.unlink(missing_ok=True)
            env = dict(test_env(), MUTATION_COVER_SOURCE=os.pathsep.join(sources), MUTATION_COVER_OUT=str(cover))
            status, out = warm.run(["-q", "-p", "tests.mutation.covermap", *selection_args(t), *t.tests], 1800, env)
            if not cover.exists():
                raise SystemExit(f"{t.name}: the baseline run wrote no coverage map ({status}):\n{out}")
            stored.parent.mkdir(exist_ok=True)
            cover.replace(stored)
        else:
            print(f"   {t.name}: coverage map unchanged since {time.ctime(stored.stat().st_mtime)}", flush=True)
        cache[key] = json.loads(stored.read_text())
    data = cache[key]
    failed = sorted(n for n, r in data["tests"].items() if r.get("failed"))
    seconds = {n: r.get("seconds", 1.0) for n, r in data["tests"].items() if not r.get("failed")}
    lines = {int(k): [c for c in v if c in seconds or c == ""]
             for k, v in data["files"][str(REPO / t.module)].items()}
    process_ok = True
    if t.process_tests:
        passed = OUT / "baselines" / (fingerprint("ext_proc", "envoy", "policies", "tests/fault", "pyproject.toml",
                                                  *CONFTESTS, *t.process_tests) + ".passed")
        if passed.exists():
            status = "passed"
            print(f"   {t.name}: process tests passed unmutated on the same tree at {time.ctime(passed.stat().st_mtime)}",
                  flush=True)
        else:
            status, out = run(pytest_cmd(*t.process_tests), t.process_timeout_s)
        process_ok = status == "passed"
        if process_ok:
            passed.parent.mkdir(exist_ok=True)
            passed.touch()
        else:
            print(f"   {t.name}: process tests fail unmutated ({status}); left out:\n{out[-1500:]}", flush=True)
    if failed:
        print(f"   {t.name}: {len(failed)} test(s) fail unmutated and are left out: {failed}", flush=True)
    return Baseline(lines, seconds, failed, process_ok)


CONFTESTS = ("tests/conftest.py", "tests/support.py", "tests/pg.py")


def fingerprint(*paths: str, extra: list[str] = ()) -> str:
    """sha256 over the named files and every file under the named directories, and EXTRA."""
    h = hashlib.sha256("\0".join(extra).encode())
    for p in paths:
        root = REPO / p
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:24]


def tests_for(item, b: Baseline) -> list[str] | None:
    """The passing tests that execute the mutant's lines, fastest first; None when no test does."""
    m = item.mutations[0]
    ids: set[str] = set()
    executed = False
    for line in range(m.start_pos[0], m.end_pos[0] + 1):
        if line in b.lines:
            executed = True
            ids.update(b.lines[line])
    if not executed:
        return None
    if "" in ids:   # runs at import (a definition, a default, a decorator): every test depends on it
        ids = set(b.seconds)
    ids.discard("")
    return sorted(ids, key=lambda n: (b.seconds.get(n, 1.0), n)) or None


def first_failure(output: str) -> str | None:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return found.group(1) if found else None


def run_mutant(t: Target, b: Baseline, item, remaining: float, warm: WarmPytest) -> WorkResult | None:
    """Apply one mutant, run its tests, restore the file. None: the budget ran out during it (not run)."""
    m = item.mutations[0]
    operator = get_operator(m.operator_name)(**(m.operator_args or {}))
    ids = tests_for(item, b)
    process = t.process_tests if b.process_ok else []
    if ids is None and not process:
        return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.SURVIVED, output=NO_TEST,
                          diff=None)
    with use_mutation(TREE / m.module_path, operator, m.occurrence) as (original, mutated):
        if mutated is None:
            return WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
        try:   # cosmic-ray can write code that does not compile ({**d} -> {+d}): not a mutant any test kills
            compile(mutated, str(m.module_path), "exec")
        except SyntaxError as exc:
            return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.INCOMPETENT,
                              output=f"does not compile: {exc}")
        diff = "\n".join(difflib.unified_diff(original.splitlines(), mutated.splitlines(),
                                              f"a/{m.module_path}", f"b/{m.module_path}", lineterm=""))
        stages = []
        if ids:
            stages.append((warm.run, ["-x", "-q", *ids], STARTUP_S + 3 * sum(b.seconds.get(n, 1.0) for n in ids)))
        if process:
            stages.append((run, pytest_cmd(*process), t.process_timeout_s))
        output = ""
        for runner, cmd, timeout in stages:
            limit = min(timeout, remaining)
            started = time.monotonic()
            status, output = runner(cmd, limit)
            remaining -= time.monotonic() - started
            if status == "timeout" and limit < timeout:
                return None    # cut by the budget, not by the mutant: not run
            if status == "timeout":
                return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.KILLED,
                                  output="timeout", diff=diff)
            if status == "failed":
                return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.KILLED,
                                  output=output, diff=diff)
            if status == "error":
                control = (runner, cmd, limit)
                break
        else:
            note = "" if ids else NO_TEST + " in this process; the process tests passed\n"
            return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.SURVIVED,
                              output=note + output, diff=diff)
    # pytest could not run the tests with the mutant (typically the mutant broke a test module's
    # import, "found no collectors"): a kill only if the same tests run and pass without it.
    runner, cmd, limit = control
    status, _ = runner(cmd, limit)
    outcome = TestOutcome.KILLED if status == "passed" else TestOutcome.INCOMPETENT
    return WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=outcome, diff=diff,
                      output=f"the tests could not run with the mutant; without it they {status}\n" + output)


def summarise(t: Target, session: Path, b: Baseline | None) -> dict:
    counts = {"sampled": 0, "killed": 0, "timeouts": 0, "survived": 0, "uncovered": 0, "incompetent": 0,
              "not_run": 0}
    survivors, killers = [], {}
    with use_db(str(session), WorkDB.Mode.open) as db:
        done = {item.job_id for item, _ in db.completed_work_items}
        for item, result in db.completed_work_items:
            m = item.mutations[0]
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            counts["sampled"] += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                uncovered = (result.output or "").startswith(NO_TEST)
                counts["uncovered"] += uncovered
                survivors.append({"line": m.start_pos[0], "operator": m.operator_name, "occurrence": m.occurrence,
                                  "uncovered": uncovered, "diff": result.diff})
            elif result.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
                if result.output == "timeout":
                    counts["timeouts"] += 1
                killer = "timeout" if result.output == "timeout" else (first_failure(result.output or "") or "?")
                killers[killer] = killers.get(killer, 0) + 1
            else:
                counts["incompetent"] += 1
        pending = [item for item in db.work_items if item.job_id not in done]
        counts["not_run"] = len(pending)
        counts["sampled"] += len(pending)
    tested = counts["killed"] + counts["survived"]
    return {"name": t.name, "module": t.module, "functions": t.functions, **counts,
            "kill_rate": round(counts["killed"] / tested, 3) if tested else None,
            "left_out_tests": b.left_out if b else [], "killed_by": dict(sorted(killers.items(), key=lambda x: -x[1])),
            "survivors": sorted(survivors, key=lambda s: s["line"])}


def markdown(results: list[dict], minutes: float, budget_min: float) -> str:
    lines = [f"Mutation run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {minutes:.1f} min wall clock "
             f"(budget {budget_min:.0f} min).", "",
             "| module | sampled | killed (timeouts) | survived (no test covers) | incompetent | not run | kill rate |",
             "|---|---|---|---|---|---|---|"]
    tot = {k: 0 for k in ("sampled", "killed", "timeouts", "survived", "uncovered", "incompetent", "not_run")}
    for r in results:
        for k in tot:
            tot[k] += r[k]
        rate = f"{r['kill_rate']:.0%}" if r["kill_rate"] is not None else "-"
        lines.append(f"| {r['module']} | {r['sampled']} | {r['killed']} ({r['timeouts']}) | {r['survived']} "
                     f"({r['uncovered']}) | {r['incompetent']} | {r['not_run']} | {rate} |")
    tested = tot["killed"] + tot["survived"]
    rate = f"{tot['killed'] / tested:.0%}" if tested else "-"
    lines.append(f"| **all** | {tot['sampled']} | {tot['killed']} ({tot['timeouts']}) | {tot['survived']} "
                 f"({tot['uncovered']}) | {tot['incompetent']} | {tot['not_run']} | {rate} |")
    for r in results:
        if r["left_out_tests"]:
            lines += ["", f"{r['module']}: tests failing unmutated, left out: {', '.join(r['left_out_tests'])}"]
    for r in results:
        for s in r["survivors"]:
            note = " (no test executes it)" if s["uncovered"] else ""
            lines += ["", f"### {r['module']}:{s['line']} {s['operator']} #{s['occurrence']}{note}", "```diff",
                      (s["diff"] or "").strip(), "```"]
    return "\n".join(lines) + "\n"


def interleave(queues: list[list]) -> list:
    out, i = [], 0
    while any(queues):
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


def recheck(extra_tests: list[str]) -> int:
    """Apply each survivor of the last run (var/mutation/summary.json) again, one at a time, and
    run its target's tests plus EXTRA_TESTS ("name:path" for one target only, a bare path for every
    target): which survivors the tests written since the run now kill."""
    results = json.loads((OUT / "summary.json").read_text())
    by_name = {t.name: t for t in load_targets()}
    report = []
    for r in results:
        t = by_name[r["name"]]
        source = REPO / t.module
        backup = source.read_bytes()
        extra = [e.split(":", 1)[1] if ":" in e else e for e in extra_tests
                 if ":" not in e or e.split(":", 1)[0] == t.name]
        for s in r["survivors"]:
            diff = (s["diff"] or "") + "\n"
            applied = subprocess.run(["patch", "-p1", "--quiet"], input=diff, text=True, cwd=REPO)
            try:
                if applied.returncode != 0:
                    verdict = "not applicable"
                else:
                    status, _ = run(pytest_cmd(*extra, *selection_args(t), *t.tests), 900)
                    if status == "passed" and t.process_tests:
                        status, _ = run(pytest_cmd(*t.process_tests), t.process_timeout_s)
                    verdict = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)", "error": "error"}[status]
            finally:
                source.write_bytes(backup)
            report.append({"module": t.module, "line": s["line"], "operator": s["operator"], "now": verdict})
            print(f"{t.module}:{s['line']} {s['operator']}: {verdict}", flush=True)
    (OUT / "recheck.json").write_text(json.dumps(report, indent=2))
    return 0


def work(k: int, jobs: list, baselines: dict, warm: WarmPytest, deadline: float, started: float) -> int:
    """One worker (a fork of the runner): copies the repository (tracked and new files alike, not
    var/ or .git) and runs its jobs there, so two workers never see each other's mutants."""
    global TREE
    TREE = OUT / "trees" / f"w{k}"
    shutil.rmtree(TREE, ignore_errors=True)
    shutil.copytree(REPO, TREE, ignore=shutil.ignore_patterns("var", ".git", "__pycache__", ".hypothesis", ".venv",
                                                               "*.egg-info", ".pytest_cache"))
    out = OUT / f"results-{k}.jsonl"
    out.unlink(missing_ok=True)
    try:
        # The copy works unmutated: each target's fastest test passes there, or this worker runs nothing.
        fastest = sorted({min(b.seconds, key=b.seconds.get) for b in baselines.values() if b.seconds})
        status, output = warm.run(["-q", *fastest], 600)
        if status != "passed":
            print(f"worker {k}: the unmutated copy fails its tests ({status}); its mutants are not run:\n{output}",
                  flush=True)
            return 1
        for n, (t, item) in enumerate(jobs, 1):
            remaining = deadline - time.monotonic()
            if remaining < 5:
                print(f"worker {k}: budget spent, {len(jobs) - n + 1} mutants not run", flush=True)
                break
            result = run_mutant(t, baselines[t.name], item, remaining, warm)
            if result is None:
                print(f"worker {k}: budget spent during a mutant: it and {len(jobs) - n} more not run", flush=True)
                break
            with out.open("a") as f:
                f.write(json.dumps({"target": t.name, "job_id": item.job_id,
                                    "worker_outcome": str(result.worker_outcome.value),
                                    "test_outcome": result.test_outcome.value if result.test_outcome else None,
                                    "output": result.output, "diff": result.diff}) + "\n")
            m = item.mutations[0]
            print(f"[w{k} {n}/{len(jobs)} {(time.monotonic() - started) / 60:.1f} min] {t.module}:{m.start_pos[0]} "
                  f"{m.operator_name}: {(result.test_outcome or result.worker_outcome).value}", flush=True)
    finally:
        shutil.rmtree(TREE, ignore_errors=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=28.0)
    p.add_argument("--only", default="", help="comma-separated target names")
    p.add_argument("--all", action="store_true", help="every mutant in the functions, not a sample")
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--workers", type=int, default=2, help="mutants run in parallel, each worker in its own copy")
    p.add_argument("--recheck", nargs="*", metavar="TEST",
                   help="re-run the last run's survivors against the target tests plus these test paths")
    a = p.parse_args()
    if a.recheck is not None:
        return recheck(a.recheck)
    targets = [t for t in load_targets() if not a.only or t.name in a.only.split(",")]
    for t in targets:   # every name in targets.toml still there, before minutes are spent
        function_lines(REPO / t.module, t.functions)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    budget = a.budget_minutes * 60
    queues, baselines, cover_cache = [], {}, {}
    warm = WarmPytest(sorted({f for t in targets for f in t.tests}))
    for t in targets:
        config, session = OUT / f"{t.name}.toml", OUT / f"{t.name}.sqlite"
        write_config(t, config)
        session.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(session)], cwd=REPO, check=True)
        subprocess.run([sys.executable, "-m", "cosmic_ray.tools.filters.operators_filter", str(session), str(config)],
                       cwd=REPO, check=True)
        chosen = select(t, session, everything=a.all, seed=a.seed)
        for pyc in (REPO / t.module).parent.glob(f"__pycache__/{Path(t.module).stem}.*.pyc"):
            pyc.unlink()
        b0 = time.monotonic()
        same = [x for x in targets if (x.tests, x.deselect) == (t.tests, t.deselect)]
        baselines[t.name] = baseline(t, warm, same, cover_cache)
        print(f"== {t.module}: {len(chosen)} mutants; baseline {time.monotonic() - b0:.0f}s, "
              f"{len(baselines[t.name].seconds)} tests", flush=True)
        queues.append([(t, item) for item in chosen])
    jobs = interleave(queues)
    deadline = started + budget
    workers = []
    for k in range(a.workers):   # each worker: its own copy of the tree, every a.workers-th job
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = work(k, jobs[k::a.workers], baselines, warm, deadline, started)
            finally:
                os._exit(code)
        workers.append(pid)
    for pid in workers:
        os.waitpid(pid, 0)
    by_name = {t.name: t for t in targets}
    for k in range(a.workers):
        done = OUT / f"results-{k}.jsonl"
        for line in (done.read_text().splitlines() if done.exists() else []):
            r = json.loads(line)
            with use_db(str(OUT / f"{by_name[r.pop('target')].name}.sqlite"), WorkDB.Mode.open) as db:
                db.set_result(r.pop("job_id"), WorkResult(**r))
        done.unlink(missing_ok=True)
    results = [summarise(t, OUT / f"{t.name}.sqlite", baselines.get(t.name)) for t in targets]
    minutes = (time.monotonic() - started) / 60
    (OUT / "summary.json").write_text(json.dumps(results, indent=2))
    (OUT / "summary.md").write_text(markdown(results, minutes, a.budget_minutes))
    print(markdown(results, minutes, a.budget_minutes).split("\n### ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
