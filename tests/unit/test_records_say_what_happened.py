"""The records say what happened, field by field, for a whole exchange through the servicer:
the decision's time (found by `make mutation`: `clock() - 1000` for `clock() * 1000` in
server/decide.py passed every test; the timestamp is what the audit chain and the console order
by), and the outcome's delivered status and redactions (found by `make mutation` in
pipeline/outcome.py: a 200 recorded as delivered as the block status, and the redaction list
dropped, passed every test)."""

from __future__ import annotations

import json
import time

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server.servicer import Servicer
from tests.unit.test_tracing import _drive, _exchange, _headers

pytestmark = pytest.mark.asyncio


async def test_the_decision_record_is_stamped_with_the_decision_time_in_ms(runtime, token):
    records: list[dict] = []
    commit = runtime.audit.commit

    async def recording_commit(body):
        records.append(body)
        return await commit(body)
    runtime.audit.commit = recording_commit
    before = int(time.time() * 1000)
    replies, ctx = await _drive(Servicer(runtime), _exchange(token, "req-time", {}))
    after = int(time.time() * 1000)
    assert ctx.aborted is None
    (decision,) = [r for r in records if r["kind"] == "decision"]
    assert before <= decision["received_ms"] <= decision["decided_ms"] <= after
    assert decision["timestamp_ms"] == decision["decided_ms"]


async def test_the_outcome_record_lists_the_answers_redactions_and_the_status_delivered(runtime, token):
    records: list[dict] = []
    commit = runtime.audit.commit

    async def recording_commit(body):
        records.append(body)
        return await commit(body)
    runtime.audit.commit = recording_commit
    key = "AKIAIOSFODNN7QWERTYZ"
    answer = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Use {key} for it."},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()
    messages = _exchange(token, "req-outcome", {})[:2] + [
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=answer, end_of_stream=True))]
    replies, ctx = await _drive(Servicer(runtime), messages)
    assert ctx.aborted is None
    sent = b"".join(r.response_body.response.body_mutation.streamed_response.body for r in replies
                    if r.WhichOneof("response") == "response_body")
    assert key.encode() not in sent
    (outcome,) = [r for r in records if r["kind"] == "outcome"]
    assert outcome["status"] == 200 and outcome["delivered_status"] == 200 and outcome["blocked"] is None
    assert [r["label"] for r in outcome["redactions"]] == ["secret.aws_access_key"], outcome["redactions"]
