"""The sans-I/O request decision (ext_proc.pipeline.request) with the real classifier, policy and
provider adapters: no Envoy, no gRPC, no clock."""

from __future__ import annotations

import json

import pytest

from ext_proc.classify import Classifier
from ext_proc.identity import Identity, IdentityError
from ext_proc.pipeline.request import RequestHead, decide_request, reject_identity, reject_unprocessable, strip_headers
from ext_proc.policy import load_policy
from ext_proc.providers import match_surface
from tests.support import REPO

POLICY = load_policy(REPO / "policies" / "default.yaml")
CLASSIFIER = Classifier(custom_terms={k: list(v) for k, v in POLICY.dictionaries.items()})
KEY = b"k" * 32
NOW = 1_760_000_000_000


def ident(roles=("developer",), tenant="acme") -> Identity:
    return Identity(subject="alice", issuer="https://ledgergate.local/dev", auth_method="jwt",
                    roles=tuple(roles), groups=(), tenant=tenant, scopes=(), actor=(),
                    credential_id="c0ffee", expires_at=None)


def head(path="/v1/chat/completions", method="POST", headers=None) -> RequestHead:
    return RequestHead(request_id="req-1", method=method, path=path, headers=headers or {},
                       attributes={}, received_ms=NOW - 5, surface=match_surface(method, path))


def chat(text: str, **extra) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}).encode()


def decide(body: bytes, h: RequestHead | None = None, identity: Identity | None = None):
    return decide_request(h or head(), identity or ident(), body, policy=POLICY, classifier=CLASSIFIER,
                          hash_key=KEY, now_ms=NOW, max_body_bytes=1 << 20)


def test_clean_prompt_is_forwarded_unchanged():
    body = chat("what is the capital of France?")
    v = decide(body)
    assert v.forward and v.new_body is None
    assert v.record.to_dict()["decision"]["outcome"] == "permit"
    assert v.record.to_dict()["forwarded_sha256"] == v.record.to_dict()["request_sha256"]


def test_pii_is_redacted_and_the_record_holds_no_raw_value():
    body = chat("write to jane.doe@example.com please")
    v = decide(body)
    assert v.forward and v.new_body is not None
    forwarded = json.loads(v.new_body)
    assert "jane.doe@example.com" not in forwarded["messages"][0]["content"]
    assert "[PII.EMAIL]" in forwarded["messages"][0]["content"]
    assert "jane.doe@example.com" not in json.dumps(v.record.to_dict())
    assert v.record.to_dict()["forwarded_sha256"] != v.record.to_dict()["request_sha256"]


def test_secret_is_denied_in_the_provider_format():
    v = decide(chat("key AKIAIOSFODNN7ABCDEFG"))
    assert not v.forward and v.status == 403
    assert json.loads(v.error_body)["error"]["message"]
    anthropic = head("/v1/messages")
    body = json.dumps({"model": "claude-3-5-haiku-latest", "max_tokens": 10,
                       "messages": [{"role": "user", "content": "key AKIAIOSFODNN7ABCDEFG"}]}).encode()
    v = decide(body, anthropic)
    assert not v.forward and json.loads(v.error_body)["type"] == "error"
    assert "AKIAIOSFODNN7ABCDEFG" not in json.dumps(v.record.to_dict()) + v.error_body.decode()


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"[]", b'{"messages": "x"}', b'{"model": 1, "messages": []' + b"]" * 10])
def test_unparseable_body_is_rejected_with_400(body):
    v = decide(body)
    assert not v.forward and v.status == 400
    assert v.record.to_dict()["decision"]["outcome"] == "deny"


def test_unknown_route_is_denied_by_default():
    v = decide(b"{}", head("/v2/something-else"))
    assert not v.forward and v.status in (403, 404)


def test_identity_failure_is_a_recorded_401_without_the_token():
    h = head(headers={"authorization": ["Bearer secret.token.value"]})
    v = reject_identity(h, IdentityError("token_expired", "the token has expired"), NOW, POLICY)
    assert v.status == 401 and not v.forward
    assert v.record.to_dict()["policy"]["version"] == POLICY.version
    assert v.record.to_dict()["identity_error"] == "token_expired"
    assert "secret.token.value" not in json.dumps(v.record.to_dict())


def test_streamed_chat_asks_for_usage():
    v = decide(chat("hello", stream=True))
    assert v.forward and json.loads(v.new_body)["stream_options"]["include_usage"] is True


