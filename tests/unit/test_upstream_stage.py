"""The upstream (per-attempt) stage of a failover chain, without Envoy: the endpoint's metadata
names the target, an attempt without a router-level decision behind it is refused, and an
attempt driven through the servicer's loop is recorded before its translated body goes out."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.pipeline.multiplex import CHAIN_HEADER, load_model_map, route_for
from ext_proc.providers.translate import Target
from ext_proc.server.config import load_config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import UPSTREAM_STAGE, Servicer
from ext_proc.server.upstream import AttemptRefused, UpstreamAttempt, endpoint_target
from tests.support import REPO
from tests.unit.test_tracing import _drive, _headers

METADATA = ('filter_metadata { key: "ledgergate" value { fields { key: "provider" value { string_value: "gemini" } } '
            'fields { key: "model" value { string_value: "gemini-2.0-flash" } } '
            'fields { key: "host" value { string_value: "generativelanguage.googleapis.com" } } } }')


def test_the_endpoint_metadata_names_the_target():
    assert endpoint_target(METADATA) == (Target("gemini", "gemini-2.0-flash"), "generativelanguage.googleapis.com")
    with pytest.raises(AttemptRefused):
        endpoint_target('filter_metadata { key: "other" value { } }')


def _headers_message(headers: dict[str, str]) -> pb.ProcessingRequest:
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()])))
    attrs = struct_pb2.Struct()
    attrs.update({"xds.upstream_host_metadata": METADATA, "upstream.address": "10.0.0.7:443"})
    req.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    return req


def test_an_attempt_without_the_router_level_decision_is_refused():
    with pytest.raises(AttemptRefused, match="no router-level decision"):
        UpstreamAttempt(rt=None).on_request_headers(_headers_message({":path": "/v1/chat/completions"}))
    a = UpstreamAttempt(rt=None)
    a.on_request_headers(_headers_message({":path": "/v1/chat/completions", CHAIN_HEADER: "resilient",
                                           "x-request-id": "r-1"}))
    assert (a.target, a.address, a.request_id) == (Target("gemini", "gemini-2.0-flash"), "10.0.0.7:443", "r-1")


def test_model_map_entries_and_chains():
    mm = load_model_map({"models": {"one": {"provider": "anthropic", "model": "c"},
                                    "two": [{"provider": "anthropic", "model": "c"}, {"provider": "gemini", "model": "g"}]}})
    assert not route_for("openai.chat_completions", "one", mm).chain
    two = route_for("openai.chat_completions", "two", mm)
    assert two.chain and two.to_record()["failover"][1] == {"provider": "gemini", "model": "g"}
    assert route_for("openai.responses", "two", mm) is None and route_for("openai.chat_completions", "x", mm) is None
    for bad in ({"models": {"a": {"provider": "azure", "model": "x"}}}, {"models": {"a": []}},
                {"models": {"a b": {"provider": "gemini", "model": "g"}}}, {"models": []}):
        with pytest.raises(ValueError):
            load_model_map(bad)


# --- the attempt driven through the servicer's one loop (server/stream.py) -------------------

@pytest.fixture
async def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("LG_TEST_GEMINI_KEY", "gemini-secret")
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None},
        "upstreams": {"gemini": {"credential": {"header": "x-goog-api-key", "value_env": "LG_TEST_GEMINI_KEY"}}}})
    rt = Runtime(config)
    await rt.start()
    committed: list[dict] = []
    real_commit = rt.audit.commit

    async def commit(record):
        committed.append(record)
        return await real_commit(record)
    rt.audit.commit = commit
    rt.committed = committed
    try:
        yield rt
    finally:
        await rt.close()


def _attempt(chain: bool = True) -> list[pb.ProcessingRequest]:
    headers = {":method": "POST", ":path": "/v1/chat/completions", "x-request-id": "r-9",
               "authorization": "Bearer client-token", "anthropic-version": "2023-06-01"}
    if chain:
        headers[CHAIN_HEADER] = "resilient"
    body = json.dumps({"model": "resilient", "messages": [{"role": "user", "content": "hello"}]}).encode()
    first = _headers_message(headers)
    return [first, pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
            pb.ProcessingRequest(response_headers=_headers({":status": "503", "content-type": "application/json"})),
            pb.ProcessingRequest(response_body=pb.HttpBody(body=b'{"error": {"message": "busy"}}', end_of_stream=True))]


async def test_an_attempt_is_recorded_before_its_translated_body_goes_out_with_this_providers_credential(runtime):
    replies, ctx = await _drive(Servicer(runtime), _attempt(), (UPSTREAM_STAGE,))
    assert ctx.aborted is None
    kinds = [r.WhichOneof("response") for r in replies]
    assert kinds == ["request_headers", "request_body", "response_headers", "response_body"]
    mutation = replies[1].request_body.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert set_headers["x-goog-api-key"] == "gemini-secret" and "generateContent" in set_headers[":path"]
    assert "authorization" in mutation.remove_headers and "anthropic-version" in mutation.remove_headers
    assert "x-goog-api-key" not in mutation.remove_headers
    sent = replies[1].request_body.response.body_mutation.body
    assert b"contents" in sent and b"messages" not in sent
    # The attempt record, then (the 503) a second one with the error; the answer in OpenAI's shape.
    assert [(r["kind"], r["provider"], r["error"]) for r in runtime.committed] == [
        ("attempt", "gemini", None), ("attempt", "gemini", "upstream_status_503")]
    assert runtime.committed[0]["forwarded_sha256"] == hashlib.sha256(sent).hexdigest()
    assert b"error" in replies[3].response_body.response.body_mutation.streamed_response.body


async def test_an_attempt_without_the_router_level_decision_aborts_the_stream(runtime):
    replies, ctx = await _drive(Servicer(runtime), _attempt(chain=False), (UPSTREAM_STAGE,), expect_abort=True)
    assert replies == [] and ctx.aborted[0] == grpc.StatusCode.FAILED_PRECONDITION and runtime.committed == []
