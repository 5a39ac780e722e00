"""OpenTelemetry tracing (ext_proc/server/tracing.py) driven through the real Servicer.Process with
ext_proc messages as Envoy sends them, the real pipeline, identity and file audit sink, and the
SDK's in-memory exporter. No Envoy, no network."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ext_proc.server.config import ConfigError, load_config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from ext_proc.server.tracing import NO_TRACING, NOOP_EXCHANGE, Tracing, TracingConfig, b3_parent, open_tracing
from tests.support import REPO

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
PROMPT = "please email the contract to jane.doe@example.com before the merger with Initech"
RESPONSE_TEXT = "Certainly, here is the confidential summary of the merger"


class Aborted(Exception):
    pass


class FakeContext:
    """The part of grpc.aio.ServicerContext that Servicer.Process uses."""

    def __init__(self, metadata: tuple = ()) -> None:
        self.aborted: tuple | None = None
        self.metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str):
        self.aborted = (code, details)
        raise Aborted(details)


def _headers(pairs: dict[str, str], *, end_of_stream: bool = False) -> pb.HttpHeaders:
    return pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]), end_of_stream=end_of_stream)


def _request_headers(pairs: dict[str, str], request_id: str) -> pb.ProcessingRequest:
    attrs = struct_pb2.Struct()
    attrs.update({"request.id": request_id})
    req = pb.ProcessingRequest(request_headers=_headers(pairs))
    req.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    return req


def _exchange(token: str, request_id: str, trace_headers: dict[str, str], prompt: str = PROMPT) -> list[pb.ProcessingRequest]:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()
    response = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": RESPONSE_TEXT}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 17, "completion_tokens": 11, "total_tokens": 28}}).encode()
    return [
        _request_headers({":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw",
                          "authorization": f"Bearer {token}", "content-type": "application/json",
                          **trace_headers}, request_id),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=response, end_of_stream=True)),
    ]


async def _drive(servicer: Servicer, messages: list[pb.ProcessingRequest],
                 metadata: tuple = (), *, expect_abort: bool = False) -> tuple[list[pb.ProcessingResponse], FakeContext]:
    """The replies of one exchange. An aborted stream is an error unless the test expects one, so a
    test asserting what a good exchange leaves behind (e.g. no spans) cannot pass on a crashed one."""
    async def it():
        for m in messages:
            yield m

    ctx = FakeContext(metadata)
    replies = []
    try:
        async for r in servicer.Process(it(), ctx):
            replies.append(r)
    except Aborted:
        if not expect_abort:
            raise
    if expect_abort:
        assert ctx.aborted is not None, "the stream was expected to abort"
    return replies, ctx


def _traced(rt: Runtime) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rt.tracing = Tracing(provider)
    return exporter


def _all_attribute_text(spans) -> str:
    return json.dumps([{k: v if isinstance(v, (str, int, float, bool)) else list(v)
                        for k, v in s.attributes.items()} for s in spans] + [s.name for s in spans])


async def test_one_exchange_is_one_server_span_under_envoys_trace_with_a_child_per_phase(runtime, token):
    exporter = _traced(runtime)
    replies, ctx = await _drive(Servicer(runtime), _exchange(token, "req-trace-1", {
        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01", "tracestate": "envoy=1"}))
    assert ctx.aborted is None
    assert [r.WhichOneof("response") for r in replies] == [
        "request_headers", "request_body", "response_headers", "response_body"]

    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "ledgergate.exchange"]
    # The root continues Envoy's trace: same trace id, Envoy's span as parent, tracestate kept.
    assert root.kind == SpanKind.SERVER
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None and f"{root.parent.span_id:016x}" == PARENT_SPAN_ID and root.parent.is_remote
    assert root.context.trace_state.get("envoy") == "1"
    children = [s for s in spans if s is not root]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    assert all(s.context.trace_id == root.context.trace_id for s in children)
    names = [s.name for s in sorted(children, key=lambda s: s.start_time)]
    assert names == ["ledgergate.identity", "ledgergate.decide", "ledgergate.audit_commit",
                     "ledgergate.response", "ledgergate.audit_commit"]
    kinds = [s.attributes["ledgergate.audit.kind"] for s in children if s.name == "ledgergate.audit_commit"]
    assert kinds == ["decision", "outcome"]
    # Every child ends within the root.
    assert all(root.start_time <= s.start_time <= s.end_time <= root.end_time for s in children)

    a = root.attributes
    assert a["ledgergate.request_id"] == "req-trace-1"
    assert a["ledgergate.surface"] == "openai.chat_completions"
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["ledgergate.decision.outcome"] == "redact"
    assert a["ledgergate.policy.version"] == runtime.policies.current.version
    assert "pii.email" in a["ledgergate.classification.labels"]
    assert a["gen_ai.usage.input_tokens"] == 17 and a["gen_ai.usage.output_tokens"] == 11
    assert a["http.response.status_code"] == 200
    (response,) = [s for s in children if s.name == "ledgergate.response"]
    assert response.attributes["gen_ai.usage.output_tokens"] == 11
    assert response.attributes["ledgergate.response.streamed"] is False

    # No prompt or response text, no credential, no subject anywhere in the spans.
    text = _all_attribute_text(spans)
    for secret in ("jane.doe", "example.com", "Initech", "merger", "confidential", token, token[:20], "alice"):
        assert secret not in text, secret


async def test_b3_headers_are_accepted_when_there_is_no_traceparent(runtime, token):
    exporter = _traced(runtime)
    await _drive(Servicer(runtime), _exchange(token, "req-b3", {
        "x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT_SPAN_ID, "x-b3-sampled": "1"}))
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "ledgergate.exchange"]
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == PARENT_SPAN_ID


async def test_envoys_context_in_the_grpc_metadata_wins_over_the_clients_headers(runtime, token):
    """Envoy, when it traces, opens a client span for the ext_proc call and sends its context in the
    Process call's metadata; the HTTP headers carry the client's (an ancestor of Envoy's) span."""
    exporter = _traced(runtime)
    envoy_span = "b7ad6b7169203331"
    await _drive(Servicer(runtime), _exchange(token, "req-md", {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}),
                 metadata=(("traceparent", f"00-{TRACE_ID}-{envoy_span}-01"), ("x-request-id", "req-md"),
                           ("grpc-trace-bin", b"\x00")))
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "ledgergate.exchange"]
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == envoy_span
    # B3 in the metadata (Envoy's Zipkin tracer) works the same way.
    exporter.clear()
    await _drive(Servicer(runtime), _exchange(token, "req-md-b3", {}),
                 metadata=(("x-b3-traceid", TRACE_ID), ("x-b3-spanid", envoy_span), ("x-b3-sampled", "1")))
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "ledgergate.exchange"]
    assert f"{root.parent.span_id:016x}" == envoy_span


