"""The official SDKs parse what the inspector releases (re-framed, redacted) and raise on a block.
Offline: the released bytes are replayed through httpx.MockTransport into the real clients."""

from __future__ import annotations

import anthropic
import httpx
import httpx2  # the anthropic SDK installed here is built on httpx2
import openai
import pytest

from tests.unit.test_streaming_support import CARD, EMAIL, openai_chat, pieces, responses, run
from tests.unit.test_streaming_support import anthropic as anthropic_sse

TEXT = f"Reach {EMAIL} today, the summary follows in a few words."
REDACTED = TEXT.replace(EMAIL, "[PII.EMAIL]")


def _http(body: bytes) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(
        lambda req: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)))


def _openai(body: bytes) -> openai.OpenAI:
    return openai.OpenAI(api_key="x", base_url="http://t/v1", http_client=_http(body), max_retries=0)


def _anthropic(body: bytes) -> anthropic.Anthropic:
    client = httpx2.Client(transport=httpx2.MockTransport(
        lambda req: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)))
    return anthropic.Anthropic(api_key="x", base_url="http://t", http_client=client, max_retries=0)


@pytest.mark.parametrize("hold", [None, 6])
def test_openai_chat_sdk_reads_the_reframed_stream(hold):
    released, _ = run(openai_chat(pieces(TEXT), tool_args=pieces('{"a": "b"}')), [7, 8, 9, 60, 61], hold_chars=hold)
    stream = _openai(released).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REDACTED
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [])
    assert args == '{"a": "b"}'
    assert [tc.id for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [] if tc.id] == ["call_1"]
    assert chunks[-1].usage.completion_tokens == 7


def test_openai_chat_sdk_raises_on_the_block_event():
    released, ins = run(openai_chat(pieces(f"card {CARD} ok")), [11])
    with pytest.raises(openai.APIError) as exc:
        for _ in _openai(released).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                           stream=True):
            pass
    assert "pci.card_number" in str(exc.value) and ins.blocked


def test_openai_responses_sdk_reads_the_stream_and_raises_on_a_block():
    released, _ = run(responses(pieces(TEXT)), [100], "openai.responses", hold_chars=6)
    events = list(_openai(released).responses.create(model="m", input="x", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REDACTED
    done = [e for e in events if e.type == "response.completed"][0]
    assert done.response.output_text == REDACTED and done.response.usage.output_tokens == 6
    blocked, _ = run(responses(pieces(f"card {CARD} ok")), [], "openai.responses")
    with pytest.raises(openai.APIError):
        list(_openai(blocked).responses.create(model="m", input="x", stream=True))


@pytest.mark.parametrize("hold", [None, 6])
def test_anthropic_sdk_reads_the_reframed_stream(hold):
    released, _ = run(anthropic_sse(pieces(TEXT), json_parts=pieces('{"q": "' + EMAIL + '"}')), [13, 77],
                      "anthropic.messages", hold_chars=hold)
    with _anthropic(released).messages.stream(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == REDACTED
    assert final.content[1].input == {"q": "[PII.EMAIL]"} and final.usage.output_tokens == 9


def test_anthropic_sdk_raises_on_the_block_event():
    released, _ = run(anthropic_sse(pieces("key AKIAIOSFODNN7ABCDEFG here")), [10], "anthropic.messages")
    assert b"AKIAIOSFODNN7ABCDEFG" not in released
    with pytest.raises(anthropic.APIError):
        with _anthropic(released).messages.stream(model="c", max_tokens=5,
                                                  messages=[{"role": "user", "content": "x"}]) as s:
            "".join(s.text_stream)
