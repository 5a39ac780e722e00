"""Policy effects as one table (ext_proc/policy/effects.py): the precedence it gives is today's
(deny > redact > permit, observe overriding only from a strictly higher priority), evaluation and
the compiler read it, and everything that lists the effects elsewhere agrees with it."""

from __future__ import annotations

import json
import textwrap

import pytest

from ext_proc.audit.canonical import check_canonical
from ext_proc.policy import evaluation, load_policy_text
from ext_proc.policy.compile import SCHEMA_PATH, PolicyError
from ext_proc.policy.effects import OVERRIDES, PRECEDENCE, ROWS, Effect, ResponseSide, misplaced_key_message
from ext_proc.policy.testing import TEST_SCHEMA


def P(text: str):
    return load_policy_text(textwrap.dedent(text), source="t.yaml")


def inp(labels=(), roles=("dev",)) -> dict:
    return {"identity": {"subject": "alice", "roles": list(roles)},
            "route": {"path": "/v1/chat/completions", "api": "chat", "inspectable": True},
            "model": "gpt-4o-mini", "classification": {x: {"count": 1, "max_confidence": 90} for x in labels},
            "request": {"bytes": 10, "estimated_tokens": 2, "max_tokens": None, "stream": False}}


# One rule of every effect, each matching only when its label is present (permit: always).
# The lower effects get the higher priorities: priority never crosses effects.
EVERY_EFFECT = P("""
    id: every-effect
    rules:
      - {id: p, effect: permit, priority: 30, when: {roles: [dev]}}
      - {id: r, effect: redact, priority: 20, redact: {pii.email: mask}}
      - {id: d, effect: deny, priority: 10, when: {labels: {any: [pci.card_number]}}, code: pci}
      - {id: o, effect: observe, priority: 5, when: {labels: {any: [pii.phone]}}}
""")


def test_the_table_orders_deny_over_redact_over_permit_and_observe_overrides():
    assert [row.effect for row in PRECEDENCE] == [Effect.DENY, Effect.REDACT, Effect.PERMIT]
    assert [row.effect for row in OVERRIDES] == [Effect.OBSERVE]
    assert set(ROWS) == set(Effect)
    assert [row.releases for row in PRECEDENCE] == [False, True, True] and ROWS[Effect.OBSERVE].releases
    assert {e: ROWS[e].response for e in Effect} == {
        Effect.DENY: ResponseSide.NONE, Effect.REDACT: ResponseSide.ALL, Effect.PERMIT: ResponseSide.ALL,
        Effect.OBSERVE: ResponseSide.MARKER}


@pytest.mark.parametrize("labels, outcome, code", [
    ((), "permit", "policy_permitted"),
    (("pii.email",), "redact", "policy_redacted"),                  # redact over permit (priority 30)
    (("pii.email", "pci.card_number"), "deny", "pci"),              # deny over redact (priority 20)
    (("pii.phone",), "permit", "policy_permitted"),                 # observe (5) is below permit (30)
])
def test_evaluation_follows_the_table(labels, outcome, code):
    d = EVERY_EFFECT.evaluate(inp(labels))
    assert (d.outcome, d.code, d.observed) == (outcome, code, None)


def test_observe_overrides_only_from_a_strictly_higher_priority():
    def policy(observe_priority: int):
        return P(f"""
            id: t
            rules:
              - {{id: d, effect: deny, priority: 10, when: {{labels: {{any: [pci.card_number]}}}}}}
              - {{id: o, effect: observe, priority: {observe_priority}}}
        """)
    card = inp(("pci.card_number",))
    assert (policy(11).evaluate(card).outcome, policy(11).evaluate(card).observed) == ("observe", "deny")
    assert (policy(10).evaluate(card).outcome, policy(10).evaluate(card).observed) == ("deny", None)
    # With nothing matched the default deny counts as lowest: any observe rule overrides it.
    assert policy(-5).evaluate(inp()).outcome == "observe"


