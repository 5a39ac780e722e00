"""The multiplexing mode's routing (sans-I/O): which provider and model serve a client's OpenAI
chat request, from the deployer's model map (`multiplex.models` in the configuration):

    multiplex:
      models:
        claude-haiku: {provider: anthropic, model: claude-3-5-haiku-latest}
        gemini-flash: {provider: gemini, model: gemini-2.0-flash}
        bedrock-haiku: {provider: bedrock, model: anthropic.claude-3-5-haiku-20241022-v1:0}

A request whose `model` is in the map is translated for that provider after the policy decided it
(the policy sees the model name the client asked for, so roles and rules govern it like any
other model); any other model goes to OpenAI unchanged.

A list of targets is a failover chain across providers:

        claude-or-gemini:
          - {provider: anthropic, model: claude-3-5-haiku-latest}
          - {provider: gemini, model: gemini-2.0-flash}

Such a request leaves Envoy's router in OpenAI's format for the chain's own cluster (one
endpoint per target, in priority order, each tagged with its provider and model); ledgergate,
as the cluster's upstream filter, translates it for whichever endpoint each attempt goes to, so
a retry after a 5xx reaches the next provider in that provider's format."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ext_proc.pipeline.verdict import Verdict, annotated, overruled
from ext_proc.providers.names import Provider
from ext_proc.providers.translate import TARGETS, Target, TranslatedRequest, TranslationError, translate_request

# The surfaces a multiplexed model can be called on (what the translation reads).
SURFACES = ("openai.chat_completions",)


# Envoy routes a failover chain by this request header (set by ledgergate, never by a client:
# every client-sent x-ledgergate-* header is stripped) to the cluster `mux-<name>`.
CHAIN_HEADER = "x-ledgergate-mux"


@dataclass(frozen=True)
class Route:
    name: str
    targets: tuple[Target, ...]
    rationale: str

    @property
    def target(self) -> Target:
        return self.targets[0]

    @property
    def chain(self) -> bool:
        return len(self.targets) > 1

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.target.provider, "model": self.target.model,
                               "rationale": self.rationale}
        if self.chain:
            out["failover"] = [{"provider": t.provider, "model": t.model} for t in self.targets]
        return out


def _target(spec: Any, where: str) -> Target:
    if not isinstance(spec, dict) or spec.get("provider") not in TARGETS or not isinstance(spec.get("model"), str):
        raise ValueError(f"{where}: needs provider (one of {', '.join(TARGETS)}) and model")
    return Target(spec["provider"], spec["model"])


def load_model_map(section: Any) -> dict[str, tuple[Target, ...]]:
    """Validate `multiplex.models`; raise ValueError naming the bad entry."""
    if section in (None, {}):
        return {}
    models = section.get("models") if isinstance(section, dict) else None
    if not isinstance(models, dict):
        raise ValueError("multiplex.models must map client model names to {provider, model} or a list of them")
    out: dict[str, tuple[Target, ...]] = {}
    for name, spec in models.items():
        where = f"multiplex.models.{name}"
        if not str(name).replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise ValueError(f"{where}: a model name here is a plain identifier (letters, digits, - . _)")
        specs = spec if isinstance(spec, list) else [spec]
        if not specs:
            raise ValueError(f"{where}: an empty failover chain")
        out[str(name)] = tuple(_target(s, f"{where}[{i}]") for i, s in enumerate(specs))
    return out


def route_for(surface: str | None, model: str | None,
              model_map: Mapping[str, tuple[Target, ...]]) -> Route | None:
    if surface not in SURFACES or model is None:
        return None
    targets = model_map.get(model)
    if not targets:
        return None
    chain = " then ".join(f"{t.provider}/{t.model}" for t in targets)
    return Route(model, targets, f"multiplex.models[{model!r}] -> {chain}")


def alias_refusal(surface: str | None, model: str | None,
                  model_map: Mapping[str, tuple[Target, ...]]) -> str | None:
    """The 400 message for a mapped model named on a surface that is not translated (the
    Responses API, embeddings, ...): sent as is it would reach OpenAI under a name OpenAI does
    not know, or worse, one it does. None when the request is not such a case."""
    if surface in SURFACES or surface is None or model is None or model not in model_map:
        return None
    return (f"model {model!r} is a multiplexed alias, served on /v1/chat/completions only; "
            f"call it there, or name a model of this API's provider")


@dataclass(frozen=True)
class Translated:
    """Served by one other provider: the router sends REQUEST (translated from the forwarded
    OpenAI body) to ROUTE's target, and its answer is translated back."""

    route: Route
    request: TranslatedRequest


