"""Bedrock event streams (application/vnd.amazon.eventstream) inspected like SSE: ConverseStream
deltas and InvokeModelWithResponseStream chunks (Anthropic-shaped and Titan) through the same
hold-back, each frame released as it came unless its text changed, read back with botocore's own
event-stream parser (what the AWS SDKs use)."""

from __future__ import annotations

import base64
import json

import pytest
from botocore.eventstream import EventStreamBuffer

from ext_proc.wire import eventstream
from tests.unit.test_streaming_support import CARD, EMAIL, random_cuts, run

SURFACE = "bedrock.converse_stream"
CTYPE = "application/vnd.amazon.eventstream"
PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"


def converse(text: str, n: int = 3, block: int = 0) -> bytes:
    def ev(name, payload):
        return eventstream.event(name, json.dumps({**payload, "p": PAD[:len(text) % 20]}, separators=(",", ":")).encode())
    out = [ev("messageStart", {"role": "assistant"})]
    out += [ev("contentBlockDelta", {"contentBlockIndex": block, "delta": {"text": text[i:i + n]}})
            for i in range(0, len(text), n)]
    out += [ev("contentBlockStop", {"contentBlockIndex": block}), ev("messageStop", {"stopReason": "end_turn"}),
            ev("metadata", {"usage": {"inputTokens": 7, "outputTokens": 11, "totalTokens": 18}, "metrics": {"latencyMs": 3}})]
    return b"".join(out)


def invoke_anthropic(text: str, n: int = 3) -> bytes:
    def chunk(obj):
        return eventstream.event("chunk", json.dumps({"bytes": base64.b64encode(json.dumps(obj).encode()).decode()}).encode())
    out = [chunk({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                                        "usage": {"input_tokens": 5, "output_tokens": 1}}}),
           chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    out += [chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text[i:i + n]}})
            for i in range(0, len(text), n)]
    out += [chunk({"type": "content_block_stop", "index": 0}),
            chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
            chunk({"type": "message_stop"})]
    return b"".join(out)


def read(released: bytes) -> list:
    buf = EventStreamBuffer()
    buf.add_data(released)
    return list(buf)


def converse_text(released: bytes) -> str:
    return "".join(json.loads(m.payload)["delta"]["text"] for m in read(released)
                   if m.headers.get(":event-type") == "contentBlockDelta")


def invoke_text(released: bytes) -> str:
    out = []
    for m in read(released):
        inner = json.loads(base64.b64decode(json.loads(m.payload)["bytes"]))
        if inner["type"] == "content_block_delta":
            out.append(inner["delta"]["text"])
    return "".join(out)


def test_a_clean_converse_stream_passes_byte_for_byte_at_any_split():
    body = converse("The weather is fine today and nothing here is sensitive at all, just a long sentence.")
    for cuts in [[], [1], [13, 14, 15]] + random_cuts(len(body), seed=7):
        released, ins = run(body, cuts, SURFACE, ctype=CTYPE)
        assert released == body and ins.blocked is None
    assert ins.outcome()["usage"] == {"input_tokens": 7, "output_tokens": 11}


@pytest.mark.parametrize("n", [1, 3, 7])
def test_an_email_split_over_converse_deltas_is_redacted_and_frames_stay_valid(n):
    text = f"Please write to {EMAIL} about it; that is all for now, thanks a lot."
    body = converse(text, n)
    for cuts in [[]] + random_cuts(len(body), seed=n, count=8):
        released, ins = run(body, cuts, SURFACE, ctype=CTYPE)
        got = converse_text(released)            # botocore checks every CRC while reading
        assert EMAIL not in got and "[PII.EMAIL]" in got and got.startswith("Please write to ")
        assert ins.outcome()["redactions"][0]["label"] == "pii.email"


def test_a_card_split_three_characters_per_delta_stops_the_converse_stream_with_an_sdk_exception():
    released, ins = run(converse(f"Your card: {CARD} expires soon, keep it safe please.", 3), [40], SURFACE, ctype=CTYPE)
    msgs = read(released)
    assert ins.blocked["label"] == "pci.card_number"
    assert msgs[-1].headers[":message-type"] == "exception"
    assert msgs[-1].headers[":exception-type"] == "modelStreamErrorException"
    assert "4111" not in converse_text(released) and b"4111" not in released


def test_invoke_stream_anthropic_chunks_are_inspected_inside_their_base64():
    clean = invoke_anthropic("Nothing to see in this answer, only plain and harmless words for the test.")
    released, ins = run(clean, [17], "bedrock.invoke_stream", ctype=CTYPE)
    assert released == clean and ins.usage == {"input_tokens": 5, "output_tokens": 9}
    released, ins = run(invoke_anthropic(f"Mail {EMAIL} today, and then wait for the reply please."), [9],
                        "bedrock.invoke_stream", ctype=CTYPE)
    got = invoke_text(released)
    assert EMAIL not in got and "[PII.EMAIL]" in got


def test_bedrock_padding_is_not_scanned_as_content():
    # "p" is random padding; a card-like run there must not stop the stream.
    frame = eventstream.event("contentBlockDelta", json.dumps(
        {"contentBlockIndex": 0, "delta": {"text": "hi"}, "p": CARD}).encode())
    body = frame + eventstream.event("messageStop", b'{"stopReason":"end_turn"}')
    released, ins = run(body, [], SURFACE, ctype=CTYPE)
    assert ins.blocked is None and released == body


def test_a_truncated_or_corrupt_event_stream_is_refused():
    body = converse("hello there, general kenobi")
    released, ins = run(body[:-3], [], SURFACE, ctype=CTYPE)
    assert ins.blocked["label"] == "bad_encoding"
    bad = bytearray(body)
    bad[30] ^= 0xFF
    released, ins = run(bytes(bad), [], SURFACE, ctype=CTYPE)
    assert ins.blocked["label"] == "bad_encoding"
