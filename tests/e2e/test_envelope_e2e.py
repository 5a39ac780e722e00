"""Around the body (issue 16): what the provider reads besides the JSON body, through the real
Envoy with the default policy. Headers outside the provider's allowlist never reach the upstream;
forwarded header values and query values are classified like body text; unknown query parameters
are stripped; a body on GET is refused; the per-request inspection budget answers 413. Each
refusal and each forwarded request has its decision record."""

from __future__ import annotations

import json
import socket
from urllib.parse import parse_qsl, urlsplit

import anthropic
import httpx
import openai
import pytest

from tests.support import start_stack, unique_marker

pytestmark = pytest.mark.e2e

AWS_KEY = "AKIAIOSFODNN7EXAMPL3"        # an AWS access key id shape (secret.aws_access_key)
CARD = "4111 1111 1111 1111"


def _chat(stack, marker: str, *, headers=(), query: str = "", content: str | None = None) -> httpx.Response:
    token = stack.token()
    return httpx.post(f"{stack.base_url}/v1/chat/completions{query}", timeout=30,
                      headers=[("authorization", f"Bearer {token}"), *headers],
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content or marker}]})


def _upstream(stack, marker: str) -> list[dict]:
    return [r for r in stack.mock_requests() if marker in r["body"] or marker in r["path"]]


def _record(stack, request_id: str) -> dict:
    recs = [r for r in stack.audit_records() if r.get("request_id") == request_id and "decision" in r]
    assert len(recs) == 1, recs
    return recs[0]


def _everything_sent(req: dict) -> str:
    return json.dumps([req["path"], req["header_list"], req["body"]])


def test_a_secret_in_an_unknown_header_never_reaches_the_upstream(stack):
    marker = unique_marker("env-hdr")
    r = _chat(stack, marker, headers=[("x-custom-note", f"key {AWS_KEY}"), ("x-debug-trace", CARD),
                                      ("user-agent", f"evil/{AWS_KEY}")])
    assert r.status_code == 200, r.text
    [req] = _upstream(stack, marker)
    sent = _everything_sent(req)
    assert AWS_KEY not in sent and "4111" not in sent
    names = {k for k, _ in req["header_list"]}
    assert "x-custom-note" not in names and "x-debug-trace" not in names
    rec = _record(stack, r.headers["x-request-id"])
    removed = rec["envelope"]["removed_headers"]
    assert "x-custom-note" in removed and "x-debug-trace" in removed and "user-agent" in removed
    assert AWS_KEY not in json.dumps(rec) and CARD not in json.dumps(rec)


def test_an_allowlisted_header_is_classified_redacted_or_denied(stack):
    marker = unique_marker("env-allow")
    r = _chat(stack, marker, headers=[("openai-beta", "assistants=v2 mail jane.doe@example.com")])
    assert r.status_code == 200, r.text
    [req] = _upstream(stack, marker)
    beta = [v for k, v in req["header_list"] if k == "openai-beta"]
    assert beta and "jane.doe@example.com" not in beta[0] and "[PII.EMAIL]" in beta[0]
    rec = _record(stack, r.headers["x-request-id"])
    assert any(f.get("envelope") == "header:openai-beta" for f in rec["classification"]["findings"])

    marker = unique_marker("env-allow-deny")
    r = _chat(stack, marker, headers=[("openai-beta", f"id {AWS_KEY}")])
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "permission_error"
    assert not _upstream(stack, marker)


def test_query_values_are_classified_and_unknown_parameters_stripped(stack):
    marker = unique_marker("env-q")
    r = _chat(stack, marker, query=f"?limit=mail%20jane.doe@example.com&debug={AWS_KEY}&{marker}=1")
    assert r.status_code == 200, r.text
    [req] = _upstream(stack, marker)
    sent = _everything_sent(req)
    assert AWS_KEY not in sent and "jane.doe@example.com" not in sent
    query = dict(parse_qsl(urlsplit(req["path"]).query))
    assert set(query) == {"limit"} and "[PII.EMAIL]" in query["limit"]
    rec = _record(stack, r.headers["x-request-id"])
    assert "debug" in rec["envelope"]["removed_query"]
    assert any(f.get("envelope") == "query:limit" for f in rec["classification"]["findings"])
    assert AWS_KEY not in json.dumps(rec)

    # A secret in a parameter the provider reads is denied like one in the body.
    marker = unique_marker("env-q-deny")
    r = _chat(stack, marker, query=f"?limit={AWS_KEY}")
    assert r.status_code == 403, r.text
    assert not _upstream(stack, marker)
    assert _record(stack, r.headers["x-request-id"])["decision"]["outcome"] == "deny"


def test_gemini_keeps_alt_and_never_forwards_a_query_key(stack):
    marker = unique_marker("env-gem")
    token = stack.token()
    r = httpx.post(f"{stack.base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent"
                   f"?alt=sse&key=client-google-key&note={marker}",
                   headers={"authorization": f"Bearer {token}"}, timeout=30,
                   json={"contents": [{"role": "user", "parts": [{"text": marker}]}]})
    assert r.status_code == 200, r.text
    [req] = _upstream(stack, marker)
    assert dict(parse_qsl(urlsplit(req["path"]).query)) == {"alt": "sse"}
    rec = _record(stack, r.headers["x-request-id"])
    assert sorted(rec["envelope"]["removed_query"]) == ["key", "note"]
    assert "client-google-key" not in json.dumps(rec)


