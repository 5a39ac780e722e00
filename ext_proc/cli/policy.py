"""`ledgergate policy check|test|explain`.

    ledgergate policy check FILE...                     schema + semantic errors as file:line
    ledgergate policy test FILE|DIR...                  run YAML policy tests (exit 1 on failure)
    ledgergate policy explain --policy FILE --input JSON|@FILE|-   which rules matched and why
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from ext_proc.policy.compile import PolicyError
from ext_proc.policy.store import load_policy
from ext_proc.policy.testing import collect_test_files, run_test_file

MAX_INPUT_BYTES = 4 * 1024 * 1024


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    rc = 0
    for f in args.files:
        try:
            p = load_policy(f)
        except PolicyError as exc:
            rc = 1
            for line in exc.problems:
                print(line, file=err)
            print(f"FAIL {f}: {len(exc.problems)} problem(s)", file=err)
            continue
        c = p.compiled
        print(f"ok {f}: id={p.id} version={p.version} label={p.label or '-'} "
              f"routes={len(c['routes'])} rules={len(c['rules'])} response_rules={len(c['response_rules'])} "
              f"rate_limits={len(c['rate_limits'])} files={len(p.sources)}", file=out)
    return rc


def _test(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    files = collect_test_files(args.files)
    if not files:
        print("no policy test files found", file=err)
        return 1
    passed = failed = 0
    broken = 0
    cache: dict = {}
    for f in files:
        try:
            results = run_test_file(f, policy_cache=cache)
        except PolicyError as exc:
            broken += 1
            for line in exc.problems:
                print(line, file=err)
            continue
        for r in results:
            if r.ok:
                passed += 1
                if args.verbose:
                    print(f"PASS {r.where()} {r.name}", file=out)
            else:
                failed += 1
                print(f"FAIL {r.where()} {r.name}", file=out)
                for msg in r.failures:
                    print(f"    {msg}", file=out)
    print(f"{passed} passed, {failed} failed" + (f", {broken} file(s) could not be run" if broken else ""), file=out)
    return 0 if failed == 0 and broken == 0 else 1


def _read_input(spec: str) -> dict:
    if spec == "-":
        text = sys.stdin.read(MAX_INPUT_BYTES + 1)
    elif spec.lstrip().startswith("{"):
        text = spec
    else:
        path = Path(spec[1:] if spec.startswith("@") else spec)
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_INPUT_BYTES + 1)
    if len(text) > MAX_INPUT_BYTES:
        raise ValueError(f"input larger than {MAX_INPUT_BYTES} bytes")
    data = json.loads(text)
    # A stored audit decision record (as `audit show` prints it, or one line of the store) carries
    # the policy input under "input": explain that. An input of its own has no "kind".
    if isinstance(data, dict) and isinstance(data.get("input"), dict) and (
            data.get("kind") == "decision" or "identity" not in data):
        data = data["input"]
    if not isinstance(data, dict):
        raise ValueError("the input must be a JSON object")
    return data


def _explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        for line in exc.problems:
            print(line, file=err)
        return 1
    try:
        data = _read_input(args.input)
    except (OSError, ValueError) as exc:
        print(f"cannot read input: {exc}", file=err)
        return 2
    d = policy.evaluate(data)
    if args.json:
        print(json.dumps(d.to_record(), indent=2, sort_keys=True), file=out)
        return 0
    print(f"policy   {d.policy_id} {d.policy_version} label={d.policy_label or '-'}", file=out)
    print(f"route    {d.route or '-'} (mode {d.mode})", file=out)
    line = f"outcome  {d.outcome}"
    if d.observed:
        line += f" (observed: {d.observed})"
    if d.outcome == "deny":
        line += f" -> {d.status} {d.code}: {d.reason}"
    print(line, file=out)
    print("matched:", file=out)
    for m in d.matched:
        tag = " [shadow]" if m.get("shadow") else ""
        prio = "" if m["priority"] is None else f" priority {m['priority']}"
        print(f"  - {m['rule']} ({m['effect']}{prio}){tag}", file=out)
        for w in m["why"]:
            print(f"      {w}", file=out)
    if d.redact:
        print("redact   " + ", ".join(f"{k}={v}" for k, v in d.redact.items()), file=out)
    if d.max_tokens_cap is not None:
        print(f"max_tokens_cap {d.max_tokens_cap}", file=out)
    if d.limits:
        print("limits   " + ", ".join(x["id"] for x in d.limits), file=out)
    r = d.response
    if r["redact"] or r["block"] or r["marker_header"]:
        print(f"response redact={dict(r['redact'])} block={list(r['block'])} marker={r['marker_header']}", file=out)
    if d.detail:
        print("detail   " + json.dumps(d.to_record()["detail"], sort_keys=True), file=out)
    return 0


def run(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    p = argparse.ArgumentParser(prog="ledgergate policy", description="validate, test and explain policies")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate policy files (schema and semantics), print their versions")
    c.add_argument("files", nargs="+")
    t = sub.add_parser("test", help="run YAML policy tests (files or directories)")
    t.add_argument("files", nargs="+")
    t.add_argument("-v", "--verbose", action="store_true")
    e = sub.add_parser("explain", help="evaluate one input and show which rules matched and why")
    e.add_argument("--policy", required=True)
    e.add_argument("--input", required=True, help="JSON text, a file (optionally @FILE), or - for stdin; "
                                                   "a decision record's 'input' is used as is")
    e.add_argument("--json", action="store_true", help="print the decision record as JSON")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return {"check": _check, "test": _test, "explain": _explain}[args.cmd](args, out, err)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run(sys.argv[1:]))
