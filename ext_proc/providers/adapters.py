"""Request adapters: every piece of user-controlled text in a provider's JSON request body
as a list of segments addressed by JSON path, and the body rendered back with replacements.

Sans-I/O: bytes in, plain data out. Every failure on untrusted input is a BadRequestBody whose
message names the place and the problem but never echoes body content.

What counts as text: inside message content parts (OpenAI, Anthropic, Gemini, Bedrock), every
string except structural values (type tags, ids, media types, signatures) and binary payloads
(base64 image/audio/file data, data: URLs); inside free JSON chosen by the caller (tool
definitions and schemas, tool call arguments and inputs, function responses, metadata) every
string. New part types therefore stay inspected without a code change.

Responses are read by the streaming inspector (ext_proc/streaming/), which sees every framing
the client reads; there is no whole-body response adapter here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ext_proc.providers.surfaces import Surface

MAX_DEPTH = 64
MAX_SEGMENTS = 100_000
Path = tuple[str | int, ...]

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


# --- JSON ------------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
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


def _dump(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # an escaped lone surrogate outside the segments: keep it escaped
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


# --- helpers ---------------------------------------------------------------------------------

def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequestBody(message)


def _where(path: Path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _list(value: Any, path: Path, *, optional: bool = True) -> list:
    if value is None and optional:
        return []
    _expect(isinstance(value, list), f"{_where(path)} must be an array")
    return value


def _dict(value: Any, path: Path) -> dict:
    _expect(isinstance(value, dict), f"{_where(path)} must be an object")
    return value


def _opt_dict(body: dict, key: str) -> dict:
    v = body.get(key)
    if v is None:
        return {}
    return _dict(v, (key,))


def _is_data_url(s: str) -> bool:
    return s[:5].lower() == "data:"


def _strings(obj: Any, path: Path, *, free: bool) -> Iterator[TextSegment]:
    """Strings inside OBJ. free=False (content parts): skip structural values and binary payloads;
    under a _FREE_JSON key everything below is free."""
    stack: list[tuple[Any, Path, bool, dict | None]] = [(obj, path, free, None)]
    while stack:
        node, p, fr, parent = stack.pop()
        if isinstance(node, str):
            if not fr and p:
                key = p[-1]
                if key in _STRUCTURAL or key in _BINARY:
                    continue
                if key == "data" and parent is not None and parent.get("type") != "text":
                    continue  # base64 source / inlineData / input_audio; Anthropic text documents keep theirs
                if key in ("url", "image_url", "uri", "fileUri") and _is_data_url(node):
                    continue
            yield TextSegment(p, node)
        elif isinstance(node, dict):
            for k in reversed(list(node)):
                stack.append((node[k], p + (k,), fr or k in _FREE_JSON, node))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], p + (i,), fr, parent))


def _content(content: Any, path: Path) -> Iterator[TextSegment]:
    """Message content: a string, or an array of part objects."""
    if content is None:
        return
    if isinstance(content, str):
        yield TextSegment(path, content)
        return
    _expect(isinstance(content, list), f"{_where(path)} must be a string or an array")
    for i, part in enumerate(content):
        _dict(part, path + (i,))
        yield from _strings(part, path + (i,), free=False)


def _free(body: dict, key: str) -> Iterator[TextSegment]:
    if body.get(key) is not None:
        yield from _strings(body[key], (key,), free=True)


def _opt_str(body: dict, key: str) -> Iterator[TextSegment]:
    v = body.get(key)
    if v is not None:
        _expect(isinstance(v, str), f"{key} must be a string")
        yield TextSegment((key,), v)


def _messages(body: dict, *, required: bool = True) -> list:
    if not required and body.get("messages") is None:
        return []
    msgs = _list(body.get("messages"), ("messages",), optional=False)
    for i, m in enumerate(msgs):
        _dict(m, ("messages", i))
    return msgs


# --- request extractors ----------------------------------------------------------------------

def _openai_chat(body: dict) -> Iterator[TextSegment]:
    for i, m in enumerate(_messages(body)):
        p: Path = ("messages", i)
        for key in ("name", "refusal"):
            if m.get(key) is not None:
                _expect(isinstance(m[key], str), f"{_where(p + (key,))} must be a string")
                yield TextSegment(p + (key,), m[key])
        yield from _content(m.get("content"), p + ("content",))
        for j, tc in enumerate(_list(m.get("tool_calls"), p + ("tool_calls",))):
            tcp = p + ("tool_calls", j)
            _dict(tc, tcp)
            for kind in ("function", "custom"):
                if tc.get(kind) is not None:
                    yield from _strings(_dict(tc[kind], tcp + (kind,)), tcp + (kind,), free=True)
        if m.get("function_call") is not None:
            yield from _strings(_dict(m["function_call"], p + ("function_call",)), p + ("function_call",), free=True)
        if m.get("audio") is not None:
            _dict(m["audio"], p + ("audio",))
    for key in ("tools", "functions"):
        _list(body.get(key), (key,))
        yield from _free(body, key)
    yield from _opt_str(body, "user")
    for key in ("metadata", "response_format", "prediction", "web_search_options"):
        if body.get(key) is not None:
            _dict(body[key], (key,))
            yield from _free(body, key)


def _responses_item(item: Any, path: Path) -> Iterator[TextSegment]:
    if isinstance(item, str):  # shorthand some SDKs accept
        yield TextSegment(path, item)
        return
    _dict(item, path)
    if "content" in item:
        yield from _content(item["content"], path + ("content",))
    for key in ("arguments", "input"):
        v = item.get(key)
        if isinstance(v, str):
            yield TextSegment(path + (key,), v)
        elif v is not None:
            yield from _strings(v, path + (key,), free=True)
    out = item.get("output")
    if isinstance(out, str):
        yield TextSegment(path + ("output",), out)
    elif out is not None:
        yield from _strings(out, path + ("output",), free=False)
    if item.get("summary") is not None:
        yield from _strings(_list(item["summary"], path + ("summary",)), path + ("summary",), free=False)


def _openai_responses(body: dict) -> Iterator[TextSegment]:
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield TextSegment(("instructions",), instructions)
    elif instructions is not None:
        for i, item in enumerate(_list(instructions, ("instructions",))):
            yield from _responses_item(item, ("instructions", i))
    inp = body.get("input")
    if isinstance(inp, str):
        yield TextSegment(("input",), inp)
    elif inp is not None:
        for i, item in enumerate(_list(inp, ("input",))):
            yield from _responses_item(item, ("input", i))
    _list(body.get("tools"), ("tools",))
    yield from _free(body, "tools")
    yield from _opt_str(body, "user")
    for key in ("metadata", "text", "prompt", "reasoning"):
        if body.get(key) is not None:
            _dict(body[key], (key,))
            yield from _free(body, key)


def _prompt_like(body: dict, key: str, *, required: bool) -> Iterator[TextSegment]:
    """embeddings input / completions prompt / moderations input: a string, an array of strings,
    token arrays, or (moderations) multimodal part objects."""
    v = body.get(key)
    if v is None:
        _expect(not required, f"{key} is required")
        return
    if isinstance(v, str):
        yield TextSegment((key,), v)
        return
    _expect(isinstance(v, list), f"{key} must be a string or an array")
    for i, item in enumerate(v):
        if isinstance(item, str):
            yield TextSegment((key, i), item)
        elif isinstance(item, dict):
            yield from _strings(item, (key, i), free=False)
        elif isinstance(item, list):
            _expect(all(isinstance(t, int) and not isinstance(t, bool) for t in item),
                    f"{key}[{i}] must be a string or an array of token ids")
        else:
            _expect(isinstance(item, int) and not isinstance(item, bool),
                    f"{key}[{i}] must be a string or a token id")


def _openai_embeddings(body: dict) -> Iterator[TextSegment]:
    yield from _prompt_like(body, "input", required=True)
    yield from _opt_str(body, "user")


def _openai_completions(body: dict) -> Iterator[TextSegment]:
    yield from _prompt_like(body, "prompt", required=False)
    yield from _opt_str(body, "suffix")
    yield from _opt_str(body, "user")


def _openai_moderations(body: dict) -> Iterator[TextSegment]:
    yield from _prompt_like(body, "input", required=True)


def _anthropic(body: dict, *, messages_required: bool = True) -> Iterator[TextSegment]:
    system = body.get("system")
    if system is not None:
        yield from _content(system, ("system",))
    for i, m in enumerate(_messages(body, required=messages_required)):
        yield from _content(m.get("content"), ("messages", i, "content"))
    _list(body.get("tools"), ("tools",))
    yield from _free(body, "tools")
    for key in ("metadata", "output_format", "output_config", "mcp_servers", "container"):
        yield from _free(body, key)


def _gemini_content(c: Any, path: Path) -> Iterator[TextSegment]:
    _dict(c, path)
    for j, part in enumerate(_list(c.get("parts"), path + ("parts",))):
        _dict(part, path + ("parts", j))
        yield from _strings(part, path + ("parts", j), free=False)


def _gemini_key(body: dict, camel: str, snake: str) -> str | None:
    # Proto3 JSON accepts both spellings; two of them at once is ambiguous.
    _expect(not (camel in body and snake in body), f"both {camel} and {snake} given")
    return camel if camel in body else snake if snake in body else None


def _gemini(body: dict, *, contents_required: bool = True) -> Iterator[TextSegment]:
    # In the order the model reads them: the system instruction comes before the turns.
    key = _gemini_key(body, "systemInstruction", "system_instruction")
    if key is not None and body[key] is not None:
        yield from _gemini_content(body[key], (key,))
    if contents_required or body.get("contents") is not None:
        for i, c in enumerate(_list(body.get("contents"), ("contents",), optional=False)):
            yield from _gemini_content(c, ("contents", i))
    _list(body.get("tools"), ("tools",))
    yield from _free(body, "tools")
    gkey = _gemini_key(body, "generationConfig", "generation_config")
    if gkey is not None and body[gkey] is not None:
        gc = _dict(body[gkey], (gkey,))
        for skey in ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema"):
            if gc.get(skey) is not None:
                yield from _strings(gc[skey], (gkey, skey), free=True)
    nested = _gemini_key(body, "generateContentRequest", "generate_content_request")
    if nested is not None and body[nested] is not None:  # countTokens wraps a whole request
        inner = _dict(body[nested], (nested,))
        for seg in _gemini(inner):
            yield TextSegment((nested,) + seg.path, seg.text)


def _bedrock_converse(body: dict) -> Iterator[TextSegment]:
    # In the order the model reads them: the system blocks come before the turns.
    for j, s in enumerate(_list(body.get("system"), ("system",))):
        _dict(s, ("system", j))
        yield from _strings(s, ("system", j), free=False)
    for i, m in enumerate(_messages(body)):
        content = _list(m.get("content"), ("messages", i, "content"), optional=False)
        for j, block in enumerate(content):
            _dict(block, ("messages", i, "content", j))
            yield from _strings(block, ("messages", i, "content", j), free=False)
    if body.get("toolConfig") is not None:
        _dict(body["toolConfig"], ("toolConfig",))
        yield from _free(body, "toolConfig")
    for key in ("promptVariables", "requestMetadata"):
        yield from _free(body, key)


def _bedrock_invoke(body: dict) -> Iterator[TextSegment]:
    # One body may carry several of these shapes (the model family decides which it reads, and
    # ledgergate cannot know the family for sure): every one present is read.
    shapes = [k for k in ("messages", "inputText", "prompt", "texts", "message") if k in body]
    _expect(bool(shapes), "unrecognised Bedrock invoke body (expected messages, inputText, prompt, texts or message)")
    if "messages" in body:  # Anthropic-on-Bedrock, Nova, Mistral chat: message arrays
        yield from _anthropic(body)
    for key in ("inputText", "prompt"):  # Titan text and embeddings; Llama, Mistral, Claude v2 completions
        if key in body:
            _expect(isinstance(body[key], str), f"{key} must be a string")
            yield TextSegment((key,), body[key])
    if "texts" in body:  # Cohere embed
        for i, t in enumerate(_list(body["texts"], ("texts",), optional=False)):
            _expect(isinstance(t, str), f"texts[{i}] must be a string")
            yield TextSegment(("texts", i), t)
    if "message" in body:  # Cohere command R
        _expect(isinstance(body["message"], str), "message must be a string")
        yield TextSegment(("message",), body["message"])
        yield from _free(body, "chat_history")
        yield from _free(body, "documents")
        yield from _opt_str(body, "preamble")


_EXTRACTORS = {
    "openai.chat_completions": _openai_chat, "azure.chat_completions": _openai_chat,
    "openai.responses": _openai_responses, "azure.responses": _openai_responses,
    "openai.embeddings": _openai_embeddings, "azure.embeddings": _openai_embeddings,
    "openai.completions": _openai_completions, "azure.completions": _openai_completions,
    "openai.moderations": _openai_moderations,
    "anthropic.messages": _anthropic,
    "anthropic.count_tokens": _anthropic,
    "gemini.generate_content": _gemini, "gemini.stream_generate_content": _gemini,
    "gemini.count_tokens": lambda b: _gemini(b, contents_required=False),
    "gemini.embed_content": lambda b: _gemini_content(b.get("content"), ("content",)),
    "bedrock.converse": _bedrock_converse, "bedrock.converse_stream": _bedrock_converse,
    "bedrock.invoke": _bedrock_invoke, "bedrock.invoke_stream": _bedrock_invoke,
}


def _non_negative_int(value: Any, where: str) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            f"{where} must be a non-negative integer")
    return value


def _max_tokens(surface: Surface, body: dict) -> int | None:
    """The output-token ceiling the caller asked for; the largest when several fields are set."""
    found: list[int] = []

    def take(obj: dict, key: str, where: str) -> None:
        if obj.get(key) is not None:
            found.append(_non_negative_int(obj[key], where))

    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens", "max_gen_len", "max_new_tokens"):
        take(body, key, key)
    for cfg, keys in (("generationConfig", ("maxOutputTokens",)), ("generation_config", ("max_output_tokens",)),
                      ("inferenceConfig", ("maxTokens", "max_new_tokens")),
                      ("textGenerationConfig", ("maxTokenCount",))):
        if body.get(cfg) is not None:
            sub = _dict(body[cfg], (cfg,))
            for key in keys:
                take(sub, key, f"{cfg}.{key}")
    return max(found) if found else None


def parse_request(surface: Surface, body: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> ParsedRequest:
    """Parse and validate a request body for SURFACE; BadRequestBody on anything unexpected."""
    if not surface.inspectable:
        raise BadRequestBody(f"the {surface.name} surface cannot be inspected")
    obj = load_json(body, max_bytes)
    _expect(isinstance(obj, dict), "the body must be a JSON object")
    extractor = _EXTRACTORS.get(surface.name)
    _expect(extractor is not None, f"the {surface.name} surface cannot be inspected")
    segments: list[TextSegment] = []
    for seg in extractor(obj):
        segments.append(seg)
        _expect(len(segments) <= MAX_SEGMENTS, f"body has more than {MAX_SEGMENTS} text fields")
    if b"\\u" in body:  # only an escape can produce a lone surrogate, which no later stage can encode
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestBody("body contains an unpaired UTF-16 surrogate escape") from None
    model = obj.get("model")
    _expect(model is None or isinstance(model, str), "model must be a string")
    if surface.model_from_path is not None:
        model = surface.model_from_path
    stream_field = obj.get("stream")
    _expect(stream_field is None or isinstance(stream_field, bool), "stream must be a boolean")
    stream = surface.stream_from_path or stream_field is True
    for key in ("stream_options",):
        if obj.get(key) is not None:
            _dict(obj[key], (key,))
    max_tokens = _max_tokens(surface, obj)
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
            raise ValueError(f"cannot set {_where(path)}: a step on the way is not an object")
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int):
        node[last] = value
    else:
        raise ValueError(f"cannot set {_where(path)}")


def field_changes(body: Any, set_fields: Mapping[tuple, object]) -> list[tuple[Path, Any, bool]]:
    """(path, value, create) for each field to set that BODY does not already hold as is."""
    out: list[tuple[Path, Any, bool]] = []
    for path, value in set_fields.items():
        path = tuple(path)
        current = _get_path(body, path)
        if current is _MISSING or type(current) is not type(value) or current != value:
            out.append((path, value, True))
    return out


def _render(parsed: ParsedRequest, replacements: Mapping[int, str],
            set_fields: Mapping[tuple, object]) -> bytes:
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
    return _dump(obj)


def render_request(parsed: ParsedRequest, replacements: Mapping[int, str], *,
                   set_fields: Mapping[tuple, object] = {}) -> bytes:
    """The body with segment texts replaced (index -> new text) and fields set (JSON path -> value,
    intermediate objects created). Returns the original bytes when nothing changes."""
    return _render(parsed, replacements, set_fields)

