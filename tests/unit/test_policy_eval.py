"""Evaluation semantics: combination, priorities, modes, role constraints, response side, limits."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest

from ext_proc.policy import Decision, load_policy_text


def P(text: str):
    return load_policy_text(textwrap.dedent(text), source="t.yaml")


def inp(**over) -> dict:
    base = {
        "identity": {"subject": "alice", "issuer": "https://idp", "auth_method": "jwt", "roles": ["dev"],
                     "groups": ["eng"], "tenant": "acme", "scopes": [], "actor": []},
        "route": {"path": "/v1/chat/completions", "surface": "openai.chat_completions", "api": "chat",
                  "provider": "openai", "inspectable": True},
        "model": "gpt-4o-mini",
        "classification": {},
        "request": {"bytes": 100, "estimated_tokens": 20, "max_tokens": None, "stream": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and k in ("identity", "route", "request"):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return base


def lab(*labels, count=1, conf=90):
    return {x: {"count": count, "max_confidence": conf} for x in labels}


def ids(d: Decision) -> list[str]:
    return [m["rule"] for m in d.matched]


COMBO = P("""
    id: combo
    rules:
      - {id: permit-dev, effect: permit, when: {roles: [dev]}}
      - {id: redact-pii, effect: redact, when: {roles: [dev]}, redact: {"pii.*": mask}}
      - {id: deny-pci-low, effect: deny, priority: 1, when: {labels: {any: [pci.card_number]}},
         code: pci_low, reason: low}
      - {id: deny-pci-high, effect: deny, priority: 5, status: 400, when: {labels: {any: [pci.card_number]}},
         code: pci_high, reason: high}
      - {id: deny-pci-high-tie, effect: deny, priority: 5, when: {labels: {any: [pci.card_number]}},
         code: pci_tie, reason: tie}
