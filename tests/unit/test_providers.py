"""Request adapters: segments for every surface, validation of hostile bodies, rendering."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ext_proc.providers import BadRequestBody, match_surface, parse_request, render_request
from ext_proc.providers.adapters import MAX_DEPTH, MAX_SEGMENTS

CHAT = match_surface("POST", "/v1/chat/completions")
RESP = match_surface("POST", "/v1/responses")
EMB = match_surface("POST", "/v1/embeddings")
COMP = match_surface("POST", "/v1/completions")
MOD = match_surface("POST", "/v1/moderations")
MSG = match_surface("POST", "/v1/messages")
COUNT = match_surface("POST", "/v1/messages/count_tokens")
GEM = match_surface("POST", "/v1beta/models/gemini-2.0-flash:generateContent")
GEMS = match_surface("POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse")
GEMC = match_surface("POST", "/v1beta/models/g:countTokens")
CONV = match_surface("POST", "/model/anthropic.claude-3-haiku/converse")
CONVS = match_surface("POST", "/model/anthropic.claude-3-haiku/converse-stream")
INV = match_surface("POST", "/model/anthropic.claude-3-haiku/invoke")
AZ = match_surface("POST", "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21")
ALL_INSPECTABLE = [CHAT, RESP, EMB, COMP, MOD, MSG, COUNT, GEM, GEMS, GEMC, CONV, CONVS, INV, AZ]


def parse(surface, body: object):
    return parse_request(surface, json.dumps(body).encode())


def texts(parsed) -> dict:
    return {s.path: s.text for s in parsed.segments}


def at(body, path):
    for k in path:
        body = body[k]
    return body


# --- segments per surface ------------------------------------------------------------------

def test_openai_chat_segments_cover_every_user_text():
    body = {
        "model": "gpt-4o", "user": "u-alice@example.com", "max_completion_tokens": 100,
        "messages": [
            {"role": "system", "content": "SYS"},
            {"role": "user", "name": "Alice", "content": [
                {"type": "text", "text": "PART"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/img?who=bob"}},
                {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
                {"type": "file", "file": {"file_data": "JVBER", "filename": "secret-plan.pdf"}}]},
            {"role": "assistant", "content": None, "refusal": "REFUSAL",
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "lookup", "arguments": "{\"ssn\":\"078-05-1120\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "TOOLRESULT"},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "LEGACYARGS"}},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "TOOLDESC",
                                                      "parameters": {"type": "object", "properties": {
                                                          "type": {"type": "string", "description": "NESTED"}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"description": "RF"}}},
        "metadata": {"k": "METAVALUE"},
        "prediction": {"type": "content", "content": "PREDICTED"},
    }
    p = parse(CHAT, body)
    t = texts(p)
    for expected in ("SYS", "Alice", "PART", "https://x.test/img?who=bob", "secret-plan.pdf", "REFUSAL",
                     "{\"ssn\":\"078-05-1120\"}", "TOOLRESULT", "LEGACYARGS", "TOOLDESC", "NESTED", "RF",
                     "METAVALUE", "PREDICTED", "u-alice@example.com"):
        assert expected in t.values(), expected
    # binary payloads and structural values are not text
    for absent in ("data:image/png;base64,AAAA", "UklGR", "JVBER", "low", "wav", "call_1", "text", "user"):
        assert absent not in t.values(), absent
    for path, text in t.items():  # every path points at exactly that string
        assert at(body, path) == text
    assert p.model == "gpt-4o" and p.max_tokens == 100 and p.stream is False
    assert p.estimated_tokens == sum(len(x) for x in t.values()) // 4 + 1 + 100


def test_openai_responses_segments():
    body = {"model": "gpt-4.1", "instructions": "INSTR", "max_output_tokens": 50, "stream": True,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "INPUTTEXT"},
                                             {"type": "input_image", "image_url": "data:image/jpeg;base64,/9j"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "ARGS"},
                {"type": "function_call_output", "call_id": "c", "output": "OUT"},
                {"role": "assistant", "content": "PLAIN"},
                {"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "SUMMARY"}]}],
            "tools": [{"type": "function", "name": "f", "description": "TD", "parameters": {}}],
            "text": {"format": {"type": "json_schema", "name": "n", "schema": {"description": "SCHEMA"}}}}
    p = parse(RESP, body)
    t = set(texts(p).values())
    assert {"INSTR", "INPUTTEXT", "ARGS", "OUT", "PLAIN", "SUMMARY", "TD", "SCHEMA"} <= t
    assert "data:image/jpeg;base64,/9j" not in t
    assert p.stream and p.max_tokens == 50
    assert texts(parse(RESP, {"model": "m", "input": "just a string"})) == {("input",): "just a string"}


@pytest.mark.parametrize("surface,body,expected", [
    (EMB, {"model": "e", "input": "one"}, {("input",): "one"}),
    (EMB, {"model": "e", "input": ["a", "b"]}, {("input", 0): "a", ("input", 1): "b"}),
    (EMB, {"model": "e", "input": [[1, 2, 3]]}, {}),
    (EMB, {"model": "e", "input": [1, 2, 3]}, {}),
    (COMP, {"model": "m", "prompt": ["p1", "p2"], "suffix": "SUF"},
     {("prompt", 0): "p1", ("prompt", 1): "p2", ("suffix",): "SUF"}),
    (MOD, {"input": "bad words"}, {("input",): "bad words"}),
    (MOD, {"input": [{"type": "text", "text": "T"}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
     {("input", 0, "text"): "T"}),
])
def test_prompt_like_surfaces(surface, body, expected):
    assert texts(parse(surface, body)) == expected


def test_anthropic_messages_segments():
    body = {"model": "claude-3-5-haiku", "max_tokens": 300, "stream": True,
            "system": [{"type": "text", "text": "SYSBLOCK", "cache_control": {"type": "ephemeral"}}],
            "metadata": {"user_id": "USERID"},
            "messages": [
                {"role": "user", "content": "STRING"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "THINK", "signature": "SIG"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"type": "INPUTTYPE", "q": ["Q"]}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "TR"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "TRSTRING"},
                    {"type": "document", "title": "DOCTITLE",
                     "source": {"type": "text", "media_type": "text/plain", "data": "DOCDATA"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                    {"type": "text", "text": "LAST"}]}],
            "tools": [{"name": "get", "description": "TOOLD", "input_schema": {"type": "object"}}]}
    p = parse(MSG, body)
    t = texts(p)
    assert {"SYSBLOCK", "USERID", "STRING", "THINK", "INPUTTYPE", "Q", "TR", "TRSTRING", "DOCTITLE", "DOCDATA",
            "LAST", "TOOLD"} <= set(t.values())
    assert not {"SIG", "iVBOR", "toolu_1", "ephemeral", "image/png"} & set(t.values())
    assert all(at(body, path) == text for path, text in t.items())
    assert p.stream and p.max_tokens == 300 and p.model == "claude-3-5-haiku"
    assert texts(parse(MSG, {"model": "c", "max_tokens": 1, "system": "S",
                             "messages": [{"role": "user", "content": "x"}]}))[("system",)] == "S"
    c = parse(COUNT, {"model": "c", "messages": [{"role": "user", "content": "count me"}]})
    assert texts(c) == {("messages", 0, "content"): "count me"} and c.max_tokens is None


def test_gemini_segments_and_model_from_path():
    body = {"contents": [{"role": "user", "parts": [
                {"text": "HELLO"}, {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                {"functionResponse": {"name": "f", "response": {"result": "FRES"}}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"q": "FARG"}}}]}],
            "systemInstruction": {"parts": [{"text": "SI"}]},
            "tools": [{"functionDeclarations": [{"name": "f", "description": "FD"}]}],
            "generationConfig": {"maxOutputTokens": 77, "responseSchema": {"description": "RS"}}}
    for surface, stream in ((GEM, False), (GEMS, True)):
        p = parse(surface, body)
        t = set(texts(p).values())
        assert {"HELLO", "FRES", "FARG", "SI", "FD", "RS"} <= t and "iVBOR" not in t
        assert p.model == "gemini-2.0-flash" and p.stream is stream and p.max_tokens == 77
    snake = parse(GEM, {"contents": [{"parts": [{"text": "a"}]}], "system_instruction": {"parts": [{"text": "SNAKE"}]},
                        "generation_config": {"max_output_tokens": 5}})
    assert "SNAKE" in texts(snake).values() and snake.max_tokens == 5
    with pytest.raises(BadRequestBody, match="both systemInstruction and system_instruction"):
        parse(GEM, {"contents": [], "systemInstruction": {"parts": []}, "system_instruction": {"parts": []}})
    assert texts(parse(GEMC, {"generateContentRequest": {"contents": [{"parts": [{"text": "NESTED"}]}]}})) == {
        ("generateContentRequest", "contents", 0, "parts", 0, "text"): "NESTED"}


def test_bedrock_converse_segments():
    body = {"messages": [{"role": "user", "content": [
                {"text": "CONV"}, {"image": {"format": "png", "source": {"bytes": "iVBOR"}}},
                {"toolResult": {"toolUseId": "t1", "content": [{"text": "TRTEXT"}, {"json": {"type": "TRJSON"}}]}},
                {"document": {"format": "txt", "name": "DOCNAME", "source": {"bytes": "Zm9v"}}}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": "TUIN"}}}]}],
            "system": [{"text": "BSYS"}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "f", "description": "TSPEC",
                                                   "inputSchema": {"json": {"type": "object"}}}}]},
            "inferenceConfig": {"maxTokens": 64}}
    for surface, stream in ((CONV, False), (CONVS, True)):
        p = parse(surface, body)
        t = set(texts(p).values())
        assert {"CONV", "TRTEXT", "TRJSON", "DOCNAME", "TUIN", "BSYS", "TSPEC"} <= t
        assert not {"iVBOR", "Zm9v", "t1", "png"} & t
        assert p.model == "anthropic.claude-3-haiku" and p.stream is stream and p.max_tokens == 64


@pytest.mark.parametrize("body,expected,max_tokens", [
    ({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9, "system": "ASYS",
      "messages": [{"role": "user", "content": [{"type": "text", "text": "AMSG"}]}]},
     {("system",): "ASYS", ("messages", 0, "content", 0, "text"): "AMSG"}, 9),
    ({"inputText": "TITAN", "textGenerationConfig": {"maxTokenCount": 12}}, {("inputText",): "TITAN"}, 12),
    ({"prompt": "LLAMA", "max_gen_len": 20}, {("prompt",): "LLAMA"}, 20),
    ({"texts": ["C1", "C2"], "input_type": "search_document"}, {("texts", 0): "C1", ("texts", 1): "C2"}, None),
    ({"messages": [{"role": "user", "content": [{"text": "NOVA"}]}], "system": [{"text": "NSYS"}],
      "inferenceConfig": {"max_new_tokens": 33}},
     {("messages", 0, "content", 0, "text"): "NOVA", ("system", 0, "text"): "NSYS"}, 33),
])
def test_bedrock_invoke_body_shapes(body, expected, max_tokens):
    p = parse(INV, body)
    assert texts(p) == expected and p.max_tokens == max_tokens


def test_azure_model_is_the_deployment():
    p = parse(AZ, {"model": "something-else", "messages": [{"role": "user", "content": "hi"}]})
    assert p.model == "prod-4o" and texts(p) == {("messages", 0, "content"): "hi"}


def test_max_tokens_takes_the_largest_field():
    p = parse(CHAT, {"messages": [], "max_tokens": 10, "max_completion_tokens": 500})
    assert p.max_tokens == 500


# --- hostile and malformed bodies ----------------------------------------------------------

SECRET = "sk-live-SECRETVALUE123"


@pytest.mark.parametrize("surface,body,message", [
    (CHAT, b"", "not valid JSON at byte 0"),
    (CHAT, b'{"messages": [}', "not valid JSON at byte 14"),
    (CHAT, b"\xef\xbb\xbf{}", "byte order mark"),
    (CHAT, b'{"messages": ["\xff"]}', "not valid UTF-8 at byte 15"),
    (CHAT, b'[1, 2]', "must be a JSON object"),
    (CHAT, b'{"messages": 5}', "messages must be an array"),
    (CHAT, b'{}', "messages must be an array"),
    (CHAT, b'{"messages": [5]}', "messages[0] must be an object"),
    (CHAT, b'{"messages": [{"content": 7}]}', "messages[0].content must be a string or an array"),
    (CHAT, b'{"messages": [{"content": [3]}]}', "messages[0].content[0] must be an object"),
    (CHAT, b'{"messages": [{"tool_calls": 5}]}', "messages[0].tool_calls must be an array"),
    (CHAT, b'{"messages": [{"tool_calls": [{"function": []}]}]}', "function must be an object"),
    (CHAT, b'{"messages": [{"name": 1}]}', "messages[0].name must be a string"),
    (CHAT, b'{"messages": [], "tools": {}}', "tools must be an array"),
    (CHAT, b'{"messages": [], "model": 5}', "model must be a string"),
    (CHAT, b'{"messages": [], "stream": "true"}', "stream must be a boolean"),
    (CHAT, b'{"messages": [], "stream_options": true}', "stream_options must be an object"),
    (CHAT, b'{"messages": [], "max_tokens": -1}', "max_tokens must be a non-negative integer"),
    (CHAT, b'{"messages": [], "max_tokens": true}', "max_tokens must be a non-negative integer"),
    (CHAT, b'{"messages": [], "max_tokens": 1.5}', "max_tokens must be a non-negative integer"),
    (CHAT, b'{"messages": [], "user": ["x"]}', "user must be a string"),
    (CHAT, b'{"messages": [], "messages": []}', "duplicate key"),
    (CHAT, b'{"messages": [], "temperature": NaN}', "NaN or Infinity"),
    (CHAT, b'{"messages": [], "seed": 1' + b"0" * 5000 + b"}", "number that is too large"),
    (CHAT, b'{"messages": [{"content": "\\ud800"}]}', "unpaired UTF-16 surrogate"),
    (RESP, b'{"input": 5}', "input must be an array"),
    (RESP, b'{"input": [7]}', "input[0] must be an object"),
    (EMB, b'{"input": {"a": 1}}', "input must be a string or an array"),
    (EMB, b'{"input": [true]}', "input[0] must be a string or a token id"),
    (EMB, b'{"input": [["a"]]}', "input[0] must be a string or an array of token ids"),
    (EMB, b'{"model": "x"}', "input is required"),
    (MSG, b'{"messages": [], "system": 5}', "system must be a string or an array"),
    (MSG, b'{"messages": [{"content": [{"type": "text", "text": "x"}, "oops"]}]}', "messages[0].content[1] must be"),
    (GEM, b'{"contents": {}}', "contents must be an array"),
    (GEM, b'{"contents": [{"parts": 3}]}', "contents[0].parts must be an array"),
    (GEM, b'{"contents": [{"parts": [1]}]}', "contents[0].parts[0] must be an object"),
    (GEM, b'{"contents": [], "generationConfig": []}', "generationConfig must be an object"),
    (GEM, b'{"contents": [], "systemInstruction": "x"}', "systemInstruction must be an object"),
    (CONV, b'{"messages": [{"content": "x"}]}', "messages[0].content must be an array"),
    (CONV, b'{"messages": [], "system": {}}', "system must be an array"),
    (CONV, b'{"messages": [], "inferenceConfig": 1}', "inferenceConfig must be an object"),
    (INV, b'{"foo": 1}', "unrecognised Bedrock invoke body"),
    (INV, b'{"inputText": 5}', "inputText must be a string"),
])
def test_bad_bodies_raise_precise_messages(surface, body, message):
    with pytest.raises(BadRequestBody) as info:
        parse_request(surface, body)
    assert message in str(info.value)


def test_messages_never_echo_body_content():
    bodies = [b'{"messages": [{"content": {"' + SECRET.encode() + b'": 1}}]}',
              b'{"' + SECRET.encode() + b'": 1, "' + SECRET.encode() + b'": 2}',
              b'{"messages": "' + SECRET.encode() + b'"}',
              b'{"messages": [], "model": "' + SECRET.encode() + b'", "max_tokens": "' + SECRET.encode() + b'"}',
              b'{"messages": [' + SECRET.encode() + b']}']
    for b in bodies:
        with pytest.raises(BadRequestBody) as info:
            parse_request(CHAT, b)
        assert "SECRETVALUE" not in str(info.value)


def test_depth_limit_is_exact():
    def nested(n: int) -> bytes:  # n levels of arrays inside the top-level object
        return b'{"messages": [], "metadata": {"k": ' + b"[" * (n - 2) + b"1" + b"]" * (n - 2) + b"}}"
    parse_request(CHAT, nested(MAX_DEPTH))
    with pytest.raises(BadRequestBody, match=f"deeper than {MAX_DEPTH}"):
        parse_request(CHAT, nested(MAX_DEPTH + 1))


@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"a":' * 200_000, b"[" * 2000 + b"]" * 2000,
                                  b'{"messages": [' + b'{"content": [' * 1500 + b"]}" * 1500 + b"]}"])
def test_very_deep_nesting_is_rejected_quickly(body):
    t0 = time.process_time()
    with pytest.raises(BadRequestBody, match="deeper than"):
        parse_request(CHAT, body)
    assert time.process_time() - t0 < 1.0


def test_body_size_limit():
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 1000}]}).encode()
    parse_request(CHAT, body, max_bytes=len(body))
    with pytest.raises(BadRequestBody, match=f"body of {len(body)} bytes is over the limit of {len(body) - 1}"):
        parse_request(CHAT, body, max_bytes=len(body) - 1)


def test_segment_count_is_bounded():
    body = json.dumps({"input": ["a"] * (MAX_SEGMENTS + 1)}).encode()
    with pytest.raises(BadRequestBody, match="more than"):
        parse_request(EMB, body)


def test_non_inspectable_surface_is_refused():
    with pytest.raises(BadRequestBody, match="cannot be inspected"):
        parse_request(match_surface("POST", "/v1/files"), b"{}")


def test_large_body_parses_fast():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hello world " * 20}]} for _ in range(20000)]
    body = json.dumps({"model": "m", "messages": msgs}).encode()  # ~5 MB
    t0 = time.process_time()
    p = parse_request(CHAT, body)
    elapsed = time.process_time() - t0
    assert len(p.segments) == 20000 and elapsed < 2.0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["messages", "content", "role", "text", "input", "parts", "contents", "system", "tools",
                         "tool_calls", "function", "arguments", "type", "model", "stream", "max_tokens", "prompt",
                         "source", "data", "inputText", "toolUse", "generationConfig", "inferenceConfig",
                         "systemInstruction", "instructions", "metadata", "name", "stream_options", "x"]),
        children, max_size=5),
    max_leaves=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(surface=st.sampled_from(ALL_INSPECTABLE), value=json_values)
def test_fuzz_only_bad_request_body_escapes(surface, value):
    body = json.dumps(value).encode()
    try:
        p = parse_request(surface, body)
    except BadRequestBody:
        return
    for seg in p.segments:  # every segment addresses its string, and rendering round-trips
        assert at(p.body, seg.path) == seg.text
    if p.segments:
        out = render_request(p, {0: "[R]"})
        again = json.loads(out)
        assert at(again, p.segments[0].path) == "[R]"
    assert render_request(p, {}) == body


@settings(max_examples=200, deadline=None)
@given(surface=st.sampled_from(ALL_INSPECTABLE), raw=st.binary(max_size=64))
def test_fuzz_random_bytes(surface, raw):
    try:
        parse_request(surface, raw)
    except BadRequestBody:
        pass


# --- rendering -----------------------------------------------------------------------------

RAW = b'{ "model" : "gpt-4o",\n  "messages": [{"role": "user", "content": "mail bob@example.org"}], "stream": true }'


def test_render_without_changes_is_byte_identical():
    p = parse_request(CHAT, RAW)
    assert render_request(p, {}) == RAW
    assert render_request(p, {0: "mail bob@example.org"}) == RAW  # same text: nothing to change
    assert render_request(p, {}, set_fields={("stream",): True}) == RAW  # already so


def test_render_replaces_and_sets_fields_compactly():
    p = parse_request(CHAT, RAW)
    out = render_request(p, {0: "mail [EMAIL]"}, set_fields={("stream_options", "include_usage"): True,
                                                              ("max_completion_tokens",): 256})
    assert b"\n" not in out and b": " not in out
    obj = json.loads(out)
    assert obj["messages"][0]["content"] == "mail [EMAIL]"
    assert obj["stream_options"] == {"include_usage": True} and obj["max_completion_tokens"] == 256
    assert obj["model"] == "gpt-4o" and obj["stream"] is True
    assert p.body["messages"][0]["content"] == "mail bob@example.org"  # the parsed body is untouched


def test_render_set_fields_replaces_null_and_keeps_existing_siblings():
    p = parse(CHAT, {"messages": [], "stream": True, "stream_options": None})
    assert json.loads(render_request(p, {}, set_fields={("stream_options", "include_usage"): True}))[
        "stream_options"] == {"include_usage": True}
    p = parse(CHAT, {"messages": [], "stream_options": {"other": 1}})
    assert json.loads(render_request(p, {}, set_fields={("stream_options", "include_usage"): True}))[
        "stream_options"] == {"other": 1, "include_usage": True}


def test_render_set_fields_through_a_scalar_is_an_error():
    p = parse(CHAT, {"messages": [], "metadata": {"a": "x"}})
    with pytest.raises(ValueError):
        render_request(p, {}, set_fields={("metadata", "a", "b"): 1})


def test_render_keeps_unicode_and_nested_paths():
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "Grüße 東京 bob@example.org"}]}]}]}
    p = parse(MSG, body)
    out = render_request(p, {0: "Grüße 東京 [EMAIL]"})
    assert "東京".encode() in out
    assert json.loads(out)["messages"][0]["content"][0]["content"][0]["text"] == "Grüße 東京 [EMAIL]"


def test_render_rejects_non_string_replacement_and_bad_index():
    p = parse_request(CHAT, RAW)
    with pytest.raises(TypeError):
        render_request(p, {0: 5})  # type: ignore[dict-item]
    with pytest.raises(IndexError):
        render_request(p, {7: "x"})
