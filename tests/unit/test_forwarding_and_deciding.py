"""What the servicer sends Envoy for a released request, driven message by message through the
real Servicer.Process (real pipeline, identity, policy; no Envoy): the decision's redactions of
header and query values on the body reply, the identity headers configured for the upstream, the
route cache cleared for a multiplexed body, and the decision taken at the headers when no body
follows. Found by `make mutation` (docs/testing.md): each of these could break with every unit
test passing."""

from __future__ import annotations

import json
import time

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server import decide as decide_mod
from ext_proc.server.config import load_config
from ext_proc.server.decide import HEAVY_QUEUE_MAX
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO
from tests.unit.test_envelope_servicer import _chat, _post, _records
from tests.unit.test_tracing import _drive, _headers, _request_headers

pytestmark = pytest.mark.asyncio


def _set(mutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def _released(reply: pb.ProcessingResponse, phase: str):
    """The common response of a released phase (an immediate response here is a refusal)."""
    assert reply.WhichOneof("response") == phase, reply
    return getattr(reply, phase).response


async def _runtime(tmp_path, overrides: dict) -> Runtime:
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None},
        **overrides})
    rt = Runtime(config)
    await rt.start()
    return rt


def _token(tmp_path) -> str:
    return mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())


# --- server/forwarding.py ------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["hello", "write to mail jane.doe@example.com"])
async def test_header_and_query_values_redacted_by_the_decision_go_out_with_the_body_reply(runtime, token, prompt):
    """A finding in an allowed header's value and in a query value is redacted there, whether the
    body is forwarded as sent or rewritten: the header edit comes with the body reply (the decision
    is taken on the body), and the raw values go out nowhere (forwarding.py:59, 61, 92)."""
    replies, ctx = await _drive(Servicer(runtime), _post(
        token, "/v1/chat/completions?limit=mail-jane.doe@example.com", {"openai-beta": "mail jane.doe@example.com"},
        _chat(prompt), f"fw-redact-{len(prompt)}"))
    assert ctx.aborted is None and len(replies) == 2
    at_headers = _set(_released(replies[0], "request_headers").header_mutation)
    at_body = _released(replies[1], "request_body")
    sent = _set(at_body.header_mutation)
    assert sent["openai-beta"] == "mail [PII.EMAIL]"
    assert sent[":path"] == "/v1/chat/completions?limit=%5BPII.EMAIL%5D"
    assert "jane.doe" not in json.dumps(at_headers) + json.dumps(sent)
    if "jane.doe" in prompt:
        assert at_body.body_mutation.body and b"jane.doe" not in at_body.body_mutation.body
        assert sent["content-length"] == str(len(at_body.body_mutation.body))


async def test_the_configured_identity_headers_go_upstream_with_the_request_headers(tmp_path):
    """`identity.forward_headers` names what the upstream is told about the caller
    (forwarding.py:77, 78; tests/e2e/test_forward_headers.py pins it through Envoy)."""
    rt = await _runtime(tmp_path, {"identity": {"forward_headers": {
        "subject": "x-ledgergate-subject", "tenant": "x-ledgergate-tenant", "roles": "x-ledgergate-roles"}}})
    try:
        replies, ctx = await _drive(Servicer(rt), _post(_token(tmp_path), "/v1/chat/completions", {},
                                                        _chat("hello"), "fw-ident"))
        assert ctx.aborted is None
        sent = _set(_released(replies[0], "request_headers").header_mutation)
        assert {k: v for k, v in sent.items() if k.startswith("x-ledgergate-")} == {
            "x-ledgergate-subject": "alice", "x-ledgergate-tenant": "acme", "x-ledgergate-roles": "developer"}
        _released(replies[1], "request_body")
    finally:
        await rt.close()