""")


def test_default_deny():
    d = COMBO.evaluate(inp(identity={"roles": []}))
    assert (d.outcome, d.status, d.code) == ("deny", 403, "policy_denied")
    assert ids(d) == ["$default"]


def test_permit():
    d = COMBO.evaluate(inp())
    assert (d.outcome, d.status, d.code) == ("permit", 200, "policy_permitted")
    assert ids(d) == ["permit-dev"] and d.redact == {}


def test_redact_beats_permit_and_only_when_label_present():
    d = COMBO.evaluate(inp(classification=lab("pii.email")))
    assert d.outcome == "redact" and d.redact["pii.email"] == "mask"
    assert set(ids(d)) == {"permit-dev", "redact-pii"}
    assert any("redacts pii.email" in w for m in d.matched for w in m["why"])


def test_deny_beats_redact_priority_then_declaration_order():
    d = COMBO.evaluate(inp(classification=lab("pii.email", "pci.card_number")))
    assert d.outcome == "deny"
    assert (d.code, d.status, d.reason) == ("pci_high", 400, "high")   # priority 5, declared before the tie
    assert set(ids(d)) == {"permit-dev", "redact-pii", "deny-pci-low", "deny-pci-high", "deny-pci-high-tie"}
    assert d.redact == {} and d.max_tokens_cap is None and d.limits == ()


def test_every_match_has_a_reason():
    d = COMBO.evaluate(inp(classification=lab("pci.card_number")))
    for m in d.matched:
        assert m["why"] and all(isinstance(w, str) and w for w in m["why"])
        assert set(m) >= {"rule", "effect", "priority", "why"}


def test_redact_strategy_most_restrictive_wins_and_explicit_beats_glob():
    p = P("""
        id: t
        rules:
          - {id: a, effect: redact, when: {}, redact: {"pii.*": partial, pii.email: hash}}
          - {id: b, effect: redact, when: {}, redact: {pii.phone: remove, pii.email: mask}}
        """)
    d = p.evaluate(inp(classification=lab("pii.email", "pii.phone")))
    assert d.redact["pii.email"] == "mask"        # hash (a) vs mask (b): mask is more restrictive
    assert d.redact["pii.phone"] == "remove"
    assert d.redact["pii.us_ssn"] == "partial"
    p2 = P('id: t\nrules:\n  - {id: a, effect: redact, redact: {"pii.*": remove, pii.email: partial}}\n')
    assert p2.evaluate(inp(classification=lab("pii.email"))).redact["pii.email"] == "partial"


def test_label_thresholds_count_and_confidence():
    p = P("""
        id: t
        rules:
          - {id: ok, effect: permit}
          - {id: many-emails, effect: deny, when: {labels: {any: [pii.email], min_count: 3, min_confidence: 80}}}
          - {id: both, effect: deny, when: {labels: {all: [pii.email, pii.phone]}}}
          - {id: none, effect: deny, when: {labels: {none: ["pii.*"]}, roles: [nobody-but-test]}}
        """)
    assert p.evaluate(inp(classification=lab("pii.email", count=2))).outcome == "permit"
    assert p.evaluate(inp(classification=lab("pii.email", count=3, conf=79))).outcome == "permit"
    assert p.evaluate(inp(classification=lab("pii.email", count=3, conf=80))).code == "policy_denied"
    assert "both" in ids(p.evaluate(inp(classification=lab("pii.email", "pii.phone"))))
    assert "both" not in ids(p.evaluate(inp(classification=lab("pii.email"))))
    d = p.evaluate(inp(identity={"roles": ["nobody-but-test"]}))
    assert "none" in ids(d)
    assert "none" not in ids(p.evaluate(inp(identity={"roles": ["nobody-but-test"]}, classification=lab("pii.ip_address"))))


def test_identity_conditions():
    p = P("""
        id: t
        rules:
          - {id: subj, effect: permit, when: {subjects: ["svc-*"]}}
          - {id: iss, effect: permit, when: {issuers: ["https://partner.*"]}}
          - {id: grp-all, effect: permit, when: {groups_all: [eng, sre]}}
          - {id: tenant, effect: permit, when: {tenants: [globex], auth_methods: [mtls]}}
          - {id: scope, effect: permit, when: {scopes: [llm:write]}}
          - {id: roles-all, effect: permit, when: {roles_all: [a, b]}}
        """)
    none = {"roles": [], "groups": [], "subject": "alice"}
    assert p.evaluate(inp(identity=none)).outcome == "deny"
    assert ids(p.evaluate(inp(identity={**none, "subject": "svc-batch"}))) == ["subj"]
    assert ids(p.evaluate(inp(identity={**none, "issuer": "https://partner.example"}))) == ["iss"]
    assert p.evaluate(inp(identity={**none, "groups": ["eng"]})).outcome == "deny"
    assert ids(p.evaluate(inp(identity={**none, "groups": ["sre", "eng"]}))) == ["grp-all"]
    assert p.evaluate(inp(identity={**none, "tenant": "globex", "auth_method": "jwt"})).outcome == "deny"
    assert ids(p.evaluate(inp(identity={**none, "tenant": "globex", "auth_method": "mtls"}))) == ["tenant"]
    assert ids(p.evaluate(inp(identity={**none, "scopes": ["llm:write"]}))) == ["scope"]
    assert p.evaluate(inp(identity={**none, "roles": ["a"]})).outcome == "deny"
    assert ids(p.evaluate(inp(identity={**none, "roles": ["b", "a"]}))) == ["roles-all"]


def test_actor_conditions_and_unless():
    p = P("""
        id: t
        rules:
          - {id: permit, effect: permit}
          - id: agents-small
            effect: deny
            code: agent_model
            when: {actor: present, model: present}
            unless: {models: ["gpt-4o-mini", "*-haiku*"]}
          - {id: bad-agent, effect: deny, when: {actors: ["rogue-*"]}}
        """)
    assert p.evaluate(inp(model="gpt-4o")).outcome == "permit"
    assert p.evaluate(inp(identity={"actor": ["bot"]}, model="gpt-4o")).code == "agent_model"
    assert p.evaluate(inp(identity={"actor": ["bot"]}, model="claude-3-5-haiku-latest")).outcome == "permit"
    assert p.evaluate(inp(identity={"actor": ["bot"]}, model=None)).outcome == "permit"
    assert ids(p.evaluate(inp(identity={"actor": ["x", "rogue-7"]}))) == ["permit", "bad-agent"]
    # A single string actor is accepted as a chain of one.
    assert p.evaluate(inp(identity={"actor": "rogue-1"})).outcome == "deny"


def test_model_globs_case_insensitive():
    p = P('id: t\nrules:\n  - {id: p, effect: permit}\n  - {id: d, effect: deny, when: {models: ["GPT-4o*"]}}\n')
    assert p.evaluate(inp(model="gpt-4o")).outcome == "deny"
    assert p.evaluate(inp(model="GPT-4O-MINI")).outcome == "deny"
    assert p.evaluate(inp(model="o1")).outcome == "permit"


def test_request_conditions():
    p = P("""
        id: t
        rules:
          - {id: p, effect: permit}
          - {id: big, effect: deny, status: 413, code: too_big, when: {bytes_over: 1000}}
          - {id: tokens, effect: deny, status: 413, code: too_many_tokens, when: {tokens_over: 500}}
          - {id: maxtok, effect: deny, status: 400, code: max_tok, when: {max_tokens_over: 100}}
          - {id: stream, effect: deny, code: no_stream, when: {stream: true, apis: [embeddings]}}
          - {id: uninspectable, effect: deny, code: opaque, when: {inspectable: false}}
        """)
    assert p.evaluate(inp()).outcome == "permit"
    assert p.evaluate(inp(request={"bytes": 1001})).status == 413
    assert p.evaluate(inp(request={"bytes": 1000})).outcome == "permit"
    assert p.evaluate(inp(request={"estimated_tokens": 501})).code == "too_many_tokens"
    assert p.evaluate(inp(request={"max_tokens": 101})).code == "max_tok"
    assert p.evaluate(inp(request={"stream": True})).outcome == "permit"
    assert p.evaluate(inp(request={"stream": True}, route={"api": "embeddings"})).code == "no_stream"
    assert p.evaluate(inp(route={"inspectable": False})).code == "opaque"


ROLES = P("""
    id: t
    roles:
      analyst: {models: ["gpt-4o*"], max_tokens: 1000}
      senior: {models: ["gpt-4o", "o1*"], max_tokens: 4000}
      unlimited: {models: ["*"]}
    rules:
      - {id: p, effect: permit}
      - {id: cap-agents, effect: permit, when: {actor: present}, max_tokens: 500}