def test_same_inputs_give_the_same_decision_and_policy_input():
    a, b = decide(chat("mail bob@example.org")), decide(chat("mail bob@example.org"))
    assert a.record.to_dict()["decision"] == b.record.to_dict()["decision"]
    assert a.record.to_dict()["input"] == b.record.to_dict()["input"]
    assert a.new_body == b.new_body
    # The recorded input replays to the recorded outcome.
    assert POLICY.evaluate(a.record.to_dict()["input"]).outcome == a.record.to_dict()["decision"]["outcome"]


def test_own_namespace_and_client_credentials_are_stripped():
    h = {"x-ledgergate-subject": ["root"], "authorization": ["Bearer t"], "x-api-key": ["k"],
         "content-type": ["application/json"], "X-LEDGERGATE-ROLE".lower(): ["admin"]}
    assert strip_headers(h) == ["authorization", "x-api-key", "x-ledgergate-role", "x-ledgergate-subject"]


# --- cases the mutation run found unpinned (docs/testing.md) -------------------------------------

CAPPED = """
id: unit-capped
defaults: {mode: enforce, deny: {status: 403, code: policy_denied, reason: no rule permits this}}
roles:
  analyst: {models: ["*"], max_tokens: 256}
routes:
  - {id: inference, apis: [chat, messages]}
  - {id: trial, apis: [embeddings], mode: observe}
rules:
  - {id: redact-pii, effect: redact, priority: 10, when: {routes: [inference, trial]}, redact: {"pii.*": mask}}
  - {id: permit, effect: permit, when: {routes: [inference, trial]}}
"""


def _decide_with(policy_text: str, body: bytes, h: RequestHead | None = None, roles=("analyst",)):
    from ext_proc.policy import load_policy_text

    policy = load_policy_text(policy_text)
    return decide_request(h or head(), ident(roles=roles), body, policy=policy,
                          classifier=Classifier(), hash_key=KEY, now_ms=NOW, max_body_bytes=1 << 20)


def test_a_forwarded_verdict_is_200_and_usage_is_injected_only_when_the_client_did_not_ask():
    v = decide(chat("hello"))
    assert v.forward and v.status == 200 and v.usage_injected is False
    v = decide(chat("hello", stream=True))
    assert v.forward and v.status == 200 and v.usage_injected is True
    v = decide(chat("hello", stream=True, stream_options={"include_usage": True}))
    assert v.forward and v.usage_injected is False


def test_an_unknown_route_is_recorded_as_not_inspectable():
    v = decide(b"{}", head("/v2/something-else"))
    assert v.record.to_dict()["route"]["surface"] == "unknown" and v.record.to_dict()["route"]["inspectable"] is False


def test_an_identity_failure_record_says_401():
    v = reject_identity(head(), IdentityError("token_expired", "the token has expired"), NOW, POLICY)
    assert v.record.to_dict()["decision"]["status"] == 401 and v.record.to_dict()["decision"]["outcome"] == "deny"
    assert v.stream is False and v.usage_injected is False


def test_the_role_cap_is_set_only_when_the_client_asked_for_no_max_tokens():
    v = _decide_with(CAPPED, chat("hello"))
    assert v.forward and json.loads(v.new_body)["max_completion_tokens"] == 256   # the field chat reads
    v = _decide_with(CAPPED, chat("hello", max_tokens=100))
    assert v.forward and v.new_body is None   # under the cap: forwarded as sent


def test_observe_mode_forwards_what_enforce_would_have_redacted():
    body = json.dumps({"model": "text-embedding-3-small", "input": "mail jane.doe@example.com"}).encode()
    v = _decide_with(CAPPED, body, head("/v1/embeddings"))
    assert v.forward and v.record.to_dict()["decision"]["outcome"] == "observe"
    assert v.new_body is None and v.record.to_dict()["decision"]["redactions"] == []
    enforced = _decide_with(CAPPED, chat("mail jane.doe@example.com"))
    assert enforced.record.to_dict()["decision"]["outcome"] == "redact" and b"jane.doe" not in enforced.new_body


def test_the_request_head_cannot_change_after_it_is_built():
    """One head is read by identity, the decision and the record: none can alter what the others saw."""
    import dataclasses

    h = head()
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.path = "/v1/embeddings"  # type: ignore[misc]


