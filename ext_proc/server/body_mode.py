"""The response body mode chosen per response (issue 23), for a filter whose response body mode
is BUFFERED with `allow_mode_override` (tests/bench/bench_modes.py, docs/benchmarks.md):

- a whole answer (JSON and everything else the inspector judges whole) stays BUFFERED: Envoy
  sends it in one message and keeps the response headers until the body reply, so a blocked
  answer's error status travels in that reply's header mutation (allowed in BUFFERED only);
  one message fewer than full duplex, which adds an empty end-of-stream chunk;
- a stream (SSE, AWS event stream) is switched to FULL_DUPLEX_STREAMED in the response-headers
  reply (trailers SEND, as Envoy requires for duplex), so tokens are released as they are judged.

With today's filter (response body FULL_DUPLEX_STREAMED) nothing changes: Envoy says which mode
it runs in `protocol_config` on the first message, and only a BUFFERED filter gets overrides."""

from __future__ import annotations

from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as pm
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

STREAM_OVERRIDE = pm.ProcessingMode(response_body_mode=pm.ProcessingMode.FULL_DUPLEX_STREAMED,
                                    response_trailer_mode=pm.ProcessingMode.SEND)


def filter_buffers_responses(req: pb.ProcessingRequest) -> bool:
    """Whether the filter's response body mode is BUFFERED (read from the first message)."""
    return req.HasField("protocol_config") and req.protocol_config.response_body_mode == pm.ProcessingMode.BUFFERED


def response_mode_override(filter_buffered: bool, whole_body: bool) -> pm.ProcessingMode | None:
    """The mode_override for a response-headers reply: None keeps the filter's mode."""
    if filter_buffered and not whole_body:
        return STREAM_OVERRIDE
    return None
