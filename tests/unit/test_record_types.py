"""The typed audit records (ext_proc.audit.record) serialise to exactly the JSON objects the dict
builders they replaced produced: same members, same values, same member order, hence the same
canonical bytes and the same sealed chain line. The old builders and the old record steps
(overrule, attribution, sections) are kept below as a frozen copy of the layout committed until
2026-11-30; each test builds a record both ways from the same inputs and compares."""

from __future__ import annotations

import itertools
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.chain import ChainWriter
from ext_proc.audit.record import (
    SCHEMA_VERSION,
    SECTIONS,
    AttemptRecord,
    Caller,
    Classification,
    DecisionRecord,
    Digests,
    OutcomeRecord,
    PolicyRef,
    ResponseInspection,
    Routing,
    Ruling,
)

# --- the frozen copy: the dict builders and record steps as they were --------------------------


def old_decision_record(*, decision_id: str, request_id: str, received_ms: int, decided_ms: int,
                        identity: dict | None, identity_error: str | None, route: dict, provider: str | None,
                        model_requested: str | None, model_routed: str | None, upstream: str | None,
                        classification: dict, policy: dict, decision: dict, input: dict,
                        request_sha256: str | None, forwarded_sha256: str | None,
                        ratelimit: dict | None = None, capture: dict | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "kind": "decision", "decision_id": decision_id,
        "request_id": request_id, "timestamp_ms": decided_ms,
        "received_ms": received_ms, "decided_ms": decided_ms,
        "identity": identity, "identity_error": identity_error,
        "route": route, "provider": provider, "model_requested": model_requested, "model_routed": model_routed,
        "upstream": upstream, "classification": classification, "policy": policy, "decision": decision,
        "input": input, "request_sha256": request_sha256, "forwarded_sha256": forwarded_sha256,
        "ratelimit": ratelimit, "capture": capture,
    }


def old_outcome_record(*, decision_id: str, request_id: str, completed_ms: int, status: int | None,
                       response_sha256: str | None, classification: dict, redactions: list, usage: dict | None,
                       blocked: dict | None, streamed: bool, error: str | None = None, capture: dict | None = None,
                       delivered_status: int | None = None, upstream_host: str | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "kind": "outcome", "decision_id": decision_id,
        "request_id": request_id, "timestamp_ms": completed_ms, "completed_ms": completed_ms,
        "status": status, "delivered_status": delivered_status if delivered_status is not None else status,
        "response_sha256": response_sha256, "classification": classification,
        "redactions": redactions, "usage": usage, "blocked": blocked, "streamed": streamed, "error": error,
        "capture": capture, "upstream_host": upstream_host,
    }


def old_attempt_record(*, decision_id: str, request_id: str, attempted_ms: int, provider: str, model: str,
                       upstream_address: str | None, forwarded_sha256: str | None,
                       error: str | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "kind": "attempt", "decision_id": decision_id,
        "request_id": request_id, "timestamp_ms": attempted_ms, "provider": provider, "model": model,
        "upstream_address": upstream_address, "forwarded_sha256": forwarded_sha256, "error": error,
    }


def old_overruled(record: dict, status: int, code: str, **why: Any) -> dict:
    previous = record["decision"]
    decision = dict(previous, outcome="deny", status=status, code=code, **why, policy_outcome=previous.get("outcome"))
    return dict(record, decision=decision, forwarded_sha256=None)


def old_attributed(record: dict, decided_by: str, **details: Any) -> dict:
    return dict(record, decision=dict(record["decision"], decided_by=decided_by, **details))


def old_annotated(record: dict, **sections: Any) -> dict:
    return {**record, **sections}


# --- representative inputs ------------------------------------------------------------------------

IDENTITY = {"subject": "alice", "issuer": "https://ledgergate.local/dev", "auth_method": "jwt",
            "roles": ["developer"], "groups": [], "tenant": "acme", "scopes": [], "actor": ["agent-7"],
            "credential_id": "c0ffee"}
ROUTE = {"path": "/v1/chat/completions", "surface": "openai.chat_completions", "api": "chat",
         "provider": "openai", "inspectable": True}
POLICY = {"id": "default", "version": "a" * 64, "label": "2026-11"}
POLICY_DECISION = {"outcome": "redact", "observed": None, "status": 200, "reason": "rule redact-pii",
                   "code": "policy_redact", "matched": [{"rule": "redact-pii", "effect": "redact", "priority": 10,
                                                         "why": ["labels pii.email"]}],
                   "redact": {"pii.email": "mask"}, "max_tokens_cap": 512,
                   "response": {"redact": {}, "block": [], "marker_header": None, "rules": []},
                   "limits": [{"id": "per-user", "key": ["subject"]}], "mode": "enforce", "route": None,
                   "serve_with": None, "policy": {"id": "default", "version": "a" * 64, "label": "2026-11"},
                   "detail": {}}
