"""Translation for the multiplexing mode, checked against the real mock providers' wire formats
(their own request parsers and their answers, split at random points) and read back with the
openai SDK's own types."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.dev.mock import MockProviderServer
from ext_proc.providers.adapters import parse_request
from ext_proc.providers.registry import match_surface
from ext_proc.providers.translate import ResponseTranslator, Target, TranslationError, translate_request

TARGETS = [Target("anthropic", "claude-3-5-haiku-latest"), Target("gemini", "gemini-2.0-flash"),
           Target("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0")]
REPLY = "Sure: the meeting moved to Tuesday at ten, bring the draft."

CHAT = {"model": "house-model", "max_completion_tokens": 300, "temperature": 0.2, "stop": ["END"],
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "When is the meeting?"}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_1", "type": "function", "function": {"name": "calendar", "arguments": '{"day":"tue"}'}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "10:00"},
                     {"role": "user", "content": "And where?"}],
        "tools": [{"type": "function", "function": {"name": "calendar", "description": "look up",
                                                     "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}}}]}


@pytest.fixture(scope="module")
def mock():
    srv = MockProviderServer()
    srv.start()
    yield f"http://127.0.0.1:{srv.port}"
    srv.stop()


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.provider)
def test_requests_are_well_formed_for_the_target(target):
    tr = translate_request(CHAT, target)
    surface = match_surface("POST", tr.path)
    assert surface is not None and surface.provider == target.provider
    parsed = parse_request(surface, tr.body)          # the target surface's own strict parser
    texts = " ".join(seg.text for seg in parsed.segments)
    for needle in ("Be brief.", "When is the meeting?", "10:00", "And where?", "look up"):
        assert needle in texts
    body = json.loads(tr.body)
    if target.provider == "anthropic":
        assert body["system"] == "Be brief." and body["max_tokens"] == 300 and body["stop_sequences"] == ["END"]
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["messages"][1]["content"][0] == {"type": "tool_use", "id": "call_1", "name": "calendar",
                                                      "input": {"day": "tue"}}
        assert tr.headers["anthropic-version"]
    elif target.provider == "bedrock":
        assert tr.path == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
        assert body["system"] == [{"text": "Be brief."}]
        assert body["inferenceConfig"] == {"maxTokens": 300, "temperature": 0.2, "stopSequences": ["END"]}
        assert body["messages"][1]["content"][0]["toolUse"] == {"toolUseId": "call_1", "name": "calendar",
                                                                "input": {"day": "tue"}}
        assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"] == "object"
    else:
        assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
        assert body["generationConfig"] == {"maxOutputTokens": 300, "temperature": 0.2, "stopSequences": ["END"]}
        assert body["contents"][1]["parts"][0]["functionCall"] == {"name": "calendar", "args": {"day": "tue"}}
        assert body["contents"][2]["parts"][0]["functionResponse"]["name"] == "calendar"


@pytest.mark.parametrize("bad, msg", [
    ({"n": 2}, "n is not supported"), ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "cannot be translated"),
    ({"messages": []}, "non-empty"),
])
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.provider)
def test_what_has_no_faithful_mapping_is_refused_precisely(target, bad, msg):
    body = dict(CHAT, **bad)
    with pytest.raises(TranslationError, match=msg):
        translate_request(body, target)


def _upstream(mock: str, target: Target, stream: bool, prompt: str = "hi") -> tuple[int, str, bytes]:
    tr = translate_request({"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}]}, target)
    r = httpx.post(mock + tr.path, content=tr.body, headers={**tr.headers, "x-mock-reply": REPLY.replace(" ", "%20"),
                                                             "x-mock-chunk-chars": "4"}, timeout=10)
    return r.status_code, r.headers.get("content-type", ""), r.content


def _feed(tr: ResponseTranslator, body: bytes, seed: int) -> bytes:
    rnd = random.Random(seed)
    cuts = sorted({rnd.randrange(1, len(body)) for _ in range(rnd.randrange(0, 30))}) + [len(body)]
    out, prev = [], 0
    for c in cuts:
        out.append(tr.feed(body[prev:c], c == len(body)))
        prev = c
    return b"".join(out)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.provider)
def test_a_whole_answer_reads_as_an_openai_completion(mock, target):
    status, ctype, body = _upstream(mock, target, stream=False)
    tr = ResponseTranslator(target, stream=False, client_model="house-model", response_id="chatcmpl-x", created=1)
    tr.start(status, ctype)
    out = _feed(tr, body, 1)
    c = ChatCompletion.model_validate_json(out)
    assert c.choices[0].message.content == REPLY and c.choices[0].finish_reason == "stop"
    assert c.model == "house-model" and c.usage.completion_tokens > 0 and tr.usage["output_tokens"] > 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.provider)
def test_a_stream_split_anywhere_reads_as_openai_chunks(mock, target, seed):
    status, ctype, body = _upstream(mock, target, stream=True)
    tr = ResponseTranslator(target, stream=True, client_model="house-model", response_id="chatcmpl-x", created=1,
                            include_usage=True)
    tr.start(status, ctype)
    out = _feed(tr, body, seed)
    assert tr.content_type == "text/event-stream"
    assert out.count(b"data: [DONE]") == 1
    events = [e[len(b"data: "):] for e in out.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.provider)
def test_upstream_errors_become_openai_errors_with_their_status(mock, target):
    tr = translate_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, target)
    r = httpx.post(mock + tr.path, content=tr.body, headers={**tr.headers, "x-mock-status": "429"}, timeout=10)
    t = ResponseTranslator(target, stream=True, client_model="m", response_id="x", created=1)
    t.start(r.status_code, r.headers.get("content-type"))
    out = json.loads(t.feed(r.content, True))
    assert t.status == 429 and t.content_type == "application/json"
    assert out["error"]["type"] == "rate_limit_error" and out["error"]["code"] == "upstream_429"


PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.provider)
def test_image_parts_take_each_targets_shape_or_are_refused_precisely(target):
    def with_image(url: str) -> dict:
        return dict(CHAT, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    body = json.loads(translate_request(with_image(PNG), target).body)
    if target.provider == "anthropic":
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]
        remote = json.loads(translate_request(with_image("https://example.com/a.png"), target).body)
        assert remote["messages"][0]["content"][1]["source"] == {"type": "url", "url": "https://example.com/a.png"}
    elif target.provider == "gemini":
        assert body["contents"][0]["parts"] == [{"text": "what is this?"},
                                                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]
    else:
        assert body["messages"][0]["content"] == [{"text": "what is this?"},
                                                  {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]
        with pytest.raises(TranslationError, match=r"image type 'image/tiff'"):
            translate_request(with_image("data:image/tiff;base64,AAAA"), target)
    refused = "must be https or a data: URL" if target.provider == "anthropic" else "only base64 data: URLs"
    with pytest.raises(TranslationError, match=refused):
        translate_request(with_image("http://example.com/a.png"), target)
    with pytest.raises(TranslationError, match=r"messages\[0\].content\[1\]: only base64 data: URLs"):
        translate_request(with_image("data:image/png,not-base64"), target)
    with pytest.raises(TranslationError, match="must be a string or an array of parts"):
        translate_request(dict(CHAT, messages=[{"role": "user", "content": {"text": "x"}}]), target)
