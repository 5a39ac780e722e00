"""OpenAI Chat Completions <-> Anthropic Messages / Gemini generateContent / Bedrock Converse, for the multiplexing
mode (sans-I/O: no sockets, no clock, no randomness; ids and times are passed in).

`translate_request` turns an OpenAI chat body into the target's request; `ResponseTranslator`
turns the target's answer, whole JSON or a stream split anywhere, back into OpenAI's shapes so the
openai SDK reads it as its own. What has no faithful mapping is refused with a precise
`TranslationError` (an OpenAI 400), never approximated silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from ext_proc.providers.names import Provider
from ext_proc.wire.eventstream import EventStreamDecoder, Message
from ext_proc.wire.sse import SSEFramer

TARGETS = (Provider.ANTHROPIC, Provider.GEMINI, Provider.BEDROCK)
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096          # Anthropic requires max_tokens; OpenAI makes it optional
MAX_EVENT_BYTES = 1 << 20
MAX_BODY_BYTES = 8 << 20


class TranslationError(ValueError):
    """The request cannot be expressed for the target. The message never quotes content."""


@dataclass(frozen=True)
class Target:
    provider: str    # one of TARGETS
    model: str       # the provider's model id


@dataclass
class TranslatedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    stream: bool


_UNSUPPORTED = ("n", "logprobs", "top_logprobs", "audio", "modalities", "prediction", "logit_bias",
                "presence_penalty", "frequency_penalty", "seed", "web_search_options")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _text_of(content: Any, where: str) -> str:
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


def _data_url(url: str, where: str) -> tuple[str, str]:
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise TranslationError(f"{where}: only base64 data: URLs can be translated")
    return head[len("data:"):-len(";base64")], data


def _user_parts(content: Any, where: str, *, text: Callable[[str], dict],
                image: Callable[[str, str], dict]) -> list[dict]:
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


def _anthropic_image(url: str, where: str) -> dict:
    if url.startswith("https://"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if not url.startswith("data:"):
        raise TranslationError(f"{where}: an image URL must be https or a data: URL")
    media, data = _data_url(url, where)
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}


def _gemini_image(url: str, where: str) -> dict:
    media, data = _data_url(url, where)
    return {"inlineData": {"mimeType": media, "data": data}}


def _bedrock_image(url: str, where: str) -> dict:
    media, data = _data_url(url, where)
    fmt = media.split("/", 1)[-1]
    if fmt not in ("png", "jpeg", "gif", "webp"):
        raise TranslationError(f"{where}: image type {media!r} cannot be translated")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _anthropic_parts(content: Any, where: str) -> list[dict]:
    return _user_parts(content, where, text=lambda t: {"type": "text", "text": t}, image=_anthropic_image)


def _gemini_parts(content: Any, where: str) -> list[dict]:
    return _user_parts(content, where, text=lambda t: {"text": t}, image=_gemini_image)


def _bedrock_parts(content: Any, where: str) -> list[dict]:
    return _user_parts(content, where, text=lambda t: {"text": t}, image=_bedrock_image)


def _common_checks(body: dict) -> None:
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


def _max_tokens(body: dict) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise TranslationError("stop must be a string or an array of strings")


def _tool_args(call: dict, where: str) -> Any:
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


def _functions(body: dict) -> list[dict]:
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


# --- requests --------------------------------------------------------------------------------

def translate_request(body: dict, target: Target) -> TranslatedRequest:
    _common_checks(body)
    if target.provider == Provider.ANTHROPIC:
        return _to_anthropic(body, target)
    if target.provider == Provider.GEMINI:
        return _to_gemini(body, target)
    if target.provider == Provider.BEDROCK:
        return _to_bedrock(body, target)
    raise TranslationError(f"no translation to provider {target.provider!r}")


def _conversation(body: dict, *, user_parts, text_block, tool_call_block, tool_result_block,
                  assistant_role: str) -> tuple[list[str], list[dict]]:
    """The OpenAI conversation walked once for every target: system texts apart, then turns as
    (role, blocks) with consecutive same-role turns merged (Anthropic and Bedrock require
    alternation, Gemini accepts it). The callbacks build one target's blocks."""
    system: list[str] = []
    turns: list[tuple[str, list[dict]]] = []
    names: dict[str, str] = {}       # tool_call_id -> function name (Gemini answers by name)

    def add(role: str, blocks: list[dict]) -> None:
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
            system.append(_text_of(m.get("content"), f"{where}.content"))
        elif role == "user":
            add("user", user_parts(m.get("content"), f"{where}.content"))
        elif role == "assistant":
            blocks = []
            text = _text_of(m.get("content"), f"{where}.content") if m.get("content") is not None else ""
            if text:
                blocks.append(text_block(text))
            for j, call in enumerate(m.get("tool_calls") or []):
                args = _tool_args(call, f"{where}.tool_calls[{j}]")
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
                                           _text_of(m.get("content"), f"{where}.content"), where)])
        else:
            raise TranslationError(f"{where}.role {role!r} cannot be translated")
    return system, [{"role": r, "blocks": b} for r, b in turns]


