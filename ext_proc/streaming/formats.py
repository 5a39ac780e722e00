"""What the provider stream formats look like to the inspector, recognized by the event's shape
(so Azure, OpenAI-compatible and proxied streams work whatever the route was called). Each
provider's rules live in its module (ext_proc/providers/<name>.py); this module asks every
registered provider in turn:

* which strings of an event are text deltas, and of which content stream (``slots``);
* which event ends which streams (``terminated``): held text must be flushed before or into it;
* usage counts, and the provider-shaped error event that ends a blocked stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ext_proc.providers import registry
from ext_proc.providers.events import ALL, Path, Slot, StreamKey

__all__ = ["ALL", "FINAL_TYPES", "OPAQUE_KEYS", "KeyOf", "Path", "Slot", "StreamKey", "bedrock_slots",
           "bedrock_terminated", "dumps", "error_event", "family", "get_path", "loads", "merge_usage",
           "restates", "set_path", "shape", "slots", "strings", "terminated", "usage"]

# Every string of an event or body is scanned (ids, fingerprints, model names and enums included:
# the SDK hands them to the application too), but for these: opaque values the provider generates
# and checks (thinking signatures, encrypted reasoning), which a redaction would break and which
# carry no text.
OPAQUE_KEYS = frozenset({"signature", "encrypted_content", "thoughtSignature", "thought_signature"})

_RULES = tuple(registry.stream_rules())
_TOKEN_FIELDS = registry.token_fields()
_OUTPUT_ONLY = frozenset().union(*(r.output_only_usage for r in _RULES))

# Events after which an SDK considers the response complete (besides OpenAI's `data: [DONE]`).
FINAL_TYPES = frozenset().union(*(r.final_types for r in _RULES))
# Every provider's stream shapes, surest test first (a stable sort: registry order within a rank).
_SHAPES = tuple(sorted((s for r in _RULES for s in r.shapes), key=lambda s: s.rank))


@dataclass(frozen=True, slots=True)
class KeyOf:
    """A path's last step naming an object's key itself (a model-chosen key of tool arguments)."""
    name: str


def get_path(obj: Any, path: Path) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def set_path(obj: Any, path: Path, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    last = path[-1]
    if isinstance(last, KeyOf):           # rename the key, keeping the order of the others
        items = list(obj.items())
        obj.clear()
        for k, v in items:
            obj[value if k == last.name else k] = v
        return
    obj[last] = value


def slots(ev: dict) -> list[Slot]:
    return [slot for rules in _RULES for slot in rules.slots(ev)]


def terminated(ev: dict) -> list[StreamKey]:
    """Key prefixes of the streams this event ends (their held text must not come after it)."""
    ends = [key for rules in _RULES for key in rules.terminated(ev)]
    if "error" in ev:                      # an error in any shape ends every stream
        ends.append(ALL)
    return ends


def shape(ev: dict) -> str | None:
    """The name of the provider stream shape the event is in (the first shape whose test it passes)."""
    return next((s.name for s in _SHAPES if s.test(ev)), None)


def restates(ev: dict) -> bool:
    """Events that repeat text already streamed as deltas (Responses API *.done, response.completed):
    scanned and redacted, but not counted twice in the classification."""
    return any(rules.restates(ev) for rules in _RULES)


def bedrock_slots(event_type: str | None, payload: dict) -> list[Slot]:
    """Slots of a binary-framed event (AWS event stream), whose type is in the frame's headers."""
    return [slot for rules in _RULES if rules.frame_slots is not None
            for slot in rules.frame_slots(event_type, payload)]


def bedrock_terminated(event_type: str | None, payload: dict) -> list[StreamKey]:
    return [key for rules in _RULES if rules.frame_terminated is not None
            for key in rules.frame_terminated(event_type, payload)]


def usage(ev: Any) -> dict | None:
    """{"input_tokens", "output_tokens"} if the event (or whole body) reports usage."""
    if not isinstance(ev, dict):
        return None
    for rules in _RULES:
        holder = rules.usage_holder(ev)
        if holder is not None:
            return usage(holder)
    u = ev.get("usage")
    if isinstance(u, dict):
        for inp, out in _TOKEN_FIELDS:
            if inp in u or out in u:
                return {"input_tokens": u.get(inp), "output_tokens": u.get(out)}
    for rules in _RULES:
        found = rules.usage(ev)
        if found is not None:
            return found
    return None


def merge_usage(have: dict | None, new: dict | None, ev: Any) -> dict | None:
    """Some events report the output only (Anthropic's message_delta: the input came before)."""
    if new is None:
        return have
    if have and isinstance(ev, dict) and ev.get("type") in _OUTPUT_ONLY:
        return {"input_tokens": new.get("input_tokens") if new.get("input_tokens") is not None
                else have.get("input_tokens"), "output_tokens": new.get("output_tokens")}
    return new


def strings(obj: Any, path: Path = (), depth: int = 0) -> list[tuple[Path, str]]:
    """Every string of a JSON value the client's SDK will hand over, object keys included (a key
    is listed with a KeyOf last step), with its path, in document order; opaque provider values
    excepted."""
    out: list[tuple[Path, str]] = []
    _strings(obj, path, depth, out)
    return out


def _strings(obj: Any, path: Path, depth: int, out: list) -> None:
    if depth > 256:
        raise RecursionError("JSON nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k:
                out.append((path + (KeyOf(k),), k))
            if isinstance(v, str):
                if k not in OPAQUE_KEYS:
                    out.append((path + (k,), v))
            elif isinstance(v, (dict, list)):
                _strings(v, path + (k,), depth + 1, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, str):
                out.append((path + (i,), v))
            elif isinstance(v, (dict, list)):
                _strings(v, path + (i,), depth + 1, out)


class DuplicateKeys(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        # Parsers disagree on which duplicate wins: what was scanned might not be what the client reads.
        raise DuplicateKeys("duplicate object keys")
    return d


def loads(data: bytes) -> Any:
    return json.loads(data, object_pairs_hook=_no_duplicates)


def dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:       # a lone surrogate (split emoji): keep it as a JSON escape
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def family(surface_name: str) -> str:
    """The provider whose formats a surface (or a stream shape) speaks; OpenAI's when unknown."""
    return registry.family(surface_name).name


def error_event(surface_name: str, message: str, *, responses_api: bool = False, sequence_number: int = 0) -> bytes:
    """The SSE event that ends a blocked stream in the provider's own shape; the SDKs raise on it."""
    return registry.family(surface_name).stream_error(surface_name, message, responses_api, sequence_number)
