"""No leak on the way in, through the real Envoy with the default policy: each family of the
request-side review (split values, fields outside any list, attachments, bodies with two shapes,
evasions, overlaps, non-finite numbers) is sent, and the mock upstream, the witness, never holds
the secret in sequence; neither does the audit trail.

The official SDKs send where they can (openai, anthropic); Gemini and Bedrock bodies go as plain
HTTP (their wire format is what matters here, and botocore would sign for AWS)."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import openai
import pytest

from tests.support import unique_marker
from tests.unit.test_request_leaks import _intact

pytestmark = pytest.mark.e2e

CARD = "4111111111111111"
AWS = "AKIAIOSFODNN7QWERTYZ"
GEMINI = "/v1beta/models/gemini-1.5-flash:generateContent"
CONVERSE = "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
INVOKE = "/model/amazon.titan-text-express-v1/invoke"


def _no_leak(stack, needle: str, marker: str) -> None:
    """Neither the upstream nor the audit trail ever held NEEDLE (what reached the upstream is
    found by the request's marker; with a deny nothing carrying the marker arrived at all)."""
    for req in stack.mock_requests():
        if marker in req["body"] or needle in req["body"]:
            try:
                assert not _intact(req["body"].encode(), needle), req["body"][:300]
            except json.JSONDecodeError:
                assert needle not in req["body"]
    audit = "".join(json.dumps(r, ensure_ascii=False) for r in stack.audit_records())
    assert needle not in audit


def _post(stack, path: str, body: dict) -> httpx.Response:
    token = stack.token()
    return httpx.post(stack.base_url + path, json=body, timeout=30,
                      headers={"authorization": f"Bearer {token}", "x-goog-api-key": token})


@pytest.fixture(scope="module")
def sdk(stack):
    token = stack.token()
    return (openai.OpenAI(base_url=stack.base_url + "/v1", api_key=token, max_retries=0),
            anthropic.Anthropic(base_url=stack.base_url, api_key=token, max_retries=0))


def test_a_key_split_across_two_openai_text_parts_is_refused(stack, sdk):
    marker = unique_marker("split-oa")
    with pytest.raises(openai.PermissionDeniedError):
        sdk[0].chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
            {"type": "text", "text": f"{marker} my key is AKIAIOSF"}, {"type": "text", "text": "ODNN7QWERTYZ ok"}]}])
    _no_leak(stack, AWS, marker)


def test_a_card_split_across_two_anthropic_turns_is_refused(stack, sdk):
    marker = unique_marker("split-an")
    with pytest.raises(anthropic.PermissionDeniedError):
        sdk[1].messages.create(model="claude-3-5-haiku-latest", max_tokens=16, messages=[
            {"role": "user", "content": f"{marker} card 4111 1111"},
            {"role": "user", "content": [{"type": "text", "text": "1111"}, {"type": "text", "text": " 1111"}]}])
    _no_leak(stack, CARD, marker)


def test_an_email_split_across_gemini_parts_is_masked_in_both(stack):
    marker = unique_marker("split-gm")
    r = _post(stack, GEMINI, {"contents": [{"role": "user", "parts": [
        {"text": f"{marker} write to jane.d"}, {"text": "oe@example.com today"}]}]})
    assert r.status_code == 200, r.text
    _no_leak(stack, "jane.doe@example.com", marker)


def test_a_key_split_across_bedrock_content_blocks_is_refused(stack):
    marker = unique_marker("split-br")
    r = _post(stack, CONVERSE, {"messages": [{"role": "user", "content": [
        {"text": f"{marker} ghp_aB3dE5fG7hJ9kL1m"}, {"text": "N3pQ5rS7tV9wX1yZ3cD7"}]}]})
    assert r.status_code == 403, r.text
    _no_leak(stack, "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7", marker)


