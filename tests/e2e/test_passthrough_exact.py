"""Nothing to redact: what the client receives is exactly what the provider sent, byte for byte,
for each streaming format and for a whole JSON answer, through the real Envoy and ledgergate.
(The mock logs the exact body it sent next to the request.)"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.support import unique_marker

pytestmark = pytest.mark.e2e

REPLY = "The quarterly numbers look fine; nothing sensitive in this answer at all, just words."


def _sent(stack, marker: str) -> bytes:
    reqs = [r for r in stack.mock_requests() if marker in r["body"]]
    assert len(reqs) == 1
    return base64.b64decode(reqs[0]["response_b64"])


CASES = {
    "openai-chat-stream": ("/v1/chat/completions", lambda m: {
        "model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": m}]}),
    "openai-chat": ("/v1/chat/completions", lambda m: {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": m}]}),
    "openai-responses-stream": ("/v1/responses", lambda m: {"model": "gpt-4o-mini", "stream": True, "input": m}),
    "anthropic-stream": ("/v1/messages", lambda m: {
        "model": "claude-3-5-haiku-latest", "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": m}]}),
    "gemini-sse": ("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", lambda m: {
        "contents": [{"role": "user", "parts": [{"text": m}]}]}),
    "bedrock-converse-stream": ("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream", lambda m: {
        "messages": [{"role": "user", "content": [{"text": m}]}]}),
    "bedrock-invoke-stream": ("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream", lambda m: {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 200, "messages": [{"role": "user", "content": m}]}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk", ["2", "7"])
def test_a_clean_response_is_passed_through_byte_for_byte(stack, case, chunk):
    path, body = CASES[case]
    marker = unique_marker("exact")
    r = httpx.post(f"{stack.base_url}{path}", json=body(marker), timeout=30,
                   headers={"authorization": f"Bearer {stack.token()}", "x-mock-reply": REPLY.replace(" ", "%20"),
                            "x-mock-chunk-chars": chunk})
    assert r.status_code == 200, r.text
    sent = _sent(stack, marker)
    assert len(sent) > len(REPLY)
    assert r.content == sent


def test_usage_asked_for_by_ledgergate_is_read_but_not_delivered(stack):
    import openai

    marker = unique_marker("usage")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(), max_retries=0, timeout=30,
                           default_headers={"x-mock-reply": REPLY.replace(" ", "%20")})
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": marker}]) as resp:
        got = b"".join(resp.iter_bytes())
        rid = resp.headers["x-request-id"]
    sent = _sent(stack, marker)
    assert b'"choices":[]' in sent and b'"usage"' in sent  # the upstream was asked for usage
    assert b'"choices":[]' not in got and got == b"".join(  # the client gets every other event, as sent
        ev + b"\n\n" for ev in sent.split(b"\n\n") if ev and b'"choices":[]' not in ev)
    outcome = [r for r in stack.audit_records() if r.get("request_id") == rid and r["kind"] == "outcome"][0]
    assert outcome["usage"]["output_tokens"] > 0
