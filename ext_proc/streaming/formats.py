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
import math
from dataclasses import dataclass
from typing import Any

from ext_proc.providers import registry
from ext_proc.providers.events import ALL, Path, Slot, StreamKey

__all__ = ["ALL", "FINAL_TYPES", "OPAQUE_KEYS", "KeyOf", "LiteralFloat", "NumberForms", "Path", "Slot", "StreamKey",
           "bedrock_slots", "bedrock_terminated", "dumps", "error_event", "family", "get_path", "loads", "merge_usage", "parse",
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


class LiteralFloat(float):
    """A JSON number read as a float, with its literal as it was written ("4.111111111111111e15")."""
    __slots__ = ("literal",)
    literal: str


def _literal_float(literal: str) -> float:
    f = LiteralFloat(literal)
    f.literal = literal
    return f


class NumberForms(tuple):
    """The texts a JSON number is read as (see number_forms); listed by strings(numbers=True)."""
    __slots__ = ()


# Numbers the provider computes from probabilities, never chosen by the model (and many and all
# different in a logprobs stream): not scanned.
COMPUTED_NUMBER_KEYS = frozenset({"logprob", "logProbability", "avgLogprobs"})


def number_forms(v: Any) -> NumberForms | None:
    """A JSON number as the texts an application reads it as: an integer's digits; a float as it
    was written and, when it is a whole number, as its digits (what JavaScript prints, and
    Python's int(): 4.111111111111111e15 is 4111111111111111). None for non-numbers, booleans,
    NaN and infinities."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, int):
        return NumberForms((str(v),))
    if not math.isfinite(v):
        return None
    lit = getattr(v, "literal", None) or repr(v)
    if v.is_integer() and abs(v) < 1e21 and str(int(v)) != lit:
        return NumberForms((lit, str(int(v))))
    return NumberForms((lit,))


def strings(obj: Any, path: Path = (), depth: int = 0, *, numbers: bool = False) -> list[tuple[Path, Any]]:
    """Every string of a JSON value the client's SDK will hand over, object keys included (a key
    is listed with a KeyOf last step), with its path, in document order; opaque provider values
    excepted. With `numbers`, numbers too (a model writes a card number as a number in structured
    tool input: Anthropic tool_use.input, Gemini functionCall.args), as NumberForms."""
    out: list[tuple[Path, Any]] = []
    _strings(obj, path, depth, out, numbers)
    return out


def _strings(obj: Any, path: Path, depth: int, out: list, numbers: bool) -> None:
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
                _strings(v, path + (k,), depth + 1, out, numbers)
            elif numbers and k not in COMPUTED_NUMBER_KEYS:
                forms = number_forms(v)
                if forms is not None:
                    out.append((path + (k,), forms))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, str):
                out.append((path + (i,), v))
            elif isinstance(v, (dict, list)):
                _strings(v, path + (i,), depth + 1, out, numbers)
            elif numbers:
                forms = number_forms(v)
                if forms is not None:
                    out.append((path + (i,), forms))


class DuplicateKeys(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        # Parsers disagree on which duplicate wins: what was scanned might not be what the client reads.
        raise DuplicateKeys("duplicate object keys")
    return d


def loads(data: bytes | str) -> Any:
    return json.loads(data, object_pairs_hook=_no_duplicates, parse_float=_literal_float)


def _loads_last(data: bytes | str) -> Any:
    """Duplicate keys allowed, the last one kept (what Python's json and JSON.parse keep)."""
    return json.loads(data, parse_float=_literal_float)


def parse(data: bytes) -> tuple[Any, bool]:
    """JSON as a client can read it: (value, whether it must be re-serialized). Duplicate keys: the
    last one wins (Python's json, JSON.parse), and the event goes out re-serialized with it alone.
    Invalid UTF-8: a JavaScript client (TextDecoder, as fetch and the JS SDKs decode) reads U+FFFD
    for the bad bytes and parses the rest, so it is read that way and re-serialized so. ValueError
    if it is not JSON; RecursionError (nested beyond the json module's depth, which JSON.parse
    reads) is left to the caller, who blocks: raw text is not what such a client reads."""
    try:
        return loads(data), False
    except DuplicateKeys:
        return _loads_last(data), True
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
    try:
        return loads(text), True
    except DuplicateKeys:
        return _loads_last(text), True


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