def test_evaluation_reads_the_precedence_from_the_table(monkeypatch):
    """Reordering the rows reorders the outcome: nothing else in evaluation ranks effects."""
    both = inp(("pii.email", "pci.card_number"))
    assert EVERY_EFFECT.evaluate(both).outcome == "deny"
    monkeypatch.setattr(evaluation, "PRECEDENCE", tuple(reversed(PRECEDENCE)))
    d = EVERY_EFFECT.evaluate(both)
    assert (d.outcome, d.code, d.redact, d.releases) == ("permit", "policy_permitted", {}, True)
    monkeypatch.setattr(evaluation, "PRECEDENCE", (ROWS[Effect.REDACT], ROWS[Effect.DENY], ROWS[Effect.PERMIT]))
    d = EVERY_EFFECT.evaluate(both)
    assert (d.outcome, d.redact) == ("redact", {"pii.email": "mask"})


def test_decisions_release_exactly_what_the_table_releases():
    for labels, releases in (((), True), (("pii.email",), True), (("pci.card_number",), False)):
        d = EVERY_EFFECT.evaluate(inp(labels))
        assert d.releases is releases is ROWS[d.outcome].releases
    d = EVERY_EFFECT.evaluate(inp(("pii.email",))).denied("unredactable_location", "x")
    assert d.outcome == Effect.DENY and not d.releases


def test_records_carry_plain_strings_that_the_audit_accepts():
    for labels in ((), ("pii.email",), ("pci.card_number",), ("pii.phone",)):
        rec = EVERY_EFFECT.evaluate(inp(labels)).to_record()
        check_canonical(rec)                        # refuses anything but exact str/int/bool/None/list/dict
        assert type(rec["outcome"]) is str and all(type(m["effect"]) is str for m in rec["matched"])
    # A pass through JSON (what a replay reads back) is the same record.
    rec = EVERY_EFFECT.evaluate(inp(("pii.phone", "pii.email"))).to_record()
    assert json.loads(json.dumps(rec)) == rec


def test_the_schema_and_the_test_format_list_the_effects_of_the_table():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$defs"]["rule"]["properties"]["effect"]["enum"] == [e.value for e in Effect]
    expect = TEST_SCHEMA["properties"]["cases"]["items"]["properties"]["expect"]["properties"]
    assert expect["outcome"]["enum"] == [e.value for e in Effect]
    assert expect["observed"]["enum"] == [e.value for e in Effect] + [None]


def test_what_if_replay_ranks_strictness_in_the_tables_order():
    from ext_proc.audit.query import _STRICTNESS

    assert set(_STRICTNESS) == set(Effect)
    ranks = [_STRICTNESS[row.effect] for row in PRECEDENCE]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)


@pytest.mark.parametrize("key, effect, message", [
    ("status", "permit", "'status' only applies to deny rules"),
    ("code", "redact", "'code' only applies to deny rules"),
    ("reason", "observe", "'reason' only applies to deny rules"),
    ("redact", "permit", "'redact' only applies to redact rules"),
    ("max_tokens", "deny", "'max_tokens' does not apply to deny rules"),
    ("serve_with", "observe", "'serve_with' applies to permit and redact rules"),
    ("serve_with", "deny", "'serve_with' applies to permit and redact rules"),
])
def test_the_compiler_refuses_keys_the_effect_does_not_take(key, effect, message):
    value = {"status": 400, "code": "x", "reason": "x", "redact": {"pii.email": "mask"}, "max_tokens": 5,
             "serve_with": "m"}[key]
    rule = {"id": "a", "effect": effect, key: value}
    if effect == "redact":
        rule["redact"] = {"pii.email": "mask"}
    with pytest.raises(PolicyError) as exc:
        load_policy_text(json.dumps({"id": "t", "rules": [rule]}), source="t.yaml")
    assert exc.value.problems == [f"t.yaml:1: rules[0].{key}: {message}"]
    assert misplaced_key_message(key) == message


def test_a_redact_rule_without_a_map_is_refused():
    with pytest.raises(PolicyError) as exc:
        load_policy_text('{"id": "t", "rules": [{"id": "a", "effect": "redact", "status": 400}]}', source="t.yaml")
    assert exc.value.problems == ["t.yaml:1: rules[0].status: 'status' only applies to deny rules",
                                  "t.yaml:1: rules[0]: a redact rule needs a 'redact' map (label: strategy)"]