@pytest.mark.parametrize("path", ["/v1beta/models/gemini-1.5-flash:generateContent?key=AIzaSyA-secret-query-key-0123456789",
                                  "/v1/unknown/route?key=AIzaSyA-secret-query-key-0123456789"])
def test_the_recorded_path_never_carries_the_query_string(path):
    """Gemini's API key can travel as ?key=; records keep the path only, for known and unknown
    routes (found by `make mutation`: a split that kept the query string passed every test)."""
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}).encode()
    v = decide(body, head(path))
    assert v.record.to_dict()["route"]["path"] == path.split("?")[0]
    assert "secret-query-key" not in json.dumps(v.record.to_dict())


def test_an_envelope_value_over_the_inspection_budget_is_refused_not_forwarded():
    """A header or query value the provider reads is inspected within the same budget as the body:
    past it, a 413 in the provider's format and a record (found by `make mutation`: nothing
    exercised the envelope's budget refusal)."""
    from ext_proc.pipeline.budget import BudgetedClassifier
    from ext_proc.pipeline.envelope import EnvelopeSegment

    segment = EnvelopeSegment(where="header:anthropic-beta", name="anthropic-beta", text="x" * 300)
    v = decide_request(head(), ident(), chat("hello"), policy=POLICY, classifier=BudgetedClassifier(CLASSIFIER, max_bytes=200),
                       hash_key=KEY, now_ms=NOW, max_body_bytes=1 << 20, envelope_segments=(segment,))
    assert not v.forward and v.status == 413 and v.code == "request_too_large"
    assert v.record.to_dict()["decision"]["outcome"] == "deny" and json.loads(v.error_body)["error"]["message"]


def test_a_redacted_envelope_value_is_recorded_with_where_it_was():
    """An e-mail address in a header the provider reads is redacted like one in the body, and the
    record says where, without the value (found by `make mutation`: no test reached this path)."""
    from ext_proc.pipeline.envelope import EnvelopeSegment

    segment = EnvelopeSegment(where="header:x-trace-note", name="x-trace-note", text="from jane.doe@example.com")
    v = decide_request(head(), ident(), chat("hello"), policy=POLICY, classifier=CLASSIFIER,
                       hash_key=KEY, now_ms=NOW, max_body_bytes=1 << 20, envelope_segments=(segment,))
    assert v.forward and "jane.doe@example.com" not in v.envelope_redacted[0]
    recorded = [r for r in v.record.to_dict()["decision"]["redactions"] if r.get("envelope") == "header:x-trace-note"]
    assert recorded and "jane.doe@example.com" not in json.dumps(v.record.to_dict())


def test_a_model_name_in_the_path_holding_a_finding_is_masked_in_the_record():
    """Gemini names the model in the path: an address put there never reaches the record, and an
    unparseable body on such a path is still a plain 400 (found by `make mutation`: the masking
    skipped, or run without a parsed document, passed every test)."""
    path = "/v1beta/models/mail-jane.doe@example.com:generateContent"
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}).encode()
    v = decide(body, head(path))
    assert "jane.doe" not in json.dumps(v.record.to_dict()) and "jane.doe" not in v.record.to_dict()["route"]["path"]
    bad = decide(b"{", head(path))
    assert not bad.forward and bad.status == 400


@pytest.mark.parametrize("path", [
    "/v1beta/models/mail-jane%2Edoe%40example.com:generateContent",
    # The decoded name in the query too: replacing it there once left the path's encoded copy raw.
    "/v1beta/models/mail-jane%2Edoe@example.com:generateContent?x=mail-jane.doe@example.com",
])
def test_a_percent_encoded_model_name_holding_a_finding_never_reaches_the_record(path):
    """The path's model name is decoded before it is scanned: written percent-encoded it is not in
    the path as the decoder returns it, and the path is recorded withheld (found by `make mutation`:
    the path masked only when the decoded name was *not* in it passed every test)."""
    from urllib.parse import unquote

    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}).encode()
    h = head(path)
    assert h.surface is not None and h.surface.model_from_path == "mail-jane.doe@example.com"
    v = decide(body, h)
    recorded = json.dumps(v.record.to_dict())
    assert "jane" not in unquote(recorded), v.record.to_dict()["route"]["path"]
    assert v.record.to_dict()["route"]["path"] == "/[PATH WITH FINDINGS]"


