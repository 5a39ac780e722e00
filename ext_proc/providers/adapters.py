"""Request adapters: every piece of user-controlled text in a provider's JSON request body
as a list of segments addressed by JSON path, and the body rendered back with replacements.

How each surface is read is its provider module's (looked up in the registry); this module holds
what every surface shares: strict loading, the output-token ceiling, the model and stream fields,
and rendering. Sans-I/O: bytes in, plain data out; every failure on untrusted input is a
BadRequestBody whose message never echoes body content.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ext_proc.providers import registry
from ext_proc.providers.body import (
    MAX_DEPTH,
    MAX_SEGMENTS,
    BadRequestBody,
    Path,
    TextSegment,
    as_dict,
    dump_json,
    expect,
    load_json,
    non_negative_int,
    where_of,
)
from ext_proc.providers.surfaces import Surface

__all__ = ["MAX_DEPTH", "MAX_SEGMENTS", "BadRequestBody", "ParsedRequest", "Path",
           "TextSegment", "field_changes", "load_json", "parse_request", "render_request"]


@dataclass
class ParsedRequest:
    surface: Surface
    body: Any
    model: str | None
    stream: bool
    max_tokens: int | None
    segments: list[TextSegment] = field(default_factory=list)
    estimated_tokens: int = 0
    raw: bytes = field(default=b"", repr=False)


def _max_tokens(body: dict[str, Any]) -> int | None:
    """The output-token ceiling the caller asked for; the largest when several fields are set
    (every provider's field is read: the model, not the route, decides which one it honours)."""
    found: list[int] = []
    for path in registry.ceiling_fields():
        obj = body
        for step in path[:-1]:
            obj = as_dict(obj[step], (step,)) if obj.get(step) is not None else {}
        if obj.get(path[-1]) is not None:
            found.append(non_negative_int(obj[path[-1]], ".".join(path)))
    return max(found) if found else None


def parse_request(surface: Surface, body: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> ParsedRequest:
    """Parse and validate a request body for SURFACE; BadRequestBody on anything unexpected."""
    if not surface.inspectable:
        raise BadRequestBody(f"the {surface.name} surface cannot be inspected")
    obj = load_json(body, max_bytes)
    expect(isinstance(obj, dict), "the body must be a JSON object")
    rules = registry.surface_rules(surface.name)
    if rules is None:
        raise BadRequestBody(f"the {surface.name} surface cannot be inspected")
    segments: list[TextSegment] = []
    for seg in rules.read(obj):
        segments.append(seg)
        expect(len(segments) <= MAX_SEGMENTS, f"body has more than {MAX_SEGMENTS} text fields")
    if b"\\u" in body:  # only an escape can produce a lone surrogate, which no later stage can encode
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestBody("body contains an unpaired UTF-16 surrogate escape") from None
    model = obj.get("model")
    expect(model is None or isinstance(model, str), "model must be a string")
    if surface.model_from_path is not None:
        model = surface.model_from_path
    stream_field = obj.get("stream")
    expect(stream_field is None or isinstance(stream_field, bool), "stream must be a boolean")
    stream = surface.stream_from_path or stream_field is True
    for key in ("stream_options",):
        if obj.get(key) is not None:
            as_dict(obj[key], (key,))
    max_tokens = _max_tokens(obj)
    chars = sum(len(s.text) for s in segments)
    return ParsedRequest(surface=surface, body=obj, model=model, stream=stream, max_tokens=max_tokens,
                         segments=segments, estimated_tokens=chars // 4 + 1 + (max_tokens or 0),
                         raw=bytes(body))



# --- rendering -------------------------------------------------------------------------------

_MISSING = object()


def _get_path(obj: Any, path: Path) -> Any:
    node = obj
    for key in path:
        if isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            return _MISSING
    return node


def _set_path(obj: Any, path: Path, value: Any, *, create: bool) -> None:
    if not path:
        raise ValueError("empty JSON path")
    node = obj
    for key in path[:-1]:
        if isinstance(node, dict):
            nxt = node.get(key)
            if nxt is None and create:
                nxt = node[key] = {}
            node = nxt
        elif isinstance(node, list) and isinstance(key, int):
            node = node[key]
        else:
            node = None
        if not isinstance(node, (dict, list)):
            raise ValueError(f"cannot set {where_of(path)}: a step on the way is not an object")
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        node[last] = value
    else:
        raise ValueError(f"cannot set {where_of(path)}")


def field_changes(body: Any, set_fields: Mapping[tuple[Any, ...], object]) -> list[tuple[Path, Any, bool]]:
    """(path, value, create) for each field to set that BODY does not already hold as is."""
    out: list[tuple[Path, Any, bool]] = []
    for path, value in set_fields.items():
        path = tuple(path)
        current = _get_path(body, path)
        if current is _MISSING or type(current) is not type(value) or current != value:
            out.append((path, value, True))
    return out


def _render(parsed: ParsedRequest, replacements: Mapping[int, str],
            set_fields: Mapping[tuple[Any, ...], object]) -> bytes:
    changes: list[tuple[Path, Any, bool]] = []
    for idx, text in replacements.items():
        if not isinstance(text, str):
            raise TypeError("replacement text must be a string")
        seg = parsed.segments[idx]
        if text != seg.text:
            changes.append((seg.path, text, False))
    changes += field_changes(parsed.body, set_fields)
    if not changes and parsed.raw:
        return parsed.raw  # byte-identical: nothing to change
    obj = copy.deepcopy(parsed.body)
    for path, value, create in changes:
        _set_path(obj, path, value, create=create)
    return dump_json(obj)


def render_request(parsed: ParsedRequest, replacements: Mapping[int, str], *,
                   set_fields: Mapping[tuple[Any, ...], object] = {}) -> bytes:
    """The body with segment texts replaced (index -> new text) and fields set (JSON path -> value,
    intermediate objects created). Returns the original bytes when nothing changes."""
    return _render(parsed, replacements, set_fields)

