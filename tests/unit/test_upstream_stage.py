"""The upstream (per-attempt) stage of a failover chain, without Envoy: the endpoint's metadata
names the target, and an attempt without a router-level decision behind it is refused."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from ext_proc.pipeline.multiplex import CHAIN_HEADER, load_model_map, route_for
from ext_proc.providers.translate import Target
from ext_proc.server.upstream import AttemptRefused, UpstreamAttempt, endpoint_target

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