async def test_a_multiplexed_body_is_sent_on_a_new_path_with_the_route_cache_cleared(tmp_path):
    """A chat request for a model served by another provider leaves on that provider's path;
    Envoy routes it there only if the route chosen at the headers is dropped (forwarding.py:109)."""
    rt = await _runtime(tmp_path, {"multiplex": {"models": {
        "claude-haiku": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"}}}})
    try:
        body = json.dumps({"model": "claude-haiku", "messages": [{"role": "user", "content": "hello"}]}).encode()
        replies, ctx = await _drive(Servicer(rt), _post(_token(tmp_path), "/v1/chat/completions", {}, body, "fw-mux"))
        assert ctx.aborted is None
        at_body = _released(replies[1], "request_body")
        sent = _set(at_body.header_mutation)
        assert sent[":path"] == "/v1/messages" and sent["x-ledgergate-upstream"] == "anthropic"
        assert at_body.clear_route_cache
        # A body rewritten for its own provider keeps the route chosen at the headers.
        replies, ctx = await _drive(Servicer(rt), _post(_token(tmp_path), "/v1/chat/completions", {},
                                                        _chat("mail jane.doe@example.com"), "fw-own"))
        at_body = _released(replies[1], "request_body")
        assert at_body.body_mutation.body and not at_body.clear_route_cache
    finally:
        await rt.close()


# --- server/decide.py ----------------------------------------------------------------------------

async def test_a_request_without_a_body_is_decided_at_its_headers_and_released(runtime, token):
    """A GET ends at its headers: the decision is taken there, with no body to measure for the
    heavy lane (decide.py:86: `len(None)` would abort the stream instead of deciding)."""
    msgs = [pb.ProcessingRequest(request_headers=_headers({
        ":method": "GET", ":path": "/v1/models", ":authority": "gw", "authorization": f"Bearer {token}"},
        end_of_stream=True))]
    msgs[0].attributes["envoy.filters.http.ext_proc"].CopyFrom(
        _request_headers({}, "dec-bodiless").attributes["envoy.filters.http.ext_proc"])
    replies, ctx = await _drive(Servicer(runtime), msgs)
    assert ctx.aborted is None
    _released(replies[0], "request_headers")
    [rec] = [r for r in _records(runtime) if r["request_id"] == "dec-bodiless"]
    assert rec["decision"]["status"] == 200 and rec["inspection"]["bytes"] == 0


async def test_a_small_body_is_not_refused_when_the_heavy_lane_is_full(runtime, token, monkeypatch):
    """Only bodies of HEAVY_BODY_BYTES or more wait for the heavy lane; a small one is decided at
    once however many large ones are queued (decide.py:86: `heavy` for any body)."""
    monkeypatch.setattr(decide_mod.heavy_lane, "pending", HEAVY_QUEUE_MAX)
    replies, ctx = await _drive(Servicer(runtime), _post(token, "/v1/chat/completions", {}, _chat("hello"),
                                                         "dec-small"))
    assert ctx.aborted is None
    _released(replies[-1], "request_body")
    [rec] = [r for r in _records(runtime) if r["request_id"] == "dec-small"]
    assert rec["decision"]["status"] == 200


async def test_the_busy_refusal_is_stamped_with_the_time_it_was_taken_in_ms(runtime, token, monkeypatch):
    """decide.py:100: the inspection_busy record's time, like the normal decision's."""
    from ext_proc.server.decide import HEAVY_BODY_BYTES

    monkeypatch.setattr(decide_mod.heavy_lane, "pending", HEAVY_QUEUE_MAX)
    before = int(time.time() * 1000)
    replies, _ = await _drive(Servicer(runtime), _post(token, "/v1/chat/completions", {},
                                                       _chat("x" * HEAVY_BODY_BYTES), "dec-busy"))
    after = int(time.time() * 1000)
    assert replies[-1].immediate_response.status.code == 503
    [rec] = [r for r in _records(runtime) if r["request_id"] == "dec-busy"]
    assert rec["decision"]["code"] == "inspection_busy"
    assert before <= rec["received_ms"] <= rec["decided_ms"] <= after


async def test_the_decide_phase_is_measured_in_seconds(runtime, token):
    """`ledgergate_phase_seconds{phase="decide"}` (an operator's metric, decide.py:116): the
    decisions' time, within the time the exchanges took."""
    started = time.perf_counter()
    for i in range(2):
        replies, _ = await _drive(Servicer(runtime), _post(token, "/v1/chat/completions", {}, _chat("hello"),
                                                           f"dec-metric-{i}"))
        _released(replies[-1], "request_body")
    took = time.perf_counter() - started
    get = runtime.metrics.registry.get_sample_value
    assert get("ledgergate_phase_seconds_count", {"phase": "decide"}) == 2
    assert 0 < get("ledgergate_phase_seconds_sum", {"phase": "decide"}) <= took
