"""An observe-mode route applies no limit but records the ones enforcement would have applied; an
enforcing route with an observe rule records none there (found by `make mutation`: the mode test in
Policy.evaluate replaced by `<=`, `is` or `is not` passed every test)."""

from __future__ import annotations

from tests.unit.test_policy_eval import MODES, inp, lab


def test_an_observe_route_records_the_limits_enforcement_would_have_applied():
    d = MODES.evaluate(inp(route={"path": "/v1/embeddings", "api": "embeddings"}, classification=lab("pci.card_number")))
    assert d.mode == "observe" and d.limits == ()
    assert d.to_record()["detail"]["observed"]["limits"] == ["l"]


def test_an_observe_rule_on_an_enforcing_route_lists_no_would_be_limits():
    d = MODES.evaluate(inp(identity={"tenant": "newco"}))
    assert d.outcome == "observe" and d.mode != "observe"
    observed = d.to_record()["detail"].get("observed") or {}
    assert "limits" not in observed, observed


def test_an_observe_rule_on_a_shadow_mode_route_lists_no_would_be_limits():
    """A shadow-mode route enforces: an observe rule there records no would-be limits either (found
    by `make mutation`: the mode test written `>=` passed, as "shadow" sorts after "observe")."""
    from tests.unit.test_policy_eval import P

    policy = P("""
        id: t3
        routes:
          - {id: pilot, apis: [responses], mode: shadow}
        rules:
          - {id: p, effect: permit, when: {roles: [dev]}}
          - {id: observe-tenant, effect: observe, priority: 5, when: {tenants: [newco]}}
        rate_limits:
          - {id: l, key: [subject], requests: 10, window_s: 60}
    """)
    d = policy.evaluate(inp(route={"api": "responses"}, identity={"tenant": "newco"}))
    assert (d.outcome, d.mode) == ("observe", "shadow") and d.limits == ()
    observed = d.to_record()["detail"].get("observed")
    assert observed is not None and "limits" not in observed, observed
