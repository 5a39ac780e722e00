"""Promises of the servicer's request and response halves that only a count, a label, a log line
or a status shows, driven through the real Servicer.Process (real pipeline, identity, policy,
file audit sink). Each was found by `make mutation` (docs/testing.md, the 2026-11-30 run): the
mutant named in each docstring passed every test before."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from structlog.testing import capture_logs

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server.config import load_config
from ext_proc.server.response_side import ResponseSide
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO
from tests.unit.test_tracing import FakeContext, _drive, _exchange, _headers, _request_headers

pytestmark = pytest.mark.asyncio

_BASE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def _sse(events) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def _empty_deltas(n: int) -> bytes:
    """SSE events without text: released as soon as they are read, none counts as the first text."""
    return _sse([{**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": None}]}] * n)


def _body_replies(replies) -> list:
    return [r.response_body.response.body_mutation.streamed_response for r in replies
            if r.WhichOneof("response") == "response_body"]


def _outcome_last(runtime, order: list[str]) -> None:
    commit = runtime.audit.commit

    async def recording_commit(body):
        rec = await commit(body)
        order.append("commit:" + body["kind"])
        return rec
    runtime.audit.commit = recording_commit


# --- the response's headers and the number of messages (server/response_side.py) ---------------

async def test_a_streamed_answers_headers_go_out_before_its_body_arrives(runtime, token):
    """An SSE answer's headers are answered at once, not held until the first body release
    (mutant response_side.py:112, `whole_body or not end_of_stream`: every stream's headers held,
    the client's time to first byte then waits on the first token). The next message is sent only
    once the headers were answered, as a client waiting for its headers would; held headers never
    come and the body is then sent after a timeout, noted."""
    answered = asyncio.Event()
    late: list[str] = []
    messages = _exchange(token, "req-headers-first", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/event-stream"}))]
    tail = _sse([{**_BASE, "choices": [{"index": 0, "delta": {"content": "Steady figures.\n"}, "finish_reason": "stop"}]}]) \
        + b"data: [DONE]\n\n"

    async def it():
        for m in messages:
            yield m
        try:
            await asyncio.wait_for(answered.wait(), 5)
        except TimeoutError:
            late.append("the headers were not answered before the body came")
        yield pb.ProcessingRequest(response_body=pb.HttpBody(body=tail, end_of_stream=True))
    ctx = FakeContext()
    kinds = []
    async for r in Servicer(runtime).Process(it(), ctx):
        kinds.append(r.WhichOneof("response"))
        if kinds[-1] == "response_headers":
            answered.set()
    assert ctx.aborted is None
    assert late == [], late
    assert kinds[-2:] == ["response_headers", "response_body"], kinds


async def test_a_large_chunk_of_events_without_text_is_released_in_two_messages_not_held_to_its_end(runtime, token):
    """Releases without text wait for the first text only up to 16 KB of the chunk (mutant
    response_side.py:152, `start is MAX_UNSENT_SLICE_BYTES`, never true: a 48 KB chunk of pings
    went out as one message at its end, the first 30 KB waiting for the rest to be scanned)."""
    assert (ResponseSide.FIRST_RESPONSE_SLICE_BYTES, ResponseSide.MAX_UNSENT_SLICE_BYTES) == (2048, 16384)
    chunk = _empty_deltas(400)
    assert 30720 < len(chunk) <= 63488      # slices of 2, 4, 8, 16 KB (16 KB passed: sent), then the rest
    messages = _exchange(token, "req-no-text-bound", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/event-stream"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=False)),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"data: [DONE]\n\n", end_of_stream=True))]
    replies, ctx = await _drive(Servicer(runtime), messages)
    bodies = _body_replies(replies)
    assert b"".join(b.body for b in bodies) == chunk + b"data: [DONE]\n\n"
    # The large chunk: one message for the first 30 KB (past the 16 KB bound), one for the rest.
    assert len(bodies) == 3, [len(b.body) for b in bodies]
    assert 16384 <= len(bodies[0].body) <= 30720


async def test_a_non_sse_stream_is_released_slice_by_slice(runtime, token):
    """Only SSE releases wait for the first text; a stream of another kind (a JSON array of
    chunks, as Gemini streams, here chunks without text) goes out as each slice is scanned (mutant response_side.py:153,
    `and not streamed_sse`: its releases deferred to the chunk's end, one message instead of
    several, the first bytes waiting for the whole chunk's scan)."""
    # Chunks without text (usage only): no slice releases text, only the kind of stream decides.
    item = json.dumps({"usageMetadata": {"promptTokenCount": 17, "candidatesTokenCount": 11, "totalTokenCount": 28}})
    chunk = ("[" + ",\r\n".join([item] * 110)).encode()
    assert len(chunk) < 14336           # below the 16 KB bound: only the SSE rule decides
    messages = _exchange(token, "req-jsonseq", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=False)),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"]", end_of_stream=True))]
    replies, ctx = await _drive(Servicer(runtime), messages)
    bodies = _body_replies(replies)
    assert b"".join(b.body for b in bodies) == chunk + b"]"
    # The chunk's slices of 2, 4 and 8 KB each release what they completed: three messages.
    assert len(bodies) - 1 >= 3, ([len(b.body) for b in bodies], [b.end_of_stream for b in bodies])


