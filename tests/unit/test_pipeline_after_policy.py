"""The decisions taken after the policy, as pure functions (pipeline/admission.py, multiplex.py,
envelope.py, outcome.py): each test fails if a refusal were forwarded, if the record lost what the
policy said, or if the outcome named the wrong delivered status or charge."""

from __future__ import annotations

import hashlib
import json
from dataclasses import FrozenInstanceError
from types import SimpleNamespace

import pytest

from ext_proc.audit.record import Caller, DecisionRecord, Digests, Routing, Ruling
from ext_proc.pipeline.admission import admit, needs_admission
from ext_proc.pipeline.envelope import Envelope, EnvelopeSegment, refuse_unrewritable
from ext_proc.pipeline.multiplex import FailoverChain, Translated, choose_route, load_model_map
from ext_proc.pipeline.outcome import ResponseSeen, cache_hit, response_outcome, tokens_used
from ext_proc.pipeline.verdict import Verdict, annotated, attributed, overruled
from ext_proc.ratelimit import Admission
from ext_proc.ratelimit.limits import Reservation
from ext_proc.streaming.inspector import BLOCKED_STATUS
from ext_proc.streaming.transparency import transparency_marker

BODY = json.dumps({"model": "claude-fast", "messages": [{"role": "user", "content": "hi"}]}).encode()
MODELS = load_model_map({"models": {
    "claude-fast": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
    "resilient": [{"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
                  {"provider": "gemini", "model": "gemini-2.0-flash"}]}})


def permitted(model: str = "claude-fast", limits: tuple = (), serve_with: str | None = None, **extra) -> Verdict:
    record = DecisionRecord(request_id="r-1", received_ms=1, decided_ms=2, caller=Caller(),
                            routing=Routing({}, upstream="openai", model_routed=model),
                            decision=Ruling({"outcome": "permit", "status": 200, "code": "ok"}),
                            digests=Digests(forwarded_sha256=hashlib.sha256(BODY).hexdigest()))
    return Verdict(forward=True, status=200, code="ok", message="", record=record, model=model, limits=limits,
                   decision=SimpleNamespace(serve_with=serve_with), **extra)


def assert_overruled(v: Verdict, status: int, code: str, policy_outcome: str = "permit") -> None:
    assert not v.forward and v.status == status and v.code == code and v.new_body is None
    rec = v.record.to_dict()
    assert rec["decision"]["outcome"] == "deny" and rec["decision"]["status"] == status
    assert rec["decision"]["code"] == code and rec["decision"]["policy_outcome"] == policy_outcome
    assert rec["forwarded_sha256"] is None and v.error_body and v.error_headers


def test_a_verdict_is_frozen_and_steps_never_touch_the_one_they_were_given():
    v = permitted()
    with pytest.raises(FrozenInstanceError):
        v.forward = False  # type: ignore[misc]
    denied = overruled(v, 429, "rate_limited", "slow down", "openai")
    assert v.forward and v.record.to_dict()["decision"]["outcome"] == "permit" and v.record.to_dict()["forwarded_sha256"]
    assert_overruled(denied, 429, "rate_limited")
    with pytest.raises(ValueError):
        annotated(v, decision={"outcome": "permit"})   # the policy's section is not a step's to write


def _admission(admitted: bool, **kw) -> Admission:
    return Admission(admitted=admitted, reservation=Reservation("r", ()) if admitted else None, throttled_by="per-user",
                     headers={"x-ratelimit-remaining-requests": "0", "retry-after": "7"}, **kw)


def test_admission_refused_is_a_recorded_429_with_the_limit_and_the_retry_headers():
    v = permitted(limits=({"id": "per-user"},))
    assert needs_admission(v) and not needs_admission(permitted()) and not needs_admission(v.rejected(403, "x", "", "openai"))
    out = admit(v, _admission(False, retry_after_s=7, exhausted="requests"), "openai")
    assert_overruled(out.verdict, 429, "rate_limited")
    assert out.verdict.record.to_dict()["decision"]["throttled_by"] == "per-user"
    assert out.verdict.record.to_dict()["ratelimit"]["admitted"] is False
    assert out.reservation is None and out.refusal_headers["retry-after"] == "7" and not out.answer_headers


def test_admission_with_the_counter_store_down_is_a_503_not_a_429():
    out = admit(permitted(limits=({"id": "per-user"},)), _admission(False, exhausted="unavailable"), "openai")
    assert_overruled(out.verdict, 503, "ratelimit_unavailable")


def test_admitted_request_keeps_its_verdict_and_carries_only_the_budget_headers():
    v = permitted(limits=({"id": "per-user"},))
    out = admit(v, _admission(True), "openai")
    assert out.verdict.forward and out.verdict.record.to_dict()["decision"] == v.record.to_dict()["decision"]
    assert out.verdict.record.to_dict()["ratelimit"]["admitted"] is True and out.reservation == Reservation("r", ())
    assert dict(out.answer_headers) == {"x-ratelimit-remaining-requests": "0"} and not out.refusal_headers


def test_route_choice_translates_a_mapped_model_and_names_the_provider_in_the_record():
    choice = choose_route(permitted(), BODY, "openai.chat_completions", "openai", MODELS)
    assert isinstance(choice.multiplexed, Translated) and choice.verdict.forward
    assert choice.multiplexed.route.target.provider == "anthropic"
    assert choice.verdict.new_body == choice.multiplexed.request.body != BODY
    rec = choice.verdict.record.to_dict()
    assert rec["upstream"] == "anthropic" and rec["model_routed"] == "claude-3-5-haiku-latest"
    assert rec["forwarded_sha256"] == hashlib.sha256(choice.verdict.new_body).hexdigest()


def test_route_choice_for_a_chain_forwards_the_openai_body_to_the_chain():
    choice = choose_route(permitted("resilient"), BODY, "openai.chat_completions", "openai", MODELS)
    assert isinstance(choice.multiplexed, FailoverChain) and choice.verdict.new_body == BODY
    assert choice.verdict.record.to_dict()["upstream"] == "multiplex:resilient" and choice.verdict.record.to_dict()["model_routed"] is None


def test_route_choice_refusals_are_overrules():
    alias = choose_route(permitted(), BODY, "openai.responses", "openai", MODELS)
    assert_overruled(alias.verdict, 400, "model_alias_not_on_this_api")
    assert alias.multiplexed is None
    missing = choose_route(permitted(serve_with="not-in-map"), BODY, "openai.chat_completions", "openai", MODELS)
    assert_overruled(missing.verdict, 503, "route_unavailable")
    broken = choose_route(permitted(), b"{not json", "openai.chat_completions", "openai", MODELS)
    assert_overruled(broken.verdict, 400, "translation_error")
    assert broken.multiplexed is None


def test_route_choice_leaves_unmapped_models_and_denials_alone():
    v = permitted("gpt-4o-mini")
    assert choose_route(v, BODY, "openai.chat_completions", "openai", MODELS).verdict is v
    denied = v.rejected(403, "blocked", "no", "openai")
    assert choose_route(denied, BODY, "openai.responses", "openai", MODELS).verdict is denied


def test_a_redaction_in_an_unrewritable_header_is_refused():
    seg = EnvelopeSegment(where="header:host", name="host", text="x", position=0)
    env = Envelope(path="/v1/chat/completions", query=[], query_changed=False, removed_headers=[], removed_query=[],
                   segments=[seg])
    v = permitted(envelope_redacted={0: "[EMAIL]"})
    assert_overruled(refuse_unrewritable(v, env, "openai"), 403, "unredactable_header")
    assert refuse_unrewritable(permitted(), env, "openai").forward


def _seen(**kw) -> ResponseSeen:
    summary = {"usage": {"input_tokens": 10, "output_tokens": 5}, "blocked": None, "streamed": True,
               "response_sha256": "ab", "classification": {"email": 1}, "redactions": []}
    return ResponseSeen(**{"request_id": "r-1", "completed_ms": 1000, "status": 200, "summary": summary, **kw})


def test_outcome_settles_the_reservation_at_the_usage_and_records_the_upstream_status():
    out = response_outcome(_seen(upstream_host="api.openai.com"))
    assert out.settle_tokens == 15 and out.error is None
    rec = out.record.to_dict()
    assert rec["kind"] == "outcome" and rec["status"] == rec["delivered_status"] == 200
    assert rec["usage"] == {"input_tokens": 10, "output_tokens": 5} and rec["upstream_host"] == "api.openai.com"
    assert rec["completed_ms"] == 1000 and "transparency" not in rec


def test_outcome_without_usage_keeps_the_estimate_charged_and_names_the_error():
    out = response_outcome(_seen(status=None, summary={}, error="stream_ended_before_response_completed"))
    assert out.settle_tokens is None and out.record.to_dict()["error"] == "stream_ended_before_response_completed"
    assert tokens_used({"input_tokens": 3}) == 3 and tokens_used(None) is None


@pytest.mark.parametrize("held,sent,blocked,delivered", [
    (True, False, {"label": "secret"}, BLOCKED_STATUS),   # the held status becomes the block's
    (False, True, None, BLOCKED_STATUS),                  # it already went out as the block's
    (False, False, {"label": "secret"}, 200),             # streamed: the block is in the events
    (True, False, None, 200),
])
def test_outcome_delivered_status(held, sent, blocked, delivered):
    seen = _seen(status_held=held, block_status_sent=sent, summary={"blocked": blocked})
    rec = response_outcome(seen).record.to_dict()
    assert rec["status"] == 200 and rec["delivered_status"] == delivered and rec["blocked"] == blocked


def test_outcome_records_the_transparency_marker():
    marker = transparency_marker({"name": "x-ai-generated", "value": "true"}, provider="openai", model="m",
                                 policy_id="p", policy_version="v1")
    rec = response_outcome(_seen(transparency=marker)).record.to_dict()
    assert rec["transparency"]["provider"] == "openai" and rec["transparency"]["json_field"] is None


def test_cache_hit_forwards_nothing_and_a_blocked_whole_answer_gets_the_blocked_status():
    v = permitted("gpt-4o-mini")
    served = {"key_sha256": "k", "filled_by_request_id": "r-0"}
    hit = cache_hit(v, {"rule": "c"}, served, request_id="r-1", completed_ms=5, streamed=False, capture=None,
                    summary={"blocked": {"label": "secret"}, "usage": {"input_tokens": 1}})
    assert hit.status == BLOCKED_STATUS and hit.outcome.record.to_dict()["delivered_status"] == BLOCKED_STATUS
    assert hit.verdict.record.to_dict()["upstream"] is None and hit.verdict.record.to_dict()["forwarded_sha256"] is None
    assert hit.verdict.record.to_dict()["cache"] == {"rule": "c", "result": "hit"}
    assert hit.outcome.record.to_dict()["served_from_cache"]["usage"] == {"input_tokens": 1}
    assert hit.outcome.record.to_dict()["usage"] is None and hit.outcome.settle_tokens is None
    streamed = cache_hit(v, {}, served, request_id="r-1", completed_ms=5, streamed=True, capture=None,
                         summary={"blocked": {"label": "secret"}})
    assert streamed.status == 200


def test_a_refusal_decided_outside_the_policy_names_who_decided_and_leaves_the_original_alone():
    refused = permitted().rejected(503, "draining", "restarting", "openai")
    out = attributed(refused, "ledgergate", retry_after_s=5, envoy_flags=None)
    assert out.record.to_dict()["decision"]["decided_by"] == "ledgergate" and out.error_headers["retry-after"] == "5"
    assert "decided_by" not in refused.record.to_dict()["decision"] and "retry-after" not in refused.error_headers
    assert not out.forward and out.status == 503
