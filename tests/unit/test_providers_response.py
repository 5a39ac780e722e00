"""Response adapters (non-streaming): assistant text, tool arguments, usage; rendering back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from ext_proc.providers import BadRequestBody, match_surface, parse_response, render_response
from ext_proc.dev.mock import MockProviderServer

CHAT = match_surface("POST", "/v1/chat/completions")
COMP = match_surface("POST", "/v1/completions")
RESP = match_surface("POST", "/v1/responses")
MSG = match_surface("POST", "/v1/messages")
GEM = match_surface("POST", "/v1beta/models/g:generateContent")
CONV = match_surface("POST", "/model/m/converse")
INV = match_surface("POST", "/model/m/invoke")
EMB = match_surface("POST", "/v1/embeddings")


def texts(p) -> list[str]:
    return [s.text for s in p.segments]


def test_chat_response_text_tool_arguments_and_usage():
    body = {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "ANSWER", "refusal": None,
        "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"x\":\"ARG\"}"}}]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}}
    p = parse_response(CHAT, json.dumps(body).encode())
    assert texts(p) == ["ANSWER", "{\"x\":\"ARG\"}"]
    assert p.usage == {"input_tokens": 11, "output_tokens": 22}
    out = json.loads(render_response(p, {0: "[REDACTED]"}))
    assert out["choices"][0]["message"]["content"] == "[REDACTED]"
    assert out["choices"][0]["message"]["tool_calls"] == body["choices"][0]["message"]["tool_calls"]


def test_unchanged_response_is_byte_identical():
    raw = b'{"choices": [{"message": {"content": "hi"}}],\n "usage": {"prompt_tokens": 1, "completion_tokens": 2}}'
    p = parse_response(CHAT, raw)
    assert render_response(p, {}) == raw and render_response(p, {0: "hi"}) == raw


@pytest.mark.parametrize("surface,body,expected,usage", [
    (COMP, {"choices": [{"text": "LEGACY"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}, ["LEGACY"], (1, 2)),
    (RESP, {"output": [{"type": "message", "content": [{"type": "output_text", "text": "RTEXT"}]},
                       {"type": "function_call", "arguments": "RARGS"}],
            "usage": {"input_tokens": 3, "output_tokens": 4}}, ["RTEXT", "RARGS"], (3, 4)),
    (MSG, {"content": [{"type": "text", "text": "ATEXT"}, {"type": "tool_use", "id": "x", "name": "f",
                                                          "input": {"q": "AIN"}}],
           "usage": {"input_tokens": 5, "output_tokens": 6}}, ["ATEXT", "AIN"], (5, 6)),
    (GEM, {"candidates": [{"content": {"parts": [{"text": "GTEXT"}, {"functionCall": {"name": "f", "args": {"a": "GARG"}}}]}}],
           "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 8}}, ["GTEXT", "GARG"], (7, 8)),
    (CONV, {"output": {"message": {"content": [{"text": "BTEXT"}, {"toolUse": {"input": {"k": "BIN"}}}]}},
            "usage": {"inputTokens": 9, "outputTokens": 10}}, ["BTEXT", "BIN"], (9, 10)),
    (INV, {"content": [{"type": "text", "text": "ICLAUDE"}], "usage": {"input_tokens": 1, "output_tokens": 1}},
     ["ICLAUDE"], (1, 1)),
    (INV, {"inputTextTokenCount": 3, "results": [{"tokenCount": 4, "outputText": "TITAN"}]}, ["TITAN"], (3, 4)),
    (EMB, {"data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}, [], (2, None)),
])
def test_response_shapes(surface, body, expected, usage):
    p = parse_response(surface, json.dumps(body).encode())
    assert texts(p) == expected
    assert p.usage == {"input_tokens": usage[0], "output_tokens": usage[1]}
    if expected:
        out = json.loads(render_response(p, {len(expected) - 1: "[R]"}))
        assert parse_response(surface, json.dumps(out).encode()).segments[-1].text == "[R]"


def test_mock_responses_parse_with_usage():
    import httpx
    srv = MockProviderServer()
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        for path, surface, body in (
            ("/v1/chat/completions", CHAT, {"messages": [{"role": "user", "content": "abc"}]}),
            ("/v1/responses", RESP, {"input": "abc"}),
            ("/v1/messages", MSG, {"max_tokens": 5, "messages": [{"role": "user", "content": "abc"}]}),
            ("/v1beta/models/g:generateContent", GEM, {"contents": [{"parts": [{"text": "abc"}]}]}),
            ("/model/m/converse", CONV, {"messages": [{"role": "user", "content": [{"text": "abc"}]}]}),
        ):
            p = parse_response(surface, httpx.post(base + path, json=body).content)
            assert texts(p) == ["You said: abc"], path
            assert p.usage == {"input_tokens": 1, "output_tokens": len("You said: abc") // 4 + 1}, path
    finally:
        srv.stop()


@pytest.mark.parametrize("body", [b"[]", b'"x"', b'{"id": "x"}', b'{"choices": []}',
                                  b'{"usage": {"prompt_tokens": "x", "completion_tokens": true}}'])
def test_responses_without_text_have_no_segments(body):
    p = parse_response(CHAT, body)
    assert p.segments == []
    if p.usage is not None:
        assert p.usage == {"input_tokens": None, "output_tokens": None}


@pytest.mark.parametrize("body", [b'{"choices": 5}', b'{"choices": [5]}', b'{"choices": [{"message": 3}]}',
                                  b'{"choices": [{"message": {"content": [{"type": "text", "text": "T"}]}}]}',
                                  b'{"choices": [{"message": {"tool_calls": [{"function": 2}]}}]}',
                                  b'{"choices": [{"message": {"tool_calls": [{"function": {"arguments": {}}}]}}]}'])
def test_unknown_response_shapes_are_refused_so_the_caller_scans_raw_text(body):
    with pytest.raises(BadRequestBody, match="unexpected type"):
        parse_response(CHAT, body)


@pytest.mark.parametrize("body,message", [(b"{", "not valid JSON"), (b"\xff", "not valid UTF-8"),
                                          (b"[" * 100 + b"]" * 100, "deeper than")])
def test_invalid_response_json_is_bad_body(body, message):
    with pytest.raises(BadRequestBody, match=message):
        parse_response(CHAT, body)


def test_response_size_limit():
    with pytest.raises(BadRequestBody, match="over the limit"):
        parse_response(CHAT, b'{"a": "' + b"x" * 100 + b'"}', max_bytes=50)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
        ["choices", "message", "content", "text", "tool_calls", "function", "arguments", "output", "candidates",
         "parts", "usage", "usageMetadata", "results", "outputText", "toolUse", "input", "type"]), c, max_size=4),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(surface=st.sampled_from([CHAT, COMP, RESP, MSG, GEM, CONV, INV, EMB]), value=json_values)
def test_fuzz_responses(surface, value):
    try:
        p = parse_response(surface, json.dumps(value).encode())
    except BadRequestBody:
        return
    for i, seg in enumerate(p.segments):
        node = json.loads(render_response(p, {i: "[R]"}))
        for k in seg.path:
            node = node[k]
        assert node == "[R]"