def test_a_model_name_in_the_path_is_masked_in_the_record_of_an_unparseable_body():
    # Found by make mutation (issue 24): the refusal recorded the path's model segment raw.
    bad = decide(b"{", head("/v1beta/models/mail-jane.doe@example.com:generateContent"))
    assert not bad.forward and "jane.doe" not in json.dumps(bad.record.to_dict())


def test_a_model_name_in_the_path_is_masked_in_the_record_of_an_unverified_caller():
    path = "/v1beta/models/mail-jane.doe@example.com:generateContent"
    v = reject_identity(head(path), IdentityError("token_expired", "expired"), NOW, POLICY, classifier=CLASSIFIER)
    assert v.status == 401 and "jane.doe" not in json.dumps(v.record.to_dict())
    assert "jane.doe" in json.dumps(reject_identity(head(path), IdentityError("token_expired", "e"), NOW, POLICY).record.to_dict())


def test_a_failing_classifier_withholds_the_path_model_from_a_refusal_record():
    class Broken:
        def scan(self, *_a, **_k):
            raise RuntimeError("classifier down")

    path = "/v1beta/models/mail-jane.doe@example.com:generateContent"
    v = reject_unprocessable(head(path), None, 503, "processing_error", "x", NOW, b"{}", POLICY, classifier=Broken())
    assert "jane.doe" not in json.dumps(v.record.to_dict())


def test_an_identity_failure_record_names_the_provider_of_the_route():
    """Found by `make mutation`: the provider inverted (None for a known route) passed every test."""
    v = reject_identity(head("/v1/messages"), IdentityError("token_expired", "the token has expired"), NOW, POLICY)
    assert v.record.to_dict()["provider"] == "anthropic"
    unknown = reject_identity(head("/v1/unknown"), IdentityError("token_expired", "expired"), NOW, POLICY)
    assert unknown.record.to_dict()["provider"] is None and unknown.status == 401


def test_a_secret_in_a_path_no_route_names_is_masked_in_the_record():
    """Unknown routes are refused, and their record keeps the path: its segments are the caller's
    free text, so findings in it are masked (record and policy input), whatever refused it."""
    path = "/v1/unknown/AKIAIOSFODNN7QWERTYZ/x"
    v = decide(b"{}", head(path))
    assert not v.forward and "AKIAIOSFODNN7QWERTYZ" not in json.dumps(v.record.to_dict())
    assert v.record.to_dict()["route"]["path"] == "/v1/unknown/[SECRET.AWS_ACCESS_KEY]/x"
    refused = reject_identity(head(path), IdentityError("token_expired", "e"), NOW, POLICY, classifier=CLASSIFIER)
    assert "AKIAIOSFODNN7QWERTYZ" not in json.dumps(refused.record.to_dict())
    assert decide(b"{}", head("/v1/unknown/plain")).record.to_dict()["route"]["path"] == "/v1/unknown/plain"


# --- Survivors of the 02:48 `make mutation` run (docs/testing.md) -------------------------------

def test_the_model_is_what_the_body_names_when_another_field_after_it_holds_a_finding():
    """The model a policy routes on and the record shows is the body's `model` (masked only when
    a finding is in it), never another field's masked text: here `user`, which sorts after
    "model" and holds an address (found by `make mutation`: the field picked by `path >= ("model",)`)."""
    for extra in ({"user": "jane.doe@example.com"}, {"prompt_cache_key": "call (415) 555-2671"},
                  {"user": "AKIAIOSFODNN7ABCDEFG"}):
        v = decide(chat("hello", **extra))
        rec = v.record.to_dict()
        assert v.model == "gpt-4o-mini" and rec["input"]["model"] == "gpt-4o-mini", (extra, v.model)
        assert rec["model_requested"] == rec["model_routed"] == "gpt-4o-mini", (extra, rec["model_requested"])


def test_a_request_without_a_body_is_put_to_the_policy_with_zero_estimated_tokens():
    """A request whose body was not read (none sent) estimates 0 tokens: what the policy's
    `request.estimated_tokens` conditions and the decision record's input see (found by `make
    mutation`: a default of 1 passed every test)."""
    for h in (head(), head("/v1/models/gpt-4o-mini", method="GET")):
        v = decide(b"", h)
        rec = v.record.to_dict()
        assert rec["input"]["request"]["estimated_tokens"] == 0, (h.path, rec["input"]["request"])
        assert rec["input"]["request"]["bytes"] == 0
