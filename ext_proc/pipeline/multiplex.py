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

from dataclasses import dataclass
from typing import Any, Mapping

from ext_proc.providers.translate import TARGETS, Target

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

    def to_record(self) -> dict:
        out = {"provider": self.target.provider, "model": self.target.model, "rationale": self.rationale}
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