def test_get_models_with_a_body_is_refused_and_nothing_reaches_the_upstream(stack):
    marker = unique_marker("env-get")
    token = stack.token()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{marker} {CARD}"}]})
    r = httpx.request("GET", f"{stack.base_url}/v1/models", headers={"authorization": f"Bearer {token}",
                      "content-type": "application/json"}, content=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "body_not_allowed" and err["type"] == "invalid_request_error"
    assert not _upstream(stack, marker)
    rec = _record(stack, r.headers["x-request-id"])
    assert rec["decision"]["code"] == "body_not_allowed" and rec["forwarded_sha256"] is None

    # A second request on the same kept-alive client connection is its own, normal request.
    with httpx.Client(base_url=stack.base_url, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
        assert c.request("GET", "/v1/models", content=body).status_code == 400
        ok = c.get("/v1/models")
        assert ok.status_code == 200 and ok.json()["object"] == "list"


def test_a_chunked_get_body_is_refused_too(stack):
    token = stack.token()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + token.encode()
                  + b"\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        head = s.recv(65536).split(b"\r\n", 1)[0]
    assert b" 400 " in head, head


def test_the_official_sdk_still_lists_models(stack):
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(), max_retries=0)
    assert "gpt-4o-mini" in [m.id for m in client.models.list()]


def test_pathological_text_is_refused_by_the_candidate_budget(stack):
    """Text that is nothing but near-miss candidates (issue 16: '123-45-' x N took seconds of
    event-loop time): the per-request budget stops it with a 413 in the provider's format."""
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.token(), max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=16,
                               messages=[{"role": "user", "content": "123-45-" * 60_000}])
    assert err.value.status_code == 413
    assert err.value.body["error"]["type"] == "request_too_large"
    rec = _record(stack, err.value.response.headers["x-request-id"])
    assert rec["decision"]["status"] == 413 and rec["forwarded_sha256"] is None
    assert "inspection budget" in rec["decision"]["reason"]


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"limits": {"max_inspection_bytes": 4096},
                               "envelope": {"unknown_query": "reject"}}))
    s = start_stack(tmp, "--config", str(cfg))
    yield s
    s.stop()


def test_the_inspection_byte_budget_answers_413_with_a_record(small_budget):
    client = openai.OpenAI(base_url=f"{small_budget.base_url}/v1", api_key=small_budget.token(), max_retries=0)
    marker = unique_marker("env-budget")
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": marker + " lorem ipsum" * 500}])
    assert err.value.status_code == 413
    assert not _upstream(small_budget, marker)
    rec = _record(small_budget, err.value.response.headers["x-request-id"])
    assert rec["decision"]["status"] == 413 and "4096 bytes of text" in rec["decision"]["reason"]
    # Under the budget, the same request goes through.
    ok = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": marker}])
    assert marker in ok.choices[0].message.content


def test_unknown_query_parameters_can_be_refused_by_configuration(small_budget):
    marker = unique_marker("env-qrej")
    r = _chat(small_budget, marker, query="?debug=1")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "unknown_query_parameter"
    assert not _upstream(small_budget, marker)
    assert _record(small_budget, r.headers["x-request-id"])["decision"]["code"] == "unknown_query_parameter"


def test_envoys_own_headers_are_classified_and_what_cannot_be_redacted_is_denied(stack):
    # A processor may neither remove nor rewrite x-envoy-* headers (Envoy's mutation rules), so
    # their values are classified and a finding the policy would redact denies the request.
    marker = unique_marker("env-envoy")
    r = _chat(stack, marker, headers=[("x-envoy-note", "mail jane.doe@example.com")])
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "unredactable_header"
    assert not _upstream(stack, marker)
    rec = _record(stack, r.headers["x-request-id"])
    assert rec["decision"]["policy_outcome"] == "redact" and rec["forwarded_sha256"] is None
    assert "jane.doe" not in json.dumps(rec)


def test_the_model_segment_of_a_path_is_classified(stack):
    token = stack.token()
    for model, code in ((f"x-{AWS_KEY}", None), ("mail-jane.doe@example.com", "unredactable_location")):
        marker = unique_marker("env-path")
        r = httpx.post(f"{stack.base_url}/v1beta/models/{model}:generateContent",
                       headers={"authorization": f"Bearer {token}"}, timeout=30,
                       json={"contents": [{"role": "user", "parts": [{"text": marker}]}]})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["status"] == "PERMISSION_DENIED"
        assert not _upstream(stack, marker)
        rec = _record(stack, r.headers["x-request-id"])
        assert any(f.get("envelope") == "path:model" for f in rec["classification"]["findings"])
        if code:
            assert rec["decision"]["code"] == code
