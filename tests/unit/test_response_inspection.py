"""Response inspection with the real classifier: chunk-boundary safety, redaction, blocking,
bounds, and that the official SDKs still parse what is released."""

from __future__ import annotations

import gzip
import json
import random

import anthropic
import httpx
import openai
import pytest

from ext_proc.classify import Classifier
from ext_proc.streaming import ResponseInspector, ResponseRules

CLF = Classifier()
RULES = ResponseRules(redact={"pii.email": "mask"}, block=frozenset({"pci.card_number", "secret.aws_access_key"}))


def openai_stream(pieces: list[str], usage: bool = True) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    evs = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    evs += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    evs += [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    if usage:
        evs += [{**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}}]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs) + b"data: [DONE]\n\n"


def anthropic_stream(pieces: list[str]) -> bytes:
    evs = [("message_start", {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
            "model": "c", "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1}}}),
           ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    evs += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    evs += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 9}}),
            ("message_stop", {"type": "message_stop"})]
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in evs)


def run(surface: str, body: bytes, cuts: list[int], *, ctype="text/event-stream", enc=None, rules=RULES,
        **kw) -> tuple[bytes, ResponseInspector]:
    ins = ResponseInspector(surface, status=200, content_type=ctype, content_encoding=enc, classifier=CLF,
                            rules=rules, hash_key=b"k" * 32, tenant="t", **kw)
    out, prev = [], 0
    bounds = sorted(set(c for c in cuts if 0 < c < len(body))) + [len(body)]
    for c in bounds:
        for rel in ins.feed(body[prev:c], c == len(body)):
            out.append(rel)
        prev = c
    assert out and out[-1].end_of_stream and all(not r.end_of_stream for r in out[:-1])
    return b"".join(r.body for r in out), ins


def chat_text(released: bytes) -> str:
    text = ""
    for block in released.split(b"\n\n"):
        if block.startswith(b"data: {"):
            ev = json.loads(block[6:])
            for ch in ev.get("choices") or []:
                text += (ch.get("delta") or {}).get("content") or ""
    return text


def three_char_pieces(text: str) -> list[str]:
    return [text[i:i + 3] for i in range(0, len(text), 3)]


def test_clean_stream_text_is_unchanged_at_any_chunking():
    text = "The quick brown fox jumps over the lazy dog, twice, and then sleeps for a while."
    body = openai_stream(three_char_pieces(text))
    rnd = random.Random(7)
    for _ in range(30):
        cuts = [rnd.randrange(1, len(body)) for _ in range(rnd.randrange(1, 40))]
        released, ins = run("openai.chat_completions", body, cuts)
        assert chat_text(released) == text
        assert released.endswith(b"data: [DONE]\n\n")
        assert ins.usage == {"input_tokens": 3, "output_tokens": 7}
        assert ins.outcome()["blocked"] is None


def test_card_number_split_three_chars_per_event_blocks_the_stream():
    text = "Sure, the card is 4111 1111 1111 1111 and it expires soon."
    body = openai_stream(three_char_pieces(text))
    released, ins = run("openai.chat_completions", body, list(range(0, len(body), 11)))
    digits = "".join(ch for ch in chat_text(released) if ch.isdigit())
    assert "4111111111111111" not in digits and "1111 1111" not in released.decode()
    assert b'"code": "response_blocked"' in released or b'"code":"response_blocked"' in released
    assert ins.blocked and ins.blocked["label"] == "pci.card_number"


def test_email_split_across_events_is_redacted():
    text = "Write to jane.doe@example.com for the report, thanks."
    body = openai_stream(three_char_pieces(text))
    released, ins = run("openai.chat_completions", body, [5, 50, 51, 200])
    out = chat_text(released)
    assert "jane.doe@example.com" not in out and "[PII.EMAIL]" in out
    assert out.replace("[PII.EMAIL]", "jane.doe@example.com") == text
    assert ins.outcome()["classification"]["pii.email"]["count"] == 1


