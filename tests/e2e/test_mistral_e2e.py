"""Mistral's chat API end to end, added in the provider registry's shape (providers/mistral.py,
its Envoy route, these tests): the openai SDK pointed at ledgergate's /mistral/v1 route -> real
Envoy (prefix stripped, host rewritten) -> ledgergate -> the mock speaking Mistral's wire format
(which refuses fields Mistral does not take, such as stream_options)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support import mock_reply

pytestmark = pytest.mark.e2e

MODEL = "mistral-small-latest"


def mistral(stack, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/mistral/v1", api_key=stack.token(), max_retries=0,
                         timeout=30, default_headers=headers or None)


def records(stack, request_id: str, kind: str) -> list[dict]:
    return [r for r in stack.audit_records() if r.get("request_id") == request_id and r.get("kind") == kind]


def test_mistral_chat_reaches_mistral_with_the_prefix_stripped_and_is_recorded(stack):
    stack.clear_mock()
    raw = mistral(stack).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "bonjour mistral"}])
    assert raw.parse().choices[0].message.content == "You said: bonjour mistral"
    (up,) = [r for r in stack.mock_requests() if r["method"] == "POST"]
    assert up["path"] == "/v1/chat/completions"
    assert {k.lower(): v for k, v in up["headers"].items()}["host"] == "api.mistral.ai"
    (decision,) = records(stack, raw.headers["x-request-id"], "decision")
    assert decision["route"]["surface"] == "mistral.chat_completions" and decision["provider"] == "mistral"
    (outcome,) = records(stack, raw.headers["x-request-id"], "outcome")
    assert outcome["usage"] == {"input_tokens": 4, "output_tokens": 7}


def test_mistral_stream_masks_pii_both_ways_and_takes_the_usage_from_the_last_chunk(stack):
    stack.clear_mock()
    client = mistral(stack, **{"x-mock-reply": mock_reply("Write to ann.lee@example.com today."),
                               "x-mock-chunk-chars": "3"})
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": "mail bo.ek@example.org please"}])
    text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
    assert text == "Write to [PII.EMAIL] today."
    (up,) = [r for r in stack.mock_requests() if r["method"] == "POST"]
    sent = json.loads(up["body"])
    assert sent["messages"][0]["content"] == "mail [PII.EMAIL] please"
    # No OpenAI-only field was injected (the mock, like Mistral, would have refused it with a 422).
    assert "stream_options" not in sent and "max_completion_tokens" not in sent
    (outcome,) = records(stack, raw.headers["x-request-id"], "outcome")
    assert outcome["usage"]["output_tokens"] > 0 and outcome["usage"]["input_tokens"] > 0


def test_mistral_denial_is_in_mistrals_error_format_and_the_sdk_raises_it(stack):
    aws_key = "AKIA" + "QWERTYUIOPASDFGH"
    with pytest.raises(openai.PermissionDeniedError) as ei:
        mistral(stack).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"key {aws_key}"}])
    assert ei.value.code == "secret_detected"
    body = ei.value.response.json()
    assert body["object"] == "error" and body["code"] == "secret_detected" and aws_key not in json.dumps(body)


def test_an_unknown_mistral_path_is_denied_before_any_upstream(stack):
    stack.clear_mock()
    r = httpx.post(f"{stack.base_url}/mistral/v1/fim/completions", headers={"authorization": f"Bearer {stack.token()}"},
                   json={"model": "codestral-latest", "prompt": "def f("}, timeout=30)
    assert r.status_code == 403
    assert not [x for x in stack.mock_requests() if x["method"] == "POST"]
