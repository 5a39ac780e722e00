"""The mock providers, checked with the official SDKs (what they parse is what real providers send)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import anthropic
import httpx
import openai
import pytest

from ext_proc.dev.mock import MockProviderServer, split_reply


@pytest.fixture(scope="module")
def mock():
    srv = MockProviderServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def base(mock) -> str:
    return f"http://127.0.0.1:{mock.port}"


def oai(base: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, default_headers=headers or None)


def ant(base: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base, api_key="x", max_retries=0, default_headers=headers or None)


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    out = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((event, "\n".join(data)))
    return out


USER = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "hello there friend"}]


# --- OpenAI --------------------------------------------------------------------------------

def test_chat_completion_echoes_last_user_message_with_usage(base):
    r = oai(base).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content == "You said: hello there friend"
    assert r.model == "gpt-4o-mini" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len("hello there friend") // 4 + 1
    assert r.usage.completion_tokens == len("You said: hello there friend") // 4 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_array_content_parts(base):
    msgs = [{"role": "user", "content": [{"type": "text", "text": "part one "}, {"type": "text", "text": "two"}]}]
    r = oai(base).chat.completions.create(model="m", messages=msgs)
    assert r.choices[0].message.content == "You said: part one two"


def test_chat_stream_words_and_final_usage_chunk(base):
    chunks = list(oai(base).chat.completions.create(model="m", messages=USER, stream=True,
                                                    stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == ["You ", "said: ", "hello ", "there ", "friend"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len("You said: hello there friend") // 4 + 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_chat_stream_without_include_usage_has_no_usage(base):
    chunks = list(oai(base).chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


def test_chat_stream_wire_format_ends_with_done(base):
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True},
                   headers={"x-mock-chunk-chars": "4"})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers.get("transfer-encoding") == "chunked"
    events = sse_events(r.text)
    assert events[-1] == (None, "[DONE]") and r.text.endswith("data: [DONE]\n\n")
    pieces = [json.loads(d)["choices"][0]["delta"].get("content") for _, d in events[:-1]]
    text = "".join(p for p in pieces if p)
    assert text == "You said: hello there friend"
    assert all(len(p) <= 4 for p in pieces if p) and max(len(p) for p in pieces if p) == 4


def test_reply_directive_is_percent_decoded_utf8_and_chunked(base):
    reply = "Grüße, 東京 — ok"
    chunks = list(oai(base, **{"x-mock-reply": quote(reply), "x-mock-chunk-chars": "3"}).chat.completions.create(
        model="m", messages=USER, stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == reply and all(len(d) <= 3 for d in deltas) and len(deltas) == -(-len(reply) // 3)


def test_responses_json_and_stream(base):
    c = oai(base)
    r = c.responses.create(model="gpt-4o-mini", input="tell me")
    assert r.output_text == "You said: tell me" and r.usage.input_tokens == len("tell me") // 4 + 1
    r2 = c.responses.create(model="m", input=[{"role": "user", "content": [{"type": "input_text", "text": "item"}]}])
    assert r2.output_text == "You said: item"
    with c.responses.stream(model="m", input="stream me") as st:
        kinds = [e.type for e in st]
        final = st.get_final_response()
    assert final.output_text == "You said: stream me" and final.usage.output_tokens > 0
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4  # "You ", "said: ", "stream ", "me"


def test_responses_stream_sequence_numbers_increase(base):
    r = httpx.post(f"{base}/v1/responses", json={"model": "m", "input": "abc", "stream": True})
    events = sse_events(r.text)
    seqs = [json.loads(d)["sequence_number"] for _, d in events]
    assert seqs == list(range(len(events)))
    assert all(e == json.loads(d)["type"] for e, d in events)


def test_embeddings_float_and_base64(base):
    c = oai(base)
    r = c.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])  # SDK asks base64
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 8
    assert r.data[0].embedding != r.data[1].embedding
    raw = httpx.post(f"{base}/v1/embeddings", json={"model": "e", "input": "alpha"}).json()
    assert isinstance(raw["data"][0]["embedding"], list)
    b64 = httpx.post(f"{base}/v1/embeddings", json={"model": "e", "input": "x", "encoding_format": "base64"}).json()
    assert len(base64.b64decode(b64["data"][0]["embedding"])) == 8 * 4


def test_models_list_and_retrieve(base):
    c = oai(base)
    ids = [m.id for m in c.models.list()]
    assert "gpt-4o-mini" in ids
    assert c.models.retrieve("my-model").id == "my-model"


def test_legacy_completions_json_and_stream(base):
    c = oai(base)
    assert c.completions.create(model="m", prompt="abc").choices[0].text == "You said: abc"
    parts = [ch.choices[0].text for ch in c.completions.create(model="m", prompt="abc def", stream=True)]
    assert "".join(parts) == "You said: abc def" and len(parts) == 4


# --- Anthropic -----------------------------------------------------------------------------

def test_anthropic_messages_create(base):
    m = ant(base).messages.create(model="claude-x", max_tokens=50, system="be brief",
                                  messages=[{"role": "user", "content": [{"type": "text", "text": "hi claude"}]}])
    assert m.content[0].text == "You said: hi claude" and m.model == "claude-x"
    assert m.stop_reason == "end_turn" and m.usage.input_tokens == len("hi claude") // 4 + 1


def test_anthropic_messages_stream_sdk_and_event_order(base):
    with ant(base, **{"x-mock-chunk-chars": "5"}).messages.stream(
            model="c", max_tokens=50, messages=[{"role": "user", "content": "stream please"}]) as st:
        pieces = list(st.text_stream)
        final = st.get_final_message()
    assert "".join(pieces) == "You said: stream please" and all(len(p) <= 5 for p in pieces)
    assert final.usage.output_tokens == len("You said: stream please") // 4 + 1
    r = httpx.post(f"{base}/v1/messages", json={"model": "c", "max_tokens": 5, "stream": True,
                                               "messages": [{"role": "user", "content": "a b"}]})
    kinds = [e for e, _ in sse_events(r.text)]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}


def test_anthropic_count_tokens(base):
    r = ant(base).messages.count_tokens(model="c", messages=[{"role": "user", "content": "abcdefghij"}])
    assert r.input_tokens == len("abcdefghij") // 4 + 1


# --- Gemini and Bedrock --------------------------------------------------------------------

def test_gemini_generate_and_stream(base):
    body = {"contents": [{"role": "user", "parts": [{"text": "gem "}, {"text": "ini"}]}]}
    r = httpx.post(f"{base}/v1beta/models/gemini-2.0-flash:generateContent", json=body).json()
    assert r["candidates"][0]["content"]["parts"][0]["text"] == "You said: gem ini"
    assert r["modelVersion"] == "gemini-2.0-flash" and r["usageMetadata"]["promptTokenCount"] == len("gem ini") // 4 + 1
    s = httpx.post(f"{base}/v1beta/models/g:streamGenerateContent?alt=sse", json=body)
    assert "\r\n\r\n" in s.text
    events = [json.loads(d) for _, d in sse_events(s.text)]
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "You said: gem ini"
    assert "usageMetadata" in events[-1] and events[-1]["candidates"][0]["finishReason"] == "STOP"
    arr = httpx.post(f"{base}/v1beta/models/g:streamGenerateContent", json=body).json()
    assert isinstance(arr, list) and len(arr) == len(events)


def test_bedrock_converse_and_invoke_shapes(base):
    conv = httpx.post(f"{base}/model/anthropic.claude-3-haiku/converse",
                      json={"messages": [{"role": "user", "content": [{"text": "bed rock"}]}]}).json()
    assert conv["output"]["message"]["content"][0]["text"] == "You said: bed rock"
    assert conv["usage"]["inputTokens"] == 3
    inv = httpx.post(f"{base}/model/anthropic.claude-3-haiku/invoke",
                     json={"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                           "messages": [{"role": "user", "content": "claude on bedrock"}]}).json()
    assert inv["content"][0]["text"] == "You said: claude on bedrock"
    titan = httpx.post(f"{base}/model/amazon.titan-text-express-v1/invoke", json={"inputText": "titan"}).json()
    assert titan["results"][0]["outputText"] == "You said: titan"


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("status,exc", [(400, openai.BadRequestError), (401, openai.AuthenticationError),
                                        (403, openai.PermissionDeniedError), (404, openai.NotFoundError),
                                        (422, openai.UnprocessableEntityError), (429, openai.RateLimitError),
                                        (500, openai.InternalServerError), (503, openai.InternalServerError)])
def test_openai_sdk_raises_typed_errors(base, status, exc):
    with pytest.raises(exc) as info:
        oai(base, **{"x-mock-status": str(status)}).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == status and info.value.body["message"] == f"mock provider answered {status}"


@pytest.mark.parametrize("status,exc", [(400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
                                        (403, anthropic.PermissionDeniedError), (404, anthropic.NotFoundError),
                                        (429, anthropic.RateLimitError), (500, anthropic.InternalServerError),
                                        (529, anthropic.OverloadedError)])
def test_anthropic_sdk_raises_typed_errors(base, status, exc):
    with pytest.raises(exc) as info:
        ant(base, **{"x-mock-status": str(status)}).messages.create(model="m", max_tokens=5, messages=USER)
    assert info.value.status_code == status and info.value.body["type"] == "error"


def test_openai_stream_error_status_raises(base):
    with pytest.raises(openai.RateLimitError):
        list(oai(base, **{"x-mock-status": "429"}).chat.completions.create(model="m", messages=USER, stream=True))


@pytest.mark.parametrize("path,check", [
    ("/v1/chat/completions", lambda r: r.json()["error"]["type"] == "invalid_request_error"),
    ("/v1/messages", lambda r: r.json()["error"]["type"] == "invalid_request_error" and r.json()["type"] == "error"),
    ("/v1beta/models/g:generateContent", lambda r: r.json()["error"]["status"] == "INVALID_ARGUMENT"),
    ("/model/m/converse", lambda r: r.headers["x-amzn-errortype"] == "ValidationException" and "message" in r.json()),
])
@pytest.mark.parametrize("body", [b"{not json", b"[1,2]", b"\xff\xfe", b"[" * 5000])
def test_malformed_json_is_400_in_provider_format(base, path, check, body):
    r = httpx.post(f"{base}{path}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and check(r)


def test_wrong_types_in_body_do_not_break_the_server(base):
    for body in ({"messages": 5}, {"messages": [{"role": "user", "content": 7}]}, {"input": 3}):
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/responses"):
            r = httpx.post(f"{base}{path}", json=body)
            assert r.status_code in (200, 400)
    assert httpx.get(f"{base}/v1/models").status_code == 200


@pytest.mark.parametrize("header,value", [("x-mock-status", "abc"), ("x-mock-delay-ms", "-1"),
                                          ("x-mock-chunk-chars", "1e3"), ("x-mock-event-delay-ms", "999999999")])
def test_bad_directive_is_400(base, header, value):
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}, headers={header: value})
    assert r.status_code == 400 and header in r.json()["error"]["message"]


def test_unknown_path_is_404(base):
    assert httpx.post(f"{base}/v1/nope", json={}).status_code == 404
    assert httpx.get(f"{base}/v2/models").status_code == 404


# --- timing directives, request log, framing ----------------------------------------------

def test_delay_directives(base):
    t0 = time.monotonic()
    httpx.post(f"{base}/v1/chat/completions", json={"messages": USER}, headers={"x-mock-delay-ms": "150"})
    assert time.monotonic() - t0 >= 0.15
    t0 = time.monotonic()
    r = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER, "stream": True},
                   headers={"x-mock-event-delay-ms": "30"})
    n = len(sse_events(r.text))
    assert n >= 7 and time.monotonic() - t0 >= 0.03 * (n - 1)


def test_request_log_records_and_clears(base):
    assert httpx.delete(f"{base}/_mock/requests").status_code == 204
    assert httpx.get(f"{base}/_mock/requests").json() == []
    httpx.post(f"{base}/v1/chat/completions?x=1", json={"messages": USER}, headers={"x-probe": "p1"})
    log = httpx.get(f"{base}/_mock/requests").json()
    assert len(log) == 1 and log[0]["method"] == "POST" and log[0]["path"] == "/v1/chat/completions?x=1"
    assert json.loads(log[0]["body"])["messages"] == USER and log[0]["headers"]["x-probe"] == "p1"
    with httpx.Client() as c:
        for i in range(205):
            c.get(f"{base}/v1/models", headers={"x-n": str(i)})
    log = httpx.get(f"{base}/_mock/requests").json()
    assert len(log) == 200 and log[-1]["headers"]["x-n"] == "204" and log[0]["headers"]["x-n"] == "5"
    httpx.delete(f"{base}/_mock/requests")


def test_chunked_request_body_is_read(base):
    body = json.dumps({"model": "m", "messages": USER}).encode()
    r = httpx.post(f"{base}/v1/chat/completions", content=iter([body[:10], body[10:]]))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "You said: hello there friend"


def test_keepalive_connection_serves_many_requests(base):
    with httpx.Client() as c:
        texts = [c.post(f"{base}/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": f"n{i}"}], "stream": i % 2 == 0}).text
                 for i in range(6)]
    assert all(f"n{i}" in t for i, t in enumerate(texts))


def test_split_reply():
    assert split_reply("a bc d", None) == ["a ", "bc ", "d"]
    assert split_reply("abcdefg", 3) == ["abc", "def", "g"]
    assert split_reply("", None) == [""]


def test_serve_blocks_and_stops_on_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-c",
                             "from ext_proc.dev.mock import serve; serve('127.0.0.1', 0)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": USER})
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _decode_eventstream(data: bytes) -> list[tuple[dict, dict]]:
    """A strict reader for application/vnd.amazon.eventstream (checks both CRCs)."""
    import binascii
    import struct
    out, pos = [], 0
    while pos < len(data):
        total, hlen = struct.unpack(">II", data[pos:pos + 8])
        assert struct.unpack(">I", data[pos + 8:pos + 12])[0] == binascii.crc32(data[pos:pos + 8])
        msg = data[pos:pos + total]
        assert struct.unpack(">I", msg[-4:])[0] == binascii.crc32(msg[:-4])
        headers, h = {}, msg[12:12 + hlen]
        while h:
            n = h[0]
            name = h[1:1 + n].decode()
            assert h[1 + n] == 7
            vlen = struct.unpack(">H", h[2 + n:4 + n])[0]
            headers[name] = h[4 + n:4 + n + vlen].decode()
            h = h[4 + n + vlen:]
        out.append((headers, json.loads(msg[12 + hlen:-4])))
        pos += total
    return out


def test_bedrock_converse_stream_is_a_valid_eventstream(base):
    r = httpx.post(f"{base}/model/anthropic.claude-3-haiku/converse-stream",
                   json={"messages": [{"role": "user", "content": [{"text": "bed rock"}]}]})
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    events = _decode_eventstream(r.content)
    kinds = [h[":event-type"] for h, _ in events]
    assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    text = "".join(p["delta"]["text"] for h, p in events if h[":event-type"] == "contentBlockDelta")
    assert text == "You said: bed rock" and events[-1][1]["usage"]["inputTokens"] == 3


def test_bedrock_invoke_stream_chunks_carry_model_native_json(base):
    r = httpx.post(f"{base}/model/anthropic.claude-3-haiku/invoke-with-response-stream",
                   json={"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                         "messages": [{"role": "user", "content": "inv"}]})
    chunks = [json.loads(base64.b64decode(p["bytes"])) for _, p in _decode_eventstream(r.content)]
    assert chunks[0]["type"] == "message_start" and chunks[-1]["type"] == "message_stop"
    assert "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta") == "You said: inv"


def test_gemini_count_tokens_and_embed_content(base):
    body = {"contents": [{"parts": [{"text": "abcdefgh"}]}]}
    assert httpx.post(f"{base}/v1beta/models/g:countTokens", json=body).json() == {"totalTokens": 3}
    emb = httpx.post(f"{base}/v1beta/models/e:embedContent", json={"content": {"parts": [{"text": "x"}]}}).json()
    assert len(emb["embedding"]["values"]) == 8