def _to_anthropic(body: dict, target: Target) -> TranslatedRequest:
    system, turns = _conversation(
        body, user_parts=_anthropic_parts, assistant_role="assistant",
        text_block=lambda text: {"type": "text", "text": text},
        tool_call_block=lambda cid, name, args: {"type": "tool_use", "id": cid, "name": name, "input": args},
        tool_result_block=lambda cid, _name, text, _w: {"type": "tool_result", "tool_use_id": cid, "content": text})
    messages = [{"role": t["role"], "content": t["blocks"]} for t in turns]
    if not messages or messages[0]["role"] != "user":
        raise TranslationError("the conversation must start with a user message for this model")
    out: dict[str, Any] = {"model": target.model, "messages": messages,
                           "max_tokens": _max_tokens(body) or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            out[key] = body[key]
    if _stops(body):
        out["stop_sequences"] = _stops(body)
    fns = _functions(body)
    if fns:
        out["tools"] = [{"name": f["name"], "description": f.get("description") or "",
                         "input_schema": f.get("parameters") or {"type": "object", "properties": {}}} for f in fns]
    choice = body.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _anthropic_tool_choice(choice)
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
    return TranslatedRequest("POST", "/v1/messages", {"content-type": "application/json",
                                                      "anthropic-version": ANTHROPIC_VERSION}, _dumps(out), stream)


def _anthropic_tool_choice(choice: Any) -> dict:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise TranslationError("tool_choice cannot be translated")


def _sampling(body: dict, *, max_tokens_key: str) -> dict[str, Any]:
    """Gemini's generationConfig and Bedrock's inferenceConfig: the same fields, camel-cased; only
    the name of the output-token cap differs."""
    out: dict[str, Any] = {}
    if _max_tokens(body):
        out[max_tokens_key] = _max_tokens(body)
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        if isinstance(body.get(key), (int, float)) and not isinstance(body.get(key), bool):
            out[name] = body[key]
    if _stops(body):
        out["stopSequences"] = _stops(body)
    return out


def _to_gemini(body: dict, target: Target) -> TranslatedRequest:
    def tool_result(_cid: str, name: str | None, text: str, where: str) -> dict:
        if name is None:
            raise TranslationError(f"{where}: tool_call_id does not match an earlier tool call")
        return {"functionResponse": {"name": name, "response": {"content": text}}}

    system, turns = _conversation(
        body, user_parts=_gemini_parts, assistant_role="model", text_block=lambda text: {"text": text},
        tool_call_block=lambda _cid, name, args: {"functionCall": {"name": name, "args": args}},
        tool_result_block=tool_result)
    contents = [{"role": t["role"], "parts": t["blocks"]} for t in turns]
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    gen = _sampling(body, max_tokens_key="maxOutputTokens")
    if gen:
        out["generationConfig"] = gen
    fns = _functions(body)
    if fns:
        out["tools"] = [{"functionDeclarations": [
            {k: v for k, v in (("name", f["name"]), ("description", f.get("description")),
                               ("parameters", f.get("parameters"))) if v is not None} for f in fns]}]
    stream = body.get("stream") is True
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    path = f"/v1beta/models/{quote(target.model, safe='')}:{method}"
    return TranslatedRequest("POST", path, {"content-type": "application/json"}, _dumps(out), stream)


def _to_bedrock(body: dict, target: Target) -> TranslatedRequest:
    system_texts, turns = _conversation(
        body, user_parts=_bedrock_parts, assistant_role="assistant", text_block=lambda text: {"text": text},
        tool_call_block=lambda cid, name, args: {"toolUse": {"toolUseId": cid, "name": name, "input": args}},
        tool_result_block=lambda cid, _name, text, _w: {"toolResult": {"toolUseId": cid, "content": [{"text": text}]}})
    system = [{"text": t} for t in system_texts]
    messages = [{"role": t["role"], "content": t["blocks"]} for t in turns]
    if not messages or messages[0]["role"] != "user":
        raise TranslationError("the conversation must start with a user message for this model")
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference = _sampling(body, max_tokens_key="maxTokens")
    if inference:
        out["inferenceConfig"] = inference
    fns = _functions(body)
    if fns:
        tool_config: dict[str, Any] = {"tools": [{"toolSpec": {
            "name": f["name"], "description": f.get("description") or f["name"],
            "inputSchema": {"json": f.get("parameters") or {"type": "object", "properties": {}}}}} for f in fns]}
        choice = body.get("tool_choice")
        if choice == "required":
            tool_config["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
            tool_config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
        elif choice not in (None, "auto"):
            raise TranslationError("tool_choice cannot be translated for this model")
        out["toolConfig"] = tool_config
    stream = body.get("stream") is True
    path = f"/model/{quote(target.model, safe='')}/{'converse-stream' if stream else 'converse'}"
    return TranslatedRequest("POST", path, {"content-type": "application/json"}, _dumps(out), stream)


# --- responses -------------------------------------------------------------------------------

_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                     "pause_turn": "stop", "refusal": "content_filter"}
_BEDROCK_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                   "content_filtered": "content_filter", "guardrail_intervened": "content_filter"}
_GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
                  "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}


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
        self.usage: dict | None = None
        self._sse = SSEFramer(MAX_EVENT_BYTES)
        self._es = EventStreamDecoder(MAX_EVENT_BYTES)
        self._body = bytearray()
        self._error = False
        self._finish: str | None = None
        self._tools: dict[int, int] = {}      # upstream block index -> OpenAI tool_calls index
        self._role_sent = False
        self._done = False

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self.stream and not self._error else "application/json"

    def start(self, status: int, content_type: str | None) -> None:
        self.status = status
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        expected = "application/vnd.amazon.eventstream" if self.target.provider == Provider.BEDROCK else "text/event-stream"
        self._error = status >= 400 or (self.stream and ctype != expected)

    def feed(self, data: bytes, end_of_stream: bool) -> bytes:
        if self._error or not self.stream:
            self._body += data
            if len(self._body) > MAX_BODY_BYTES:
                raise TranslationError("the upstream answer is too large to translate")
            if not end_of_stream:
                return b""
            body = bytes(self._body)
            return self._error_body(body) if self._error else _dumps(self._whole(body))
        if self.target.provider == Provider.BEDROCK:
            out = [self._bedrock_event(msg) for msg, _raw in self._es.feed(data)]
            if end_of_stream:
                if self._es.pending:
                    raise TranslationError("the upstream event stream ended inside a message")
                out.append(self._close())
            return b"".join(out)
        out = [self._events(ev) for ev in self._sse.feed(data)]
        if end_of_stream:
            out += [self._events(ev) for ev in self._sse.finish()]
            out.append(self._close())
        return b"".join(out)

    # whole answers
    def _completion(self, text: str, calls: list[dict], finish: str | None) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        out = {"id": self.response_id, "object": "chat.completion", "created": self.created,
               "model": self.client_model, "choices": [{"index": 0, "message": message,
                                                       "finish_reason": finish or "stop", "logprobs": None}]}
        if self.usage is not None:
            out["usage"] = _openai_usage(self.usage)
        return out

    def _whole(self, body: bytes) -> dict:
        try:
            obj = json.loads(body)
        except ValueError:
            raise TranslationError("the upstream answer is not JSON") from None
        if not isinstance(obj, dict):
            raise TranslationError("the upstream answer is not a JSON object")
        if self.target.provider == Provider.ANTHROPIC:
            text, calls = [], []
            for block in obj.get("content") or []:
                if block.get("type") == "text":
                    text.append(block.get("text") or "")
                elif block.get("type") == "tool_use":
                    calls.append({"id": block.get("id"), "type": "function", "function": {
                        "name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
            u = obj.get("usage") or {}
            self.usage = {"input_tokens": u.get("input_tokens") or 0, "output_tokens": u.get("output_tokens") or 0}
            return self._completion("".join(text), calls, _ANTHROPIC_FINISH.get(obj.get("stop_reason"), "stop"))
        if self.target.provider == Provider.BEDROCK:
            text, calls = [], []
            for block in ((obj.get("output") or {}).get("message") or {}).get("content") or []:
                if isinstance(block.get("text"), str):
                    text.append(block["text"])
                elif isinstance(block.get("toolUse"), dict):
                    tu = block["toolUse"]
                    calls.append({"id": tu.get("toolUseId"), "type": "function", "function": {
                        "name": tu.get("name"), "arguments": json.dumps(tu.get("input") or {})}})
            u = obj.get("usage") or {}
            self.usage = {"input_tokens": u.get("inputTokens") or 0, "output_tokens": u.get("outputTokens") or 0}
            return self._completion("".join(text), calls, _BEDROCK_FINISH.get(obj.get("stopReason"), "stop"))
        text, calls, finish = [], [], None
        cand = (obj.get("candidates") or [{}])[0]
        for i, part in enumerate((cand.get("content") or {}).get("parts") or []):
            if isinstance(part.get("text"), str) and not part.get("thought"):
                text.append(part["text"])
            elif isinstance(part.get("functionCall"), dict):
                fc = part["functionCall"]
                calls.append({"id": f"call_{i}", "type": "function", "function": {
                    "name": fc.get("name"), "arguments": json.dumps(fc.get("args") or {})}})
        finish = "tool_calls" if calls else _GEMINI_FINISH.get(cand.get("finishReason"), "stop")
        self.usage = _gemini_usage(obj.get("usageMetadata"))
        return self._completion("".join(text), calls, finish)

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
        return _dumps({"error": {"message": message, "type": kind, "param": None, "code": f"upstream_{self.status}"}})

    # streams
    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        ev = {"id": self.response_id, "object": "chat.completion.chunk", "created": self.created,
              "model": self.client_model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                       "logprobs": None}]}
        return b"data: " + _dumps(ev) + b"\n\n"

    def _events(self, ev) -> bytes:
        if ev.data is None or self._done:
            return b""
        try:
            obj = json.loads(ev.data)
        except ValueError:
            raise TranslationError("an upstream stream event is not JSON") from None
        if not isinstance(obj, dict):
            return b""
        if self.target.provider == Provider.ANTHROPIC:
            return self._anthropic_event(obj)
        return self._gemini_event(obj)

    def _anthropic_event(self, obj: dict) -> bytes:
        t = obj.get("type")
        if t == "message_start":
            u = (obj.get("message") or {}).get("usage") or {}
            self.usage = {"input_tokens": u.get("input_tokens") or 0, "output_tokens": u.get("output_tokens") or 0}
            return self._chunk({"role": "assistant", "content": ""})
        if t == "content_block_start" and (obj.get("content_block") or {}).get("type") == "tool_use":
            block = obj["content_block"]
            n = self._tools.setdefault(obj.get("index", 0), len(self._tools))
            return self._chunk({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                                "function": {"name": block.get("name"), "arguments": ""}}]})
        if t == "content_block_delta":
            d = obj.get("delta") or {}
            if d.get("type") == "text_delta":
                return self._chunk({"content": d.get("text") or ""})
            if d.get("type") == "input_json_delta" and obj.get("index", 0) in self._tools:
                return self._chunk({"tool_calls": [{"index": self._tools[obj.get("index", 0)],
                                                    "function": {"arguments": d.get("partial_json") or ""}}]})
            return b""
        if t == "message_delta":
            u = obj.get("usage") or {}
            if self.usage is not None and u.get("output_tokens") is not None:
                self.usage["output_tokens"] = u["output_tokens"]
            self._finish = _ANTHROPIC_FINISH.get((obj.get("delta") or {}).get("stop_reason"), "stop")
            return b""
        if t == "message_stop":
            return self._close()
        if t == "error":
            return self._stream_error(((obj.get("error") or {}).get("message")) or "the upstream stream failed")
        return b""

    def _gemini_event(self, obj: dict) -> bytes:
        if isinstance(obj.get("error"), dict):
            return self._stream_error(obj["error"].get("message") or "the upstream stream failed")
        out = []
        if not self._role_sent:
            self._role_sent = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        cand = (obj.get("candidates") or [{}])[0]
        for part in (cand.get("content") or {}).get("parts") or []:
            if isinstance(part.get("text"), str) and not part.get("thought"):
                out.append(self._chunk({"content": part["text"]}))
            elif isinstance(part.get("functionCall"), dict):
                fc = part["functionCall"]
                n = self._tools[len(self._tools)] = len(self._tools)   # Gemini sends each call whole
                out.append(self._chunk({"tool_calls": [{"index": n, "id": f"call_{n}", "type": "function", "function": {
                    "name": fc.get("name"), "arguments": json.dumps(fc.get("args") or {})}}]}))
                self._finish = "tool_calls"
        if cand.get("finishReason") and self._finish is None:
            self._finish = _GEMINI_FINISH.get(cand["finishReason"], "stop")
        if obj.get("usageMetadata"):
            self.usage = _gemini_usage(obj["usageMetadata"])
        return b"".join(out)

    def _bedrock_event(self, msg: Message) -> bytes:
        if self._done:
            return b""
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            raise TranslationError("an upstream event-stream payload is not JSON") from None
        if msg.message_type != "event":
            return self._stream_error((obj.get("message") if isinstance(obj, dict) else None)
                                      or "the upstream stream failed")
        if not isinstance(obj, dict):
            return b""
        t = msg.event_type
        if t == "messageStart":
            return self._chunk({"role": "assistant", "content": ""})
        if t == "contentBlockStart":
            tu = (obj.get("start") or {}).get("toolUse")
            if isinstance(tu, dict):
                n = self._tools.setdefault(obj.get("contentBlockIndex", 0), len(self._tools))
                return self._chunk({"tool_calls": [{"index": n, "id": tu.get("toolUseId"), "type": "function",
                                                    "function": {"name": tu.get("name"), "arguments": ""}}]})
            return b""
        if t == "contentBlockDelta":
            d = obj.get("delta") or {}
            if isinstance(d.get("text"), str):
                return self._chunk({"content": d["text"]})
            tu = d.get("toolUse")
            if isinstance(tu, dict) and obj.get("contentBlockIndex", 0) in self._tools:
                return self._chunk({"tool_calls": [{"index": self._tools[obj.get("contentBlockIndex", 0)],
                                                    "function": {"arguments": tu.get("input") or ""}}]})
            return b""
        if t == "messageStop":
            self._finish = _BEDROCK_FINISH.get(obj.get("stopReason"), "stop")
            return b""
        if t == "metadata":
            u = obj.get("usage") or {}
            self.usage = {"input_tokens": u.get("inputTokens") or 0, "output_tokens": u.get("outputTokens") or 0}
            return self._close()
        return b""

    def _stream_error(self, message: str) -> bytes:
        self._done = True
        # The openai SDK raises APIError on a data event carrying "error".
        return b"data: " + _dumps({"error": {"message": message, "type": "api_error", "code": "upstream_error"}}) \
            + b"\n\n"

    def _close(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        out = [self._chunk({}, self._finish or "stop")]
        if self.include_usage and self.usage is not None:
            out.append(b"data: " + _dumps({"id": self.response_id, "object": "chat.completion.chunk",
                                           "created": self.created, "model": self.client_model, "choices": [],
                                           "usage": _openai_usage(self.usage)}) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)


def _openai_usage(u: dict) -> dict:
    i, o = int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0)
    return {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}


def _gemini_usage(um: Any) -> dict | None:
    if not isinstance(um, dict):
        return None
    out = (um.get("candidatesTokenCount") or 0) + (um.get("thoughtsTokenCount") or 0)
    return {"input_tokens": um.get("promptTokenCount") or 0, "output_tokens": out}
