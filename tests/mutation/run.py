"""`make mutation`: cosmic-ray over the modules that carry ledgergate's promises, each with the
unit and fault tests that should catch a broken promise there. Not part of `make test`.

cosmic-ray mutates the source file in place for each mutant, so tests that start real processes
(`ledgergate up`, the fault-injected worker) run the mutant too. Bounded: per module, a seeded
sample of the mutants inside the functions that carry the promise (all of them with --all), one
mutant at a time, and a wall-clock budget; what the budget did not reach is reported as not run.
Results: var/mutation/<module>.sqlite (cosmic-ray sessions: `cr-report`, `cr-html`) and
var/mutation/summary.json / summary.md (kill rate per module, every survivor with its diff).

    python -m tests.mutation.run [--budget-minutes 28] [--only chain,verify] [--all] [--seed 24]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "var" / "mutation"

# Operators left out: the rarer arithmetic/bitwise replacements (Add->Pow, Sub->LShift...) add
# many mutants that die the same way as Add->Sub; VariableReplacer/Inserter rewrite names into
# mostly incompetent code. What stays: + - * swaps, comparisons, boolean and/or/not, True/False,
# numbers, break/continue, exception handlers, zero-iteration loops, removed decorators.
EXCLUDED_OPERATORS = (
    r"core/ReplaceBinaryOperator_.*_(Div|FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceUnaryOperator_.*_(Invert|UAdd)$",
    r"core/VariableReplacer", r"core/VariableInserter",
)


@dataclass
class Target:
    name: str
    module: str
    tests: list[str]
    sample: int
    functions: list[str] = field(default_factory=list)   # "Class.method" or "function"; empty: whole module
    timeout_s: float = 120.0


UNIT_SERVICER = ["tests/unit/test_response_release.py", "tests/unit/test_tracing.py",
                 "tests/unit/test_request_reservation.py", "tests/unit/test_capture_response.py"]
FAULT_SERVICER = ["tests/fault/test_ledgergate_faults.py", "tests/fault/test_audit_outage_e2e.py"]

TARGETS = [
    Target("chain", "ext_proc/audit/chain.py", ["tests/unit/test_audit_chain.py"], 25),
    Target("verify", "ext_proc/audit/verify.py", ["tests/unit/test_audit_chain.py"], 35,
           ["verify_dir", "_verify_segment", "check_lines"]),
    Target("ratelimit", "ext_proc/ratelimit/limits.py",
           ["tests/unit/test_ratelimit_backends.py", "tests/unit/test_request_reservation.py"], 35),
    Target("gate", "ext_proc/streaming/gate.py",
           # The byte-boundary sweep (40 s under load) is left out: the other gate tests run in seconds.
           ["-k", "not every_byte_boundary", "tests/unit/test_prefix_hold.py", "tests/unit/test_streaming.py",
            "tests/unit/test_response_inspection.py"], 35),
    Target("pipeline", "ext_proc/pipeline/request.py",
           ["tests/unit/test_pipeline.py", "tests/unit/test_request_reservation.py"], 35),
    # The policy engine is three modules now (facts, matchers, evaluation): the same functions
    # and the same 35 mutants in all, sampled per module.
    Target("policy", "ext_proc/policy/evaluation.py", ["tests/unit/test_policy_eval.py"], 10,
           ["Policy.evaluate"]),
    Target("policy-matchers", "ext_proc/policy/matchers.py", ["tests/unit/test_policy_eval.py"], 20,
           ["Matcher.test", "Route.matches", "Route.candidates", "_glob_cond", "_labels_cond", "compile_when",
            "_cond"]),
    Target("policy-facts", "ext_proc/policy/facts.py", ["tests/unit/test_policy_eval.py"], 5, ["read_facts"]),
    Target("servicer", "ext_proc/server/exchange.py", UNIT_SERVICER + FAULT_SERVICER, 30,
           ["Exchange._decide", "Exchange.refuse", "Exchange.commit", "Exchange.commit_outcome",
            "Exchange.failure", "Exchange.finish"], timeout_s=240.0),
]


def function_lines(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """Line ranges (inclusive) of the named functions and methods."""
    tree = ast.parse(path.read_text())
    found: dict[str, tuple[int, int]] = {}

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + child.name] = (child.lineno, child.end_lineno)
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")
    walk(tree, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"{path}: no function {missing} (renamed? update tests/mutation/run.py)")
    return [found[n] for n in names]


def write_config(t: Target, path: Path) -> None:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *t.tests]
    ops = ", ".join(json.dumps(o) for o in EXCLUDED_OPERATORS)
    path.write_text(f"""[cosmic-ray]
