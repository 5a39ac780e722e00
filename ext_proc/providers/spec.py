"""What a provider module declares about itself, in one value the registry keeps: its routes, how
its model reads each surface's body and answer, its errors and the rules of its streamed events.

Plain data and functions, no I/O: the pipeline, streaming and the server look a provider up in
ext_proc/providers/registry.py and never name one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.providers.body import Path, Reader
from ext_proc.providers.events import Shape, Slot, StreamKey
from ext_proc.providers.names import Provider
from ext_proc.providers.surfaces import Surface
from ext_proc.providers.translation import Translation

# A whole (non-streamed) answer: the text segments the client reads and the usage it reports.
# (status, stable code, safe message) -> (extra response headers, error body as JSON)
ErrorBody = Callable[[int, str, str], tuple[dict[str, str], dict]]


@dataclass(frozen=True, slots=True)
class SurfaceRules:
    """How one surface's JSON is read. A surface without rules is governed by route only."""

    read: Reader                          # the reading view of a request body, in model order
    cap_field: Path | None = None         # where a policy's max_tokens cap is written
    # A streamed request gets this field set to True so the usage comes back (OpenAI's
    # stream_options.include_usage); None when the provider always reports it.
    usage_option: Path | None = None
    # A cached whole answer re-framed as the provider's own stream, (answer, include_usage) ->
    # SSE bytes, so the SDK that asked for a stream reads it as its own; NotReplayable when the
    # shape is not one it re-frames. None: answers of this surface are not served from the cache.
    replay: Callable[[dict, bool], bytes] | None = None


@dataclass(frozen=True, slots=True)
class StreamRules:
    """The events a provider streams, recognised by their shape (a proxy or an OpenAI-compatible
    upstream may stream them on any route)."""

    slots: Callable[[dict], list[Slot]]
    terminated: Callable[[dict], list[StreamKey]]
    # How its events are recognized, one row per shape it streams.
    shapes: tuple[Shape, ...] = ()
    # Events after which the SDK considers the response complete.
    final_types: frozenset[str] = frozenset()
    # The object inside an event that carries the usage (Anthropic's message_start.message).
    usage_holder: Callable[[dict], Any] = lambda ev: None
    # Usage written in the provider's own shape (not a "usage" object with token_fields).
    usage: Callable[[dict], dict | None] = lambda ev: None
    # Event types whose usage reports the output only (the input came earlier).
    output_only_usage: frozenset[str] = frozenset()
    # Events that repeat text already streamed (scanned, not counted twice).
    restates: Callable[[dict], bool] = lambda ev: False
    # Binary-framed streams (AWS event stream): the event type travels in the frame headers.
    frame_slots: Callable[[str | None, dict], list[Slot]] | None = None
    frame_terminated: Callable[[str | None, dict], list[StreamKey]] | None = None


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: Provider
    match: Callable[[str, str], Surface | None]        # (METHOD, path without query) -> surface
    surfaces: Mapping[str, SurfaceRules]                # by surface name
    error_body: ErrorBody
    # The SSE event that ends a blocked stream: (surface or shape name, message, responses_api,
    # sequence_number) -> bytes.
    stream_error: Callable[[str, str, bool, int], bytes]
    stream: StreamRules | None = None                   # None: it streams another provider's shape
    token_fields: tuple[tuple[str, str], ...] = ()      # (input, output) keys of its usage objects
    # Every field its models take an output-token ceiling from (a body may carry several).
    ceiling_fields: tuple[tuple[str, ...], ...] = ()    # each one's keys, from the top level down
    headers: frozenset[str] = frozenset()               # request headers its API reads
    query: frozenset[str] = frozenset()                 # query parameters its API reads
    credential_query: frozenset[str] = frozenset()      # query parameters that carry a credential
    genai_name: str = ""                                # OpenTelemetry gen_ai.provider.name
    cluster: str = ""                                   # the Envoy cluster its requests go to
    upstream_host: str = ""                             # the public API host
    # Where its cluster connects in the shipped deployments (envoy/sidecar.yaml, edge.yaml, the mesh
    # manifests; rendered by ext_proc/cli/mesh.py): TLS to upstream_host:upstream_port, with this
    # SNI (empty: the host) and the certificate checked for the same name.
    upstream_port: int = 443
    upstream_sni: str = ""
    # A prefix ledgergate's Envoy routes put before the provider's own paths when they would
    # collide with another provider's (Envoy's prefix_rewrite strips it on the way upstream).
    route_prefix: str = ""
    # Multiplexing: how it serves a client's OpenAI chat request (None: not a translation target).
    translation: Translation | None = None
