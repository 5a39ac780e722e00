"""Policy tests (like ``opa test``): YAML files of inputs and the decision each must produce.

    policy: ../default.yaml          # relative to the test file
    base_input: {...}                # deep-merged under every case's input (optional)
    cases:
      - name: developer may send an ordinary prompt
        input: {identity: {roles: [developer]}}
        expect: {outcome: permit, matched_include: [permit-developers]}

``expect`` keys: outcome, observed, status, code, mode, route, reason, max_tokens_cap, matched
(exact set of rule ids, $-entries included), matched_include, not_matched, redact (exact map),
limits (exact set of ids), response (each given key of redact/block/marker_header/rules, exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from ext_proc.policy.compile import PolicyError, format_path
from ext_proc.policy.effects import Effect
from ext_proc.policy.evaluation import Decision, Policy
from ext_proc.policy.store import load_policy
from ext_proc.policy.yamlsrc import YAMLSourceError, line_of, load_yaml

_OUTCOMES = [e.value for e in Effect]
_EXPECT_KEYS = {
    "outcome": {"enum": _OUTCOMES},
    "observed": {"enum": _OUTCOMES + [None]},
    "status": {"type": "integer"}, "code": {"type": "string"}, "reason": {"type": "string"},
    "mode": {"enum": ["enforce", "observe", "shadow", "multiplex"]}, "route": {"type": ["string", "null"]},
    "max_tokens_cap": {"type": ["integer", "null"]},
    "matched": {"type": "array", "items": {"type": "string"}},
    "matched_include": {"type": "array", "items": {"type": "string"}},
    "not_matched": {"type": "array", "items": {"type": "string"}},
    "redact": {"type": "object", "additionalProperties": {"type": "string"}},
    "limits": {"type": "array", "items": {"type": "string"}},
    "response": {"type": "object", "additionalProperties": False,
                 "properties": {"redact": {"type": "object"}, "block": {"type": "array"},
                                "marker_header": {"type": ["object", "null"]}, "rules": {"type": "array"}}},
}
TEST_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["policy", "cases"],
    "properties": {
        "policy": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "base_input": {"type": "object"},
        "cases": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "input", "expect"],
            "properties": {"name": {"type": "string", "minLength": 1}, "input": {"type": "object"},
                           "expect": {"type": "object", "additionalProperties": False, "minProperties": 1,
                                      "properties": _EXPECT_KEYS}}}},
    },
}


@dataclass
class CaseResult:
    file: str
    line: int | None
    name: str
    failures: list[str] = field(default_factory=list)
    decision: Decision | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = {k: _plain(v) for k, v in base.items()}
        for k, v in over.items():
            out[k] = deep_merge(out[k], v) if k in out else _plain(v)
        return out
    return _plain(over)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def check_expectations(decision: Decision, expect: dict[str, Any]) -> list[str]:
    rec = decision.to_record()
    ids = [m["rule"] for m in rec["matched"]]
    out: list[str] = []
    for key in ("outcome", "observed", "status", "code", "mode", "route", "reason", "max_tokens_cap"):
        if key in expect and rec[key] != expect[key]:
            out.append(f"{key}: expected {expect[key]!r}, got {rec[key]!r}")
    if "matched" in expect and sorted(set(ids)) != sorted(set(expect["matched"])):
        out.append(f"matched: expected {sorted(set(expect['matched']))}, got {sorted(set(ids))}")
    for rid in expect.get("matched_include", []):
        if rid not in ids:
            out.append(f"matched_include: {rid!r} did not match (matched: {ids})")
    for rid in expect.get("not_matched", []):
        if rid in ids:
            out.append(f"not_matched: {rid!r} matched")
    if "redact" in expect and rec["redact"] != expect["redact"]:
        out.append(f"redact: expected {expect['redact']}, got {rec['redact']}")
    if "limits" in expect:
        got_limits = sorted(x["id"] for x in rec["limits"])
        if got_limits != sorted(expect["limits"]):
            out.append(f"limits: expected {sorted(expect['limits'])}, got {got_limits}")
    for key, want in (expect.get("response") or {}).items():
        got = rec["response"][key]
        if key in ("block", "rules"):
            got, want = sorted(got), sorted(want)
        if got != want:
            out.append(f"response.{key}: expected {want!r}, got {got!r}")
    return out


def run_test_file(path: str | Path, *, policy_cache: dict[Path, Policy] | None = None) -> list[CaseResult]:
    """Run one test file. Problems with the file itself (or its policy) raise PolicyError."""
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        doc = load_yaml(text)
    except OSError as exc:
        raise PolicyError(f"{shown}: cannot read test file: {exc.strerror or type(exc).__name__}") from None
    except YAMLSourceError as exc:
        raise PolicyError(f"{shown}:{exc.line}: {exc.message}" if exc.line else f"{shown}: {exc.message}") from None
    problems = [f"{shown}:{line_of(doc, list(e.absolute_path))}: {format_path(e.absolute_path)}: {e.message[:300]}"
                for e in jsonschema.Draft202012Validator(TEST_SCHEMA).iter_errors(doc)]
    if problems:
        raise PolicyError(problems)
    policy_path = (path.parent / doc["policy"]).resolve()
    cache = policy_cache if policy_cache is not None else {}
    if policy_path not in cache:
        cache[policy_path] = load_policy(policy_path)
    policy = cache[policy_path]
    base = doc.get("base_input") or {}
    results = []
    for i, case in enumerate(doc["cases"]):
        r = CaseResult(shown, line_of(doc, ["cases", i]), case["name"])
        decision = policy.evaluate(deep_merge(base, case["input"]))
        r.decision = decision
        r.failures = check_expectations(decision, _plain(case["expect"]))
        results.append(r)
    return results


def collect_test_files(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.rglob("*.yaml") if x.is_file()))
        else:
            out.append(p)
    return out
