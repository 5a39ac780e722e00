"""Anthropic: messages and count_tokens (inspected), message batches (route only). Its messages
shape is also what Anthropic models read on Bedrock's invoke surfaces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ext_proc.providers import translation as tr
from ext_proc.providers.body import (
    TextSegment,
    as_list,
    content_segments,
    dump_json,
    free_json,
    messages_of,
)
from ext_proc.providers.events import ALL, BY_TYPE, NotReplayable, Shape, Slot, StreamKey, index, replay_pieces
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, StreamRules, SurfaceRules
from ext_proc.providers.surfaces import Surface, under
from ext_proc.providers.translation import Emitter, Target, TranslatedRequest, Translation, TranslationError
from ext_proc.wire.sse import event_bytes

_EXACT = {
    "/v1/messages": ("anthropic.messages", "messages"),
    "/v1/messages/count_tokens": ("anthropic.count_tokens", "count_tokens"),
}


def match(method: str, path: str) -> Surface | None:
    hit = _EXACT.get(path) if method == "POST" else None
    if hit is not None:
        return Surface(name=hit[0], provider=Provider.ANTHROPIC, api=hit[1])
    if under(path, "/v1/messages/batches"):
        return Surface(name="anthropic.batches", provider=Provider.ANTHROPIC, api="batch", inspectable=False)
    return None


def read_messages(body: dict, *, messages_required: bool = True) -> Iterator[TextSegment]:
    """In the order the model reads them: the system prompt, the turns, then the tools."""
    system = body.get("system")
    if system is not None:
        yield from content_segments(system, ("system",))
    for i, m in enumerate(messages_of(body, required=messages_required)):
        yield from content_segments(m.get("content"), ("messages", i, "content"))
    as_list(body.get("tools"), ("tools",))
    yield from free_json(body, "tools")
    for key in ("metadata", "output_format", "output_config", "mcp_servers", "container"):
        yield from free_json(body, key)


# --- streamed events ---------------------------------------------------------------------------

_DELTA_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}
# Event types only Anthropic's stream has: how a stream is recognised as Anthropic's.
EVENT_TYPES = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                         "message_delta", "message_stop", "ping"})


def stream_slots(ev: dict) -> list[Slot]:
    out: list[Slot] = []
    t = ev.get("type")
    if t == "content_block_delta" and isinstance(ev.get("delta"), dict):
        d, idx = ev["delta"], index(ev.get("index"), 0)
        field = _DELTA_FIELDS.get(d.get("type"))
        if field and isinstance(d.get(field), str):
            out.append(Slot(("anth", idx, field), ("delta", field), d[field], json_text=field == "partial_json"))
    elif t == "content_block_start" and isinstance(ev.get("content_block"), dict):
        # The SDK starts the block's text (or thinking) with what this event carries and appends
        # the deltas to it: the same stream.
        b, idx = ev["content_block"], index(ev.get("index"), 0)
        for field in ("text", "thinking"):
            if isinstance(b.get(field), str):
                out.append(Slot(("anth", idx, field), ("content_block", field), b[field]))
    return out


def stream_terminated(ev: dict) -> list[StreamKey]:
    t = ev.get("type")
    if t == "content_block_stop":
        return [("anth", index(ev.get("index"), 0))]
    if t in ("message_delta", "message_stop", "error"):
        return [ALL]
    return []


def _usage_holder(ev: dict) -> Any:
    return ev["message"] if ev.get("type") == "message_start" and isinstance(ev.get("message"), dict) else None


def _messages_event(ev: dict) -> bool:
    t = ev.get("type")
    return isinstance(t, str) and t in EVENT_TYPES


STREAM = StreamRules(slots=stream_slots, terminated=stream_terminated, final_types=frozenset({"message_stop"}),
                     shapes=(Shape("anthropic", _messages_event, BY_TYPE),),
                     usage_holder=_usage_holder,
                     output_only_usage=frozenset({"message_delta"}))   # the input came with message_start


def _event(payload: dict, event: str) -> bytes:
    return event_bytes(json.dumps(payload, separators=(",", ":"), ensure_ascii=False), event)


def replay_messages(answer: dict, include_usage: bool) -> bytes:
    """A cached message as its stream (text blocks only); the usage always travels in it."""
    blocks = answer.get("content")
    if not isinstance(blocks, list) or any(not isinstance(b, dict) or b.get("type") != "text" for b in blocks):
        raise NotReplayable("content")
    given = answer.get("usage")
    usage = given if isinstance(given, dict) else {}
    start = {k: answer.get(k) for k in ("id", "type", "role", "model")}
    start.update(content=[], stop_reason=None, stop_sequence=None,
                 usage={"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1})
    out = [_event({"type": "message_start", "message": start}, "message_start")]
    for i, block in enumerate(blocks):
        out.append(_event({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                          "content_block_start"))
        for piece in replay_pieces(block.get("text") or ""):
            out.append(_event({"type": "content_block_delta", "index": i,
                               "delta": {"type": "text_delta", "text": piece}}, "content_block_delta"))
        out.append(_event({"type": "content_block_stop", "index": i}, "content_block_stop"))
    out.append(_event({"type": "message_delta",
                       "delta": {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")},
                       "usage": {"output_tokens": usage.get("output_tokens", 0)}}, "message_delta"))
    out.append(_event({"type": "message_stop"}, "message_stop"))
    return b"".join(out)


# --- errors ------------------------------------------------------------------------------------

# https://docs.anthropic.com/en/api/errors
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "timeout_error",
          529: "overloaded_error"}


def error_body(status: int, code: str, message: str) -> tuple[dict[str, str], dict]:
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {}, {"type": "error", "error": {"type": kind, "message": message}}


def stream_error(surface_name: str, message: str, responses_api: bool, sequence_number: int) -> bytes:
    """The anthropic SDK raises APIStatusError on `event: error`."""
    data = {"type": "error", "error": {"type": "api_error", "message": message}}
    return b"event: error\ndata: " + dump_json(data) + b"\n\n"


MESSAGES = SurfaceRules(read_messages, cap_field=("max_tokens",), replay=replay_messages)


# --- multiplexing: an OpenAI chat request served by Anthropic Messages ------------------------

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096          # Anthropic requires max_tokens; OpenAI makes it optional
# Looked up with the answer's stop reason, which may be absent (None: "stop", as any unknown one).
_FINISH: dict[str | None, str] = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "pause_turn": "stop", "refusal": "content_filter"}


def _image(url: str, where: str) -> dict:
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise TranslationError(f"{where}: an image URL must be https or a data: URL")
    media, data = tr.data_url(url, where)
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}


def _tool_choice(choice: Any) -> dict:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise TranslationError("tool_choice cannot be translated")


def from_openai(body: dict, target: Target) -> TranslatedRequest:
    system, turns = tr.conversation(
        body, assistant_role="assistant",
        user_parts=lambda c, w: tr.user_parts(c, w, text=lambda t: {"type": "text", "text": t}, image=_image),
        text_block=lambda text: {"type": "text", "text": text},
        tool_call_block=lambda cid, name, args: {"type": "tool_use", "id": cid, "name": name, "input": args},
        tool_result_block=lambda cid, _name, text, _w: {"type": "tool_result", "tool_use_id": cid, "content": text})
    messages = [{"role": t["role"], "content": t["blocks"]} for t in turns]
    if not messages or messages[0]["role"] != "user":
        raise TranslationError("the conversation must start with a user message for this model")
    out: dict[str, Any] = {"model": target.model, "messages": messages,
                           "max_tokens": tr.max_tokens(body) or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            out[key] = body[key]
    if tr.stops(body):
        out["stop_sequences"] = tr.stops(body)
    fns = tr.functions(body)
    if fns:
        out["tools"] = [{"name": f["name"], "description": f.get("description") or "",
                         "input_schema": f.get("parameters") or {"type": "object", "properties": {}}} for f in fns]
    choice = body.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _tool_choice(choice)
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
    return TranslatedRequest("POST", "/v1/messages", {"content-type": "application/json",
                                                      "anthropic-version": ANTHROPIC_VERSION}, tr.dumps(out), stream)


def whole_to_openai(obj: dict) -> tr.WholeAnswer:
    text, calls = [], []
    for block in obj.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(tr.tool_call(block.get("id"), block.get("name"), block.get("input")))
    u = obj.get("usage") or {}
    usage = {"input_tokens": u.get("input_tokens") or 0, "output_tokens": u.get("output_tokens") or 0}
    return "".join(text), calls, _FINISH.get(obj.get("stop_reason"), "stop"), usage


def event_to_openai(out: Emitter, obj: dict) -> bytes:
    t = obj.get("type")
    if t == "message_start":
        u = (obj.get("message") or {}).get("usage") or {}
        out.usage = {"input_tokens": u.get("input_tokens") or 0, "output_tokens": u.get("output_tokens") or 0}
        return out.chunk({"role": "assistant", "content": ""})
    if t == "content_block_start" and (obj.get("content_block") or {}).get("type") == "tool_use":
        block = obj["content_block"]
        n = out.tools.setdefault(obj.get("index", 0), len(out.tools))
        return out.chunk({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                          "function": {"name": block.get("name"), "arguments": ""}}]})
    if t == "content_block_delta":
        d = obj.get("delta") or {}
        if d.get("type") == "text_delta":
            return out.chunk({"content": d.get("text") or ""})
        if d.get("type") == "input_json_delta" and obj.get("index", 0) in out.tools:
            return out.chunk({"tool_calls": [{"index": out.tools[obj.get("index", 0)],
                                              "function": {"arguments": d.get("partial_json") or ""}}]})
        return b""
    if t == "message_delta":
        u = obj.get("usage") or {}
        if out.usage is not None and u.get("output_tokens") is not None:
            out.usage["output_tokens"] = u["output_tokens"]
        out.finish = _FINISH.get((obj.get("delta") or {}).get("stop_reason"), "stop")
        return b""
    if t == "message_stop":
        return out.close()
    if t == "error":
        return out.stream_error(((obj.get("error") or {}).get("message")) or "the upstream stream failed")
    return b""


TRANSLATION = Translation(from_openai, whole_to_openai, event_to_openai)


SPEC = ProviderSpec(
    name=Provider.ANTHROPIC,
    match=match,
    surfaces={"anthropic.messages": MESSAGES, "anthropic.count_tokens": SurfaceRules(read_messages)},
    error_body=error_body,
    stream_error=stream_error,
    stream=STREAM,
    token_fields=(("input_tokens", "output_tokens"),),
    ceiling_fields=(("max_tokens",),),
    # anthropic-sdk: anthropic-version (required), anthropic-beta (feature flags).
    headers=frozenset({"anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access"}),
    query=frozenset({"beta", "limit", "before_id", "after_id"}),
    genai_name="anthropic",
    cluster="anthropic",
    upstream_host="api.anthropic.com",
    translation=TRANSLATION,
)