def test_the_official_sdks_parse_the_reframed_stream_and_raise_on_a_block():
    text = "Reach jane.doe@example.com today."
    body = openai_stream(three_char_pieces(text))
    released, _ = run("openai.chat_completions", body, [7, 8, 9, 60, 61])
    client = openai.OpenAI(api_key="x", base_url="http://t/v1", http_client=httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=released))))
    chunks = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text.replace(
        "jane.doe@example.com", "[PII.EMAIL]")

    blocked, _ = run("anthropic.messages", anthropic_stream(three_char_pieces("key AKIAIOSFODNN7ABCDEFG here")), [10])
    import httpx2

    aclient = anthropic.Anthropic(api_key="x", base_url="http://t", http_client=httpx2.Client(
        transport=httpx2.MockTransport(lambda req: httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=blocked))))
    with pytest.raises(anthropic.APIError):
        with aclient.messages.stream(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
            "".join(s.text_stream)
    assert b"AKIAIOSFODNN7ABCDEFG" not in blocked


def test_anthropic_stream_usage_and_text():
    text = "Hello there, nothing sensitive here at all."
    released, ins = run("anthropic.messages", anthropic_stream(three_char_pieces(text)), [13, 77, 140])
    got = ""
    for block in released.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                ev = json.loads(line[6:])
                if ev.get("type") == "content_block_delta":
                    got += ev["delta"]["text"]
    assert got == text
    assert ins.usage == {"input_tokens": 5, "output_tokens": 9}


def test_whole_json_response_is_redacted_and_blocked():
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "mail bob@example.org"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode()
    released, ins = run("openai.chat_completions", body, [10, 20], ctype="application/json")
    assert json.loads(released)["choices"][0]["message"]["content"] == "mail [PII.EMAIL]"
    assert ins.usage == {"input_tokens": 1, "output_tokens": 2}
    card = body.replace(b"bob@example.org", b"4111111111111111")
    released, ins = run("openai.chat_completions", card, [], ctype="application/json")
    assert b"4111111111111111" not in released and ins.blocked


def test_buffers_are_bounded():
    huge = b"x" * 5000
    released, ins = run("openai.chat_completions", huge, list(range(0, 5000, 100)), ctype="application/json",
                        max_buffer_bytes=1000)
    assert ins.blocked and len(released) < 1000
    no_boundary = b"data: " + b"y" * 5000
    released, ins = run("openai.chat_completions", no_boundary, list(range(0, 5000, 100)), max_event_bytes=1000)
    assert ins.blocked and b"yyyy" not in released


def test_end_of_stream_is_idempotent_and_gzip_is_inspected():
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "bob@example.org"}}]}).encode()
    ins = ResponseInspector("openai.chat_completions", status=200, content_type="application/json",
                            content_encoding="gzip", classifier=CLF, rules=RULES, hash_key=b"k" * 32, tenant=None)
    rel = ins.feed(gzip.compress(body), True)
    assert set(ins.release_headers_mutation["remove"]) == {"content-encoding", "content-length"}
    assert b"[PII.EMAIL]" in rel[-1].body and rel[-1].end_of_stream
    assert ins.feed(b"", True) == []
    ins = ResponseInspector("openai.chat_completions", status=200, content_type="application/json",
                            content_encoding="br", classifier=CLF, rules=RULES, hash_key=b"k" * 32, tenant=None)
    assert ins.feed(b"\x00\x01", True)[-1].end_of_stream and ins.blocked


def test_gemini_crlf_stream_redaction_and_usage():
    text = "Write to dan@example.com soon please."
    evs = [{"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}]}
           for p in three_char_pieces(text)]
    evs[-1]["usageMetadata"] = {"promptTokenCount": 4, "candidatesTokenCount": 9}
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in evs)
    released, ins = run("gemini.stream_generate_content", body, [9, 10, 11, 99])
    got = "".join(json.loads(b[6:])["candidates"][0]["content"]["parts"][0]["text"]
                  for b in released.split(b"\r\n\r\n") if b.startswith(b"data: "))
    assert got == "Write to [PII.EMAIL] soon please."
    assert ins.usage == {"input_tokens": 4, "output_tokens": 9}
