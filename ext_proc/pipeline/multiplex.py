"""The multiplexing mode's routing (sans-I/O): which provider and model serve a client's OpenAI
chat request, from the deployer's model map (`multiplex.models` in the configuration):

    multiplex:
      models:
        claude-haiku: {provider: anthropic, model: claude-3-5-haiku-latest}
        gemini-flash: {provider: gemini, model: gemini-2.0-flash}

A request whose `model` is in the map is translated for that provider after the policy decided it
(the policy sees the model name the client asked for, so roles and rules govern it like any
other model); any other model goes to OpenAI unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ext_proc.providers.translate import TARGETS, Target

# The surfaces a multiplexed model can be called on (what the translation reads).
SURFACES = ("openai.chat_completions",)


@dataclass(frozen=True)
class Route:
    target: Target
    rationale: str

    def to_record(self) -> dict:
        return {"provider": self.target.provider, "model": self.target.model, "rationale": self.rationale}


def load_model_map(section: Any) -> dict[str, Target]:
    """Validate `multiplex.models`; raise ValueError naming the bad entry."""
    if section in (None, {}):
        return {}
    models = section.get("models") if isinstance(section, dict) else None
    if not isinstance(models, dict):
        raise ValueError("multiplex.models must map client model names to {provider, model}")
    out: dict[str, Target] = {}
    for name, spec in models.items():
        if not isinstance(spec, dict) or spec.get("provider") not in TARGETS or not isinstance(spec.get("model"), str):
            raise ValueError(f"multiplex.models.{name}: needs provider (one of {', '.join(TARGETS)}) and model")
        out[str(name)] = Target(spec["provider"], spec["model"])
    return out


def route_for(surface: str | None, model: str | None, model_map: Mapping[str, Target]) -> Route | None:
    if surface not in SURFACES or model is None:
        return None
    target = model_map.get(model)
    if target is None:
        return None
    return Route(target, f"multiplex.models[{model!r}] -> {target.provider}/{target.model}")
