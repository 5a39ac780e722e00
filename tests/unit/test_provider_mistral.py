"""Mistral's chat API, the provider added in the registry's shape: its route, how its model reads
a body, the max_tokens field a cap is written to, no injected stream_options, its error format,
its stream through the response inspector, and the mock that speaks it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from ext_proc.classify import Classifier
from ext_proc.dev.mock import MockProviderServer
from ext_proc.identity import Identity
from ext_proc.pipeline.request import RequestHead, decide_request
from ext_proc.policy import load_policy
from ext_proc.providers import BadRequestBody, error_body, match_surface, parse_request
from tests.support import REPO
from tests.unit.test_streaming_support import EMAIL, assembled, openai_chat, pieces, run

PATH = "/mistral/v1/chat/completions"
SURFACE = match_surface("POST", PATH)
BANK = load_policy(REPO / "policies" / "examples" / "bank.yaml")
DEFAULT = load_policy(REPO / "policies" / "default.yaml")
CLASSIFIER = Classifier()


def body(**fields) -> bytes:
    return json.dumps({"model": "mistral-small-latest", **fields}).encode()


def test_the_route_is_mistrals_and_openais_own_path_stays_openais():
    assert (SURFACE.name, SURFACE.provider, SURFACE.api, SURFACE.inspectable) == \
        ("mistral.chat_completions", "mistral", "chat", True)
    assert match_surface("POST", PATH + "?x=1") == SURFACE
    assert match_surface("POST", "/v1/chat/completions").provider == "openai"
    for method, path in (("GET", PATH), ("POST", "/mistral/v1/fim/completions"), ("POST", "/mistral/v1/chat"),
                         ("POST", "/mistral" + PATH)):
        assert match_surface(method, path) is None, (method, path)


def test_the_reading_view_is_the_turns_in_order_then_tool_calls_and_tools():
    p = parse_request(SURFACE, body(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "read this"},
                                     {"type": "document_url", "document_url": "https://example.org/a.pdf"}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "D681PevKs", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
        {"role": "tool", "tool_call_id": "D681PevKs", "name": "lookup", "content": "found it"},
        {"role": "assistant", "content": "Sure", "prefix": True}],
        tools=[{"type": "function", "function": {"name": "lookup", "description": "search the wiki"}}],
        max_tokens=64, stream=True))
    texts = [s.text for s in p.segments]
    assert texts[:3] == ["be brief", "read this", "https://example.org/a.pdf"]
    assert texts.index("{\"q\": \"x\"}") < texts.index("found it") < texts.index("Sure") < texts.index("search the wiki")
    assert (p.model, p.max_tokens, p.stream) == ("mistral-small-latest", 64, True)


def test_malformed_bodies_are_refused():
    for bad in (body(), body(messages="hi"), body(messages=[{"role": "user", "content": 3}]),
                body(messages=[], max_tokens=-1), body(messages=[], tools={})):
        with pytest.raises(BadRequestBody):
            parse_request(SURFACE, bad)


def _decide(raw: bytes, roles=("engineer",), policy=BANK):
    head = RequestHead(request_id="r1", method="POST", path=PATH, headers={}, attributes={}, received_ms=1,
                       surface=SURFACE)
    ident = Identity(subject="alice", issuer="https://ledgergate.local/dev", auth_method="jwt", roles=roles,
                     groups=(), tenant="acme", scopes=(), actor=(), credential_id="c", expires_at=None)
    return decide_request(head, ident, raw, policy=policy, classifier=CLASSIFIER, hash_key=b"k" * 32, now_ms=2,
                          max_body_bytes=1 << 20)


def test_a_role_cap_is_written_to_max_tokens_and_no_stream_options_is_injected():
    v = _decide(body(messages=[{"role": "user", "content": "hello"}], stream=True))
    assert v.forward and not v.usage_injected
    sent = json.loads(v.new_body)
    assert sent["max_tokens"] == 8192
    assert "max_completion_tokens" not in sent and "stream_options" not in sent   # Mistral refuses both


def test_a_clean_request_goes_byte_for_byte_and_a_secret_is_refused_in_mistrals_format():
    raw = body(messages=[{"role": "user", "content": "hello"}])
    assert _decide(raw, roles=("developer",), policy=DEFAULT).new_body is None
    v = _decide(body(messages=[{"role": "user", "content": "key AKIAQWERTYUIOPASDFGH"}]), roles=("developer",),
                policy=DEFAULT)
    assert not v.forward and v.status == 403
    err = json.loads(v.error_body)
    assert err == {"object": "error", "message": err["message"], "type": "permission_error", "param": None,
                   "code": "secret_detected"}
    assert "AKIA" not in v.error_body.decode()


def test_error_body_types_follow_the_status():
    for status, kind in ((400, "invalid_request_error"), (401, "authentication_error"), (500, "server_error")):
        headers, raw = error_body("mistral", status, "c", "m")
        assert headers == {"content-type": "application/json"} and json.loads(raw)["type"] == kind


def mistral_stream(parts: list[str]) -> bytes:
    """Mistral's SSE: OpenAI's chunks, the usage in the chunk that carries the finish reason."""
    plain = openai_chat(parts, usage=False).decode().split("\n\n")
    done = [e for e in plain if e.startswith("data: ") and "\"finish_reason\":\"stop\"" in e.replace(" ", "")]
    assert len(done) == 1
    last = json.loads(done[0][len("data: "):])
    last["usage"] = {"prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18}
    return "\n\n".join("data: " + json.dumps(last, separators=(",", ":")) if e == done[0] else e
                       for e in plain).encode()


def test_the_stream_is_redacted_at_every_cut_and_the_usage_comes_from_the_last_chunk():
    stream = mistral_stream(pieces(f"Write to {EMAIL} today."))
    for cut in range(1, len(stream), 7):
        released, ins = run(stream, [cut], SURFACE.name)
        assert assembled(released)["content"] == "Write to [PII.EMAIL] today."
        assert ins.usage == {"input_tokens": 7, "output_tokens": 11}
        assert released.rstrip().endswith(b"data: [DONE]")


@pytest.fixture(scope="module")
def mock():
    srv = MockProviderServer()
    srv.start()
    yield srv
    srv.stop()


def _post(mock, path: str, payload: dict, **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{mock.port}{path}", data=json.dumps(payload).encode(),
                                 method="POST", headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_mock_speaks_mistral_on_the_host_envoy_rewrites_to(mock):
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    status, raw = _post(mock, "/v1/chat/completions", chat, host="api.mistral.ai")
    events = [json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")]
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    assert "usage" in events[-1] and events[-1]["choices"][0]["finish_reason"] == "stop"
    status, raw = _post(mock, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}},
                        host="api.mistral.ai")
    assert status == 422 and json.loads(raw)["object"] == "error"
    status, raw = _post(mock, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}})
    assert status == 200   # OpenAI's own route takes it
