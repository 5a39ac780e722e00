"""A provider's JSON body read the way every provider module reads it: strict JSON loading, the
text segments addressed by JSON path, and the small readers the provider modules compose.

Sans-I/O: bytes in, plain data out. Every failure on untrusted input is a BadRequestBody whose
message names the place and the problem but never echoes body content.

What counts as text: inside message content parts (OpenAI, Anthropic, Gemini, Bedrock), every
string except structural values (type tags, ids, media types, signatures) and binary payloads
(base64 image/audio/file data, data: URLs); inside free JSON chosen by the caller (tool
definitions and schemas, tool call arguments and inputs, function responses, metadata) every
string. New part types therefore stay inspected without a code change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64
MAX_SEGMENTS = 100_000


class JsonStep:
    """A path step meaning "this string is itself a JSON document": tool-call arguments, tool
    results and the like, whose strings the model and the SDKs read decoded (escapes included).
    Only the document walk (providers/document.py) puts one in a path."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<json>"


JSON_STEP = JsonStep()
Path = tuple[str | int | JsonStep, ...]

# String values under these keys inside content parts describe structure, not user text.
_STRUCTURAL = frozenset({
    "type", "id", "role", "status", "detail", "format", "media_type", "mime_type", "mimeType",
    "signature", "thought_signature", "thoughtSignature", "tool_use_id", "toolUseId", "call_id",
    "tool_call_id", "cache_control", "file_id", "fileId", "index",
})
# Binary payloads (base64): never text, and scanning them only produces false positives.
_BINARY = frozenset({"file_data", "bytes", "b64_json"})
# Under these keys the content is arbitrary caller JSON: every string is text, structural or not.
_FREE_JSON = frozenset({"input", "args", "arguments", "response", "json", "parameters", "schema",
                        "input_schema", "inputSchema", "metadata", "variables"})


class BadRequestBody(ValueError):
    """The body is not what the surface accepts; the message is safe to return to the client."""


@dataclass(frozen=True, slots=True)
class TextSegment:
    path: Path
    text: str
    kind: str = "text"     # where it sits and how it is written back: see providers/document.py


# A surface's reading view: the strings its model reads, in the order it reads them.
Reader = Callable[[dict[str, Any]], Iterator[TextSegment]]


# --- JSON ------------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Two values for one key: we would inspect one and the provider might use the other.
        raise BadRequestBody("body has a duplicate key in a JSON object")
    return obj