async def test_trailers_ending_a_held_body_go_out_after_the_outcome_is_committed(runtime, token):
    """An answer ended by trailers while its tail is held: the tail goes out with the trailers only
    after the outcome record is durable (mutant response_side.py:181, `if not rel.end_of_stream`:
    the outcome was not committed before the end went out; no unaudited end of response)."""
    order: list[str] = []
    _outcome_last(runtime, order)
    # The text does not end a line: it is held back until the stream's end.
    body = _sse([{**_BASE, "choices": [{"index": 0, "delta": {"content": "The figures look"}, "finish_reason": None}]}])
    messages = _exchange(token, "req-trailers", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/event-stream"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=False)),
        pb.ProcessingRequest(response_trailers=pb.HttpTrailers())]

    async def it():
        for m in messages:
            yield m
    ctx = FakeContext()
    got = b""
    async for r in Servicer(runtime).Process(it(), ctx):
        kind = r.WhichOneof("response")
        order.append("reply:" + kind)
        if kind == "response_body":
            got += r.response_body.response.body_mutation.streamed_response.body
    assert ctx.aborted is None
    assert got == body
    assert "commit:outcome" in order and order.index("commit:outcome") < order.index("reply:response_trailers"), order
    assert order.index("commit:outcome") < len(order) - 1 - order[::-1].index("reply:response_body"), order


async def test_an_answer_that_cannot_be_translated_back_ends_with_an_error_after_the_outcome(tmp_path):
    """Multiplexing: an Anthropic answer that is not JSON cannot be translated to the client's
    OpenAI format; the client gets an error body that ends the stream, after the outcome record
    (mutant response_side.py:138, the stop's releases never sent: the stream never ended)."""
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None},
        "multiplex": {"models": {"claude-haiku": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"}}}})
    rt = Runtime(config)
    await rt.start()
    try:
        order: list[str] = []
        _outcome_last(rt, order)
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())
        body = json.dumps({"model": "claude-haiku", "messages": [{"role": "user", "content": "hello"}]}).encode()
        messages = [
            _request_headers({":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw",
                              "authorization": f"Bearer {token}", "content-type": "application/json"}, "req-untranslatable"),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
            pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=b"<html>not json", end_of_stream=True))]
        replies, ctx = await _drive(Servicer(rt), messages)
        assert ctx.aborted is None
        bodies = _body_replies(replies)
        assert len(bodies) == 1 and bodies[0].end_of_stream
        assert json.loads(bodies[0].body)["error"]["message"] == "the upstream answer is not JSON"
        assert order == ["commit:decision", "commit:outcome"], order
    finally:
        await rt.close()


# --- the outcome's spend metric, the failure's log line and answer (server/exchange.py) --------

async def test_spend_is_labelled_with_the_callers_tenant(runtime, token):
    """Spend per tenant is what the counter is for (mutant exchange.py:204: no tenant label)."""
    replies, ctx = await _drive(Servicer(runtime), _exchange(token, "req-spend-tenant", {}))
    assert ctx.aborted is None
    tenants = {s.labels["tenant"] for m in runtime.metrics.registry.collect() if m.name == "ledgergate_tokens"
               for s in m.samples if s.name == "ledgergate_tokens_total" and s.value > 0}
    assert tenants == {"acme"}


async def test_spend_is_labelled_with_the_model_and_provider_the_request_was_routed_to(tmp_path):
    """Multiplexing: the client names an alias ("claude-haiku"), the answer comes from Anthropic's
    "claude-3-5-haiku-latest": the tokens are counted for the model that spent them, not the alias
    (mutant exchange.py:207, `model_routed and model`: the alias)."""
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None},
        "multiplex": {"models": {"claude-haiku": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"}}}})
    rt = Runtime(config)
    await rt.start()
    try:
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())
        body = json.dumps({"model": "claude-haiku", "messages": [{"role": "user", "content": "hello"}]}).encode()
        answer = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
                             "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                             "usage": {"input_tokens": 7, "output_tokens": 3}}).encode()
        messages = [
            _request_headers({":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw",
                              "authorization": f"Bearer {token}", "content-type": "application/json"}, "req-spend-model"),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
            pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True))]
        replies, ctx = await _drive(Servicer(rt), messages)
        assert ctx.aborted is None
        spent = {(s.labels["direction"], s.labels["model"], s.labels["provider"]): s.value
                 for m in rt.metrics.registry.collect() if m.name == "ledgergate_tokens"
                 for s in m.samples if s.name == "ledgergate_tokens_total" and s.value > 0}
        assert spent == {("input", "claude-3-5-haiku-latest", "anthropic"): 7,
                         ("output", "claude-3-5-haiku-latest", "anthropic"): 3}, spent
    finally:
        await rt.close()


async def test_an_audit_outage_before_release_answers_503_in_the_providers_format_and_logs_the_request_id(runtime, token):
    """The decision record cannot be written: nothing is forwarded, the client gets a 503 in its
    provider's error format, and the error log line names the request (mutants exchange.py:229,
    the body's status 504 or 502, an OpenAI SDK then reads a timeout or a server error; 219, the
    log line without its request id)."""
    def broken(lines):
        raise OSError("disk gone")
    runtime.audit.sink.write_batch = broken
    with capture_logs() as logs:
        replies, ctx = await _drive(Servicer(runtime), _exchange(token, "req-audit-down", {})[:2])
    assert ctx.aborted is None
    last = replies[-1]
    assert last.WhichOneof("response") == "immediate_response"
    answer = last.immediate_response
    assert answer.status.code == 503
    assert json.loads(answer.body)["error"]["type"] == "service_unavailable"
    assert {h.header.key: h.header.raw_value for h in answer.headers.set_headers}["x-request-id"] == b"req-audit-down"
    [line] = [e for e in logs if e["event"] == "audit_unavailable"]
    assert line["request_id"] == "req-audit-down" and line["log_level"] == "error"

