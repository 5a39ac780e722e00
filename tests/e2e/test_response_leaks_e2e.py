"""No leak on the way back, through the real Envoy and ledgergate under the default policy, read by
the official SDKs (openai, anthropic, botocore) and by plain HTTP for Gemini (both stream forms):
secrets and personal data split over 1-3 character deltas, tool arguments written with \\uXXXX
escapes, SSE served under the wrong content type, an 8,192-bit PEM block; and the transparency
marker on the answers and in the outcome record."""

from __future__ import annotations

import base64
import json
import random

import anthropic
import httpx
import openai
import pytest

from tests.e2e.test_bedrock_stream_e2e import bedrock
from tests.support import mock_reply

pytestmark = pytest.mark.e2e

CARD = "4111 1111 1111 1111"
AWS_KEY = "AKIAIOSFODNN7QWERTYZ"


def escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if c.isalnum() else c for c in text)


def pem(key_bits: int = 8192) -> str:
    body = base64.b64encode(random.Random(key_bits).randbytes(key_bits * 5 // 8 + 100)).decode()
    return "\n".join(["-----BEGIN RSA PRIVATE KEY-----"] + [body[i:i + 64] for i in range(0, len(body), 64)]
                     + ["-----END RSA PRIVATE KEY-----"])


def directives(reply: str, chunk: int = 3, **more: str) -> dict:
    return {"x-mock-reply": mock_reply(reply), "x-mock-chunk-chars": str(chunk), **more}


def oai(stack, reply: str, chunk: int = 3, **more: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(), max_retries=0, timeout=30,
                         default_headers=directives(reply, chunk, **more))


def chat_stream_text(client: openai.OpenAI) -> tuple[str, str]:
    """(content, tool arguments) as the SDK accumulates them."""
    content, args = "", ""
    try:
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}],
                                                stream=True):
            for ch in c.choices:
                content += ch.delta.content or ""
                for tc in ch.delta.tool_calls or []:
                    args += (tc.function.arguments or "") if tc.function else ""
    except openai.APIError:
        pass                      # a blocked stream ends with the SDK's error: nothing more was read
    return content, args


def test_openai_tool_arguments_with_escapes_are_masked_and_still_parse(stack):
    args_json = '{"card": "' + escaped(CARD) + '", "note": "ok"}'
    content, args = chat_stream_text(oai(stack, args_json, chunk=2, **{"x-mock-reply-as": "tool"}))
    decoded = json.loads(args)
    assert CARD not in json.dumps(decoded, ensure_ascii=False) and decoded["note"] == "ok"
    assert decoded["card"] == "[PCI.CARD_NUMBER]"


def test_openai_whole_answer_tool_arguments_with_escapes_are_masked(stack):
    args_json = '{"key": "' + escaped(AWS_KEY) + '"}'
    done = oai(stack, args_json, **{"x-mock-reply-as": "tool"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}])
    assert json.loads(done.choices[0].message.tool_calls[0].function.arguments) == {"key": "[SECRET.AWS_ACCESS_KEY]"}


@pytest.mark.parametrize("ctype", ["text/plain", "application/octet-stream", "application/json",
                                   "application/x-ndjson", "none"])
def test_sse_under_another_content_type_is_inspected_as_sse(stack, ctype):
    reply = f"Your card is {CARD} and mail jane.doe@example.com today."
    content, _ = chat_stream_text(oai(stack, reply, chunk=1, **{"x-mock-content-type": ctype}))
    assert CARD not in content and "jane.doe@example.com" not in content
    assert "[PCI.CARD_NUMBER]" in content and "[PII.EMAIL]" in content


def test_default_policy_masks_personal_data_in_answers(stack):
    reply = "Call 212-555-0147 or write to jane.doe@example.com, SSN 536-22-1234."
    content, _ = chat_stream_text(oai(stack, reply, chunk=2))
    assert "jane.doe@example.com" not in content and "536-22-1234" not in content
    assert "[PII.EMAIL]" in content


def test_an_8192_bit_pem_block_is_masked_whole_streamed_and_whole(stack):
    key = pem(8192)
    lines = key.splitlines()[1:-1]
    content, _ = chat_stream_text(oai(stack, "Here:\n" + key + "\nkeep it safe.", chunk=7))
    assert not any(line in content for line in lines) and "[SECRET.PRIVATE_KEY]" in content
    done = oai(stack, "Here:\n" + key).chat.completions.create(model="gpt-4o-mini",
                                                               messages=[{"role": "user", "content": "q"}])
    assert not any(line in done.choices[0].message.content for line in lines)


def test_anthropic_input_json_delta_with_escapes_is_masked(stack):
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.token(), max_retries=0, timeout=30,
                                 default_headers=directives('{"card": "' + escaped(CARD) + '"}', 2,
                                                            **{"x-mock-reply-as": "tool"}))
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64,
                                messages=[{"role": "user", "content": "q"}]) as s:
        final = s.get_final_message()
    tool = [b for b in final.content if b.type == "tool_use"][0]
    assert tool.input == {"card": "[PCI.CARD_NUMBER]"}


def test_botocore_converse_stream_tool_input_with_escapes_is_masked(stack, monkeypatch):
    client = bedrock(stack, monkeypatch, '{"key": "' + escaped(AWS_KEY) + '"}', chunk=2)

    def as_tool(request, **_):
        request.headers["x-mock-reply-as"] = "tool"
    client.meta.events.register("before-send.bedrock-runtime.*", as_tool)
    resp = client.converse_stream(modelId="anthropic.claude-3-5-haiku-20241022-v1:0",
                                  messages=[{"role": "user", "content": [{"text": "q"}]}])
    args = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in resp["stream"]
                   if "contentBlockDelta" in e)
    assert json.loads(args) == {"key": "[SECRET.AWS_ACCESS_KEY]"}


@pytest.mark.parametrize("alt_sse", [True, False])
def test_gemini_stream_both_forms_never_carry_a_split_card(stack, alt_sse):
    reply = f"The card {CARD} and key {AWS_KEY} end here."
    url = f"{stack.base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent" + ("?alt=sse" if alt_sse else "")
    r = httpx.post(url, json={"contents": [{"role": "user", "parts": [{"text": "q"}]}]}, timeout=30,
                   headers={"authorization": f"Bearer {stack.token()}", **directives(reply, 1)})
    assert r.status_code == 200
    if alt_sse:
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    else:
        events = r.json()                 # one JSON array, released element by element
    text = "".join(p.get("text", "") for e in events for c in e.get("candidates", [])
                   for p in c["content"]["parts"])
    assert CARD not in text and AWS_KEY not in text
    assert "[PCI.CARD_NUMBER]" in text and "[SECRET.AWS_ACCESS_KEY]" in text


def test_the_transparency_marker_names_provider_model_and_policy_and_is_recorded(stack):
    raw = oai(stack, "Hello.").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-ledgergate-policy"] == "ledgergate-default"
    disclosure = raw.headers["x-ledgergate-ai-disclosure"]
    assert disclosure.startswith("ai-generated; provider=openai; model=gpt-4o-mini; policy=ledgergate-default@")
    rid = raw.headers["x-request-id"]
    outcome = [r for r in stack.audit_records() if r.get("request_id") == rid and r.get("kind") == "outcome"]
    assert outcome and outcome[0]["transparency"]["header"]["x-ledgergate-ai-disclosure"] == disclosure
    assert outcome[0]["transparency"]["provider"] == "openai"