def _no_constant(name: str) -> Any:
    raise BadRequestBody("body contains NaN or Infinity, which is not JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        # 1e999 is valid JSON syntax but no finite number: refused like NaN, since readers differ
        # on what it means (infinity, an error, the largest double).
        raise BadRequestBody("body has a number too large to be finite")
    return value


def _check_depth(obj: Any) -> None:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise BadRequestBody(f"JSON nesting deeper than {MAX_DEPTH} levels")
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise BadRequestBody(f"JSON nesting deeper than {MAX_DEPTH} levels")
            stack.extend((v, depth + 1) for v in node)


def _nesting_over_limit(text: str) -> bool:
    """Cheap pre-check so a body of 1e6 '[' never reaches the recursive decoder: count brackets
    outside strings, stopping as soon as the limit is passed."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def load_json(body: bytes, max_bytes: int) -> Any:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise BadRequestBody("body must be bytes")
    if len(body) > max_bytes:
        raise BadRequestBody(f"body of {len(body)} bytes is over the limit of {max_bytes}")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestBody(f"body is not valid UTF-8 at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise BadRequestBody("body starts with a byte order mark")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                         parse_float=_finite_float)
    except BadRequestBody:
        raise
    except RecursionError:
        raise BadRequestBody(f"JSON nesting deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        if _nesting_over_limit(text[:exc.pos]):
            raise BadRequestBody(f"JSON nesting deeper than {MAX_DEPTH} levels") from None
        pos = len(text[:exc.pos].encode("utf-8"))
        raise BadRequestBody(f"body is not valid JSON at byte {pos}: {exc.msg}") from None
    except ValueError:  # e.g. an integer literal over the interpreter's digit limit
        raise BadRequestBody("body has a number that is too large") from None
    _check_depth(obj)
    return obj


def dump_json(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # an escaped lone surrogate outside the segments: keep it escaped
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


# --- helpers ---------------------------------------------------------------------------------

def expect(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequestBody(message)


def where_of(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else f"{p}")
    return out


def as_list(value: Any, path: Path, *, optional: bool = True) -> list[Any]:
    if value is None and optional:
        return []
    if not isinstance(value, list):
        raise BadRequestBody(f"{where_of(path)} must be an array")
    return value


def as_dict(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestBody(f"{where_of(path)} must be an object")
    return value


def is_data_url(s: str) -> bool:
    return s[:5].lower() == "data:"


def strings(obj: Any, path: Path, *, free: bool) -> Iterator[TextSegment]:
    """Strings inside OBJ. free=False (content parts): skip structural values and binary payloads;
    under a _FREE_JSON key everything below is free."""
    stack: list[tuple[Any, Path, bool, dict[str, Any] | None]] = [(obj, path, free, None)]
    while stack:
        node, p, fr, parent = stack.pop()
        if isinstance(node, str):
            if not fr and p:
                key = p[-1]
                if key in _STRUCTURAL or key in _BINARY:
                    continue
                if key == "data" and parent is not None and parent.get("type") != "text":
                    continue  # base64 source / inlineData / input_audio; Anthropic text documents keep theirs
                if key in ("url", "image_url", "uri", "fileUri") and is_data_url(node):
                    continue
            yield TextSegment(p, node)
        elif isinstance(node, dict):
            for k in reversed(list(node)):
                stack.append((node[k], p + (k,), fr or k in _FREE_JSON, node))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], p + (i,), fr, parent))


def content_segments(content: Any, path: Path) -> Iterator[TextSegment]:
    """Message content: a string, or an array of part objects."""
    if content is None:
        return
    if isinstance(content, str):
        yield TextSegment(path, content)
        return
    expect(isinstance(content, list), f"{where_of(path)} must be a string or an array")
    for i, part in enumerate(content):
        as_dict(part, path + (i,))
        yield from strings(part, path + (i,), free=False)


def free_json(body: dict[str, Any], key: str) -> Iterator[TextSegment]:
    if body.get(key) is not None:
        yield from strings(body[key], (key,), free=True)


def opt_str(body: dict[str, Any], key: str) -> Iterator[TextSegment]:
    v = body.get(key)
    if v is not None:
        expect(isinstance(v, str), f"{key} must be a string")
        yield TextSegment((key,), v)


def messages_of(body: dict[str, Any], *, required: bool = True) -> list[Any]:
    if not required and body.get("messages") is None:
        return []
    msgs = as_list(body.get("messages"), ("messages",), optional=False)
    for i, m in enumerate(msgs):
        as_dict(m, ("messages", i))
    return msgs



def non_negative_int(value: Any, where: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise BadRequestBody(f"{where} must be a non-negative integer")
    return value



# --- responses -------------------------------------------------------------------------------

def usage_of(u: Any, inp: str, out: str) -> dict[str, Any] | None:
    if not isinstance(u, dict) or not u:
        return None

    def num(v: Any) -> int | None:
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
    return {"input_tokens": num(u.get(inp)), "output_tokens": num(u.get(out))}


def items(value: Any, where: str) -> list[Any]:
    """A list in a response, or empty when absent. Any other type is a shape we do not know: the
    caller (the response inspector) then scans the raw text instead of trusting our segments."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequestBody(f"response {where} has an unexpected type")
    return value


def obj_or_none(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequestBody(f"response {where} has an unexpected type")
    return value


def text_at(segs: list[TextSegment], obj: dict[str, Any], key: str, path: Path) -> None:
    v = obj.get(key)
    if v is None:
        return
    if not isinstance(v, str):
        raise BadRequestBody(f"response {where_of(path + (key,))} has an unexpected type")
    segs.append(TextSegment(path + (key,), v))

