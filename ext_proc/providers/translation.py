"""The OpenAI chat side of multiplexing's translation, shared by every target provider: the
request checks and the conversation walk each target's module builds its body from, and what a
target declares (`Translation`): its request, its whole answer and its stream events in OpenAI's
shapes. Sans-I/O: no sockets, no clock, no randomness; ids and times are passed in.

What has no faithful mapping is refused with a precise `TranslationError` (an OpenAI 400), never
approximated silently."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class TranslationError(ValueError):
    """The request cannot be expressed for the target. The message never quotes content."""


@dataclass(frozen=True)
class Target:
    provider: str    # a provider with a Translation (registry.translation_targets())
    model: str       # the provider's model id


@dataclass
class TranslatedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    stream: bool


class Emitter(Protocol):
    """What a target's stream-event handler writes through (providers/translate.ResponseTranslator):
    OpenAI chunks, the end of the stream, an error, and the state kept across events."""

    usage: dict[str, Any] | None
    finish: str | None
    tools: dict[int, int]        # upstream block index -> OpenAI tool_calls index
    role_sent: bool

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes: ...
    def close(self) -> bytes: ...
    def stream_error(self, message: str) -> bytes: ...


# (text, tool calls, finish reason, usage {"input_tokens", "output_tokens"} or None)
WholeAnswer = tuple[str, list[dict[str, Any]], str, "dict[str, Any] | None"]


@dataclass(frozen=True)
class Translation:
    """How a target provider serves an OpenAI chat request."""

    request: Callable[[dict[str, Any], Target], TranslatedRequest]   # the OpenAI body (checked) -> its request
    whole: Callable[[dict[str, Any]], WholeAnswer]                    # its non-streamed answer, read
    event: Callable[[Emitter, Any], bytes]                  # one stream event (a JSON object, or a
                                                            # wire.eventstream Message) -> OpenAI chunks
    stream_content_type: str = "text/event-stream"


_UNSUPPORTED = ("n", "logprobs", "top_logprobs", "audio", "modalities", "prediction", "logit_bias",
                "presence_penalty", "frequency_penalty", "seed", "web_search_options")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise TranslationError(f"{where}[{i}]: only text parts can be sent in this message")
            out.append(part["text"])
        return "".join(out)
    if content is None:
        return ""
    raise TranslationError(f"{where} must be a string or an array of parts")


def data_url(url: str, where: str) -> tuple[str, str]:
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise TranslationError(f"{where}: only base64 data: URLs can be translated")
    return head[len("data:"):-len(";base64")], data


def user_parts(content: Any, where: str, *, text: Callable[[str], dict[str, Any]],
                image: Callable[[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """A user message's content (a string or OpenAI content parts) as the target's blocks: `text`
    shapes a text part, `image` an image URL (and refuses what the target cannot take)."""
    if isinstance(content, str):
        return [text(content)]
    if not isinstance(content, list):
        raise TranslationError(f"{where} must be a string or an array of parts")
    out = []
    for i, part in enumerate(content):
        t = part.get("type") if isinstance(part, dict) else None
        if t == "text" and isinstance(part.get("text"), str):
            out.append(text(part["text"]))
        elif t == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(part["image_url"].get("url"), str):
            out.append(image(part["image_url"]["url"], f"{where}[{i}]"))
        else:
            raise TranslationError(f"{where}[{i}]: part type {t!r} cannot be translated")
    return out


def common_checks(body: dict[str, Any]) -> None:
    if not isinstance(body, dict):
        raise TranslationError("the body must be a JSON object")
    for key in _UNSUPPORTED:
        value = body.get(key)
        if value is None or value is False or (key == "n" and value == 1 and value is not True):
            continue
        raise TranslationError(f"{key} is not supported when the model is served by another provider")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise TranslationError("messages must be a non-empty array")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise TranslationError("response_format other than text is not supported for this model")


def max_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise TranslationError("stop must be a string or an array of strings")


def tool_args(call: dict[str, Any], where: str) -> Any:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise TranslationError(f"{where}: a tool call needs function.name")
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        raise TranslationError(f"{where}: function.arguments is not JSON") from None
    if not isinstance(args, dict):
        raise TranslationError(f"{where}: function.arguments must be a JSON object")
    return args


def functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise TranslationError("tools must be an array")
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise TranslationError(f"tools[{i}]: only function tools with a name can be translated")
        out.append(fn)
    return out


def conversation(body: dict[str, Any], *, user_parts: Callable[[Any, str], list[dict[str, Any]]],
                 text_block: Callable[[str], dict[str, Any]],
                 tool_call_block: Callable[[str, str, Any], dict[str, Any]],
                 tool_result_block: Callable[[str, str | None, str, str], dict[str, Any]],
                 assistant_role: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The OpenAI conversation walked once for every target: system texts apart, then turns as
    (role, blocks) with consecutive same-role turns merged (Anthropic and Bedrock require
    alternation, Gemini accepts it). The callbacks build one target's blocks."""
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    names: dict[str, str] = {}       # tool_call_id -> function name (Gemini answers by name)

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, list(blocks)))

    for i, m in enumerate(body["messages"]):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise TranslationError(f"{where} must be an object")
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(text_of(m.get("content"), f"{where}.content"))
        elif role == "user":
            add("user", user_parts(m.get("content"), f"{where}.content"))
        elif role == "assistant":
            blocks = []
            text = text_of(m.get("content"), f"{where}.content") if m.get("content") is not None else ""
            if text:
                blocks.append(text_block(text))
            for j, call in enumerate(m.get("tool_calls") or []):
                args = tool_args(call, f"{where}.tool_calls[{j}]")
                call_id = str(call.get("id") or f"call_{i}_{j}")
                names[call_id] = call["function"]["name"]
                blocks.append(tool_call_block(call_id, call["function"]["name"], args))
            if not blocks:
                raise TranslationError(f"{where}: an assistant message needs content or tool_calls")
            add(assistant_role, blocks)
        elif role == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise TranslationError(f"{where}: a tool message needs tool_call_id")
            add("user", [tool_result_block(m["tool_call_id"], names.get(m["tool_call_id"]),
                                           text_of(m.get("content"), f"{where}.content"), where)])
        else:
            raise TranslationError(f"{where}.role {role!r} cannot be translated")
    return system, [{"role": r, "blocks": b} for r, b in turns]


def sampling(body: dict[str, Any], *, max_tokens_key: str) -> dict[str, Any]:
    """Gemini's generationConfig and Bedrock's inferenceConfig: the same fields, camel-cased; only
    the name of the output-token cap differs."""
    out: dict[str, Any] = {}
    if max_tokens(body):
        out[max_tokens_key] = max_tokens(body)
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            out[name] = body[key]
    if stops(body):
        out["stopSequences"] = stops(body)
    return out


def tool_call(call_id: Any, name: Any, args: Any) -> dict[str, Any]:
    """An OpenAI tool call from a target's whole answer (arguments as JSON text)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args or {})}}
