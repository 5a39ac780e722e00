"""Envoy's own replies (issue 19, item 7) without Envoy: the local_reply_config mappers rendered
from providers/envoy_replies.py, the decision record of an access-log entry, the Envoy access-log
service and the drain gate driven with the real Runtime, pipeline and file audit sink. The same
paths through the real Envoy: tests/e2e/test_envoy_replies.py."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2, wrappers_pb2

from ext_proc.audit.verify import verify_store
from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.providers import envoy_replies
from ext_proc.providers.envoy_replies import (
    ACCESS_LOG_NAME,
    OWN_REPLY,
    PROCESSOR_UNAVAILABLE,
    RETRY_AFTER_S,
    local_reply_mappers,
)
from ext_proc.server.config import load_config
from ext_proc.server.local_reply import DrainGate, EnvoyReplyLog, envoy_reply_record
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO

# --- the route's headers for ledgergate, on ledgergate's own replies --------------------------

def _route_headers_for_ledgergate(config: dict) -> set[str]:
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for h in node.get("response_headers_to_add") or ():
                if h["header"]["key"].startswith("x-ledgergate-"):
                    found.add(h["header"]["key"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(config)
    return found


@pytest.mark.parametrize("name", ["local.yaml", "sidecar.yaml", "edge.yaml"])
def test_every_reply_of_ledgergate_removes_the_headers_the_route_adds_for_it(name):
    # Envoy gives an ext_proc immediate response the route's response_headers_to_add first, then
    # applies the response's own header mutation: the removal keeps x-ledgergate-upstream-flags
    # ("-" there) off refusals and cache hits (through the real Envoy: tests/e2e/test_upstream_timeouts.py).
    import yaml

    from ext_proc.server import replies
    from ext_proc.server.envoy_flags import UPSTREAM_FLAGS_HEADER, UPSTREAM_HOST_HEADER
    added = _route_headers_for_ledgergate(yaml.safe_load((REPO / "envoy" / name).read_text()))
    assert added == {UPSTREAM_FLAGS_HEADER, UPSTREAM_HOST_HEADER}
    hit = replies.immediate(200, {"content-type": "application/json"}, b"{}", "served_from_cache")
    assert set(hit.immediate_response.headers.remove_headers) >= added
    assert [h.header.key for h in hit.immediate_response.headers.set_headers] == ["content-type"]


# --- the mappers ------------------------------------------------------------------------------

def _expression(m: dict) -> str:
    return m["filter"]["extension_filter"]["typed_config"]["expression"]


def _headers_added(m: dict) -> dict[str, str]:
    return {h["header"]["key"]: h["header"]["value"] for h in m.get("headers_to_add", [])}


def test_every_mapper_leaves_ledgergates_own_replies_alone():
    mappers = local_reply_mappers()
    assert mappers and all(_expression(m).startswith(OWN_REPLY + " && ") for m in mappers)


def test_retry_after_exactly_on_the_503s_and_an_unreachable_ledgergate_becomes_one():
    for m in local_reply_mappers():
        expr = _expression(m)
        is_503 = PROCESSOR_UNAVAILABLE in expr or "response.code == 503" in expr
        assert (_headers_added(m).get("retry-after") == str(RETRY_AFTER_S)) == is_503, expr
        if PROCESSOR_UNAVAILABLE in expr:
            assert m["status_code"] == 503
        else:
            assert "status_code" not in m     # Envoy's status stands (a 413 stays a 4xx)


def test_per_provider_the_unavailable_mapper_comes_before_the_catch_alls():
    for provider, path in envoy_replies.PROVIDER_PATHS.items():
        mine = [e for e in (_expression(m) for m in local_reply_mappers())
                if (path in e if path else not any(p and p in e for p in envoy_replies.PROVIDER_PATHS.values()))]
        assert PROCESSOR_UNAVAILABLE in mine[0], provider
        assert mine[-1].endswith("response.code >= 400"), provider


@pytest.mark.parametrize("provider, status, check", [
    ("openai", 413, lambda b, h: b["error"]["type"] == "invalid_request_error" and b["error"]["param"] is None),
    ("anthropic", 413, lambda b, h: b["type"] == "error" and b["error"]["type"] == "request_too_large"),
    ("anthropic", 503, lambda b, h: b["error"]["type"] == "overloaded_error"),
    ("gemini", 503, lambda b, h: b["error"]["status"] == "UNAVAILABLE" and b["error"]["code"] == 503),
    ("bedrock", 413, lambda b, h: h["x-amzn-errortype"] == "ValidationException" and "message" in b),
    ("bedrock", 503, lambda b, h: h["x-amzn-errortype"] == "ServiceUnavailableException"),
])
def test_bodies_are_the_providers_own_error_shapes(provider, status, check):
    path = envoy_replies.PROVIDER_PATHS[provider]
    for m in local_reply_mappers():
        e = _expression(m)
        ours = (path in e) if path else not any(p and p in e for p in envoy_replies.PROVIDER_PATHS.values())
        if ours and f"response.code == {status}" in e:
            body = m["body_format_override"]["json_format"]
            assert m["body_format_override"]["content_type"] == "application/json"
            assert check(body, _headers_added(m))
            return
    raise AssertionError(f"no mapper for {provider} {status}")


def test_the_access_log_goes_to_ledgergate_and_only_for_replies_it_never_saw():
    (al,) = envoy_replies.local_reply_access_log("ledgergate")
    common = al["typed_config"]["common_config"]
    assert common["log_name"] == ACCESS_LOG_NAME
    assert common["grpc_service"]["envoy_grpc"]["cluster_name"] == "ledgergate"
    expr = _expression(al)
    assert "ext_proc_error" in expr and "path_normalization_failed" in expr
    assert "via_upstream" not in expr


# --- the record of an access-log entry --------------------------------------------------------

@pytest.fixture
async def runtime(tmp_path):
    var = tmp_path / "var"
    ensure_dev_material(var)
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None},
        "audit": {"sink": "file", "dir": str(tmp_path / "audit")}})
    rt = Runtime(config)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


def _entry(path: str, status: int, details: str, *, request_id: str = "rid-1", dpe: bool = False):
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.request.path = path
    e.request.request_id = request_id
    e.request.request_method = base_pb2.POST
    e.request.request_headers["authorization"] = "Bearer sk-secret-header-value"
    e.response.response_code.CopyFrom(wrappers_pb2.UInt32Value(value=status))
    e.response.response_code_details = details
    e.common_properties.response_flags.downstream_protocol_error = dpe
    e.common_properties.start_time.FromMilliseconds(1_700_000_000_123)
    return e


async def test_an_access_log_entry_is_a_deny_decided_by_envoy_without_query_fragment_or_header(runtime):
    rec = envoy_reply_record(runtime, _entry("/v1beta/models/gemini-2.0-flash:generateContent?key=AIzaSECRET#frag",
                                             400, "path_normalization_failed"))
    assert rec["kind"] == "decision" and rec["request_id"] == "rid-1"
    assert rec["decision"] == {"outcome": "deny", "status": 400, "code": "envoy_bad_request",
                               "reason": "the gateway refused a malformed request", "decided_by": "envoy",
                               "envoy_details": "path_normalization_failed", "envoy_flags": None}
    assert rec["route"]["provider"] == "gemini" and rec["route"]["path"] == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert rec["received_ms"] == 1_700_000_000_123 and rec["identity"] is None
    text = json.dumps(rec)
    assert "AIzaSECRET" not in text and "frag" not in text and "sk-secret" not in text


async def test_a_codec_error_without_request_id_or_path_still_has_a_record(runtime):
    rec = envoy_reply_record(runtime, _entry("", 400, "http1.codec_error", request_id="", dpe=True))
    assert rec["request_id"].startswith("envoy-")
    assert rec["decision"]["envoy_flags"] == "downstream_protocol_error"
    assert rec["route"]["surface"] == "unknown"


async def test_an_unreachable_ledgergate_reply_is_a_processor_error(runtime):
    rec = envoy_reply_record(runtime, _entry("/v1/chat/completions", 503,
                                             "ext_proc_error_gRPC_error_14{overflow}"))
    assert rec["decision"]["code"] == "envoy_processor_error" and rec["decision"]["status"] == 503


class _Ctx:
    def __init__(self, metadata: tuple = ()) -> None:
        self.aborted = None
        self.metadata = metadata

    def invocation_metadata(self):
        return self.metadata

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise RuntimeError(details)


async def _stream(*messages):
    for m in messages:
        yield m


async def test_the_access_log_service_records_its_own_log_and_ignores_others(runtime, tmp_path):
    ours = als_pb2.StreamAccessLogsMessage(identifier=als_pb2.StreamAccessLogsMessage.Identifier(
        log_name=ACCESS_LOG_NAME))
    ours.http_logs.log_entry.append(_entry("/v1/messages", 400, "path_normalization_failed", request_id="ours"))
    more = als_pb2.StreamAccessLogsMessage()
    more.http_logs.log_entry.append(_entry("/v1/messages", 500, "ext_proc_error_gRPC_error_13", request_id="ours-2"))
    other = als_pb2.StreamAccessLogsMessage(identifier=als_pb2.StreamAccessLogsMessage.Identifier(
        log_name="someone.else"))
    other.http_logs.log_entry.append(_entry("/v1/messages", 400, "x", request_id="not-ours"))
    svc = EnvoyReplyLog(runtime)
    await svc.StreamAccessLogs(_stream(ours, more), _Ctx())
    await svc.StreamAccessLogs(_stream(other), _Ctx())
    await runtime.audit.close()
    records = [json.loads(line) for f in (tmp_path / "audit").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [r["request_id"] for r in records if r["kind"] == "decision"] == ["ours", "ours-2"]
    assert verify_store(str(tmp_path / "audit")).ok


# --- the drain gate ---------------------------------------------------------------------------

def _request_headers(path: str, request_id: str) -> pb.ProcessingRequest:
    attrs = struct_pb2.Struct()
    attrs.update({"request.id": request_id})
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode())
        for k, v in {":method": "POST", ":path": path, "authorization": "Bearer x"}.items()])))
    req.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    return req


async def test_a_draining_gate_refuses_new_requests_with_a_recorded_503_in_the_provider_format(runtime, tmp_path):
    gate = DrainGate(Servicer(runtime), runtime)
    assert await gate.drain(0.1)     # nothing in flight: drained at once
    replies = [r async for r in gate.Process(_stream(_request_headers("/v1/messages", "late")), _Ctx())]
    (reply,) = replies
    ir = reply.immediate_response
    assert ir.status.code == 503 and ir.details == "draining"
    headers = {h.header.key: h.header.raw_value.decode() for h in ir.headers.set_headers}
    assert headers["retry-after"] == str(RETRY_AFTER_S) and headers["x-request-id"] == "late"
    assert json.loads(ir.body)["error"]["type"] == "overloaded_error"   # Anthropic's shape
    await runtime.audit.close()
    records = [json.loads(line) for f in (tmp_path / "audit").glob("*.jsonl") for line in f.read_text().splitlines()]
    (rec,) = [r for r in records if r.get("request_id") == "late"]
    assert rec["decision"]["code"] == "draining" and rec["decision"]["status"] == 503


async def test_a_draining_gate_passes_upstream_stage_streams_on(runtime):
    gate = DrainGate(Servicer(runtime), runtime)
    await gate.drain(0.1)
    seen = []

    class Inner:
        async def Process(self, it, ctx):
            seen.append(True)
            yield pb.ProcessingResponse()

    gate.inner = Inner()
    replies = [r async for r in gate.Process(_stream(), _Ctx((("x-ledgergate-stage", "upstream"),)))]
    assert seen and len(replies) == 1 and gate.in_flight == 0


async def test_envoys_own_reply_passes_through_unchanged_also_while_draining(runtime):
    """Response headers on a stream that carried no request (Envoy refused it before the filter
    chain): headers continue, the body is echoed whole (duplex mode drops what is not sent back)."""
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"m"}}'
    stream = [pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
                  base_pb2.HeaderValue(key=":status", raw_value=b"400")]))),
              pb.ProcessingRequest(response_body=pb.HttpBody(body=body[:10])),
              pb.ProcessingRequest(response_body=pb.HttpBody(body=body[10:], end_of_stream=True))]
    for draining in (False, True):
        gate = DrainGate(Servicer(runtime), runtime)
        if draining:
            await gate.drain(0.1)
        ctx = _Ctx()
        replies = [r async for r in gate.Process(_stream(*stream), ctx)]
        assert ctx.aborted is None
        assert replies[0].WhichOneof("response") == "response_headers"
        echoed = [r.response_body.response.body_mutation.streamed_response for r in replies[1:]]
        assert b"".join(e.body for e in echoed) == body and echoed[-1].end_of_stream
