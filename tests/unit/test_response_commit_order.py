"""The end of a response waits for its outcome record; held JSON headers do not (they go to Envoy
while the record is made durable), and a failed outcome commit means the body never follows."""

from __future__ import annotations

import grpc
import pytest

from ext_proc.server.servicer import Servicer
from tests.unit.test_tracing import Aborted, FakeContext, _exchange, runtime, token  # noqa: F401 - fixtures

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
