"""The servicer's envelope and heavy-lane hooks, driven message by message (no Envoy): what the
header mutation removes and rewrites, and the refusals each come as an immediate response with
a committed record."""

from __future__ import annotations

import json

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.server import decide as decide_mod
from ext_proc.server.decide import HEAVY_BODY_BYTES, HEAVY_QUEUE_MAX
from ext_proc.server.servicer import Servicer
from tests.unit.test_tracing import _drive, _request_headers

pytestmark = pytest.mark.asyncio


def _records(rt) -> list[dict]:
    out = []
    for f in sorted(rt.config.base_dir.glob("var/audit/*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return [r for r in out if r.get("kind") == "decision"]


def _post(token: str, path: str, extra: dict[str, str], body: bytes, request_id: str) -> list[pb.ProcessingRequest]:
    return [_request_headers({":method": "POST", ":path": path, ":authority": "gw",
                              "authorization": f"Bearer {token}", "content-type": "application/json", **extra},
                             request_id),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))]


def _chat(prompt: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()


async def test_the_header_mutation_removes_unlisted_headers_and_strips_unknown_query(runtime, token):
    replies, _ = await _drive(Servicer(runtime), _post(
        token, "/v1/chat/completions?limit=3&debug=AKIAIOSFODNN7EXAMPL3",
        {"x-custom": "v", "openai-beta": "assistants=v2", "user-agent": "sdk"}, _chat("hello"), "env-unit-1"))
    mutation = replies[0].request_headers.response.header_mutation
    assert {"x-custom", "user-agent", "authorization"} <= set(mutation.remove_headers)
    assert "openai-beta" not in mutation.remove_headers and "content-type" not in mutation.remove_headers
    paths = [h.header.raw_value.decode() for h in mutation.set_headers if h.header.key == ":path"]
    assert paths == ["/v1/chat/completions?limit=3"]
    [rec] = [r for r in _records(runtime) if r["request_id"] == "env-unit-1"]
    assert rec["envelope"]["removed_query"] == ["debug"]
    assert set(rec["envelope"]["inspected"]) >= {"query:limit", "header:openai-beta"}
    assert rec["inspection"]["bytes"] > 0


async def test_a_get_with_a_body_is_an_immediate_400_with_a_record(runtime, token):
    msgs = [_request_headers({":method": "GET", ":path": "/v1/models", ":authority": "gw",
                              "authorization": f"Bearer {token}"}, "env-unit-2"),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=b'{"x": 1}', end_of_stream=True))]
    replies, _ = await _drive(Servicer(runtime), msgs)
    imm = replies[-1].immediate_response
    assert imm.status.code == 400 and json.loads(imm.body)["error"]["code"] == "body_not_allowed"
    [rec] = [r for r in _records(runtime) if r["request_id"] == "env-unit-2"]
    assert rec["decision"]["code"] == "body_not_allowed" and rec["forwarded_sha256"] is None


async def test_large_bodies_past_the_queue_bound_are_refused_at_once(runtime, token, monkeypatch):
    monkeypatch.setattr(decide_mod.heavy_lane, "pending", HEAVY_QUEUE_MAX)
    body = _chat("x" * HEAVY_BODY_BYTES)
    replies, _ = await _drive(Servicer(runtime), _post(token, "/v1/messages", {}, body, "env-unit-3"))
    imm = replies[-1].immediate_response
    assert imm.status.code == 503 and json.loads(imm.body)["error"]["type"] == "overloaded_error"
    [rec] = [r for r in _records(runtime) if r["request_id"] == "env-unit-3"]
    assert rec["decision"]["code"] == "inspection_busy"


async def test_a_large_body_is_decided_in_the_lane_with_its_texts_scanned_in_the_pool(runtime, token):
    prompt = "card 4111 1111 1111 1111 " + "lorem ipsum " * (HEAVY_BODY_BYTES // 12)
    replies, _ = await _drive(Servicer(runtime), _post(token, "/v1/chat/completions", {}, _chat(prompt),
                                                       "env-unit-4"))
    imm = replies[-1].immediate_response
    assert imm.status.code == 403                       # the card is found by the pool's scan
    [rec] = [r for r in _records(runtime) if r["request_id"] == "env-unit-4"]
    assert rec["classification"]["summary"].get("pci.card_number")
    assert decide_mod.heavy_lane.executor is not None and decide_mod.heavy_lane.pending == 0


async def test_a_caller_that_goes_away_still_occupies_the_lane_until_its_inspection_ends():
    import asyncio
    import threading

    lane = decide_mod.HeavyLane()
    release = threading.Event()
    task = asyncio.create_task(lane.run(lambda: release.wait(10)))
    await asyncio.sleep(0.05)
    assert lane.pending == 1
    task.cancel()                       # the client disconnected; the worker thread is still busy
    await asyncio.sleep(0.05)
    assert lane.pending == 1
    release.set()
    for _ in range(100):
        if lane.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert lane.pending == 0
    lane.executor.shutdown(wait=True)


# --- paths of the servicer's decision that `make mutation` found no in-process test for ---------

async def test_a_finding_in_a_header_envoy_owns_is_refused_with_403_and_a_record(runtime, token):
    """A redaction Envoy would not let ledgergate write is a refusal, not a release."""
    replies, _ = await _drive(Servicer(runtime), _post(
        token, "/v1/chat/completions", {"x-envoy-note": "mail jane.doe@example.com"}, _chat("hello"), "env-unit-5"))
    imm = replies[-1].immediate_response
    assert imm.status.code == 403 and json.loads(imm.body)["error"]["code"] == "unredactable_header"
    [rec] = [r for r in _records(runtime) if r["request_id"] == "env-unit-5"]
    assert rec["decision"]["status"] == 403 and rec["decision"]["policy_outcome"] == "redact"
    assert rec["forwarded_sha256"] is None and "jane.doe" not in json.dumps(rec)


async def test_a_classifier_that_raises_is_a_503_with_a_record_timed_now(runtime, token, monkeypatch):
    """Any failure of the pipeline is a fail-closed 503 whose record carries the time it was taken."""
    import time

    class Raising:
        def __getattr__(self, name):
            raise RuntimeError("classifier broke")

    monkeypatch.setattr(runtime, "classifier_for", lambda policy: Raising())
    before = time.time() * 1000
    replies, _ = await _drive(Servicer(runtime), _post(token, "/v1/chat/completions", {}, _chat("hello"), "env-unit-6"))
    imm = replies[-1].immediate_response
    assert imm.status.code == 503 and json.loads(imm.body)["error"]["code"] == "processing_error"
    [rec] = [r for r in _records(runtime) if r["request_id"] == "env-unit-6"]
    assert rec["decision"]["code"] == "processing_error" and rec["forwarded_sha256"] is None
    assert before - 1000 <= rec["decided_ms"] <= time.time() * 1000 + 1000


async def test_the_audit_commit_phase_is_measured_in_seconds(runtime, token):
    replies, _ = await _drive(Servicer(runtime), _post(token, "/v1/chat/completions", {}, _chat("hello"), "env-unit-7"))
    assert replies[-1].WhichOneof("response") != "immediate_response"
    seconds = runtime.metrics.registry.get_sample_value("ledgergate_phase_seconds_sum", {"phase": "audit_commit"})
    count = runtime.metrics.registry.get_sample_value("ledgergate_phase_seconds_count", {"phase": "audit_commit"})
    assert count and 0 < seconds < 30 * count