@pytest.mark.parametrize("path,extra", [
    ("/v1/chat/completions", {"stop": ["x", AWS]}),
    ("/v1/chat/completions", {"metadata": {"note": AWS}}),
    ("/v1/chat/completions", {"prompt_cache_key": AWS}),
    ("/v1/chat/completions", {"some_future_field": {"deep": [AWS]}}),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {AWS: {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("/v1/chat/completions", {"metadata": {AWS: "as a key"}}),
    ("/v1/responses", {"previous_response_id": AWS}),
    ("/v1/responses", {"include": [AWS]}),
    ("/v1/responses", {"conversation": AWS}),
    ("/v1/messages", {"stop_sequences": [AWS]}),
    (GEMINI, {"cachedContent": "cachedContents/" + AWS}),
    (CONVERSE, {"additionalModelRequestFields": {"hint": AWS}}),
])
def test_a_secret_in_a_field_no_list_names_is_refused(stack, path, extra):
    marker = unique_marker("field")
    base = {
        "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}]},
        "/v1/responses": {"model": "gpt-4o-mini", "input": marker},
        "/v1/messages": {"model": "claude-3-5-haiku-latest", "max_tokens": 16,
                         "messages": [{"role": "user", "content": marker}]},
        GEMINI: {"contents": [{"parts": [{"text": marker}]}]},
        CONVERSE: {"messages": [{"role": "user", "content": [{"text": marker}]}]},
    }[path]
    r = _post(stack, path, {**base, **extra})
    assert r.status_code == 403, r.text
    _no_leak(stack, AWS, marker)


def test_a_card_in_the_model_segment_of_the_path_is_refused(stack):
    marker = unique_marker("path")
    r = _post(stack, f"/v1beta/models/x{CARD}:generateContent", {"contents": [{"parts": [{"text": marker}]}]})
    assert r.status_code in (403, 404), r.text
    _no_leak(stack, CARD, marker)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("path,part_for", [
    ("/v1/chat/completions", lambda t: {"type": "image_url", "image_url": {"url": "data:text/plain;base64," + _b64(t)}}),
    ("/v1/chat/completions", lambda t: {"type": "file", "file": {"filename": "n.txt",
                                                                "file_data": "data:text/plain;base64," + _b64(t)}}),
    ("/v1/messages", lambda t: {"type": "document", "source": {"type": "base64", "media_type": "text/plain",
                                                               "data": _b64(t)}}),
    (GEMINI, lambda t: {"inlineData": {"mimeType": "text/csv", "data": _b64(t)}}),
    (CONVERSE, lambda t: {"document": {"format": "txt", "name": "notes", "source": {"bytes": _b64(t)}}}),
])
def test_a_secret_inside_a_text_attachment_is_refused(stack, path, part_for):
    marker = unique_marker("attach")
    part = part_for("id,card\n1," + CARD + "\n")
    body = {
        "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": marker}, part]}]},
        "/v1/messages": {"model": "claude-3-5-haiku-latest", "max_tokens": 16, "messages": [
            {"role": "user", "content": [{"type": "text", "text": marker}, part]}]},
        GEMINI: {"contents": [{"parts": [{"text": marker}, part]}]},
        CONVERSE: {"messages": [{"role": "user", "content": [{"text": marker}, part]}]},
    }[path]
    r = _post(stack, path, body)
    assert r.status_code == 403, r.text
    _no_leak(stack, CARD, marker)


