"""The end of a streamed answer goes out as the end, after its outcome record, when the last
chunk carries several releases (found by `make mutation`: taking the first release's
end-of-stream flag instead of the last one's passed every test; the end then went out unmarked
and before the outcome was committed)."""

from __future__ import annotations

import json

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server.response_side import ResponseSide
from ext_proc.server.servicer import Servicer
from tests.unit.test_tracing import FakeContext, _exchange, _headers

pytestmark = pytest.mark.asyncio


async def test_a_last_chunk_of_events_without_text_ends_the_stream_after_the_outcome(runtime, token):
    order: list[str] = []
    commit = runtime.audit.commit

    async def recording_commit(body):
        rec = await commit(body)
        order.append("commit:" + body["kind"])
        return rec
    runtime.audit.commit = recording_commit
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def sse(events) -> bytes:
        return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    # The first chunk's text ends a line: released at once, so the last chunk's releases carry no text.
    first = sse([{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "The figures look steady.\n"},
                                       "finish_reason": None}]}])
    # The last chunk: longer than the first slice, and nothing in it is text (empty deltas, the
    # finish, [DONE]), so its releases wait for the last slice and go out together.
    last = sse([{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": None}]}] * 40
               + [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]) + b"data: [DONE]\n\n"
    assert len(last) > 2 * ResponseSide.FIRST_RESPONSE_SLICE_BYTES
    messages = _exchange(token, "req-last-chunk", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "text/event-stream"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=first, end_of_stream=False)),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=last, end_of_stream=True))]

    async def it():
        for m in messages:
            yield m
    bodies = []
    ctx = FakeContext()
    async for r in Servicer(runtime).Process(it(), ctx):
        if r.WhichOneof("response") == "response_body":
            sr = r.response_body.response.body_mutation.streamed_response
            bodies.append(sr)
            order.append("reply:body" + (":eos" if sr.end_of_stream else ""))
    assert ctx.aborted is None
    assert b"".join(b.body for b in bodies) == first + last
    assert bodies[-1].end_of_stream and not any(b.end_of_stream for b in bodies[:-1])
    assert order.index("commit:outcome") < order.index("reply:body:eos"), order
