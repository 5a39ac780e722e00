"""The providers ledgergate knows, in one table: the pipeline, streaming and the server look a
provider up here and never name one. Adding a provider is its module and one line in SPECS.

The order of SPECS is the order in which the stream rules are asked about an event (shapes are
disjoint, so it matters only for the order of the slots of one event)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ext_proc.providers import anthropic, azure, bedrock, gemini, mistral, openai
from ext_proc.providers.spec import ProviderSpec, StreamRules, SurfaceRules
from ext_proc.providers.surfaces import MAX_PATH, Surface

SPECS: tuple[ProviderSpec, ...] = (openai.SPEC, azure.SPEC, anthropic.SPEC, bedrock.SPEC, gemini.SPEC,
                                    mistral.SPEC)
PROVIDERS: Mapping[str, ProviderSpec] = {s.name: s for s in SPECS}
_SURFACES: Mapping[str, SurfaceRules] = {name: rules for s in SPECS for name, rules in s.surfaces.items()}
# Unknown routes answer in OpenAI's error format (the most common client).
DEFAULT = openai.SPEC


def get(name: str | None) -> ProviderSpec | None:
    return PROVIDERS.get(name) if name is not None else None


def upstream_clusters() -> tuple[str, ...]:
    """The Envoy clusters the providers' requests go to (Azure shares OpenAI's), each once."""
    return tuple(dict.fromkeys(s.cluster for s in SPECS))


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider cluster as the shipped deployments reach it: TLS to host:port, SNI `sni`."""

    cluster: str
    host: str
    port: int
    sni: str


def upstreams() -> tuple[Upstream, ...]:
    """Each cluster once, in SPECS order, with the host of the provider that owns it (the spec
    named like the cluster: Azure's deployments go through OpenAI's cluster and host)."""
    owners = {s.cluster: s for s in reversed(SPECS)}
    owners.update({s.cluster: s for s in SPECS if s.name == s.cluster})
    return tuple(Upstream(c, owners[c].upstream_host, owners[c].upstream_port,
                          owners[c].upstream_sni or owners[c].upstream_host) for c in upstream_clusters())


def match_surface(method: str, path: str) -> Surface | None:
    """The surface for METHOD PATH (PATH may carry a query string), or None when unknown."""
    if not isinstance(method, str) or not isinstance(path, str):
        return None
    method = method.upper()
    path = path.split("?", 1)[0].split("#", 1)[0]
    if len(path) > MAX_PATH or not path.startswith("/"):
        return None
    try:
        return next((s for s in (spec.match(method, path) for spec in SPECS) if s is not None), None)
    except UnicodeDecodeError:  # percent-encoded bytes that are not UTF-8
        return None


def surface_rules(surface_name: str) -> SurfaceRules | None:
    return _SURFACES.get(surface_name)


def translation_targets() -> tuple[str, ...]:
    """The providers multiplexing can translate an OpenAI chat request to."""
    return tuple(s.name for s in SPECS if s.translation is not None)


def replayable_surfaces() -> tuple[str, ...]:
    """The surfaces whose cached answers can be re-framed as their stream."""
    return tuple(name for name, rules in _SURFACES.items() if rules.replay is not None)


def family(surface_name: str) -> ProviderSpec:
    """The provider whose formats a surface (or a stream shape such as "openai.responses") speaks."""
    return PROVIDERS.get(surface_name.split(".", 1)[0].lower(), DEFAULT)


def error_body(provider: str | None, status: int, code: str, message: str) -> tuple[dict[str, str], bytes]:
    """Response headers and body for an error in PROVIDER's own format (unknown providers get OpenAI's),
    so the official SDKs raise their usual typed errors.

    `code` is a stable machine code (OpenAI's error.code); `message` must already be safe to show."""
    extra, body = (get(provider) or DEFAULT).error_body(status, code, message)
    headers = {"content-type": "application/json", **extra}
    return headers, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def stream_rules() -> Iterator[StreamRules]:
    return (s.stream for s in SPECS if s.stream is not None)


def token_fields() -> tuple[tuple[str, str], ...]:
    """The (input, output) key pairs of every provider's usage objects, first match wins."""
    return tuple(dict.fromkeys(pair for s in SPECS for pair in s.token_fields))


def ceiling_fields() -> tuple[tuple[str, ...], ...]:
    """Every field any provider's model takes an output-token ceiling from: top-level fields first."""
    fields = dict.fromkeys(f for s in SPECS for f in s.ceiling_fields)
    return tuple(sorted(fields, key=len))
