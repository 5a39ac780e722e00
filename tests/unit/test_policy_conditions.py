"""Condition semantics the mutation run found unpinned (docs/testing.md): label thresholds
(min_confidence, min_count with any/all/none), several exact values in one list, actors, a rule
whose second condition fails, and the observe detail only on observed decisions."""

from __future__ import annotations

from tests.unit.test_policy_eval import P, inp, lab

POLICY = P("""
    id: conditions
    rules:
      - {id: permit-dev, effect: permit, when: {roles: [dev]}}
      - {id: deny-confident-pci, effect: deny, when: {labels: {any: [pci.card_number], min_confidence: 80}},
         code: pci, reason: card}
      - {id: deny-repeated-email, effect: deny, when: {labels: {all: [pii.email], min_count: 3}},
         code: emails, reason: many e-mails}
      - {id: deny-listed-without-phones, effect: deny, when: {subjects: [mallory, trudy],
         labels: {none: [pii.phone], min_count: 2}}, code: no_phone, reason: listed}
      - {id: deny-agents, effect: deny, when: {actors: ["agent:*"]}, code: agent, reason: agents}
      - {id: deny-big-dev, effect: deny, when: {roles: [dev], tokens_over: 1000}, code: big, reason: big}
""")


def outcome(**over) -> tuple[str, str]:
    d = POLICY.evaluate(inp(**over))
    return d.outcome, d.code


def test_min_confidence_is_a_threshold_on_any():
    assert outcome(classification=lab("pci.card_number", conf=50))[0] == "permit"
    assert outcome(classification=lab("pci.card_number", conf=90)) == ("deny", "pci")
    assert outcome(classification=lab("pci.card_number", conf=80)) == ("deny", "pci")   # inclusive


def test_min_count_is_a_threshold_on_all():
    assert outcome(classification=lab("pii.email", count=2))[0] == "permit"
    assert outcome(classification=lab("pii.email", count=3)) == ("deny", "emails")


def test_none_with_min_count_holds_until_the_label_reaches_the_count():
    mallory = {"subject": "mallory"}
    assert outcome(identity=mallory) == ("deny", "no_phone")
    assert outcome(identity=mallory, classification=lab("pii.phone", count=1)) == ("deny", "no_phone")
    assert outcome(identity=mallory, classification=lab("pii.phone", count=2))[0] == "permit"


def test_several_exact_values_in_one_list_each_match():
    assert outcome(identity={"subject": "trudy"}) == ("deny", "no_phone")
    assert outcome(identity={"subject": "mallory"}) == ("deny", "no_phone")
    assert outcome(identity={"subject": "alice"})[0] == "permit"


def test_actors_match_one_or_several_and_no_actor_is_no_match():
    assert outcome(identity={"actor": []})[0] == "permit"
    assert outcome(identity={"actor": ["agent:planner"]}) == ("deny", "agent")
    assert outcome(identity={"actor": ["user:bob", "agent:planner"]}) == ("deny", "agent")
    assert outcome(identity={"actor": ["user:bob"]})[0] == "permit"


def test_every_condition_of_a_rule_must_hold():
    assert outcome(request={"estimated_tokens": 20})[0] == "permit"       # roles hold, tokens do not
    assert outcome(request={"estimated_tokens": 2000}) == ("deny", "big")


def test_only_observed_decisions_carry_the_observed_detail():
    d = POLICY.evaluate(inp(classification=lab("pci.card_number", conf=90)))
    assert d.outcome == "deny" and "observed" not in d.to_record().get("detail", {})
    observe = P("""
        id: observe
        routes:
          - {id: trial, apis: [chat], mode: observe}
        rules:
          - {id: deny-pci, effect: deny, when: {labels: {any: [pci.card_number]}}, code: pci, reason: card}
    """)
    d = observe.evaluate(inp(classification=lab("pci.card_number")))
    assert d.outcome == "observe" and d.to_record()["detail"]["observed"]["outcome"] == "deny"


def test_a_rate_limit_applies_only_where_its_conditions_hold():
    limited = P("""
        id: limited
        rules:
          - {id: permit-dev-ops, effect: permit, when: {roles: [dev, ops]}}
        rate_limits:
          - {id: tiny, key: [subject], requests: 3, window_s: 60, when: {subjects: ["limited-*"], roles: [dev]}}
    """)
    assert [x["id"] for x in limited.evaluate(inp(identity={"subject": "limited-bob"})).limits] == ["tiny"]
    assert limited.evaluate(inp(identity={"subject": "alice"})).limits == ()
    # Both conditions must hold: permitted, the subject matches, the role does not.
    d = limited.evaluate(inp(identity={"subject": "limited-eve", "roles": ["ops"]}))
    assert d.outcome == "permit" and d.limits == ()


def test_an_actor_condition_beside_an_indexed_one_holds_for_a_request_without_an_actor():
    """The rule is found through its role (the index), so its actor condition is evaluated on a
    request with no actor at all: no match, and no error."""
    policy = P("""
        id: agents
        rules:
          - {id: permit-dev, effect: permit, when: {roles: [dev]}}
          - {id: deny-dev-agents, effect: deny, when: {roles: [dev], actors: ["agent:*"]}, code: agent, reason: x}
    """)
    assert policy.evaluate(inp(identity={"actor": []})).outcome == "permit"
    assert policy.evaluate(inp(identity={"actor": ["agent:x"]})).code == "agent"
    assert policy.evaluate(inp(identity={"actor": ["user:bob", "agent:x"]})).code == "agent"