async def test_envoys_unsampled_decision_is_respected(runtime, token):
    exporter = _traced(runtime)
    await _drive(Servicer(runtime), _exchange(token, "req-unsampled", {
        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"}))
    assert exporter.get_finished_spans() == ()


async def test_without_trace_headers_a_new_trace_starts(runtime, token):
    exporter = _traced(runtime)
    await _drive(Servicer(runtime), _exchange(token, "req-root", {}))
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "ledgergate.exchange"]
    assert root.parent is None and root.context.trace_id != int(TRACE_ID, 16)


async def test_a_denied_request_is_traced_with_its_reason_code_and_no_secret(runtime, token):
    exporter = _traced(runtime)
    secret = "AKIAIOSFODNN7ABCDEFG"
    replies, _ = await _drive(Servicer(runtime), _exchange(token, "req-deny", {}, prompt=f"my key is {secret}")[:2])
    assert replies[-1].WhichOneof("response") == "immediate_response"
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "ledgergate.exchange"]
    assert root.attributes["ledgergate.decision.outcome"] == "deny"
    assert root.attributes["ledgergate.decision.status"] == 403
    assert "ledgergate.response" not in [s.name for s in spans]
    assert secret not in _all_attribute_text(spans)


async def test_an_identity_failure_marks_the_identity_span_and_names_the_reason(runtime):
    exporter = _traced(runtime)
    replies, _ = await _drive(Servicer(runtime), _exchange("not.a.jwt", "req-401", {})[:1])
    assert replies[0].immediate_response.status.code == 401
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "ledgergate.exchange"]
    (ident,) = [s for s in spans if s.name == "ledgergate.identity"]
    assert ident.attributes["error.type"] == "IdentityError"
    assert root.attributes["ledgergate.identity.error"]
    assert "not.a.jwt" not in _all_attribute_text(spans)


async def test_a_stream_error_is_on_the_root_span_and_the_outcome_still_summarised(runtime, token):
    exporter = _traced(runtime)
    msgs = _exchange(token, "req-broken", {})
    # A message with no request set after the response headers: the stream aborts mid-response.
    replies, ctx = await _drive(Servicer(runtime), [msgs[0], msgs[1], msgs[2], pb.ProcessingRequest()],
                                 expect_abort=True)
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.INTERNAL
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "ledgergate.exchange"]
    assert root.attributes["error.type"] == "ProtocolViolation"
    assert not root.status.is_ok
    (response,) = [s for s in spans if s.name == "ledgergate.response"]
    assert response.attributes["ledgergate.response.error"] == "ProtocolViolation"
    assert [s.attributes["ledgergate.audit.kind"] for s in spans if s.name == "ledgergate.audit_commit"] == [
        "decision", "outcome"]