""")


def test_role_model_allowlist():
    assert ROLES.evaluate(inp(identity={"roles": ["analyst"]})).outcome == "permit"
    d = ROLES.evaluate(inp(identity={"roles": ["analyst"]}, model="o1-preview"))
    assert (d.outcome, d.code, d.status) == ("deny", "model_not_allowed", 403)
    assert ids(d)[0] == "$roles.models"
    assert ROLES.evaluate(inp(identity={"roles": ["analyst", "senior"]}, model="o1-preview")).outcome == "permit"
    assert ROLES.evaluate(inp(identity={"roles": ["nobody"]})).code == "model_not_allowed"
    # No model named (e.g. listing models): the allowlist does not apply.
    assert ROLES.evaluate(inp(identity={"roles": []}, model=None)).outcome == "permit"


def test_max_tokens_cap_per_role_and_rule():
    d = ROLES.evaluate(inp(identity={"roles": ["analyst"]}))
    assert d.max_tokens_cap == 1000
    d = ROLES.evaluate(inp(identity={"roles": ["analyst", "senior"]}, model="gpt-4o"))
    assert d.max_tokens_cap == 4000                      # roles add up: the most generous allowing role
    d = ROLES.evaluate(inp(identity={"roles": ["analyst", "senior"]}, model="gpt-4o-mini"))
    assert d.max_tokens_cap == 1000                      # only analyst allows gpt-4o-mini
    assert ROLES.evaluate(inp(identity={"roles": ["unlimited"]})).max_tokens_cap is None
    d = ROLES.evaluate(inp(identity={"roles": ["senior", "unlimited"], "actor": ["bot"]}, model="gpt-4o"))
    assert d.max_tokens_cap == 500                       # a rule cap only restricts
    d = ROLES.evaluate(inp(identity={"roles": ["analyst"]}, request={"max_tokens": 1001}))
    assert (d.outcome, d.status, d.code) == ("deny", 400, "max_tokens_exceeded")
    assert ROLES.evaluate(inp(identity={"roles": ["analyst"]}, request={"max_tokens": 1000})).outcome == "permit"


MODES = P("""
    id: t
    routes:
      - {id: trial, paths: ["/v1/embeddings"], mode: observe}
      - {id: pilot, apis: [responses], mode: multiplex}
      - {id: main, apis: [chat, messages]}
    rules:
      - {id: p, effect: permit, when: {roles: [dev]}}
      - {id: deny-pci, effect: deny, priority: 10, when: {labels: {any: ["pci.*"]}}}
      - {id: redact-pii, effect: redact, when: {}, redact: {"pii.*": mask}}
      - {id: shadow-deny-email, effect: deny, shadow: true, when: {labels: {any: [pii.email]}}, code: email}
      - {id: observe-tenant, effect: observe, priority: 5, when: {tenants: [newco]}}
    response_rules:
      - {id: marker, marker_header: {name: x-ledgergate-policy, value: t}}
      - {id: rr, redact: {"secret.*": mask}, block: [secret.private_key]}
    rate_limits:
      - {id: l, key: [subject], requests: 10, window_s: 60}