def test_a_multiplex_route_records_the_shadow_outcome_beside_a_denial_too():
    from tests.unit.test_policy_eval import MODES

    d = MODES.evaluate(inp(route={"api": "responses"},
                           classification={**lab("pci.card_number"), **lab("pii.email")}))
    assert (d.outcome, d.mode) == ("deny", "multiplex")
    assert d.observed == d.to_record()["detail"]["shadow"]["outcome"] == "deny"


WHY = P("""
    id: why
    rules:
      - {id: permit-all, effect: permit}
      - {id: one-label, effect: deny, when: {labels: {any: [pci.card_number]}}, code: one, reason: one}
      - {id: two-labels, effect: deny, when: {labels: {any: [pii.email, pii.phone]}}, code: two, reason: two}
      - {id: max-tokens, effect: deny, when: {max_tokens_over: 1000}, code: big, reason: big}
""")


def _why(decision, rule: str) -> list[str]:
    return next(m["why"] for m in decision.to_record()["matched"] if m["rule"] == rule)


def test_a_label_match_says_which_labels_were_present():
    """The record explains a match with the labels found, never their values (found by `make
    mutation`: the one-label wording swapped with the several-labels one passed every test)."""
    one = WHY.evaluate(inp(classification=lab("pci.card_number")))
    assert _why(one, "one-label") == ["label pci.card_number present"]
    two = WHY.evaluate(inp(classification=lab("pii.phone")))
    assert _why(two, "two-labels") == ["labels present: pii.phone"]


def test_max_tokens_over_is_a_threshold_not_an_inequality():
    """Found by `make mutation`: `max_tokens is not n` for `> n` matched every other value."""
    assert WHY.evaluate(inp(request={"max_tokens": 500})).outcome == "permit"
    assert WHY.evaluate(inp(request={"max_tokens": 1000})).outcome == "permit"
    assert WHY.evaluate(inp(request={"max_tokens": 1001})).code == "big"


COUNTS = P("""
    id: counts
    rules:
      - {id: permit-all, effect: permit}
      - {id: twice, effect: deny, when: {labels: {any: [pii.email], min_count: 2}}, code: twice, reason: twice}
      - {id: by-surface, effect: deny, when: {surfaces: [anthropic.messages]}, code: surface, reason: surface}
      - {id: all-scopes, effect: deny, when: {scopes_all: [admin, billing]}, code: scopes, reason: scopes}
""")


def test_min_count_on_any_is_a_threshold_counted_and_not_a_presence():
    """Found by `make mutation`: min_count 2 taken as plain presence, or as an exact count."""
    assert COUNTS.evaluate(inp(classification=lab("pii.email", count=1))).outcome == "permit"
    assert COUNTS.evaluate(inp(classification=lab("pii.email", count=2))).code == "twice"
    assert COUNTS.evaluate(inp(classification=lab("pii.email", count=3))).code == "twice"


def test_a_surface_condition_reads_the_route_surface():
    """Found by `make mutation`: every surface read as "unknown" passed every test."""
    assert COUNTS.evaluate(inp()).outcome == "permit"
    assert COUNTS.evaluate(inp(route={"surface": "anthropic.messages"})).code == "surface"


def test_scopes_all_holds_for_exactly_those_scopes_and_for_more():
    assert COUNTS.evaluate(inp(identity={"scopes": ["admin"]})).outcome == "permit"
    assert COUNTS.evaluate(inp(identity={"scopes": ["admin", "billing"]})).code == "scopes"
    assert COUNTS.evaluate(inp(identity={"scopes": ["admin", "billing", "read"]})).code == "scopes"


def test_a_min_confidence_of_one_is_not_plain_presence():
    """Found by `make mutation`: min_confidence 1 taken as "present at all" passed every test."""
    p = P("""
        id: conf
        rules:
          - {id: permit-all, effect: permit}
          - {id: sure, effect: deny, when: {labels: {any: [pii.email], min_confidence: 1}}, code: sure, reason: sure}
    """)
    assert p.evaluate(inp(classification=lab("pii.email", conf=0))).outcome == "permit"
    assert p.evaluate(inp(classification=lab("pii.email", conf=1))).code == "sure"


def test_a_label_given_without_a_confidence_is_taken_as_certain():
    """A policy test case (docs/policy.md, "Policy tests") may list a label with only its count,
    or with nothing: it is read as found with full confidence (100) once, so a rule asking for
    `min_confidence: 100` holds (found by `make mutation`: a default of 99 passed every test)."""
    p = P("""
        id: certain
        rules:
          - {id: permit-all, effect: permit}
          - {id: certain, effect: deny, when: {labels: {any: [pii.email], min_confidence: 100}}, code: certain, reason: certain}
    """)
    assert p.evaluate(inp(classification={"pii.email": {"count": 1}})).code == "certain"
    assert p.evaluate(inp(classification={"pii.email": {}})).code == "certain"
    assert p.evaluate(inp(classification=lab("pii.email", conf=99))).outcome == "permit"
