"""Request and response adapters: every piece of user-controlled text in a provider's JSON body
as a list of segments addressed by JSON path, and the body rendered back with replacements."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from ext_proc.providers.surfaces import Surface

MAX_DEPTH = 64
Path = tuple[str | int, ...]


class BadRequestBody(ValueError):
    """The body is not what the surface accepts; the message is safe to return to the client."""


@dataclass(frozen=True, slots=True)
class TextSegment:
    path: Path
    text: str


@dataclass
class ParsedRequest:
    surface: Surface
    body: Any
    model: str | None
    stream: bool
    max_tokens: int | None
    segments: list[TextSegment] = field(default_factory=list)
    estimated_tokens: int = 0


@dataclass
class ParsedResponse:
    surface: Surface
    body: Any
    segments: list[TextSegment] = field(default_factory=list)
    usage: dict | None = None


def _check_depth(obj: Any) -> None:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequestBody(f"JSON nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def load_json(body: bytes, max_bytes: int) -> Any:
    if len(body) > max_bytes:
        raise BadRequestBody(f"body of {len(body)} bytes is over the limit of {max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestBody(f"body is not valid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise BadRequestBody(f"JSON nesting deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BadRequestBody(f"body is not valid JSON: {exc.msg} at character {exc.pos}") from None
    _check_depth(obj)
    return obj


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequestBody(message)


def _strings_in(obj: Any, path: Path) -> Iterator[TextSegment]:
    """Every string inside obj (tool schemas, tool results, arbitrary JSON arguments)."""
    stack = [(obj, path)]
    while stack:
        node, p = stack.pop()
        if isinstance(node, str):
            yield TextSegment(p, node)
        elif isinstance(node, dict):
            for k in sorted(node, reverse=True):
                stack.append((node[k], p + (k,)))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], p + (i,)))


def _content(content: Any, path: Path, where: str) -> Iterator[TextSegment]:
    """OpenAI/Anthropic message content: a string, or an array of parts with text somewhere."""
    if content is None:
        return
    if isinstance(content, str):
        yield TextSegment(path, content)
        return
    _expect(isinstance(content, list), f"{where} must be a string or an array")
    for i, part in enumerate(content):
        _expect(isinstance(part, dict), f"{where}[{i}] must be an object")
        for key in ("text", "input_text", "thinking"):
            if isinstance(part.get(key), str):
                yield TextSegment(path + (i, key), part[key])
        # tool_result content (Anthropic) and nested content arrays
        if "content" in part:
            yield from _content(part["content"], path + (i, "content"), f"{where}[{i}].content")
        if part.get("type") == "tool_use" and "input" in part:
            yield from _strings_in(part["input"], path + (i, "input"))
        if part.get("type") in ("document",) and isinstance(part.get("source"), dict):
            src = part["source"]
            if isinstance(src.get("data"), str) and src.get("type") == "text":
                yield TextSegment(path + (i, "source", "data"), src["data"])


def _model(body: dict, key: str = "model") -> str | None:
    m = body.get(key)
    _expect(m is None or isinstance(m, str), f"'{key}' must be a string")
    return m


def _int_or_none(body: dict, *keys: str) -> int | None:
    for k in keys:
        v = body.get(k)
        if v is not None:
            _expect(isinstance(v, int) and not isinstance(v, bool) and v >= 0, f"'{k}' must be a non-negative integer")
            return v
    return None


def _tools(tools: Any, path: Path) -> Iterator[TextSegment]:
    if tools is None:
        return
    _expect(isinstance(tools, list), "'tools' must be an array")
    yield from _strings_in(tools, path)


def _openai_chat(body: dict) -> Iterator[TextSegment]:
    msgs = body.get("messages")
    _expect(isinstance(msgs, list), "'messages' must be an array")
    for i, m in enumerate(msgs):
        _expect(isinstance(m, dict), f"messages[{i}] must be an object")
        yield from _content(m.get("content"), ("messages", i, "content"), f"messages[{i}].content")
        for j, tc in enumerate(m.get("tool_calls") or []):
            _expect(isinstance(tc, dict), f"messages[{i}].tool_calls[{j}] must be an object")
            fn = tc.get("function") or {}
            if isinstance(fn.get("arguments"), str):
                yield TextSegment(("messages", i, "tool_calls", j, "function", "arguments"), fn["arguments"])
    yield from _tools(body.get("tools"), ("tools",))


def _openai_responses(body: dict) -> Iterator[TextSegment]:
    if isinstance(body.get("instructions"), str):
        yield TextSegment(("instructions",), body["instructions"])
    inp = body.get("input")
    if isinstance(inp, str):
        yield TextSegment(("input",), inp)
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            _expect(isinstance(item, dict), f"input[{i}] must be an object")
            if "content" in item:
                yield from _content(item["content"], ("input", i, "content"), f"input[{i}].content")
            for key in ("arguments", "output"):
                if isinstance(item.get(key), str):
                    yield TextSegment(("input", i, key), item[key])
    else:
        _expect(inp is None, "'input' must be a string or an array")
    yield from _tools(body.get("tools"), ("tools",))


def _string_or_list(body: dict, key: str) -> Iterator[TextSegment]:
    v = body.get(key)
    if isinstance(v, str):
        yield TextSegment((key,), v)
    elif isinstance(v, list):
        for i, item in enumerate(v):
            if isinstance(item, str):
                yield TextSegment((key, i), item)
            elif isinstance(item, dict):
                yield from _strings_in(item, (key, i))
    else:
        _expect(v is None, f"'{key}' must be a string or an array")


def _anthropic(body: dict) -> Iterator[TextSegment]:
    system = body.get("system")
    if system is not None:
        yield from _content(system, ("system",), "system")
    msgs = body.get("messages")
    _expect(isinstance(msgs, list), "'messages' must be an array")
    for i, m in enumerate(msgs):
        _expect(isinstance(m, dict), f"messages[{i}] must be an object")
        yield from _content(m.get("content"), ("messages", i, "content"), f"messages[{i}].content")
    yield from _tools(body.get("tools"), ("tools",))


def _gemini(body: dict) -> Iterator[TextSegment]:
    contents = body.get("contents")
    _expect(isinstance(contents, list), "'contents' must be an array")
    for i, c in enumerate(contents):
        _expect(isinstance(c, dict), f"contents[{i}] must be an object")
        for j, part in enumerate(c.get("parts") or []):
            _expect(isinstance(part, dict), f"contents[{i}].parts[{j}] must be an object")
            if isinstance(part.get("text"), str):
                yield TextSegment(("contents", i, "parts", j, "text"), part["text"])
            for key in ("functionCall", "functionResponse"):
                if key in part:
                    yield from _strings_in(part[key], ("contents", i, "parts", j, key))
    si = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(si, dict):
        key = "systemInstruction" if "systemInstruction" in body else "system_instruction"
        for j, part in enumerate(si.get("parts") or []):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield TextSegment((key, "parts", j, "text"), part["text"])
    yield from _tools(body.get("tools"), ("tools",))


def _bedrock_converse(body: dict) -> Iterator[TextSegment]:
    msgs = body.get("messages")
    _expect(isinstance(msgs, list), "'messages' must be an array")
    for i, m in enumerate(msgs):
        _expect(isinstance(m, dict), f"messages[{i}] must be an object")
        content = m.get("content")
        _expect(isinstance(content, list), f"messages[{i}].content must be an array")
        for j, block in enumerate(content):
            _expect(isinstance(block, dict), f"messages[{i}].content[{j}] must be an object")
            if isinstance(block.get("text"), str):
                yield TextSegment(("messages", i, "content", j, "text"), block["text"])
            for key in ("toolUse", "toolResult"):
                if key in block:
                    yield from _strings_in(block[key], ("messages", i, "content", j, key))
    for j, s in enumerate(body.get("system") or []):
        if isinstance(s, dict) and isinstance(s.get("text"), str):
            yield TextSegment(("system", j, "text"), s["text"])


def _bedrock_invoke(body: dict) -> Iterator[TextSegment]:
    if "messages" in body:  # Anthropic-on-Bedrock body shape
        yield from _anthropic(body)
    elif "inputText" in body:  # Titan
        _expect(isinstance(body["inputText"], str), "'inputText' must be a string")
        yield TextSegment(("inputText",), body["inputText"])
    elif "prompt" in body:
        _expect(isinstance(body["prompt"], str), "'prompt' must be a string")
        yield TextSegment(("prompt",), body["prompt"])
    else:
        raise BadRequestBody("unrecognised Bedrock invoke body (expected messages, inputText or prompt)")


_EXTRACTORS = {
    "chat": _openai_chat, "responses": _openai_responses, "messages": _anthropic,
    "count_tokens": _anthropic, "generate": _gemini, "converse": _bedrock_converse, "invoke": _bedrock_invoke,
}


def parse_request(surface: Surface, body: bytes, *, max_bytes: int = 8 * 1024 * 1024) -> ParsedRequest:
    obj = load_json(body, max_bytes)
    _expect(isinstance(obj, dict), "the body must be a JSON object")
    if surface.provider == "gemini" and surface.api == "count_tokens":
        segments = list(_gemini(obj)) if "contents" in obj else []
    elif surface.api == "embeddings":
        segments = list(_string_or_list(obj, "input"))
    elif surface.api == "completions":
        segments = list(_string_or_list(obj, "prompt"))
    elif surface.api == "moderations":
        segments = list(_string_or_list(obj, "input"))
    else:
        extractor = _EXTRACTORS.get(surface.api)
        _expect(extractor is not None, f"the {surface.name} surface cannot be inspected")
        segments = list(extractor(obj))
    model = surface.model_from_path or _model(obj)
    stream = surface.stream_from_path or obj.get("stream") is True
    max_tokens = _int_or_none(obj, "max_completion_tokens", "max_tokens", "max_output_tokens")
    if max_tokens is None and isinstance(obj.get("generationConfig"), dict):
        max_tokens = _int_or_none(obj["generationConfig"], "maxOutputTokens")
    if max_tokens is None and isinstance(obj.get("inferenceConfig"), dict):
        max_tokens = _int_or_none(obj["inferenceConfig"], "maxTokens")
    chars = sum(len(s.text) for s in segments)
    return ParsedRequest(surface=surface, body=obj, model=model, stream=stream, max_tokens=max_tokens,
                         segments=segments, estimated_tokens=chars // 4 + 1 + (max_tokens or 0))


def _set_path(obj: Any, path: Path, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = node[key]
    node[path[-1]] = value


def render_request(parsed: ParsedRequest, replacements: Mapping[int, str], *,
                   set_fields: Mapping[tuple, object] = {}) -> bytes:
    obj = copy.deepcopy(parsed.body)
    for idx, text in replacements.items():
        _set_path(obj, parsed.segments[idx].path, text)
    for path, value in set_fields.items():
        _set_path(obj, tuple(path), value)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_response(surface: Surface, body: bytes, *, max_bytes: int = 16 * 1024 * 1024) -> ParsedResponse:
    """Non-streaming responses: assistant text and tool arguments, and the usage."""
    obj = load_json(body, max_bytes)
    segs: list[TextSegment] = []
    usage = None
    if isinstance(obj, dict):
        if surface.api == "chat":
            for i, ch in enumerate(obj.get("choices") or []):
                msg = (ch or {}).get("message") or {}
                if isinstance(msg.get("content"), str):
                    segs.append(TextSegment(("choices", i, "message", "content"), msg["content"]))
                for j, tc in enumerate(msg.get("tool_calls") or []):
                    args = ((tc or {}).get("function") or {}).get("arguments")
                    if isinstance(args, str):
                        segs.append(TextSegment(("choices", i, "message", "tool_calls", j, "function", "arguments"), args))
            u = obj.get("usage") or {}
            if u:
                usage = {"input_tokens": u.get("prompt_tokens"), "output_tokens": u.get("completion_tokens")}
        elif surface.api == "messages":
            for i, block in enumerate(obj.get("content") or []):
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    segs.append(TextSegment(("content", i, "text"), block["text"]))
            u = obj.get("usage") or {}
            if u:
                usage = {"input_tokens": u.get("input_tokens"), "output_tokens": u.get("output_tokens")}
        elif surface.api == "responses":
            for i, item in enumerate(obj.get("output") or []):
                for j, c in enumerate((item or {}).get("content") or []):
                    if isinstance(c, dict) and isinstance(c.get("text"), str):
                        segs.append(TextSegment(("output", i, "content", j, "text"), c["text"]))
            u = obj.get("usage") or {}
            if u:
                usage = {"input_tokens": u.get("input_tokens"), "output_tokens": u.get("output_tokens")}
        elif surface.api == "generate":
            for i, cand in enumerate(obj.get("candidates") or []):
                for j, part in enumerate(((cand or {}).get("content") or {}).get("parts") or []):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        segs.append(TextSegment(("candidates", i, "content", "parts", j, "text"), part["text"]))
            u = obj.get("usageMetadata") or {}
            if u:
                usage = {"input_tokens": u.get("promptTokenCount"), "output_tokens": u.get("candidatesTokenCount")}
    return ParsedResponse(surface=surface, body=obj, segments=segs, usage=usage)


def render_response(parsed: ParsedResponse, replacements: Mapping[int, str]) -> bytes:
    obj = copy.deepcopy(parsed.body)
    for idx, text in replacements.items():
        _set_path(obj, parsed.segments[idx].path, text)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
