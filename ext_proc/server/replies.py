"""Every protobuf `ProcessingResponse` ledgergate sends is built here, for the router-level and
the upstream-level stage alike; the stages say what to change (a `HeaderEdit`, a body, an error
answer), never how ext_proc spells it.

The upstream credential is injected here only (`HeaderEdit.inject_credential`): the provider a
request leaves for gets its own credential from configuration, the one set for another provider
is removed, and the client's never travels (pipeline/request.py strips it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from ext_proc.server.envoy_flags import UPSTREAM_FLAGS_HEADER, UPSTREAM_HOST_HEADER
from ext_proc.server.messages import set_header

if TYPE_CHECKING:
    from ext_proc.pipeline.verdict import Verdict
    from ext_proc.server.runtime import Runtime


@dataclass
class HeaderEdit:
    """Headers to set (in order; the last value for a name wins) and names to remove."""

    set: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)

    def put(self, name: str, value: str) -> HeaderEdit:
        self.set.pop(name, None)   # a name set again moves to the end, like a repeated OVERWRITE
        self.set[name] = value
        return self

    def drop(self, name: str) -> HeaderEdit:
        name = name.lower()
        if name not in self.remove:
            self.remove.append(name)
        return self

    def keep(self, name: str) -> HeaderEdit:
        """Take NAME off the removal list (it is set instead)."""
        self.remove = [h for h in self.remove if h != name.lower()]
        return self

    def inject_credential(self, rt: Runtime, provider: str | None, *, replacing: str | None = None) -> HeaderEdit:
        """The credential of PROVIDER (None: no single provider, e.g. a failover chain's cluster,
        whose upstream stage injects per attempt) in place of the one set for REPLACING."""
        if replacing is not None and (old := rt.credential_header(replacing)) is not None:
            self.drop(old)
        if provider is not None and (name := rt.credential_header(provider)) is not None:
            self.put(name, rt.upstream_secret(provider)).keep(name)
        return self

    def mutation(self) -> pb.HeaderMutation | None:
        if not self.set and not self.remove:
            return None
        return pb.HeaderMutation(set_headers=[set_header(k, v) for k, v in self.set.items()],
                                 remove_headers=list(self.remove))


def _common(edit: HeaderEdit | None = None, body: bytes | None = None,
            clear_route_cache: bool = False) -> pb.CommonResponse | None:
    mutation = edit.mutation() if edit is not None else None
    if mutation is None and body is None and not clear_route_cache:
        return None
    return pb.CommonResponse(header_mutation=mutation, clear_route_cache=clear_route_cache,
                             body_mutation=pb.BodyMutation(body=body) if body is not None else None)


def request_headers(edit: HeaderEdit | None = None, *, clear_route_cache: bool = False) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(
        response=_common(edit, clear_route_cache=clear_route_cache)))


def request_body(edit: HeaderEdit | None = None, body: bytes | None = None, *,
                 clear_route_cache: bool = False) -> pb.ProcessingResponse:
    """Continue the request, with BODY in place of the client's when given."""
    return pb.ProcessingResponse(request_body=pb.BodyResponse(
        response=_common(edit, body, clear_route_cache)))


def response_headers(edit: HeaderEdit | None = None) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=_common(edit)))


def body_chunk(body: bytes, end_of_stream: bool) -> pb.ProcessingResponse:
    """Released response bytes (the response body is processed in full-duplex streamed mode)."""
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
        body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=body,
                                                                                end_of_stream=end_of_stream)))))


def request_trailers() -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())


def response_trailers() -> pb.ProcessingResponse:
    return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


# Envoy's route adds these to every response of the route for ledgergate's eyes
# (envoy_flags.py), an immediate response (a local reply) too: the flags as "-", since no upstream
# answered. Envoy applies the route's headers first and the immediate response's own mutation
# after them, so removing them here keeps them off every answer ledgergate gives itself.
_ROUTE_HEADERS_FOR_LEDGERGATE = [UPSTREAM_FLAGS_HEADER, UPSTREAM_HOST_HEADER]


def immediate(status: int, headers: Mapping[str, str], body: bytes, details: str) -> pb.ProcessingResponse:
    """An answer from ledgergate itself (a refusal, a cache hit); Envoy ends the stream after it."""
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=status),
        headers=pb.HeaderMutation(set_headers=[set_header(k, v) for k, v in headers.items()],
                                  remove_headers=list(_ROUTE_HEADERS_FOR_LEDGERGATE)),
        body=body, details=details))


def rejection(verdict: Verdict, request_id: str, extra_headers: Mapping[str, str] | None = None) -> pb.ProcessingResponse:
    """A refused request's error answer, in the client's provider's format."""
    headers = dict(verdict.error_headers)
    headers["x-request-id"] = request_id
    headers.update(extra_headers or {})
    return immediate(verdict.status, headers, verdict.error_body, verdict.code)


def is_immediate(reply: pb.ProcessingResponse) -> bool:
    which: str | None = reply.WhichOneof("response")
    return which == "immediate_response"