""")


def test_observe_mode_never_blocks_and_records_enforce_outcome():
    d = MODES.evaluate(inp(route={"path": "/v1/embeddings", "api": "embeddings"}, classification=lab("pci.card_number")))
    assert (d.outcome, d.observed, d.mode, d.status) == ("observe", "deny", "observe", 200)
    assert d.redact == {} and d.max_tokens_cap is None and d.limits == ()
    assert d.response["marker_header"] == {"name": "x-ledgergate-policy", "value": "t"}
    assert d.response["redact"] == {} and d.response["block"] == ()
    assert d.to_record()["detail"]["observed"]["outcome"] == "deny"


def test_observe_rule_shadows_lower_priority_only():
    d = MODES.evaluate(inp(identity={"tenant": "newco"}, classification=lab("pii.email")))
    assert (d.outcome, d.observed) == ("observe", "redact") and d.redact == {}
    d = MODES.evaluate(inp(identity={"tenant": "newco"}, classification=lab("pci.card_number")))
    assert d.outcome == "deny"                   # deny-pci has priority 10 > 5: not shadowed
    d = MODES.evaluate(inp(identity={"tenant": "newco", "roles": []}))
    assert (d.outcome, d.observed) == ("observe", "deny")     # shadows the default deny


def test_multiplex_enforces_normal_rules_and_records_shadow():
    d = MODES.evaluate(inp(route={"api": "responses"}, classification=lab("pii.email")))
    assert (d.outcome, d.observed, d.mode) == ("redact", "deny", "multiplex")
    shadow = [m for m in d.matched if m.get("shadow")]
    assert [m["rule"] for m in shadow] == ["shadow-deny-email"]
    assert d.to_record()["detail"]["shadow"]["code"] == "email"
    # On an enforce route the shadow rule is not evaluated at all.
    d = MODES.evaluate(inp(classification=lab("pii.email")))
    assert d.outcome == "redact" and d.observed is None and "shadow-deny-email" not in ids(d)


def test_shadow_mode_is_the_new_name_of_the_multiplex_route_mode():
    policy = P("""
        id: t2
        routes:
          - {id: pilot, apis: [responses], mode: shadow}
        rules:
          - {id: p, effect: permit, when: {roles: [dev]}}
          - {id: shadow-deny-email, effect: deny, shadow: true, when: {labels: {any: [pii.email]}}, code: email}
    """)
    d = policy.evaluate(inp(route={"api": "responses"}, classification=lab("pii.email")))
    assert (d.outcome, d.observed, d.mode) == ("permit", "deny", "shadow")
    assert [m["rule"] for m in d.matched if m.get("shadow")] == ["shadow-deny-email"]


def test_no_route_denies():
    d = MODES.evaluate(inp(route={"api": "files", "path": "/v1/files"}))
    assert (d.outcome, d.code, d.route) == ("deny", "route_not_allowed", None)


def test_route_first_match_in_declaration_order():
    p = P("""
        id: t
        routes:
          - {id: a, paths: ["/v1/*"], mode: observe}
          - {id: b, paths: ["/v1/chat/*"]}
        rules:
          - {id: p, effect: permit}
        """)
    assert p.evaluate(inp()).route == "a"


def test_response_rules_and_limits_for_permitted():
    d = MODES.evaluate(inp())
    assert d.outcome == "permit"
    assert d.response["redact"]["secret.jwt"] == "mask"
    assert d.response["block"] == ("secret.private_key",)
    assert [x["id"] for x in d.limits] == ["l"]
    lim = d.limits[0]
    assert lim == {"id": "l", "key": ("subject",), "requests": 10, "tokens": None, "window_s": 60,
                   "on_backend_error": "closed", "default_max_tokens": None}


@pytest.mark.parametrize("bad", [
    None, [], "x", {"identity": "alice"}, {"identity": {"roles": "admin"}}, {"identity": {"roles": [1]}},
    {"route": {"inspectable": "yes"}}, {"request": {"bytes": -1}}, {"request": {"bytes": True}},
    {"classification": {"pii.email": {"count": "1"}}}, {"classification": {"pii.email": 3}},
    {"model": 42}, {"request": {"stream": "true"}},
])
def test_malformed_input_fails_closed(bad):
    d = MODES.evaluate(bad)
    assert (d.outcome, d.status, d.code) == ("deny", 500, "policy_input_invalid")
    json.dumps(d.to_record())


def test_evaluate_does_not_mutate_input_and_record_is_json():
    x = inp(classification=lab("pii.email"))
    before = copy.deepcopy(x)
    d = MODES.evaluate(x)
    assert x == before
    rec = d.to_record()
    assert json.loads(json.dumps(rec)) == rec
    assert rec["policy"] == {"id": "t", "version": MODES.version, "label": None}


def test_reason_never_contains_prompt_values():
    d = MODES.evaluate(inp(classification=lab("pci.card_number")))
    assert d.reason and "4111" not in d.reason
    assert all("4111" not in w for m in d.matched for w in m["why"])


def test_no_conditions_rule_and_empty_policy():
    p = P("id: t\n")
    d = p.evaluate(inp())
    assert d.outcome == "deny" and d.route == "default" and ids(d) == ["$default"]


def test_custom_default_deny():
    p = P("id: t\ndefaults: {deny: {status: 404, code: not_here, reason: nothing to see}}\n")
    d = p.evaluate(inp())
    assert (d.status, d.code, d.reason) == (404, "not_here", "nothing to see")


def test_bench_policy_is_fast_enough_smoke():
    # A loose guard (10x the target) so a complexity regression fails CI; bench_policy.py measures.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_policy

    res = bench_policy.run(n_rules=200, iterations=3000, n_inputs=200)
    assert res["p50_us"] < 500, res


SERVE = P("""
    id: serve
    routes: [{id: inference, apis: [chat]}]
    rules:
      - {id: phi-baa, effect: permit, priority: 20, when: {labels: {any: ["phi.*"]}}, serve_with: baa-model}
      - {id: pii-eu, effect: redact, priority: 10, when: {labels: {any: ["pii.*"]}}, redact: {"pii.*": mask},
         serve_with: eu-model}
      - {id: stop-secrets, effect: deny, priority: 30, when: {labels: {any: ["secret.*"]}}}
      - {id: all, effect: permit}
