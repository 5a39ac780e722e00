"""The end of a response waits for its outcome record; held JSON headers do not (they go to Envoy
while the record is made durable), and a failed outcome commit means the body never follows."""

from __future__ import annotations

import json

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server.response_side import ResponseSide
from ext_proc.server.servicer import Servicer
from tests.unit.test_tracing import Aborted, FakeContext, _drive, _exchange, _headers

pytestmark = pytest.mark.asyncio


def _kinds(replies) -> list[str]:
    out = []
    for r in replies:
        kind = r.WhichOneof("response")
        if kind == "response_body":
            sr = r.response_body.response.body_mutation.streamed_response
            kind += ":eos" if sr.end_of_stream else ""
        out.append(kind)
    return out


async def test_headers_go_out_before_the_outcome_commit_and_the_body_after_it(runtime, token):  # noqa: F811
    order: list[str] = []
    commit = runtime.audit.commit

    async def recording_commit(body):
        rec = await commit(body)
        order.append("commit:" + body["kind"])
        return rec
    runtime.audit.commit = recording_commit
    servicer = Servicer(runtime)
    replies = []
    async for r in _replies(servicer, _exchange(token, "req-order", {}), order):
        replies.append(r)
    assert order.index("reply:response_headers") < order.index("commit:outcome") < order.index("reply:response_body:eos")
    assert order.index("commit:decision") < order.index("reply:request_body")


async def _replies(servicer, messages, order):
    async def it():
        for m in messages:
            yield m
    async for r in servicer.Process(it(), FakeContext()):
        order.append("reply:" + _kinds([r])[0])
        yield r


async def test_a_failed_outcome_commit_releases_no_body_and_aborts(runtime, token):  # noqa: F811
    def broken(lines):
        raise OSError("disk gone")
    messages = _exchange(token, "req-outcome-fails", {})
    servicer = Servicer(runtime)

    async def it():
        for m in messages:
            if m.WhichOneof("request") == "response_body":
                runtime.audit.sink.write_batch = broken
            yield m
    ctx = FakeContext()
    replies = []
    with pytest.raises(Aborted):
        async for r in servicer.Process(it(), ctx):
            replies.append(r)
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.UNAVAILABLE
    assert "response_body" not in "".join(_kinds(replies))


async def test_a_coalesced_stream_chunk_sends_its_first_text_in_the_first_body_message(runtime, token):  # noqa: F811
    # Envoy hands a fast upstream's events over as one large chunk; it is scanned in slices. The
    # role chunk (no text) does not go out alone ahead of the first text: one message, not two,
    # in front of the first token. Everything arrives byte-exact and in order.
    text = "The quarterly figures look steady and the team expects the same next quarter. " * 12
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": text[i:i + 6]}, "finish_reason": None}]}
               for i in range(0, len(text), 6)]
    events += [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    assert len(sse) > 2 * ResponseSide.FIRST_RESPONSE_SLICE_BYTES
    messages = _exchange(token, "req-coalesced", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/event-stream"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=sse, end_of_stream=True))]
    replies, ctx = await _drive(Servicer(runtime), messages)
    assert ctx.aborted is None
    bodies = [r.response_body.response.body_mutation.streamed_response for r in replies
              if r.WhichOneof("response") == "response_body"]
    assert b"".join(b.body for b in bodies) == sse and bodies[-1].end_of_stream
    first = [json.loads(line[6:]) for line in bodies[0].body.split(b"\n\n") if line.startswith(b"data: {")]
    assert any(e["choices"][0]["delta"].get("content") for e in first)
    assert 2 <= len(bodies) <= 4


async def test_the_tokens_an_answer_used_are_counted_for_spend(runtime, token):  # noqa: F811
    """The outcome's usage feeds the spend counter (found by `make mutation`: the condition that
    reads the usage inverted, no spend counted, passed every test)."""
    def counted() -> float:
        return sum(s.value for m in runtime.metrics.registry.collect() if m.name == "ledgergate_tokens"
                   for s in m.samples if s.name == "ledgergate_tokens_total")
    before = counted()
    async for _ in _replies(Servicer(runtime), _exchange(token, "req-spend", {}), []):
        pass
    assert counted() > before


async def test_the_outcome_record_holds_the_transparency_marker_that_was_sent(runtime, token):  # noqa: F811
    """With the policy's Article 50 marker on (the default policy's), the outcome record says what
    was disclosed (found by `make mutation`: dropping it from the record passed every unit test)."""
    from ext_proc.streaming.transparency import DISCLOSURE_HEADER

    replies = []
    async for r in _replies(Servicer(runtime), _exchange(token, "req-marker", {}), []):
        replies.append(r)
    sent = {h.header.key for r in replies if r.WhichOneof("response") == "response_headers"
            for h in r.response_headers.response.header_mutation.set_headers}
    records = []
    for f in sorted(runtime.config.base_dir.glob("var/audit/*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    [outcome] = [r for r in records if r.get("kind") == "outcome" and r.get("request_id") == "req-marker"]
    assert DISCLOSURE_HEADER in sent
    assert DISCLOSURE_HEADER in outcome["transparency"]["header"]


def _pem_stream_exchange(token: str, request_id: str) -> list[pb.ProcessingRequest]:
    """A streamed answer whose text opens a private key and keeps growing (no footer yet when the
    bound is reached): 3,200 characters in 100-character deltas."""
    from tests.unit.test_tracing import _request_headers
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "say hi"}]}).encode()
    text = "-----BEGIN RSA PRIVATE KEY-----\n" + "".join(
        ("MIIEowIBAAKCAQEA" * 4)[:63] + "\n" for _ in range(50))
    events = b"".join(b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                               "choices": [{"index": 0, "delta": {"content": text[i:i + 100]},
                                                            "finish_reason": None}]}).encode() + b"\n\n"
                      for i in range(0, len(text), 100)) + b"data: [DONE]\n\n"
    return [
        _request_headers({":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw",
                          "authorization": f"Bearer {token}", "content-type": "application/json"}, request_id),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/event-stream"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=events, end_of_stream=True)),
    ]


def _outcome(runtime, request_id: str) -> dict:
    records = []
    for f in sorted(runtime.config.base_dir.glob("var/audit/*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    [outcome] = [r for r in records if r.get("kind") == "outcome" and r.get("request_id") == request_id]
    return outcome


async def test_the_configured_finding_bound_reaches_the_response_inspector(runtime, token):  # noqa: F811
    """`limits.max_finding_chars`: a key still growing past the bound blocks the answer; under the
    default bound (60,000) the same answer is masked whole instead."""
    from dataclasses import replace

    async for _ in _replies(Servicer(runtime), _pem_stream_exchange(token, "req-default-bound"), []):
        pass
    assert not _outcome(runtime, "req-default-bound").get("blocked")
    runtime.config = replace(runtime.config, max_finding_chars=1000)
    async for _ in _replies(Servicer(runtime), _pem_stream_exchange(token, "req-small-bound"), []):
        pass
    blocked = _outcome(runtime, "req-small-bound").get("blocked")
    assert blocked and blocked["label"] == "finding_too_long", blocked
