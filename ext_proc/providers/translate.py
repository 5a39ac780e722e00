"""OpenAI Chat Completions <-> the target providers (each provider module's `Translation`: Anthropic
Messages, Gemini generateContent, Bedrock Converse), for the multiplexing mode (sans-I/O: no
sockets, no clock, no randomness; ids and times are passed in).

`translate_request` turns an OpenAI chat body into the target's request; `ResponseTranslator`
turns the target's answer, whole JSON or a stream split anywhere, back into OpenAI's shapes so the
openai SDK reads it as its own. What has no faithful mapping is refused with a precise
`TranslationError` (an OpenAI 400), never approximated silently.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.providers import registry
from ext_proc.providers.translation import (
    Target,
    TranslatedRequest,
    Translation,
    TranslationError,
    common_checks,
    dumps,
)
from ext_proc.wire.eventstream import EventStreamDecoder, Message
from ext_proc.wire.sse import SSEEvent, SSEFramer

__all__ = ["MAX_BODY_BYTES", "MAX_EVENT_BYTES", "TARGETS", "ResponseTranslator", "Target", "TranslatedRequest",
           "TranslationError", "translate_request"]

TARGETS = registry.translation_targets()
MAX_EVENT_BYTES = 1 << 20
MAX_BODY_BYTES = 8 << 20
EVENT_STREAM = "application/vnd.amazon.eventstream"


def translation_of(target: Target) -> Translation:
    spec = registry.get(target.provider)
    if spec is None or spec.translation is None:
        raise TranslationError(f"no translation to provider {target.provider!r}")
    return spec.translation


def translate_request(body: dict[str, Any], target: Target) -> TranslatedRequest:
    common_checks(body)
    return translation_of(target).request(body, target)


class ResponseTranslator:
    """The target's answer -> OpenAI chat.completion / chat.completion.chunk bytes."""

    def __init__(self, target: Target, *, stream: bool, client_model: str, response_id: str, created: int,
                 include_usage: bool = False) -> None:
        self.target = target
        self.stream = stream
        self.client_model = client_model
        self.response_id = response_id
        self.created = created
        self.include_usage = include_usage
        self.status = 200
        self.usage: dict[str, Any] | None = None
        self._sse = SSEFramer(MAX_EVENT_BYTES)
        self._es = EventStreamDecoder(MAX_EVENT_BYTES)
        self._body = bytearray()
        self._error = False
        self.finish: str | None = None
        self.tools: dict[int, int] = {}      # upstream block index -> OpenAI tool_calls index
        self.role_sent = False
        self._done = False
        self._translation = translation_of(target)

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self.stream and not self._error else "application/json"

    def start(self, status: int, content_type: str | None) -> None:
        self.status = status
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        self._error = status >= 400 or (self.stream and ctype != self._translation.stream_content_type)

    def feed(self, data: bytes, end_of_stream: bool) -> bytes:
        if self._error or not self.stream:
            self._body += data
            if len(self._body) > MAX_BODY_BYTES:
                raise TranslationError("the upstream answer is too large to translate")
            if not end_of_stream:
                return b""
            body = bytes(self._body)
            return self._error_body(body) if self._error else dumps(self._whole(body))
        if self._translation.stream_content_type == EVENT_STREAM:
            out = [self._frame(msg) for msg, _raw in self._es.feed(data)]
            if end_of_stream:
                if self._es.pending:
                    raise TranslationError("the upstream event stream ended inside a message")
                out.append(self.close())
            return b"".join(out)
        out = [self._events(ev) for ev in self._sse.feed(data)]
        if end_of_stream:
            out += [self._events(ev) for ev in self._sse.finish()]
            out.append(self.close())
        return b"".join(out)

    # whole answers
    def _completion(self, text: str, calls: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        out = {"id": self.response_id, "object": "chat.completion", "created": self.created,
               "model": self.client_model, "choices": [{"index": 0, "message": message,
                                                       "finish_reason": finish or "stop", "logprobs": None}]}
        if self.usage is not None:
            out["usage"] = _openai_usage(self.usage)
        return out

    def _whole(self, body: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(body)
        except ValueError:
            raise TranslationError("the upstream answer is not JSON") from None
        if not isinstance(obj, dict):
            raise TranslationError("the upstream answer is not a JSON object")
        text, calls, finish, self.usage = self._translation.whole(obj)
        return self._completion(text, calls, finish)

    def _error_body(self, body: bytes) -> bytes:
        message = f"the {self.target.provider} upstream answered {self.status}"
        try:
            obj = json.loads(body)
            err = obj.get("error") if isinstance(obj, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = err["message"]
            elif isinstance(obj, dict) and isinstance(obj.get("message"), str):   # Bedrock
                message = obj["message"]
        except ValueError:
            pass
        kind = "rate_limit_error" if self.status == 429 else "invalid_request_error" if self.status < 500 else "api_error"
        return dumps({"error": {"message": message, "type": kind, "param": None, "code": f"upstream_{self.status}"}})

    # streams (the Emitter the target's event handler writes through)
    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        ev = {"id": self.response_id, "object": "chat.completion.chunk", "created": self.created,
              "model": self.client_model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                       "logprobs": None}]}
        return b"data: " + dumps(ev) + b"\n\n"

    def _events(self, ev: SSEEvent) -> bytes:
        if ev.data is None or self._done:
            return b""
        try:
            obj = json.loads(ev.data)
        except ValueError:
            raise TranslationError("an upstream stream event is not JSON") from None
        if not isinstance(obj, dict):
            return b""
        return self._translation.event(self, obj)

    def _frame(self, msg: Message) -> bytes:
        return b"" if self._done else self._translation.event(self, msg)

    def stream_error(self, message: str) -> bytes:
        self._done = True
        # The openai SDK raises APIError on a data event carrying "error".
        return b"data: " + dumps({"error": {"message": message, "type": "api_error", "code": "upstream_error"}}) \
            + b"\n\n"

    def close(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        out = [self.chunk({}, self.finish or "stop")]
        if self.include_usage and self.usage is not None:
            out.append(b"data: " + dumps({"id": self.response_id, "object": "chat.completion.chunk",
                                           "created": self.created, "model": self.client_model, "choices": [],
                                           "usage": _openai_usage(self.usage)}) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


def _openai_usage(u: dict[str, Any]) -> dict[str, Any]:
    i, o = int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0)
    return {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}

