"""The walking skeleton end to end: official SDKs -> real Envoy -> ledgergate -> mock provider."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

import anthropic
import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e


def oai(stack, token):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=token, max_retries=0, timeout=30)


def anth(stack, token):
    return anthropic.Anthropic(base_url=stack.base_url, api_key=token, max_retries=0, timeout=30)


def last_upstream(stack, path_prefix):
    reqs = [r for r in stack.mock_requests() if r["path"].startswith(path_prefix)]
    assert reqs, f"nothing reached the upstream at {path_prefix}"
    return reqs[-1]


def test_openai_chat_roundtrip_with_audit_record(stack):
    token = stack.token()
    raw = oai(stack, token).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello ledger"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hello ledger"
    request_id = raw.headers.get("x-request-id")
    assert request_id
    up = last_upstream(stack, "/v1/chat/completions")
    # The client's credential is for ledgergate, never for the provider.
    assert "authorization" not in {k.lower() for k in up["headers"]}
    kinds = [r.get("kind") for r in stack.audit_records() if r.get("request_id") == request_id]
    assert "decision" in kinds and "outcome" in kinds
    # No raw prompt text in any record.
    assert "hello ledger" not in json.dumps(stack.audit_records())


def test_openai_chat_stream(stack):
    stream = oai(stack, stack.token()).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == "You said: stream me please"


def test_openai_responses_embeddings_models(stack):
    client = oai(stack, stack.token())
    r = client.responses.create(model="gpt-4o-mini", input="responses api")
    assert r.output_text == "You said: responses api"
    e = client.embeddings.create(model="text-embedding-3-small", input="embed this")
    assert len(e.data) == 1 and len(e.data[0].embedding) > 0
    models = client.models.list()
    assert len(list(models)) >= 1


def test_anthropic_messages_and_stream(stack):
    client = anth(stack, stack.token())
    msg = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=64,
                                 messages=[{"role": "user", "content": "hi claude"}])
    assert msg.content[0].text == "You said: hi claude"
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                                messages=[{"role": "user", "content": "stream claude"}]) as s:
        text = "".join(s.text_stream)
    assert text == "You said: stream claude"


def test_missing_and_bad_token_get_provider_shaped_401(stack):
    with pytest.raises(openai.AuthenticationError) as ei:
        oai(stack, "not-a-token").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert ei.value.response.headers.get("x-request-id")
    with pytest.raises(anthropic.AuthenticationError):
        anth(stack, "not-a-token").messages.create(model="claude-3-5-haiku-latest", max_tokens=8,
                                                   messages=[{"role": "user", "content": "x"}])
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"]


def test_expired_token_is_refused_and_recorded(stack):
    import time

    from ext_proc.identity.dev import mint_dev_token

    token = mint_dev_token(stack.var_dir / "dev", sub="alice", roles=["developer"], ttl_s=600,
                           now=time.time() - 3600)
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
    rid = r.headers["x-request-id"]
    recs = [rec for rec in stack.audit_records() if rec.get("request_id") == rid]
    assert recs and recs[0]["kind"] == "decision"
    assert token not in json.dumps(recs)


def test_pii_is_redacted_before_the_upstream(stack):
    stack.clear_mock()
    out = oai(stack, stack.token()).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "mail jane.doe@example.com now"}])
    up = last_upstream(stack, "/v1/chat/completions")
    assert "jane.doe@example.com" not in up["body"]
    assert "[PII.EMAIL]" in up["body"]
    assert "jane.doe@example.com" not in out.choices[0].message.content


def test_secret_is_denied_and_never_reaches_the_upstream(stack):
    stack.clear_mock()
    with pytest.raises(openai.PermissionDeniedError):
        oai(stack, stack.token()).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "my key is AKIAIOSFODNN7ABCDEFG ok"}])
    assert not [r for r in stack.mock_requests() if r["path"].startswith("/v1/chat")]


def test_unparseable_body_is_a_400_in_provider_format(stack):
    r = httpx.post(f"{stack.base_url}/v1/chat/completions",
                   headers={"authorization": f"Bearer {stack.token()}", "content-type": "application/json"},
                   content=b'{"model": "gpt-4o-mini", "messages": [')
    assert r.status_code == 400
    assert r.json()["error"]["message"]
    r = httpx.post(f"{stack.base_url}/v1/messages",
                   headers={"x-api-key": stack.token(), "content-type": "application/json"},
                   content=b"\xff\xfe not json")
    assert r.status_code == 400 and r.json()["type"] == "error"


def test_spoofed_own_headers_are_stripped(stack):
    stack.clear_mock()
    oai(stack, stack.token()).with_options(default_headers={"x-ledgergate-subject": "root"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    up = last_upstream(stack, "/v1/chat/completions")
    assert not [k for k in up["headers"] if k.lower().startswith("x-ledgergate-")]


def test_tls_listener_serves(stack):
    crt = stack.var_dir / "dev" / "tls" / "server.crt"
    client = openai.OpenAI(base_url=f"https://127.0.0.1:{stack.tls_port}/v1", api_key=stack.token(),
                           max_retries=0, http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(crt))))
    c = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "tls"}])
    assert c.choices[0].message.content == "You said: tls"


def test_audit_chain_verifies_after_traffic(stack):
    oai(stack, stack.token()).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one more"}])
    res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "verify", str(stack.audit_dir)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