REDACTIONS = [{"label": "pii.email", "start": 5, "end": 25, "strategy": "mask", "segment": 3, "where": "text"},
              {"label": "pii.email", "start": 0, "end": 20, "strategy": "mask", "envelope": "header:x-note"}]
SUMMARY = {"pii.email": {"count": 2, "max_confidence": 95}}
FINDINGS = [{"label": "pii.email", "start": 5, "end": 25, "confidence": 95, "validator": None, "segment": 3},
            {"label": "pii.email", "start": 0, "end": 20, "confidence": 95, "validator": None,
             "envelope": "header:x-note"}]
INPUT = {"identity": IDENTITY, "route": ROUTE, "model": "gpt-4o-mini", "classification": SUMMARY,
         "request": {"bytes": 120, "estimated_tokens": 30, "max_tokens": None, "stream": True}}
DIGEST_IN, DIGEST_OUT = "1" * 64, "2" * 64


def _policy_decision() -> tuple[DecisionRecord, dict]:
    """A redact decision taken by the policy, as decide_request records it."""
    new = DecisionRecord(
        request_id="req-1", received_ms=995, decided_ms=1000, caller=Caller(IDENTITY),
        routing=Routing(ROUTE, provider="openai", model_requested="gpt-4o-mini", model_routed="gpt-4o-mini",
                        upstream="openai"),
        decision=Ruling(POLICY_DECISION, redactions=REDACTIONS), policy=PolicyRef(**POLICY),
        classification=Classification(SUMMARY, FINDINGS), input=INPUT, digests=Digests(DIGEST_IN, DIGEST_OUT))
    old = old_decision_record(
        decision_id=new.decision_id, request_id="req-1", received_ms=995, decided_ms=1000, identity=IDENTITY,
        identity_error=None, route=ROUTE, provider="openai", model_requested="gpt-4o-mini",
        model_routed="gpt-4o-mini", upstream="openai", classification={"summary": SUMMARY, "findings": FINDINGS},
        policy=POLICY, decision=dict(POLICY_DECISION, redactions=REDACTIONS), input=INPUT,
        request_sha256=DIGEST_IN, forwarded_sha256=DIGEST_OUT)
    return new, old


def _identity_refusal() -> tuple[DecisionRecord, dict]:
    """An unverified caller (reject_identity): no identity, no body read, the policy in force."""
    refusal = {"outcome": "deny", "status": 401, "code": "token_expired", "reason": "the token expired"}
    route = {"path": "/v1/unknown", "surface": "unknown", "api": "unknown", "provider": None, "inspectable": False}
    new = DecisionRecord(request_id="req-2", received_ms=7, decided_ms=9, caller=Caller(error="token_expired"),
                         routing=Routing(route), decision=Ruling(refusal), policy=PolicyRef(**POLICY))
    old = old_decision_record(
        decision_id=new.decision_id, request_id="req-2", received_ms=7, decided_ms=9, identity=None,
        identity_error="token_expired", route=route, provider=None, model_requested=None, model_routed=None,
        upstream=None, classification={}, policy=POLICY, decision=refusal, input={}, request_sha256=None,
        forwarded_sha256=None)
    return new, old


def _unprocessable() -> tuple[DecisionRecord, dict]:
    """A refusal before the policy (reject_unprocessable) with no policy loaded: `policy` is {}."""
    refusal = {"outcome": "deny", "status": 400, "code": "invalid_request_body", "reason": "not JSON"}
    new = DecisionRecord(request_id="req-3", received_ms=1, decided_ms=2, caller=Caller(IDENTITY),
                         routing=Routing(ROUTE, provider="openai", model_requested="gemini-2.0-flash"),
                         decision=Ruling(refusal), digests=Digests(request_sha256=DIGEST_IN))
    old = old_decision_record(
        decision_id=new.decision_id, request_id="req-3", received_ms=1, decided_ms=2, identity=IDENTITY,
        identity_error=None, route=ROUTE, provider="openai", model_requested="gemini-2.0-flash", model_routed=None,
        upstream=None, classification={}, policy={}, decision=refusal, input={}, request_sha256=DIGEST_IN,
        forwarded_sha256=None)
    return new, old


BUILDERS = {"policy_decision": _policy_decision, "identity_refusal": _identity_refusal,
            "unprocessable": _unprocessable}


