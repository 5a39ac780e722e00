"""Every shipped policy checks clean and every policy test file under policies/tests passes;
the test runner and the CLI catch what they should."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest

from ext_proc.cli.policy import run
from ext_proc.policy import PolicyError, load_policy
from ext_proc.policy.testing import run_test_file

ROOT = Path(__file__).resolve().parents[2] / "policies"
POLICIES = [ROOT / "default.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]
TEST_FILES = sorted((ROOT / "tests").glob("*.yaml"))


def test_there_are_policies_and_tests():
    assert (ROOT / "default.yaml") in POLICIES and (ROOT / "examples" / "bank.yaml") in POLICIES
    assert len(TEST_FILES) >= 2


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_shipped_policy_loads(path):
    assert load_policy(path).id


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_every_shipped_policy_has_tests(path):
    covered = set()
    for t in TEST_FILES:
        import yaml

        covered.add((t.parent / yaml.safe_load(t.read_text())["policy"]).resolve())
    assert path.resolve() in covered


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_policy_test_file(path):
    results = run_test_file(path)
    assert results
    failures = [f"{r.where()} {r.name}: {'; '.join(r.failures)}" for r in results if not r.ok]
    assert not failures, "\n".join(failures)


def make_tests(tmp_path: Path, expect: str) -> Path:
    (tmp_path / "p.yaml").write_text("id: t\nrules:\n  - {id: p, effect: permit, when: {roles: [dev]}}\n")
    f = tmp_path / "t.yaml"
    f.write_text(textwrap.dedent(f"""
        policy: p.yaml
        base_input: {{identity: {{roles: [dev]}}, route: {{path: /v1/chat/completions, api: chat}}}}
        cases:
          - name: the case
            input: {{}}
            expect: {expect}
        """))
    return f


@pytest.mark.parametrize("expect", [
    "{outcome: deny}", "{matched: [other]}", "{matched_include: [q]}", "{not_matched: [p]}",
    "{redact: {pii.email: mask}}", "{code: nope}", "{status: 403}", "{limits: [x]}",
    "{response: {marker_header: {name: x-a, value: b}}}", "{max_tokens_cap: 5}", "{observed: deny}",
])
def test_runner_detects_wrong_expectations(tmp_path, expect):
    results = run_test_file(make_tests(tmp_path, expect))
    assert len(results) == 1 and not results[0].ok and results[0].line == 5


def test_runner_passes_right_expectations(tmp_path):
    results = run_test_file(make_tests(tmp_path, "{outcome: permit, matched: [p], code: policy_permitted}"))
    assert results[0].ok, results[0].failures


def test_runner_rejects_malformed_test_file(tmp_path):
    f = make_tests(tmp_path, "{outcom: permit}")
    with pytest.raises(PolicyError, match="t.yaml"):
        run_test_file(f)


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = run(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_check_ok_and_errors(tmp_path):
    rc, out, _ = cli("check", str(ROOT / "default.yaml"))
    assert rc == 0 and "version=" in out and load_policy(ROOT / "default.yaml").version in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: t\nrules:\n  - {id: r, effect: permit, when: {rolez: [x]}}\n")
    rc, _, err = cli("check", str(bad))
    assert rc == 1 and f"{bad}:3: rules[0].when.rolez: unknown key 'rolez'" in err


def test_cli_test(tmp_path):
    rc, out, _ = cli("test", str(ROOT / "tests"))
    assert rc == 0 and " 0 failed" in out
    rc, out, _ = cli("test", str(make_tests(tmp_path, "{outcome: deny}")))
    assert rc == 1 and "FAIL" in out and "outcome: expected 'deny', got 'permit'" in out
    rc, _, err = cli("test", str(tmp_path / "none"))
    assert rc == 1


def test_cli_explain(tmp_path):
    inp = {"identity": {"subject": "a", "roles": ["developer"]},
           "route": {"path": "/v1/chat/completions", "api": "chat", "surface": "openai.chat_completions",
                     "provider": "openai", "inspectable": True},
           "model": "gpt-4o-mini", "classification": {"pii.email": {"count": 1, "max_confidence": 95}},
           "request": {"bytes": 10, "estimated_tokens": 3, "max_tokens": None, "stream": False}}
    rc, out, _ = cli("explain", "--policy", str(ROOT / "default.yaml"), "--input", json.dumps(inp))
    assert rc == 0 and "outcome  redact" in out and "redact-pii" in out and "roles include one of" in out
    # A decision record (with the input under "input") replays as is, from a file.
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps({"request_id": "r1", "input": inp}))
    rc, out, _ = cli("explain", "--policy", str(ROOT / "default.yaml"), "--input", f"@{rec}", "--json")
    assert rc == 0 and json.loads(out)["outcome"] == "redact"
    rc, _, err = cli("explain", "--policy", str(ROOT / "default.yaml"), "--input", "{not json")
    assert rc == 2 and "cannot read input" in err


def test_cli_usage_errors():
    assert cli()[0] == 2
    assert cli("frobnicate")[0] == 2