def test_phase_spans_left_open_are_ended_as_errors_when_the_stream_ends():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from ext_proc.pipeline.request import RequestHead
    from ext_proc.providers import match_surface

    head = RequestHead(request_id="r", method="POST", path="/v1/messages", headers={}, attributes={},
                       received_ms=0, surface=match_surface("POST", "/v1/messages"))
    ex = Tracing(provider).exchange()
    ex.start(head)
    ex.begin("decide")
    ex.finish("cancelled")
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert set(by_name) == {"ledgergate.exchange", "ledgergate.decide"}
    assert not by_name["ledgergate.decide"].status.is_ok
    assert by_name["ledgergate.exchange"].attributes["gen_ai.provider.name"] == "anthropic"
    assert by_name["ledgergate.exchange"].attributes["error.type"] == "cancelled"


async def test_tracing_off_creates_no_span(runtime, token):
    assert runtime.tracing is NO_TRACING  # the default configuration
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Even with a provider around (as another library might install), tracing off records nothing.
    from opentelemetry import trace
    replies, ctx = await _drive(Servicer(runtime), _exchange(token, "req-off", {
        "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"}))
    assert ctx.aborted is None and len(replies) == 4
    assert exporter.get_finished_spans() == ()
    assert runtime.tracing.exchange() is NOOP_EXCHANGE
    assert not trace.get_current_span().get_span_context().is_valid


def test_tracing_off_imports_no_opentelemetry():
    code = ("import sys\n"
            "from ext_proc.server import servicer, runtime, app\n"
            "from ext_proc.server.tracing import TracingConfig, open_tracing\n"
            "t = open_tracing(TracingConfig(enabled=False))\n"
            "ex = t.exchange(); ex.start(None)\n"
            "with ex.phase('identity'): pass\n"
            "with ex.audit_commit({'kind': 'decision'}): pass\n"
            "ex.begin('decide'); ex.end('decide'); ex.finish('x')\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_config_defaults_are_off_and_validated():
    cfg = load_config(None)
    assert cfg.tracing.enabled is False
    assert open_tracing(cfg.tracing) is NO_TRACING
    with pytest.raises(ConfigError):
        TracingConfig.from_dict({"enabled": True, "exporter": "jaeger"})
    with pytest.raises(ConfigError):
        TracingConfig.from_dict({"sample_ratio": 2})
    with pytest.raises(ConfigError):
        TracingConfig.from_dict({"enabled": "yes"})
    with pytest.raises(ConfigError):
        TracingConfig.from_dict({"endpiont": "x"})
    on = open_tracing(TracingConfig.from_dict({"enabled": True, "exporter": "console", "service_name": "lg-test"}))
    try:
        assert isinstance(on, Tracing)
        assert on.provider.resource.attributes["service.name"] == "lg-test"
    finally:
        on.shutdown()
    otlp = open_tracing(TracingConfig.from_dict({"enabled": True, "exporter": "otlp", "endpoint": "http://127.0.0.1:4317"}))
    otlp.shutdown()


@pytest.mark.parametrize("headers, expected", [
    ({"x-b3-traceid": [TRACE_ID], "x-b3-spanid": [PARENT_SPAN_ID], "x-b3-sampled": ["1"]},
     (int(TRACE_ID, 16), int(PARENT_SPAN_ID, 16), True)),
    ({"x-b3-traceid": [TRACE_ID[16:]], "x-b3-spanid": [PARENT_SPAN_ID]},
     (int(TRACE_ID[16:], 16), int(PARENT_SPAN_ID, 16), False)),
    ({"x-b3-traceid": [TRACE_ID], "x-b3-spanid": [PARENT_SPAN_ID], "x-b3-flags": ["1"]},
     (int(TRACE_ID, 16), int(PARENT_SPAN_ID, 16), True)),
    ({"b3": [f"{TRACE_ID}-{PARENT_SPAN_ID}-1"]}, (int(TRACE_ID, 16), int(PARENT_SPAN_ID, 16), True)),
    ({"b3": [f"{TRACE_ID}-{PARENT_SPAN_ID}"]}, (int(TRACE_ID, 16), int(PARENT_SPAN_ID, 16), False)),
    ({"b3": ["1"]}, None),
    ({"x-b3-traceid": ["xyz"], "x-b3-spanid": [PARENT_SPAN_ID]}, None),
    ({"x-b3-traceid": ["0" * 32], "x-b3-spanid": [PARENT_SPAN_ID]}, None),
    ({"x-b3-traceid": [TRACE_ID]}, None),
    ({}, None),
])
def test_b3_parsing(headers, expected):
    assert b3_parent(headers) == expected