def same(new: dict, old: dict) -> bool:
    """Same canonical bytes, same members in the same order (also inside `decision`)."""
    return (canonical_json(new) == canonical_json(old) and list(new) == list(old)
            and list(new.get("decision") or {}) == list(old.get("decision") or {}) and new == old)


def assert_same(new: dict, old: dict) -> None:
    assert canonical_json(new) == canonical_json(old)
    assert list(new) == list(old)
    assert list(new.get("decision") or {}) == list(old.get("decision") or {})
    assert new == old


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_a_decision_record_serialises_as_the_dict_builder_did(build):
    new, old = build()
    assert_same(new.to_dict(), old)


# The steps after the policy, in the order the server runs them (server/decide.py, response_cache):
# each is applied to the typed record and to the old dict alike.
STEPS: dict[str, tuple[Any, Any]] = {
    "inspection": (lambda r: r.annotated(inspection={"bytes": 120, "candidates": 3, "max_bytes": 1 << 20}),
                   lambda d: old_annotated(d, inspection={"bytes": 120, "candidates": 3, "max_bytes": 1 << 20})),
    "envelope": (lambda r: r.annotated(envelope={"removed_headers": ["x-a"], "removed_query": [], "inspected": []}),
                 lambda d: old_annotated(d, envelope={"removed_headers": ["x-a"], "removed_query": [],
                                                      "inspected": []})),
    "unrewritable": (lambda r: r.overruled(403, "unredactable_header"),
                     lambda d: old_overruled(d, 403, "unredactable_header")),
    "translated": (lambda r: r.annotated(multiplex={"provider": "anthropic", "model": "claude", "rationale": "map"},
                                         upstream="anthropic", model_routed="claude", forwarded_sha256="3" * 64),
                   lambda d: old_annotated(d, multiplex={"provider": "anthropic", "model": "claude",
                                                         "rationale": "map"},
                                           upstream="anthropic", model_routed="claude", forwarded_sha256="3" * 64)),
    "chained": (lambda r: r.annotated(multiplex={"chain": ["a", "b"]}, upstream="multiplex:resilient",
                                      model_routed=None),
                lambda d: old_annotated(d, multiplex={"chain": ["a", "b"]}, upstream="multiplex:resilient",
                                        model_routed=None)),
    "ratelimit": (lambda r: r.annotated(ratelimit={"admitted": True, "throttled_by": None}),
                  lambda d: old_annotated(d, ratelimit={"admitted": True, "throttled_by": None})),
    "throttled": (lambda r: r.annotated(ratelimit={"admitted": False}).overruled(429, "rate_limited",
                                                                                throttled_by="per-user"),
                  lambda d: old_overruled(old_annotated(d, ratelimit={"admitted": False}), 429, "rate_limited",
                                          throttled_by="per-user")),
    "capture": (lambda r: r.annotated(capture={"alg": "A256GCM", "key_id": "k", "nonce": "n", "ciphertext": "c"}),
                lambda d: old_annotated(d, capture={"alg": "A256GCM", "key_id": "k", "nonce": "n",
                                                    "ciphertext": "c"})),
    "cache_hit": (lambda r: r.annotated(cache={"rule": "c", "result": "hit"}, served_from_cache={"key_sha256": "k"},
                                        upstream=None, forwarded_sha256=None),
                  lambda d: old_annotated(d, cache={"rule": "c", "result": "hit"},
                                          served_from_cache={"key_sha256": "k"}, upstream=None,
                                          forwarded_sha256=None)),
    "cache_miss": (lambda r: r.annotated(cache={"result": "miss"}), lambda d: old_annotated(d, cache={"result": "miss"})),
}


def _sequences() -> list[tuple[str, ...]]:
    """Every ordered subset of the steps in server order with at most one route step, one cache
    step and one overrule (a request takes one route and one cache answer, and an overruled
    request is not forwarded, so no later step can overrule it again): 432 step sequences."""
    order = list(STEPS)
    seqs = []
    for mask in itertools.product((False, True), repeat=len(order)):
        chosen = tuple(name for name, on in zip(order, mask) if on)
        if any(sum(n in group for n in chosen) > 1 for group in (("translated", "chained"),
                                                                  ("cache_hit", "cache_miss"),
                                                                  ("unrewritable", "throttled"))):
            continue
        seqs.append(chosen)
    return seqs


