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
