"""The multiplexing mode through the real Envoy with the official openai SDK: one OpenAI-compatible
surface, models mapped to Anthropic and Gemini by configuration, requests and answers (streamed
or not) translated, redaction applied before translation, and failover to the provider's next
endpoint when the first answers 503 (Envoy retry with priorities), with the endpoint that
answered on the outcome record."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import openai
import pytest

from tests.support import REPO, free_ports, mock_reply, start_stack, wait_port

pytestmark = pytest.mark.e2e

REPLY = "The review is on Thursday; the draft is in the shared folder."


def _mock(port: int, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(port), *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def _requests(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_mock/requests", timeout=5) as r:
        return json.loads(r.read())


def _stack(tmp_path_factory, name: str, models: dict, upstreams, policy: str | None = None):
    """A stack whose providers are two mocks of our own: one that answers 503, one that works."""
    tmp = tmp_path_factory.mktemp(name)
    down_port, good_port = free_ports(2)
    mocks = [_mock(down_port, "--fail-status", "503"), _mock(good_port)]
    cfg = tmp / "ledgergate.yaml"
    config: dict = {"multiplex": {"models": models}}
    if policy:
        config["policy"] = {"path": str(REPO / "tests" / "e2e" / "policies" / policy)}
    cfg.write_text(json.dumps(config))
    s = start_stack(tmp, "--config", str(cfg), *(f"--upstream={u}" for u in upstreams(down_port, good_port)))
    s.down_port, s.good_port = down_port, good_port
    return s, mocks


def _stop(s, mocks) -> None:
    s.stop()
    for p in mocks:
        p.terminate()
        p.wait(10)


@pytest.fixture(scope="module")
def mux(tmp_path_factory):
    s, mocks = _stack(tmp_path_factory, "mux", {
        "claude-haiku": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
        "gemini-flash": {"provider": "gemini", "model": "gemini-2.0-flash"},
        "bedrock-haiku": {"provider": "bedrock", "model": "anthropic.claude-3-5-haiku-20241022-v1:0"}},
        lambda down, good: [f"anthropic=http://127.0.0.1:{down},http://127.0.0.1:{good}",
                            f"gemini=http://127.0.0.1:{good}", f"bedrock=http://127.0.0.1:{good}"])
    yield s
    _stop(s, mocks)


def client(s, reply: str = REPLY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=s.token(), max_retries=0, timeout=30,
                         default_headers={"x-mock-reply": mock_reply(reply), "x-mock-chunk-chars": "5"})


def _records(s, rid: str) -> tuple[dict, dict]:
    recs = [r for r in s.audit_records() if r.get("request_id") == rid]
    return [r for r in recs if r["kind"] == "decision"][0], [r for r in recs if r["kind"] == "outcome"][0]


def test_an_anthropic_mapped_model_fails_over_from_a_503_and_reads_as_openai(mux):
    marker = "mux-marker-claude"
    raw = client(mux).chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": f"{marker}: mail bob@example.org the date"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == REPLY and completion.model == "claude-haiku"
    assert completion.usage.completion_tokens > 0
    assert "x-ledgergate-upstream-host" not in raw.headers
    # The first endpoint answered 503; Envoy retried on the next priority, which got Anthropic's format.
    assert any(marker in r["body"] for r in _requests(mux.down_port))
    sent = [r for r in _requests(mux.good_port) if marker in r["body"]]
    assert len(sent) == 1 and sent[0]["path"] == "/v1/messages"
    body = json.loads(sent[0]["body"])
    assert body["model"] == "claude-3-5-haiku-latest" and body["system"] == "Be brief."
    assert "bob@example.org" not in sent[0]["body"]        # redacted before translation
    assert "authorization" not in {k.lower() for k in sent[0]["headers"]}
    decision, outcome = _records(mux, raw.headers["x-request-id"])
    assert decision["multiplex"] == {"provider": "anthropic", "model": "claude-3-5-haiku-latest",
                                     "rationale": "multiplex.models['claude-haiku'] -> anthropic/claude-3-5-haiku-latest"}
    assert decision["upstream"] == "anthropic" and decision["model_requested"] == "claude-haiku"
    assert outcome["upstream_host"] == f"127.0.0.1:{mux.good_port}" and outcome["status"] == 200


def test_a_gemini_mapped_model_streams_as_openai_chunks(mux):
    stream = client(mux).chat.completions.create(
        model="gemini-flash", stream=True, messages=[{"role": "user", "content": "mux-marker-gemini"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not any(not c.choices for c in chunks)   # the usage chunk was not asked for: not delivered
    sent = [r for r in _requests(mux.good_port) if "mux-marker-gemini" in r["body"]][0]
    assert sent["path"] == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


def test_a_translated_stream_is_inspected_and_usage_is_delivered_when_asked_for(mux):
    # The default policy masks card numbers in answers: the translated stream goes through the
    # same response inspection as a native one (the number arrives five characters per event).
    stream = client(mux, "Use card 4111 1111 1111 1111 for the booking.").chat.completions.create(
        model="claude-haiku", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "card?"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert text.startswith("Use card ") and "4111" not in text and "[PCI.CARD_NUMBER]" in text


@pytest.mark.parametrize("stream", [False, True])
def test_a_bedrock_mapped_model_speaks_converse_and_reads_as_openai(mux, stream):
    marker = f"mux-marker-bedrock-{int(stream)}"
    kwargs = {"model": "bedrock-haiku", "messages": [{"role": "user", "content": marker}]}
    if stream:
        chunks = list(client(mux).chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client(mux).chat.completions.create(**kwargs).choices[0].message.content
    assert text == REPLY
    sent = [r for r in _requests(mux.good_port) if marker in r["body"]][0]
    assert sent["path"] == ("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/"
                            + ("converse-stream" if stream else "converse"))


def test_what_cannot_be_translated_is_a_precise_400(mux):
    with pytest.raises(openai.BadRequestError) as err:
        client(mux).chat.completions.create(model="claude-haiku", n=2, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "translation_error" and "n is not supported" in err.value.message


def test_an_unmapped_model_still_goes_to_openai(mux):
    out = client(mux).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "plain"}])
    assert out.choices[0].message.content == REPLY and out.model != "claude-haiku"


def test_the_model_list_names_the_aliases(mux):
    ids = [m.id for m in client(mux).models.list()]
    assert {"claude-haiku", "gemini-flash", "bedrock-haiku"} <= set(ids)
    assert "gpt-4o-mini" in ids                       # what OpenAI (the mock) lists is still there
    owners = {m.id: m.owned_by for m in client(mux).models.list()}
    assert owners["claude-haiku"] == "anthropic" and owners["gemini-flash"] == "gemini"


def test_an_alias_on_the_responses_api_is_a_clear_400_not_a_call_to_openai(mux):
    mux.clear_mock()
    with pytest.raises(openai.BadRequestError) as info:
        client(mux).responses.create(model="claude-haiku", input="alias-on-responses")
    assert info.value.code == "model_alias_not_on_this_api"
    assert "/v1/chat/completions" in info.value.message
    assert not [r for r in mux.mock_requests() if "alias-on-responses" in r.get("body", "")]
    assert not [r for r in _requests(mux.good_port) if "alias-on-responses" in r.get("body", "")]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A failover chain across providers: Anthropic first (its only endpoint is down), then Gemini."""
    s, mocks = _stack(tmp_path_factory, "chain", {"resilient": [
        {"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
        {"provider": "gemini", "model": "gemini-2.0-flash"}]},
        lambda down, good: [f"anthropic=http://127.0.0.1:{down}", f"gemini=http://127.0.0.1:{good}"])
    yield s
    _stop(s, mocks)


@pytest.mark.parametrize("stream", [False, True])
def test_a_503_from_the_first_provider_fails_over_to_the_next_provider_in_its_format(chain, stream):
    marker = f"chain-marker-{int(stream)}"
    c = client(chain)
    if stream:
        with c.chat.completions.with_streaming_response.create(
                model="resilient", stream=True, messages=[{"role": "user", "content": f"{marker} bob@example.org"}]) as r:
            rid = r.headers["x-request-id"]
            chunks = list(r.parse())
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        raw = c.chat.completions.with_raw_response.create(
            model="resilient", messages=[{"role": "user", "content": f"{marker} bob@example.org"}])
        rid, text = raw.headers["x-request-id"], raw.parse().choices[0].message.content
    assert text == REPLY
    tried = [r for r in _requests(chain.down_port) if marker in r["body"]]
    answered = [r for r in _requests(chain.good_port) if marker in r["body"]]
    assert len(tried) == 1 and tried[0]["path"] == "/v1/messages"          # Anthropic's format first
    assert len(answered) == 1 and answered[0]["path"].startswith("/v1beta/models/gemini-2.0-flash:")
    assert "bob@example.org" not in tried[0]["body"] + answered[0]["body"]  # redacted once, before both
    recs = [r for r in chain.audit_records() if r.get("request_id") == rid]
    attempts = [r for r in recs if r["kind"] == "attempt"]
    assert [a["provider"] for a in attempts if a["forwarded_sha256"]] == ["anthropic", "gemini"]
    # The failed attempt's own record says why it failed (committed when its 503 arrived).
    assert [(a["provider"], a["error"]) for a in attempts if a["error"]] == [("anthropic", "upstream_status_503")]
    decision = [r for r in recs if r["kind"] == "decision"][0]
    assert decision["multiplex"]["failover"] == [{"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
                                                 {"provider": "gemini", "model": "gemini-2.0-flash"}]
    outcome = [r for r in recs if r["kind"] == "outcome"][0]
    assert outcome["upstream_host"] == f"127.0.0.1:{chain.good_port}"
    res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "verify", str(chain.audit_dir)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_client_cannot_pick_a_chain_route_itself(chain):
    out = client(chain).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "chain-spoof"}],
        extra_headers={"x-ledgergate-mux": "resilient"})
    assert out.parse().choices[0].message.content == REPLY
    assert not [r for r in _requests(chain.good_port) + _requests(chain.down_port) if "chain-spoof" in r["body"]]


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    s, mocks = _stack(tmp_path_factory, "chosen", {
        "bedrock-haiku": {"provider": "bedrock", "model": "anthropic.claude-3-5-haiku-20241022-v1:0"}},
        lambda down, good: [f"bedrock=http://127.0.0.1:{good}"], policy="serve_with.yaml")
    yield s
    _stop(s, mocks)


def test_the_policy_chooses_the_provider_for_personal_data(chosen):
    raw = client(chosen).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "serve-with-marker mail ann@example.org"}])
    assert raw.parse().choices[0].message.content == REPLY
    sent = [r for r in _requests(chosen.good_port) if "serve-with-marker" in r["body"]]
    assert len(sent) == 1 and sent[0]["path"].endswith("/converse")    # Bedrock, not OpenAI
    decision, _outcome = _records(chosen, raw.headers["x-request-id"])
    assert decision["decision"]["serve_with"] == "bedrock-haiku"
    assert decision["multiplex"]["rationale"].startswith("policy serve_with 'bedrock-haiku'")
    # Without personal data the client's own model is served (by the stack's OpenAI mock).
    plain = client(chosen).chat.completions.create(model="gpt-4o-mini",
                                                   messages=[{"role": "user", "content": "serve-with-plain"}])
    assert plain.choices[0].message.content == REPLY
    assert not [r for r in _requests(chosen.good_port) if "serve-with-plain" in r["body"]]
