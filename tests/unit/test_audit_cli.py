"""One audit CLI: the store first for every subcommand, filters, missing things said so, JSON
output; what-if replay of a recorded store under a candidate policy whose effect is known; and
`policy explain` on a stored decision record as `audit show` prints it."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from ext_proc.audit.config import AuditConfig
from ext_proc.audit.log import open_audit_log
from ext_proc.cli.audit import run
from ext_proc.cli.policy import run as policy_run
from ext_proc.policy.store import load_policy

CURRENT = """\
id: current
rules:
  - {id: permit-staff, effect: permit, when: {roles: [dev, analyst]}}
"""
# The candidate adds one rule: analysts may no longer send e-mail addresses. Its effect on the
# recorded traffic is known in advance: exactly the analysts' requests labelled pii.email.
CANDIDATE = CURRENT + """\
  - {id: deny-analyst-email, effect: deny, priority: 5, when: {roles: [analyst], labels: {any: [pii.email]}},
     code: analyst_pii, reason: analysts may not send e-mail addresses}
"""


def _input(subject: str, role: str, labels: list[str], tenant: str = "acme") -> dict:
    return {"identity": {"subject": subject, "issuer": "https://idp", "auth_method": "jwt", "roles": [role],
                         "groups": [], "tenant": tenant, "scopes": [], "actor": []},
            "route": {"path": "/v1/chat/completions", "surface": "openai.chat_completions", "api": "chat",
                      "provider": "openai", "inspectable": True},
            "model": "gpt-4o-mini",
            "classification": {x: {"count": 1, "max_confidence": 90} for x in labels},
            "request": {"bytes": 100, "estimated_tokens": 20, "max_tokens": None, "stream": False}}


TRAFFIC = [  # (request id, subject, role, labels, tenant, timestamp_ms)
    ("q1", "alice", "dev", [], "acme", 1_000),
    ("q2", "alice", "dev", ["pii.email"], "acme", 2_000),
    ("q3", "bob", "analyst", [], "acme", 3_000),
    ("q4", "bob", "analyst", ["pii.email"], "acme", 4_000),
    ("q5", "carol", "analyst", ["pii.email", "pii.phone"], "globex", 5_000),
    ("q6", "carol", "analyst", ["pii.phone"], "globex", 6_000),
    ("q7", "dave", "guest", ["pii.email"], "globex", 7_000),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whatif")
    (tmp / "current.yaml").write_text(CURRENT)
    (tmp / "candidate.yaml").write_text(CANDIDATE)
    policy = load_policy(tmp / "current.yaml")

    async def go():
        log = open_audit_log(AuditConfig.from_dict({"dir": str(tmp / "audit"), "signing_key": str(tmp / "k.pem")}), writer_id="rec")
        await log.start()
        for rid, subject, role, labels, tenant, ts in TRAFFIC:
            inp = _input(subject, role, labels, tenant)
            d = policy.evaluate(inp).to_record()
            await log.commit({"kind": "decision", "request_id": rid, "timestamp_ms": ts, "input": inp,
                              "identity": inp["identity"], "route": inp["route"],
                              "classification": {"summary": inp["classification"]},
                              "policy": d["policy"], "decision": d})
            await log.commit({"kind": "outcome", "request_id": rid, "timestamp_ms": ts + 1, "status": 200})
        await log.close()
    asyncio.run(go())
    return tmp


def _run(argv, fn=run):
    out, err = io.StringIO(), io.StringIO()
    rc = fn(argv, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_what_if_replay_reports_exactly_the_known_effect(recorded):
    rc, out, _ = _run(["replay", str(recorded / "audit"), "--policy", str(recorded / "candidate.yaml"), "--json"])
    rep = json.loads(out)
    assert rc == 1                                       # a change: the CI gate refuses by default
    assert (rep["replayed"], rep["changed"], rep["stricter"], rep["looser"]) == (7, 2, 2, 0)
    assert rep["transitions"] == {"permit -> deny": 2}
    assert rep["by_rule"] == {"deny-analyst-email": 2}
    assert rep["by_role"] == {"analyst": 2}
    assert rep["by_label"] == {"pii.email": 2, "pii.phone": 1}
    assert rep["by_route"] == {"default": 2}          # the policy route the candidate chose
    assert rep["samples"] == {"permit -> deny": ["q4", "q5"]}
    # The gate: only looser changes fail this job; the unchanged policy changes nothing.
    assert _run(["replay", str(recorded / "audit"), "--policy", str(recorded / "candidate.yaml"),
                 "--fail-on", "looser"])[0] == 0
    rc, out, _ = _run(["replay", str(recorded / "audit"), "--policy", str(recorded / "current.yaml")])
    assert rc == 0 and "0 would change" in out


def test_what_if_replay_with_filters(recorded):
    rc, out, _ = _run(["replay", str(recorded / "audit"), "--policy", str(recorded / "candidate.yaml"),
                       "--tenant", "globex", "--json"])
    rep = json.loads(out)
    assert (rep["replayed"], rep["changed"], rep["samples"]) == (3, 1, {"permit -> deny": ["q5"]})


@pytest.mark.parametrize("args,expected", [
    ([], {"q1", "q2", "q3", "q4", "q5", "q6", "q7"}),
    (["--subject", "bob"], {"q3", "q4"}),
    (["--tenant", "globex"], {"q5", "q6", "q7"}),
    (["--label", "pii.phone"], {"q5", "q6"}),
    (["--decision", "deny"], {"q7"}),
    (["--route", "/v1/chat/completions", "--since", "3000", "--until", "5000"], {"q3", "q4"}),
    (["--since", "1970-01-01T00:00:06Z"], {"q6", "q7"}),
])
def test_export_filters(recorded, args, expected):
    rc, out, _ = _run(["export", str(recorded / "audit"), *args])
    recs = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and {r["request_id"] for r in recs if r.get("request_id")} == expected
    if args and args[0] != "--since":
        # A request filter brings the outcome records of the matching requests along.
        assert {r["request_id"] for r in recs if r["kind"] == "outcome"} == expected


def test_missing_store_and_missing_record_say_so(recorded, tmp_path):
    for cmd in (["show", str(tmp_path / "nope"), "q1"], ["export", str(tmp_path / "nope")],
                ["checkpoint", str(tmp_path / "nope")]):
        rc, out, err = _run(cmd)
        assert rc != 0 and "not found" in (out + err), cmd
    rc, _, err = _run(["show", str(recorded / "audit"), "no-such-request"])
    assert rc == 1 and "no record of request no-such-request" in err
    rc, out, _ = _run(["verify", str(tmp_path / "nope")])
    assert rc == 1 and "not found" in out
    rc, out, _ = _run(["verify", str(tmp_path / "nope"), "--json"])
    assert rc == 1 and json.loads(out)["ok"] is False


def test_verify_json_and_quiet_progress_when_piped(recorded):
    rc, out, err = _run(["verify", str(recorded / "audit"), "--json"])
    rep = json.loads(out)
    assert rc == 0 and rep["ok"] and rep["records"] == 16 and rep["segment_status"][0]["closed"]
    assert err == ""      # a StringIO is not a terminal: no progress
    rc, _, err = _run(["verify", str(recorded / "audit"), "--progress"])
    assert rc == 0 and "records/s" in err and "ETA" in err


def test_policy_explain_takes_a_stored_decision_record_as_audit_show_prints_it(recorded, tmp_path):
    rc, out, _ = _run(["show", str(recorded / "audit"), "q4"])
    decision = json.loads(out.split("\n}\n")[0] + "\n}")
    assert rc == 0 and decision["kind"] == "decision"
    (tmp_path / "record.json").write_text(json.dumps(decision))
    rc, out, err = _run(["explain", "--policy", str(recorded / "candidate.yaml"), "--input",
                         f"@{tmp_path / 'record.json'}", "--json"], fn=policy_run)
    assert rc == 0, err
    assert json.loads(out)["code"] == "analyst_pii"


def test_show_takes_the_local_stack_store_by_default(recorded, monkeypatch):
    monkeypatch.chdir(recorded)      # var/audit relative to the working directory, as `up` lays it out
    (recorded / "var").mkdir(exist_ok=True)
    if not (recorded / "var" / "audit").exists():
        (recorded / "var" / "audit").symlink_to(recorded / "audit")
    rc, out, _ = _run(["show", "q3"])
    assert rc == 0 and '"request_id": "q3"' in out


def test_what_if_counts_only_named_rules():
    # A matched entry without a rule name (a hand-edited or foreign record) is no rule to count;
    # mixed with named ones it used to make sorted() raise TypeError.
    from ext_proc.audit.query import what_if

    recorded = [{"kind": "decision", "request_id": "r1", "input": {"route": {"path": "/v1/chat/completions"}},
                 "decision": {"outcome": "permit", "matched": [{"effect": "permit"}]}}]
    rep = what_if(recorded, lambda inp: {"outcome": "deny", "status": 403, "code": "blocked",
                                         "matched": [{"rule": "block-all", "effect": "deny"}]}, {})
    assert rep.changed == 1 and rep.stricter == 1
    assert dict(rep.by_rule) == {"block-all": 1} and rep.samples == {"permit -> deny": ["r1"]}
