"""Tracing with the real Envoy: Envoy's OpenTelemetry tracer on, ledgergate's spans continue
Envoy's trace (the context arrives in the ext_proc call's gRPC metadata), through the openai SDK
and the mock provider. ledgergate runs in-process so its spans can go to an in-memory exporter."""

from __future__ import annotations

import asyncio
import subprocess
import time

import openai
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server import runtime as runtime_module
from ext_proc.server.app import serve
from ext_proc.server.config import load_config
from ext_proc.server.tracing import Tracing
from tests.support import PY, REPO, free_ports, start_envoy, wait_port

pytestmark = pytest.mark.e2e

CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"


def _traced_template(tmp_path, collector_port: int):
    """envoy/local.yaml with Envoy's OpenTelemetry tracer on (exporting to a port nobody listens
    on: Envoy's own spans are dropped, the context propagation is what matters here)."""
    cfg = yaml.safe_load((REPO / "envoy" / "local.yaml").read_text())
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                f["typed_config"]["tracing"] = {
                    "random_sampling": {"value": 100},
                    "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                        "grpc_service": {"envoy_grpc": {"cluster_name": "otel_collector"}, "timeout": "1s"},
                        "service_name": "envoy"}}}
    cfg["static_resources"]["clusters"].append({
        "name": "otel_collector", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "otel_collector", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": collector_port}}}}]}]}})
    path = tmp_path / "envoy-traced.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


async def test_ledgergate_spans_continue_envoys_trace(tmp_path, monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(runtime_module, "open_tracing", lambda cfg, instance_id="": Tracing(provider))

    ensure_dev_material(tmp_path / "var")
    ext_port, mock_port, collector_port = free_ports(3)
    config = load_config(None, base_dir=tmp_path, overrides={
        "server": {"listen": [f"127.0.0.1:{ext_port}"], "metrics_listen": None, "drain_grace_s": 1},
        "policy": {"path": str(REPO / "policies" / "default.yaml")}})
    mock = subprocess.Popen([PY, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ready=ready, stop=stop))
    envoy = None
    try:
        await asyncio.to_thread(wait_port, mock_port)
        await asyncio.wait_for(ready.wait(), 30)
        envoy, port = await asyncio.to_thread(start_envoy, tmp_path, ext_proc_ports=[ext_port], mock_port=mock_port,
                                              template=_traced_template(tmp_path, collector_port))
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme",
                               now=time.time())
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)
        prompt = "summarise the note for bob@example.org about Project Nightingale"
        resp = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
            extra_headers={"traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"})
        assert resp.choices[0].message.content is not None
        await client.close()
        # The ext_proc stream (and with it the exchange span) ends when Envoy closes it, a moment
        # after the client has its response.
        deadline = time.monotonic() + 10
        while not [s for s in exporter.get_finished_spans() if s.name == "ledgergate.exchange"]:
            assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
        if envoy is not None:
            envoy.terminate()
            envoy.wait(10)
        mock.terminate()
        mock.wait(10)

    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.name == "ledgergate.exchange"]
    # Same trace as the client, but parented on Envoy's span for the ext_proc call, not directly
    # on the client's span: the context came from Envoy through the gRPC metadata.
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert root.parent is not None and root.parent.is_remote
    assert f"{root.parent.span_id:016x}" != CLIENT_SPAN_ID
    assert root.attributes["ledgergate.decision.outcome"] == "redact"
    assert root.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert isinstance(root.attributes.get("gen_ai.usage.output_tokens"), int)
    names = {s.name for s in spans}
    assert {"ledgergate.identity", "ledgergate.decide", "ledgergate.audit_commit", "ledgergate.response"} <= names
    text = repr([dict(s.attributes) for s in spans])
    assert "bob@example.org" not in text and "Nightingale" not in text