""")


def test_serve_with_comes_from_the_highest_priority_matching_rule():
    assert SERVE.evaluate(inp()).serve_with is None
    assert SERVE.evaluate(inp(classification=lab("pii.email"))).serve_with == "eu-model"
    d = SERVE.evaluate(inp(classification=lab("pii.email", "phi.mrn")))
    assert (d.outcome, d.serve_with) == ("redact", "baa-model") and d.to_record()["serve_with"] == "baa-model"
    assert SERVE.evaluate(inp(classification=lab("phi.mrn", "secret.aws_access_key"))).serve_with is None  # denied


def test_serve_with_is_refused_on_deny_rules():
    from ext_proc.policy import PolicyError
    with pytest.raises(PolicyError, match="serve_with"):
        P("""
            id: bad
            routes: [{id: inference, apis: [chat]}]
            rules: [{id: d, effect: deny, serve_with: m}]
        """)


def test_an_input_that_is_a_mapping_but_not_a_dict_is_evaluated_as_the_dict_would_be():
    """`evaluate` takes any Mapping (a read-only view of the input, say), not only a dict (found
    by `make mutation`: facts.py refusing every non-dict input passed, as every caller passes a
    dict; such an input was then denied with a 500 as a server bug)."""
    from types import MappingProxyType

    d = COMBO.evaluate(MappingProxyType(inp()))
    assert (d.outcome, d.status, d.code) == ("permit", 200, "policy_permitted")
    assert ids(d) == ids(COMBO.evaluate(inp()))
    # What is not a mapping at all is still refused.
    assert COMBO.evaluate(list(inp().items())).code == "policy_input_invalid"  # type: ignore[arg-type]