@pytest.mark.parametrize("start", BUILDERS.keys())
def test_every_step_sequence_after_the_policy_serialises_as_the_dict_steps_did(start):
    differ = []
    sequences = _sequences()
    for seq in sequences:
        new, old = BUILDERS[start]()
        for name in seq:
            new_step, old_step = STEPS[name]
            new, old = new_step(new), old_step(old)
        if not same(new.to_dict(), old):
            differ.append(seq)
    assert len(sequences) == 432 and not differ


def test_a_second_overrule_keeps_what_the_policy_said():
    """Unreachable in the server (an overruled verdict is not forwarded, and only a forwarded one
    is overruled), and the one place the typed record differs from the old dict step, which wrote
    the first overrule's "deny" as `policy_outcome`: the record keeps the policy's own outcome."""
    new, old = _policy_decision()
    twice = new.overruled(403, "unredactable_header").overruled(429, "rate_limited", throttled_by="per-user")
    rec = twice.to_dict()["decision"]
    assert rec["policy_outcome"] == "redact" and rec["status"] == 429 and rec["code"] == "rate_limited"
    assert rec["throttled_by"] == "per-user" and rec["outcome"] == "deny"
    old_twice = old_overruled(old_overruled(old, 403, "unredactable_header"), 429, "rate_limited",
                              throttled_by="per-user")
    assert old_twice["decision"]["policy_outcome"] == "deny"
    assert {k: v for k, v in rec.items() if k != "policy_outcome"} == \
        {k: v for k, v in old_twice["decision"].items() if k != "policy_outcome"}


def test_a_refusal_taken_outside_the_policy_serialises_as_the_dict_steps_did():
    new, old = _unprocessable()
    new = new.attributed("envoy", envoy_details="path_normalization_failed", envoy_flags=None)
    old = old_attributed(old, "envoy", envoy_details="path_normalization_failed", envoy_flags=None)
    assert_same(new.to_dict(), old)
    new, old = _identity_refusal()
    assert_same(new.attributed("ledgergate").to_dict(), old_attributed(old, "ledgergate"))


def _outcomes() -> list[tuple[OutcomeRecord, dict]]:
    usage = {"input_tokens": 10, "output_tokens": 5}
    blocked = {"label": "secret.api_key", "at_event": 3, "at_byte": 120, "reason": "blocked"}
    cases: list[tuple[OutcomeRecord, dict]] = []
    for status, delivered, capture, host, error, block in [
            (200, None, None, "api.openai.com:443", None, None),
            (200, 403, {"alg": "A256GCM", "truncated": False}, None, None, blocked),
            (None, None, None, None, "stream_ended_before_response_completed", None),
            (502, 502, None, "10.0.0.1:443", "upstream_reset", None)]:
        inspection = ResponseInspection(response_sha256="ab", classification={"pii.email": {"count": 1}},
                                        redactions=[{"label": "pii.email", "start": 1, "end": 9}], usage=usage,
                                        blocked=block, streamed=True)
        new = OutcomeRecord(request_id="req-1", completed_ms=1500, status=status, response=inspection,
                            delivered_status=delivered, error=error, capture=capture, upstream_host=host)
        old = old_outcome_record(
            decision_id=new.decision_id, request_id="req-1", completed_ms=1500, status=status, response_sha256="ab",
            classification={"pii.email": {"count": 1}}, redactions=[{"label": "pii.email", "start": 1, "end": 9}],
            usage=usage, blocked=block, streamed=True, error=error, capture=capture, delivered_status=delivered,
            upstream_host=host)
        cases.append((new, old))
    # The response outcome with the transparency marker it sent (appended after the record was built).
    marker = {"header": {"x-ai-generated": "true"}, "json_field": None, "provider": "openai"}
    new = OutcomeRecord(request_id="req-1", completed_ms=1500, status=200,
                        response=ResponseInspection.from_summary({}, streamed=False, usage=None), transparency=marker)
    old = old_outcome_record(decision_id=new.decision_id, request_id="req-1", completed_ms=1500, status=200,
                             response_sha256=None, classification={}, redactions=[], usage=None, blocked=None,
                             streamed=False)
    old["transparency"] = marker
    cases.append((new, old))
    # A cache hit's outcome: served_from_cache appended, the capture replaced afterwards.
    new = OutcomeRecord(request_id="req-1", completed_ms=1500, status=200,
                        response=ResponseInspection.from_summary({"response_sha256": "cd"}, streamed=True, usage=None),
                        delivered_status=200, capture={"alg": "A256GCM", "truncated": False},
                        served_from_cache={"key_sha256": "k", "usage": usage})
    old = old_outcome_record(decision_id=new.decision_id, request_id="req-1", completed_ms=1500, status=200,
                             response_sha256="cd", classification={}, redactions=[], usage=None, blocked=None,
                             streamed=True, delivered_status=200)
    old["served_from_cache"] = {"key_sha256": "k", "usage": usage}
    old["capture"] = {"alg": "A256GCM", "truncated": False}
    cases.append((new, old))
    return cases