def test_an_image_goes_through_labelled_in_the_decision(stack):
    marker = unique_marker("image")
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(200))).decode()
    r = _post(stack, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": marker}, {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]}]})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    rec = next(x for x in stack.audit_records() if x.get("kind") == "decision" and x.get("request_id") == rid)
    assert "content.unscanned.image" in rec["classification"]["summary"]


def test_a_bedrock_invoke_body_with_two_shapes_is_read_in_both(stack):
    marker = unique_marker("shapes")
    r = _post(stack, INVOKE, {"inputText": marker, "prompt": "card " + CARD})
    assert r.status_code == 403, r.text
    _no_leak(stack, CARD, marker)


@pytest.mark.parametrize("written,needle", [
    ("4111.1111.1111.1111", CARD), ("4111 - 1111 - 1111 - 1111", CARD), ("4111\t1111\n1111  1111", CARD),
    ("\u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661", CARD),
    ("AKIA\u200b\u200b\u200bIOSFODNN7QWERTYZ", AWS), ("aws_key_" + AWS, AWS), ("\u0410KIAIOSFODNN7QWERTYZ", AWS),
    ("4111111111111111@example.com", CARD), ("BE84 4111 1111 1111 1111", CARD),
])
def test_evasions_and_overlaps_are_refused(stack, sdk, written, needle):
    marker = unique_marker("evade")
    with pytest.raises(openai.PermissionDeniedError):
        sdk[0].chat.completions.create(model="gpt-4o-mini", messages=[
            {"role": "user", "content": f"{marker} here: {written}"}])
    _no_leak(stack, needle, marker)


def test_an_ssn_with_dots_and_a_password_holding_an_email_are_masked_whole(stack):
    marker = unique_marker("mask")
    r = _post(stack, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content":
              f"{marker} ssn 536.22.8726 and password=Winter!2024@home.net"}]})
    assert r.status_code in (200, 403), r.text
    _no_leak(stack, "536.22.8726", marker)
    _no_leak(stack, "Winter!2024", marker)


def test_a_non_finite_number_is_refused_like_nan(stack):
    token = stack.token()
    r = httpx.post(stack.base_url + "/v1/chat/completions", timeout=30,
                   headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                   content=b'{"model":"gpt-4o-mini","temperature":1e999,"messages":[{"role":"user","content":"hi"}]}')
    assert r.status_code == 400 and r.json()["error"]["message"]


# --- families of the second review (tests/unit/test_request_leak_families.py), through Envoy ---
ANTHROPIC = "/v1/messages"


@pytest.mark.parametrize("path,body_for", [
    # one digit per line (CRLF), in an OpenAI chat turn
    ("/v1/chat/completions", lambda m: {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"{m} card:\r\n" + "\r\n".join(CARD)}]}),
    # a combining mark after every digit, in a Gemini part
    (GEMINI, lambda m: {"contents": [{"parts": [{"text": f"{m} card " + "".join(d + "\u0332" for d in CARD)}]}]}),
    # the card as the numbers of an array in an Anthropic tool_use input
    (ANTHROPIC, lambda m: {"model": "claude-3-5-haiku-latest", "max_tokens": 16, "messages": [
        {"role": "user", "content": m},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "pay",
                                           "input": {"card": [4111, 1111, 1111, 1111]}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}),
    # one character per element of an OpenAI stop list
    ("/v1/chat/completions", lambda m: {"model": "gpt-4o-mini", "stop": list(CARD),
                                        "messages": [{"role": "user", "content": m}]}),
    # a date glued in front of the card in a Bedrock converse block
    (CONVERSE, lambda m: {"messages": [{"role": "user", "content": [{"text": f"{m} on 2023-05-31 4111 1111 1111 1111"}]}]}),
])
def test_a_card_a_model_still_reads_is_refused(stack, path, body_for):
    marker = unique_marker("family")
    r = _post(stack, path, body_for(marker))
    assert r.status_code == 403, r.text
    _no_leak(stack, CARD, marker)


def test_pii_in_array_numbers_and_ideographic_dots_is_masked(stack):
    marker = unique_marker("family-pii")
    r = _post(stack, GEMINI, {"contents": [
        {"role": "user", "parts": [{"text": f"{marker} write to jane.doe@example\u3002com"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "x"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"ssn": [536, 22, 8726]}}}]}]})
    assert r.status_code == 200, r.text
    _no_leak(stack, "536228726", marker)
    _no_leak(stack, "jane.doe@example.com", marker)