@dataclass(frozen=True)
class FailoverChain:
    """Served by a chain of providers: the router sends the forwarded OpenAI body to the chain's
    cluster, whose upstream filter (server/upstream.py) translates it for each attempt."""

    route: Route


@dataclass(frozen=True)
class RouteChoice:
    """The verdict after the route choice, and how the request leaves (None: to the provider
    the client called, unchanged)."""

    verdict: Verdict
    multiplexed: Translated | FailoverChain | None = None


def choose_route(verdict: Verdict, body: bytes | None, surface: str | None, client_provider: str,
                 model_map: Mapping[str, tuple[Target, ...]]) -> RouteChoice:
    """Which provider serves a forwarded request, decided before anything is committed or
    released: the policy's `serve_with`, else the model the client named, looked up in the
    deployer's model map. A mapped alias on an API that is not translated (400), a `serve_with`
    the map lacks (503) and a body that cannot be translated (400) are overrules."""
    if not verdict.forward or not model_map:
        return RouteChoice(verdict)
    chosen = verdict.decision.serve_with if verdict.decision is not None else None
    refused = alias_refusal(surface, verdict.model, model_map)
    if refused:
        return RouteChoice(overruled(verdict, 400, "model_alias_not_on_this_api", refused, client_provider))
    route = route_for(surface, chosen or verdict.model, model_map)
    if chosen and route is None:
        # The policy names a model the deployer's map does not have: a configuration error,
        # never a silent fallback to the model the client asked for.
        return RouteChoice(overruled(verdict, 503, "route_unavailable",
                                     "the model the policy chose for this request is not configured", Provider.OPENAI))
    if route is None:
        return RouteChoice(verdict)
    if chosen:
        route = replace(route, rationale=f"policy serve_with {chosen!r}: {route.rationale}")
    forwarded = verdict.new_body if verdict.new_body is not None else body
    if route.chain:
        chained = annotated(verdict, multiplex=route.to_record(), upstream=f"multiplex:{route.name}",
                            model_routed=None)
        return RouteChoice(replace(chained, new_body=forwarded), FailoverChain(route))
    try:
        translated = translate_request(json.loads(forwarded or b"{}"), route.target)
    except (TranslationError, ValueError) as exc:
        message = str(exc) if isinstance(exc, TranslationError) else "the body is not JSON"
        return RouteChoice(overruled(verdict, 400, "translation_error", message, Provider.OPENAI))
    routed = annotated(verdict, multiplex=route.to_record(), upstream=route.target.provider,
                       model_routed=route.target.model, forwarded_sha256=hashlib.sha256(translated.body).hexdigest())
    return RouteChoice(replace(routed, new_body=translated.body), Translated(route, translated))


class ModelListAliases:
    """GET /v1/models as OpenAI answers it, plus one entry per alias of the model map (owned_by
    names the provider, or "ledgergate" for a chain), so SDKs and UIs that list models find them.
    The body is held (bounded) and rewritten at its end; a body that is not OpenAI's list shape
    passes unchanged. Same feed(data, end) -> bytes shape as providers.translate.ResponseTranslator."""

    content_type = "application/json"

    def __init__(self, model_map: Mapping[str, tuple[Target, ...]], max_bytes: int) -> None:
        self.model_map = model_map
        self.max_bytes = max_bytes
        self._held = bytearray()
        self._done = False

    def feed(self, data: bytes, end: bool) -> bytes:
        self._held += data
        if len(self._held) > self.max_bytes:
            raise TranslationError("the model list is larger than the response buffer")
        if not end:
            return b""
        self._done = True
        raw = bytes(self._held)
        try:
            listing = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
            return raw
        present = {m.get("id") for m in listing["data"] if isinstance(m, dict)}
        for alias, targets in self.model_map.items():
            if alias not in present:
                owner = targets[0].provider if len(targets) == 1 else "ledgergate"
                listing["data"].append({"id": alias, "object": "model", "created": 0, "owned_by": owner})
        return json.dumps(listing, separators=(",", ":")).encode()