@pytest.mark.parametrize("case", range(6))
def test_an_outcome_record_serialises_as_the_dict_builder_did(case):
    new, old = _outcomes()[case]
    assert_same(new.to_dict(), old)


def test_an_attempt_record_serialises_as_the_dict_builder_did():
    for error in (None, "upstream_status_503"):
        new = AttemptRecord(request_id="req-1", attempted_ms=5, provider="anthropic", model="claude",
                            upstream_address="1.2.3.4:443", forwarded_sha256=DIGEST_OUT, error=error)
        old = old_attempt_record(decision_id=new.decision_id, request_id="req-1", attempted_ms=5,
                                 provider="anthropic", model="claude", upstream_address="1.2.3.4:443",
                                 forwarded_sha256=DIGEST_OUT, error=error)
        assert_same(new.to_dict(), old)


def test_the_chain_seals_the_typed_record_into_the_same_line():
    """The chain adds its own members (seq, prev_hash, hash, signature...) to what `to_dict` gives:
    two writers with the same key seal the old and the new body into the same bytes."""
    key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    a, b = ChainWriter(key, "w", "s"), ChainWriter(key, "w", "s")
    for new, old in [_policy_decision(), _identity_refusal(), *_outcomes()]:
        body = new.to_dict()
        (rec_a, line_a), (rec_b, line_b) = a.seal_line(body, 5), b.seal_line(old, 5)
        assert line_a == line_b and rec_a["hash"] == rec_b["hash"]
        assert "seq" not in body and "hash" not in body   # sealing adds to a copy, never to the record


def test_records_are_frozen_and_change_only_by_a_new_one():
    new, _ = _policy_decision()
    with pytest.raises(FrozenInstanceError):
        new.request_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        new["decision"] = {}  # type: ignore[index]
    stepped = new.annotated(cache={"result": "miss"}, upstream="anthropic")
    with pytest.raises(FrozenInstanceError):
        stepped.steps.cache = None  # type: ignore[misc]
    assert stepped.routing.upstream == "anthropic" and new.routing.upstream == "openai" and new.steps.cache is None
    before = new.to_dict()
    denied = new.overruled(429, "rate_limited", throttled_by="per-user")
    assert new.to_dict() == before and new.decision.outcome == "redact" and new.digests.forwarded_sha256
    assert denied.decision.outcome == "deny" and denied.decision.overrule is not None
    assert denied.decision.overrule.policy_outcome == "redact" and denied.digests.forwarded_sha256 is None
    d = new.to_dict()
    d["decision"]["outcome"] = "permit"   # a serialised copy, not the record
    assert new.decision.outcome == "redact" and new.to_dict() == before


def test_only_named_sections_can_be_set_and_an_unset_optional_section_is_absent():
    new, _ = _policy_decision()
    for name in ("decision", "identity", "input", "request_sha256", "schema", "seq"):
        with pytest.raises(ValueError):
            new.annotated(**{name: {}})
    assert {"ratelimit", "capture"} <= set(new.to_dict())               # always members, null until set
    assert not {"inspection", "envelope", "multiplex", "cache", "served_from_cache"} & set(new.to_dict())
    assert "cache" not in new.annotated(cache=None).to_dict()
    assert SECTIONS == {"inspection", "envelope", "capture", "ratelimit", "cache", "served_from_cache", "multiplex",
                        "upstream", "model_routed", "forwarded_sha256"}


def test_every_record_gets_its_own_id():
    a, _ = _policy_decision()
    b, _ = _policy_decision()
    assert a.decision_id != b.decision_id and len(a.decision_id) == 32
    assert a.annotated(cache={"result": "miss"}).decision_id == a.decision_id   # a step keeps the record's id


def test_record_ids_are_random_version_4_uuids():
    import uuid as uuid_mod

    from ext_proc.audit.record import new_record_id

    ids = {new_record_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in ids:
        u = uuid_mod.UUID(hex=i)
        assert u.hex == i and len(i) == 32
        assert u.version == 4 and u.variant == uuid_mod.RFC_4122
    # every one of the 122 random bits varies across the sample
    assert all(len({(int(i, 16) >> bit) & 1 for i in ids}) == 2 for bit in range(128)
               if not (76 <= bit < 80 or 62 <= bit < 64))
