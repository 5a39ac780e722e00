"""Leak families of tests/unit/test_response_leak_families.py through the real Envoy and ledgergate
under the default policy, the upstream's exact bytes from the mock's x-mock-body directive, sent
one byte per chunk: SSE framed as the SDK decoders accept it with the secret in an `event:` line
and a BOM before the first event, read by the openai SDK and as raw bytes; a card written as a
JSON number in a Gemini function call's arguments; a long generic secret in 1-12 character
deltas."""

from __future__ import annotations

import base64
import json
import random

import httpx
import openai
import pytest

from tests.unit.test_response_leak_families import SHAPES, generic_value, longest_part, sse_variant

pytestmark = pytest.mark.e2e

CARD = "4111 1111 1111 1111"


def body_directive(body: bytes, chunk: int = 1) -> dict:
    return {"x-mock-body": "b64:" + base64.b64encode(body).decode(), "x-mock-chunk-chars": str(chunk)}


def openai_read(stack, body: bytes, chunk: int = 1) -> tuple[str, bytes]:
    """(the content the SDK joined, the raw body the client received)."""
    c = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(), max_retries=0, timeout=60,
                      default_headers=body_directive(body, chunk))
    content = ""
    try:
        for ch in c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "q"}],
                                            stream=True):
            for choice in ch.choices:
                content += choice.delta.content or ""
    except (openai.APIError, ValueError):
        pass          # a blocked stream, or an event the SDK cannot parse: it reads no further
    raw = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                     json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}], "stream": True},
                     headers={"authorization": f"Bearer {stack.token()}", **body_directive(body, chunk)}).content
    return content, raw


@pytest.mark.parametrize("where", ["event", "id", "comment", "bom"])
def test_sse_framing_and_non_data_lines_never_carry_the_card(stack, where):
    rnd = random.Random(where)
    text = "Sure: " + CARD + " ok." if where == "bom" else "Nothing to see here."
    pieces = [text[:10], text[10:14], text[14:]]
    body = sse_variant(SHAPES["openai.chat_completions"](pieces), rnd, secret=CARD, where=where)
    body = body.replace(b"\xef\xbb\xbf", b"") if where != "bom" else body
    if where == "bom" and not body.startswith(b"\xef\xbb\xbf"):
        body = b"\xef\xbb\xbf" + body
    content, raw = openai_read(stack, body + b"data: [DONE]\n\n")
    view = raw.decode("utf-8", "replace")
    assert CARD not in view and longest_part(CARD, [view, content]) < 6


def test_a_card_as_a_json_number_in_gemini_function_args_is_masked(stack):
    ev = {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "pay", "args": {
        "card": 4111111111111111, "amount": 12}}}]}, "finishReason": "STOP", "index": 0}]}
    body = b"data: " + json.dumps(ev).encode() + b"\r\n\r\n"
    r = httpx.post(f"{stack.base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", timeout=30,
                   json={"contents": [{"role": "user", "parts": [{"text": "q"}]}]},
                   headers={"authorization": f"Bearer {stack.token()}", **body_directive(body, 3)})
    assert r.status_code == 200
    assert b"4111111111111111" not in r.content and b"[PCI.CARD_NUMBER]" in r.content


def test_a_long_generic_secret_is_masked_whole(stack):
    rnd = random.Random(7)
    value = generic_value(rnd, 900)
    text = "Here: client_secret=" + value + " done."
    pieces, i = [], 0
    while i < len(text):
        n = rnd.randint(1, 12)
        pieces.append(text[i:i + n])
        i += n
    body = b"".join(b"data: " + json.dumps(ev).encode() + b"\n\n" for ev in SHAPES["openai.chat_completions"](pieces))
    content, raw = openai_read(stack, body + b"data: [DONE]\n\n", chunk=64)
    assert "[SECRET.GENERIC]" in content
    assert longest_part(value, [content, raw.decode("utf-8", "replace")]) < 6


@pytest.mark.parametrize("family", ["mixed", "combining"])
def test_a_long_jwt_written_in_look_alikes_is_masked_whole(stack, family):
    """A JWT over 4,096 characters with look-alike, zero-width or combining characters inside,
    in deltas of 40-200 characters (the mock's body directive is a header: a smaller event count
    keeps it under Envoy's header bound), sent in 64-byte chunks: the gate follows it as the classifier reads it (it stopped at the
    rule's bound, and the rest reached the client)."""
    from ext_proc.classify.normalize import fold_plain
    from tests.unit.test_request_leaks import _long_jwt, _pieces_left
    from tests.unit.test_response_leak_families import _disguised
    rnd = random.Random(family)
    value = _long_jwt(4500, 9)
    core = value.split(".")[1]
    text = "Here: " + _disguised(value, family, rnd) + " done."
    pieces, i = [], 0
    while i < len(text):
        n = rnd.randint(40, 200)
        pieces.append(text[i:i + n])
        i += n
    body = b"".join(b"data: " + json.dumps(ev).encode() + b"\n\n" for ev in SHAPES["openai.chat_completions"](pieces))
    content, raw = openai_read(stack, body + b"data: [DONE]\n\n", chunk=64)
    assert "[SECRET.JWT]" in content
    for view in (content, raw.decode("utf-8", "replace")):
        assert not _pieces_left(core, fold_plain(view)), family
