"""A cached (non-streamed) answer re-framed as the provider's own event stream (sans-I/O), so an
official SDK that asked for a stream reads it as it reads the provider's.

Text answers only: an answer with tool calls or non-text blocks is not replayed as a stream (the
request is forwarded instead) rather than approximated.
"""

from __future__ import annotations

import json
from typing import Any

OPENAI_TEXT_PIECE_CHARS = 64   # deltas of a replayed stream; the SDKs concatenate them


class NotReplayable(Exception):
    """The cached answer has a shape this module does not re-frame."""


def _event(payload: Any, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def _pieces(text: str) -> list[str]:
    return [text[i:i + OPENAI_TEXT_PIECE_CHARS] for i in range(0, len(text), OPENAI_TEXT_PIECE_CHARS)] or [""]


def openai_chat_sse(answer: dict, *, include_usage: bool) -> bytes:
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        raise NotReplayable("choices")
    choice = choices[0]
    msg = choice.get("message") or {}
    text = msg.get("content")
    if not isinstance(text, str) or msg.get("tool_calls") or msg.get("function_call"):
        raise NotReplayable("message")
    base = {"id": answer.get("id"), "object": "chat.completion.chunk", "created": answer.get("created"),
            "model": answer.get("model")}
    if answer.get("system_fingerprint") is not None:
        base["system_fingerprint"] = answer["system_fingerprint"]
    out = [_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]})]
    for piece in _pieces(text):
        out.append(_event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                                "finish_reason": None}]}))
    out.append(_event({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason") or "stop"}]}))
    if include_usage and isinstance(answer.get("usage"), dict):
        out.append(_event({**base, "choices": [], "usage": answer["usage"]}))
    out.append(_event("[DONE]"))
    return b"".join(out)


def anthropic_messages_sse(answer: dict) -> bytes:
    blocks = answer.get("content")
    if not isinstance(blocks, list) or any(not isinstance(b, dict) or b.get("type") != "text" for b in blocks):
        raise NotReplayable("content")
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    start = {k: answer.get(k) for k in ("id", "type", "role", "model")}
    start.update(content=[], stop_reason=None, stop_sequence=None,
                 usage={"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1})
    out = [_event({"type": "message_start", "message": start}, "message_start")]
    for i, block in enumerate(blocks):
        out.append(_event({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                          "content_block_start"))
        for piece in _pieces(block.get("text") or ""):
            out.append(_event({"type": "content_block_delta", "index": i,
                               "delta": {"type": "text_delta", "text": piece}}, "content_block_delta"))
        out.append(_event({"type": "content_block_stop", "index": i}, "content_block_stop"))
    out.append(_event({"type": "message_delta",
                       "delta": {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")},
                       "usage": {"output_tokens": usage.get("output_tokens", 0)}}, "message_delta"))
    out.append(_event({"type": "message_stop"}, "message_stop"))
    return b"".join(out)


def replay_stream(surface: str, body: bytes, *, include_usage: bool) -> bytes:
    try:
        answer = json.loads(body)
    except ValueError:
        raise NotReplayable("json") from None
    if not isinstance(answer, dict):
        raise NotReplayable("json")
    if surface == "openai.chat_completions":
        return openai_chat_sse(answer, include_usage=include_usage)
    if surface == "anthropic.messages":
        return anthropic_messages_sse(answer)
    raise NotReplayable("surface")