module-path = {json.dumps(t.module)}
timeout = {t.timeout_s}
excluded-modules = []
test-command = {json.dumps(shlex.join(command))}

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = [{ops}]
""")


def select(t: Target, session: Path, *, everything: bool, seed: int) -> int:
    """Skip mutants outside the promise-carrying functions, then all but a seeded sample."""
    ranges = function_lines(REPO / t.module, t.functions) if t.functions else None
    with use_db(str(session), WorkDB.Mode.open) as db:
        keep = []
        for item in db.pending_work_items:
            line = item.mutations[0].start_pos[0]
            if ranges is not None and not any(a <= line <= b for a, b in ranges):
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED,
                                                      output="outside the promise-carrying functions"))
            else:
                keep.append(item.job_id)
        if not everything and len(keep) > t.sample:
            chosen = set(random.Random(seed).sample(sorted(keep), t.sample))
            for job in keep:
                if job not in chosen:
                    db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not sampled"))
            keep = sorted(chosen)
        return len(keep)


def execute(t: Target, config: Path, session: Path, budget_s: float) -> None:
    source = REPO / t.module
    backup = source.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "cosmic_ray.cli", "exec", str(config), str(session)], cwd=REPO)
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)   # cosmic-ray restores the file it mutated on KeyboardInterrupt
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if source.read_bytes() != backup:   # never leave a mutant behind
            source.write_bytes(backup)


def summarise(t: Target, session: Path) -> dict:
    counts = {"killed": 0, "survived": 0, "incompetent": 0, "not_run": 0, "outside": 0, "not_sampled": 0}
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        done = {item.job_id for item, _ in db.completed_work_items}
        for item, result in db.completed_work_items:
            m = item.mutations[0]
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                counts["outside" if result.output and "outside" in result.output else "not_sampled"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                survivors.append({"line": m.start_pos[0], "operator": m.operator_name, "diff": result.diff})
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            else:
                counts["killed"] += 1
        counts["not_run"] = sum(1 for item in db.work_items if item.job_id not in done)
    tested = counts["killed"] + counts["survived"]
    return {"name": t.name, "module": t.module, "tests": t.tests, "functions": t.functions, **counts,
            "kill_rate": round(counts["killed"] / tested, 3) if tested else None,
            "survivors": sorted(survivors, key=lambda s: s["line"])}


def markdown(results: list[dict], minutes: float) -> str:
    lines = [f"Mutation run: {minutes:.1f} min wall clock.", "",
             "| module | killed | survived | incompetent | not run | kill rate |", "|---|---|---|---|---|---|"]
    for r in results:
        rate = f"{r['kill_rate']:.0%}" if r["kill_rate"] is not None else "-"
        lines.append(f"| {r['module']} | {r['killed']} | {r['survived']} | {r['incompetent']} | {r['not_run']} | {rate} |")
    for r in results:
        for s in r["survivors"]:
            lines += ["", f"### {r['module']}:{s['line']} {s['operator']}", "```diff", (s["diff"] or "").strip(), "```"]
    return "\n".join(lines) + "\n"


def recheck(extra_tests: list[str]) -> int:
    """Apply each survivor of the last run (var/mutation/summary.json) again, one at a time, and
    run its module's tests plus EXTRA_TESTS ("name:path" for one target only): which survivors
    the tests written since the run now kill."""
    results = json.loads((OUT / "summary.json").read_text())
    by_name = {t.name: t for t in TARGETS}
    report = []
    for r in results:
        t = by_name[r["name"]]
        source = REPO / t.module
        backup = source.read_bytes()
        for s in r["survivors"]:
            diff = "\n".join(line for line in (s["diff"] or "").splitlines()
                             if not line.startswith("--- mutation diff ---")) + "\n"
            applied = subprocess.run(["patch", "-p1", "--quiet"], input=diff, text=True, cwd=REPO)
            try:
                if applied.returncode != 0:
                    verdict = "not applicable"
                else:
                    # "name:path" applies to that target only; a bare path to every target.
                    extra = [e.split(":", 1)[1] if ":" in e else e for e in extra_tests
                             if ":" not in e or e.split(":", 1)[0] == t.name]
                    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                          *t.tests, *extra], cwd=REPO, capture_output=True, text=True,
                                         timeout=t.timeout_s * 2)
                    verdict = "survived" if run.returncode == 0 else "killed"
            except subprocess.TimeoutExpired:
                verdict = "killed (timeout)"
            finally:
                source.write_bytes(backup)
            report.append({"module": t.module, "line": s["line"], "operator": s["operator"], "now": verdict})
            print(f"{t.module}:{s['line']} {s['operator']}: {verdict}", flush=True)
    (OUT / "recheck.json").write_text(json.dumps(report, indent=2))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=28.0)
    p.add_argument("--only", default="", help="comma-separated target names")
    p.add_argument("--all", action="store_true", help="every mutant in the functions, not a sample")
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--recheck", nargs="*", metavar="TEST",
                   help="re-run the last run's survivors against the module tests plus these test paths")
    a = p.parse_args()
    if a.recheck is not None:
        return recheck(a.recheck)
    targets = [t for t in TARGETS if not a.only or t.name in a.only.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    planned = {}
    for t in targets:
        config, session = OUT / f"{t.name}.toml", OUT / f"{t.name}.sqlite"
        write_config(t, config)
        session.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(session)], cwd=REPO, check=True)
        subprocess.run([sys.executable, "-m", "cosmic_ray.tools.filters.operators_filter", str(session), str(config)],
                       cwd=REPO, check=True)
        planned[t.name] = select(t, session, everything=a.all, seed=a.seed)
    budget = a.budget_minutes * 60
    results = []
    for t in targets:
        left = budget - (time.monotonic() - started)
        # Each module gets its share of what is left, by its number of mutants.
        share = left * planned[t.name] / max(1, sum(planned[x.name] for x in targets[targets.index(t):]))
        print(f"== {t.module}: {planned[t.name]} mutants, {share / 60:.1f} min", flush=True)
        if share > 5:
            execute(t, OUT / f"{t.name}.toml", OUT / f"{t.name}.sqlite", share)
        results.append(summarise(t, OUT / f"{t.name}.sqlite"))
        (OUT / "summary.json").write_text(json.dumps(results, indent=2))
    minutes = (time.monotonic() - started) / 60
    (OUT / "summary.md").write_text(markdown(results, minutes))
    print(markdown(results, minutes).split("\n### ")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
