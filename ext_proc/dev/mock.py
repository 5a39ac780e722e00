"""Mock LLM providers that speak the real wire formats (JSON and SSE) of OpenAI (chat completions,
responses, embeddings, completions, models), Anthropic (messages, count_tokens), Gemini
(generateContent, streamGenerateContent?alt=sse), Bedrock (converse, invoke) and Mistral (chat).
A development and test module: `ledgergate up` and the tests start it; the server never imports it.

The reply is "You said: " + the last user text, so tests see what reached the upstream.
Test directives (request headers): x-mock-reply (percent-encoded reply text, or `b64:` and
its base64, which ledgergate's header inspection cannot read as the secret a test makes the reply carry), x-mock-chunk-chars
(characters per streamed delta), x-mock-status (answer with that error status), x-mock-delay-ms,
x-mock-event-delay-ms, x-mock-content-type (a streamed answer's content type, "none" for no header),
x-mock-reply-as: tool (the reply is a tool call's arguments: chat, messages, converse), x-mock-body
(`b64:` and the exact body of a streamed answer, sent in pieces of x-mock-chunk-chars bytes: a
misbehaving upstream's own events). GET /_mock/requests lists the last 200 requests (with `response_b64`, the exact
body sent); DELETE clears them.
"""

from __future__ import annotations

import base64
import collections
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ext_proc.providers import registry
from ext_proc.providers.registry import error_body, match_surface
from ext_proc.providers.surfaces import Surface
from ext_proc.wire import eventstream

MAX_BODY = 32 * 1024 * 1024
MAX_LOGGED_BODY = 1024 * 1024  # per request in the /_mock/requests log (200 entries)
MAX_DIRECTIVE_MS = 120_000
# The fields Mistral's chat API takes; it answers any other with a 422 (extra_forbidden).
MISTRAL_CHAT_FIELDS = frozenset({"model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
                                 "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
                                 "frequency_penalty", "n", "prediction", "parallel_tool_calls", "prompt_mode",
                                 "safe_prompt"})



def _reply_directive(value: str) -> str:
    if value.startswith("b64:"):
        return base64.b64decode(value[4:]).decode("utf-8")
    return unquote(value)

class _BadDirective(ValueError):
    pass


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(api: str, body: dict) -> str:
    if api == "count_tokens" and "contents" in body:
        api = "generate"  # Gemini countTokens
    if api in ("chat", "messages", "count_tokens", "converse") or (api == "invoke" and "messages" in body):
        for m in reversed(body.get("messages") or []):
            if isinstance(m, dict) and m.get("role") == "user":
                return _text_of(m.get("content"))
        return ""
    if api == "responses":
        inp = body.get("input")
        if isinstance(inp, str):
            return inp
        for item in reversed(inp or []):
            if isinstance(item, dict) and item.get("role", "user") == "user":
                return _text_of(item.get("content"))
        return ""
    if api == "generate":
        for c in reversed(body.get("contents") or []):
            if isinstance(c, dict) and c.get("role", "user") == "user":
                return "".join(p.get("text", "") for p in c.get("parts") or [] if isinstance(p, dict))
        return ""
    if api in ("completions", "embeddings", "moderations"):
        v = body.get("prompt" if api == "completions" else "input")
        return v if isinstance(v, str) else " ".join(x for x in (v or []) if isinstance(x, str))
    if api == "invoke":
        return body.get("inputText") or body.get("prompt") or ""
    return ""


def split_reply(text: str, chunk_chars: int | None) -> list[str]:
    if chunk_chars and chunk_chars > 0:
        return [text[i:i + chunk_chars] for i in range(0, len(text), chunk_chars)] or [""]
    parts, cur = [], ""
    for ch in text:
        cur += ch
        if ch == " ":
            parts.append(cur)
            cur = ""
    if cur:
        parts.append(cur)
    return parts or [""]


def eventstream_message(event_type: str, payload: dict) -> bytes:
    """One AWS event-stream message (application/vnd.amazon.eventstream), as Bedrock streams."""
    return eventstream.event(event_type, json.dumps(payload, separators=(",", ":")).encode())


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {payload}\n\n").encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ledgergate-mock/1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Small responses go out at once: without this, Nagle and the peer's delayed ACK add ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # --- plumbing -------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        """The request body, by content-length or chunked (Envoy may drop content-length after a
        body mutation and forward chunked)."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                except ValueError:
                    raise _BadDirective("bad chunk size") from None
                if size < 0 or len(out) + size > MAX_BODY:
                    raise OverflowError
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(1024)
        raw = (self.headers.get("content-length") or "0").strip()
        if not raw.isdigit():
            raise _BadDirective("bad content-length")
        n = int(raw)
        if n > MAX_BODY:
            raise OverflowError
        return self.rfile.read(n) if n else b""

    def _int_header(self, name: str, lo: int, hi: int) -> int:
        raw = self.headers.get(name)
        if raw is None:
            return 0
        raw = raw.strip()
        if not raw.isdigit() or not lo <= int(raw) <= hi:
            raise _BadDirective(f"{name} must be an integer in [{lo}, {hi}]")
        return int(raw)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self._started = True
        self.send_response(status)
        for k, v in (headers or {"content-type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        # Logged before it is sent, so a client that has the whole answer finds it in the log.
        self._log_response(body)
        # Headers and body in one write.
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def _log_response(self, body: bytes) -> None:
        """The exact body sent, next to its request in the log (tests compare what a client got)."""
        entry = getattr(self, "_log_entry", None)
        if entry is not None and len(body) <= MAX_LOGGED_BODY:
            with self.server.lock:  # type: ignore[attr-defined]
                entry["response_b64"] = base64.b64encode(body).decode()

    def _as_tool(self) -> bool:
        """x-mock-reply-as: tool - the reply is a tool call's arguments (JSON text, sent as given,
        escapes included) instead of text."""
        return self.headers.get("x-mock-reply-as") == "tool"

    def _stream(self, events: Iterator[bytes], content_type: str = "text/event-stream") -> None:
        self._started = True
        self.send_response(200)
        # x-mock-content-type: a misbehaving upstream labels its stream otherwise ("none": no header).
        content_type = self.headers.get("x-mock-content-type", content_type)
        if content_type != "none":
            self.send_header("content-type", content_type)
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        delay = self._int_header("x-mock-event-delay-ms", 0, MAX_DIRECTIVE_MS) / 1000
        sent = bytearray()
        for ev in events:
            self.wfile.write(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
            self.wfile.flush()
            if len(sent) <= MAX_LOGGED_BODY:
                sent += ev
            if delay:
                time.sleep(delay)
        self._log_response(bytes(sent))   # before the last chunk: see _send
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _record(self, body: bytes) -> None:
        srv = self.server
        self._log_entry = {"method": self.command, "path": self.path,
                           "headers": {k: v for k, v in self.headers.items()},
                           # every header line, repeats included (the dict keeps the last)
                           "header_list": [[k.lower(), v] for k, v in self.headers.items()],
                           "body": body[:MAX_LOGGED_BODY].decode("utf-8", "replace")}
        with srv.lock:  # type: ignore[attr-defined]
            srv.requests.append(self._log_entry)  # type: ignore[attr-defined]

    def _refused_body(self) -> bool:
        """A GET, HEAD or DELETE that carries a body: read it (bounded) so no byte of it is left on
        the kept-alive connection to be parsed as a next request, record it, answer 400 and
        close. True when the request was answered here."""
        has_length = (self.headers.get("content-length") or "0").strip() not in ("", "0")
        if not has_length and "transfer-encoding" not in self.headers:
            return False
        try:
            raw = self._read_body()
        except (OverflowError, _BadDirective):
            raw = b""
        self._record(raw)
        self.close_connection = True
        h, b = error_body("openai", 400, "body_not_allowed", f"mock: a {self.command} request must not carry a body")
        self._send(400, b, h)
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Unsupported methods and malformed requests: whatever body came with them is unread,
        # so the connection is not reused.
        self.close_connection = True
        super().send_error(code, message, explain)

    # --- verbs ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._log_entry = None
        if self._refused_body():
            return
        self._record(b"")
        self.close_connection = True
        self.send_response(405)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:
        self._log_entry = None  # a kept-alive connection's next request starts a new entry
        if self._refused_body():
            return
        if self.path == "/_mock/requests":
            with self.server.lock:  # type: ignore[attr-defined]
                self.server.requests.clear()  # type: ignore[attr-defined]
            self._send(204, b"")
        else:
            self._send(404, b"{}")

    def do_GET(self) -> None:
        self._log_entry = None  # a kept-alive connection's next request starts a new entry
        if self._refused_body():
            return
        if self.path == "/_mock/requests":
            with self.server.lock:  # type: ignore[attr-defined]
                data = list(self.server.requests)  # type: ignore[attr-defined]
            self._send(200, json.dumps(data).encode())
            return
        self._record(b"")
        path = urlsplit(self.path).path
        try:
            status = self._int_header("x-mock-status", 100, 599) or self.server.fail_status  # type: ignore[attr-defined]
            delay = self._int_header("x-mock-delay-ms", 0, MAX_DIRECTIVE_MS)
        except _BadDirective as exc:
            h, b = error_body("openai", 400, "mock_directive", str(exc))
            self._send(400, b, h)
            return
        if delay:
            time.sleep(delay / 1000)
        if status >= 400:
            h, b = error_body("openai", status, "mock_error", f"mock provider answered {status}")
            self._send(status, b, h)
        elif path == "/v1/models":
            models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-haiku-latest"]
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "ledgergate-mock"} for m in models]}).encode())
        elif path.startswith("/v1/models/") and path.count("/") == 3:
            m = unquote(path.rsplit("/", 1)[1])
            self._send(200, json.dumps({"id": m, "object": "model", "created": 0, "owned_by": "ledgergate-mock"}).encode())
        else:
            h, b = error_body("openai", 404, "not_found", "mock has no such GET route")
            self._send(404, b, h)

    def _surface(self) -> Surface | None:
        """The surface of this request. A provider whose ledgergate route carries a prefix (which
        Envoy strips) is recognised by the host Envoy rewrites the request to."""
        host = (self.headers.get("host") or "").split(":", 1)[0]
        spec = next((s for s in registry.SPECS if s.route_prefix and s.upstream_host == host), None)
        return match_surface("POST", (spec.route_prefix if spec else "") + self.path)

    def do_POST(self) -> None:
        self._log_entry = None  # a kept-alive connection's next request starts a new entry
        surface = self._surface()
        provider = surface.provider if surface else "openai"
        try:
            raw = self._read_body()
        except OverflowError:
            h, b = error_body(provider, 413, "request_too_large", "mock: body too large")
            self._send(413, b, h)
            self.close_connection = True
            return
        except _BadDirective as exc:
            h, b = error_body(provider, 400, "bad_request", f"mock: {exc}")
            self._send(400, b, h)
            self.close_connection = True
            return
        self._record(raw)
        if surface is None:
            h, b = error_body("openai", 404, "not_found", "mock: unknown path")
            self._send(404, b, h)
            return
        try:
            status = self._int_header("x-mock-status", 100, 599) or self.server.fail_status  # type: ignore[attr-defined]
            delay = self._int_header("x-mock-delay-ms", 0, MAX_DIRECTIVE_MS)
            chunk = self._int_header("x-mock-chunk-chars", 0, 1_000_000) or None
            self._int_header("x-mock-event-delay-ms", 0, MAX_DIRECTIVE_MS)
        except _BadDirective as exc:
            h, b = error_body(provider, 400, "mock_directive", str(exc))
            self._send(400, b, h)
            return
        if delay:
            time.sleep(delay / 1000)
        if status >= 400:
            h, b = error_body(provider, status, "mock_error", f"mock provider answered {status}")
            self._send(status, b, h)
            return
        try:
            body = json.loads(raw.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError
        except (ValueError, RecursionError):
            h, b = error_body(provider, 400, "invalid_json", "mock: body is not a JSON object")
            self._send(400, b, h)
            return
        try:
            prompt = last_user_text(surface.api, body)
        except (AttributeError, TypeError):
            prompt = ""
        reply = _reply_directive(self.headers["x-mock-reply"]) if "x-mock-reply" in self.headers else f"You said: {prompt}"
        model = surface.model_from_path or body.get("model")
        model = model if isinstance(model, str) else "mock-model"
        stream = surface.stream_from_path or body.get("stream") is True
        handler = getattr(self, f"_{surface.provider}_{surface.api}", None) or getattr(self, f"_api_{surface.api}", None)
        if handler is None or not surface.inspectable:
            h, b = error_body(provider, 404, "not_found", f"mock does not implement {surface.name}")
            self._send(404, b, h)
            return
        self._started = False
        if stream and self.headers.get("x-mock-body", "").startswith("b64:"):
            raw_body = base64.b64decode(self.headers["x-mock-body"][4:])
            step = chunk or len(raw_body) or 1
            self._stream(iter([raw_body[i:i + step] for i in range(0, len(raw_body), step)]))
            return
        try:
            handler(body, model, prompt, reply, chunk, stream)
        except (AttributeError, TypeError, ValueError, KeyError):
            if self._started:
                raise
            h, b = error_body(provider, 400, "invalid_request", f"mock: malformed {surface.name} body")
            self._send(400, b, h)

    # --- OpenAI ---------------------------------------------------------------------------
    def _api_chat(self, body, model, prompt, reply, chunk, stream) -> None:
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(reply),
                 "total_tokens": _tokens(prompt) + _tokens(reply)}
        if not stream:
            message: dict = {"role": "assistant", "content": reply, "refusal": None}
            if self._as_tool():
                message.update(content=None, tool_calls=[{"id": "call_1", "type": "function", "function": {
                    "name": "lookup", "arguments": reply}}])
            self._send(200, json.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message,
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage}).encode())
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events() -> Iterator[bytes]:
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
            for i, piece in enumerate(split_reply(reply, chunk)):
                delta: dict = {"content": piece}
                if self._as_tool():
                    call: dict = {"index": 0, "function": {"arguments": piece}}
                    if i == 0:
                        call.update(id="call_1", type="function")
                        call["function"]["name"] = "lookup"
                    delta = {"tool_calls": [call]}
                yield sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                "finish_reason": None}]})
            yield sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage})
            yield sse("[DONE]")
        self._stream(events())

    # --- Mistral ---------------------------------------------------------------------------
    def _mistral_chat(self, body, model, prompt, reply, chunk, stream) -> None:
        """OpenAI's chat shape, but: unknown fields refused (422), the usage in the last chunk
        always (no stream_options), a tool call streamed whole in one chunk."""
        extra = sorted(set(body) - MISTRAL_CHAT_FIELDS)
        if extra:
            h, b = error_body("mistral", 422, "extra_forbidden", f"Extra inputs are not permitted: {', '.join(extra)}")
            self._send(422, b, h)
            return
        cid, created = uuid.uuid4().hex, int(time.time())
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(reply),
                 "total_tokens": _tokens(prompt) + _tokens(reply)}
        call = {"id": "D681PevKs", "type": "function", "function": {"name": "lookup", "arguments": reply}}
        if not stream:
            message = {"role": "assistant", "content": "" if self._as_tool() else reply,
                       "tool_calls": [call] if self._as_tool() else None, "prefix": False}
            self._send(200, json.dumps({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if self._as_tool() else "stop"}],
                "usage": usage}).encode())
            return

        def events() -> Iterator[bytes]:
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            yield sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
            if self._as_tool():
                yield sse({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{**call, "index": 0}]},
                                                "finish_reason": None}]})
            else:
                for piece in split_reply(reply, chunk):
                    yield sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            yield sse({**base, "choices": [{"index": 0, "delta": {"content": ""},
                                            "finish_reason": "tool_calls" if self._as_tool() else "stop"}],
                       "usage": usage})
            yield sse("[DONE]")
        self._stream(events())

    def _api_completions(self, body, model, prompt, reply, chunk, stream) -> None:
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {"prompt_tokens": _tokens(prompt), "completion_tokens": _tokens(reply),
                 "total_tokens": _tokens(prompt) + _tokens(reply)}
        base = {"id": cid, "object": "text_completion", "created": created, "model": model}
        if not stream:
            self._send(200, json.dumps({**base, "choices": [
                {"index": 0, "text": reply, "logprobs": None, "finish_reason": "stop"}], "usage": usage}).encode())
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def events() -> Iterator[bytes]:
            pieces = split_reply(reply, chunk)
            for i, piece in enumerate(pieces):
                yield sse({**base, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                                "finish_reason": "stop" if i == len(pieces) - 1 else None}]})
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage})
            yield sse("[DONE]")
        self._stream(events())

    def _api_embeddings(self, body, model, prompt, reply, chunk, stream) -> None:
        if isinstance(body.get("content"), dict):  # Gemini embedContent
            text = "".join(p.get("text", "") for p in body["content"].get("parts") or [] if isinstance(p, dict))
            vec = [((hash(text) >> (k * 3)) % 1000) / 1000.0 for k in range(8)]
            self._send(200, json.dumps({"embedding": {"values": vec}}).encode())
            return
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = []
        for i, text in enumerate(inputs):
            vec = [((hash(str(text)) >> (k * 3)) % 1000) / 1000.0 for k in range(8)]
            if body.get("encoding_format") == "base64":
                emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(_tokens(str(t)) for t in inputs)
        self._send(200, json.dumps({"object": "list", "data": data, "model": model,
                                    "usage": {"prompt_tokens": n, "total_tokens": n}}).encode())

    def _api_moderations(self, body, model, prompt, reply, chunk, stream) -> None:
        self._send(200, json.dumps({"id": f"modr-{uuid.uuid4().hex[:12]}", "model": model or "omni-moderation-latest",
                                    "results": [{"flagged": False, "categories": {}, "category_scores": {}}]}).encode())

    def _api_responses(self, body, model, prompt, reply, chunk, stream) -> None:
        rid, mid, created = f"resp_{uuid.uuid4().hex[:24]}", f"msg_{uuid.uuid4().hex[:24]}", int(time.time())
        usage = {"input_tokens": _tokens(prompt), "output_tokens": _tokens(reply),
                 "total_tokens": _tokens(prompt) + _tokens(reply),
                 "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}

        def response(status: str, text: str | None, with_usage: bool) -> dict:
            output = [] if text is None else [{
                "type": "message", "id": mid, "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}]
            return {"id": rid, "object": "response", "created_at": created, "status": status, "model": model,
                    "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": usage if with_usage else None, "error": None, "incomplete_details": None,
                    "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0}
        if not stream:
            self._send(200, json.dumps(response("completed", reply, True)).encode())
            return

        def events() -> Iterator[bytes]:
            seq = 0

            def ev(kind: str, data: dict) -> bytes:
                nonlocal seq
                out = sse({"type": kind, "sequence_number": seq, **data}, event=kind)
                seq += 1
                return out
            yield ev("response.created", {"response": response("in_progress", None, False)})
            item = {"type": "message", "id": mid, "status": "in_progress", "role": "assistant", "content": []}
            yield ev("response.output_item.added", {"output_index": 0, "item": item})
            yield ev("response.content_part.added", {"item_id": mid, "output_index": 0, "content_index": 0,
                                                     "part": {"type": "output_text", "text": "", "annotations": []}})
            for piece in split_reply(reply, chunk):
                yield ev("response.output_text.delta", {"item_id": mid, "output_index": 0, "content_index": 0,
                                                        "delta": piece, "logprobs": []})
            yield ev("response.output_text.done", {"item_id": mid, "output_index": 0, "content_index": 0,
                                                   "text": reply, "logprobs": []})
            part = {"type": "output_text", "text": reply, "annotations": []}
            yield ev("response.content_part.done", {"item_id": mid, "output_index": 0, "content_index": 0,
                                                    "part": part})
            yield ev("response.output_item.done", {"output_index": 0, "item": {**item, "status": "completed",
                                                                              "content": [part]}})
            yield ev("response.completed", {"response": response("completed", reply, True)})
        self._stream(events())

    # --- Anthropic ------------------------------------------------------------------------
    def _api_messages(self, body, model, prompt, reply, chunk, stream) -> None:
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        if not stream:
            self._send(200, json.dumps({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": _tokens(prompt), "output_tokens": _tokens(reply)}}).encode())
            return

        def events() -> Iterator[bytes]:
            yield sse({"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": _tokens(prompt), "output_tokens": 1}}}, event="message_start")
            tool = self._as_tool()
            block = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}} if tool else \
                {"type": "text", "text": ""}
            yield sse({"type": "content_block_start", "index": 0, "content_block": block}, event="content_block_start")
            yield sse({"type": "ping"}, event="ping")
            for piece in split_reply(reply, chunk):
                delta = {"type": "input_json_delta", "partial_json": piece} if tool else \
                    {"type": "text_delta", "text": piece}
                yield sse({"type": "content_block_delta", "index": 0, "delta": delta}, event="content_block_delta")
            yield sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                       "usage": {"output_tokens": _tokens(reply)}}, event="message_delta")
            yield sse({"type": "message_stop"}, event="message_stop")
        self._stream(events())

    def _api_count_tokens(self, body, model, prompt, reply, chunk, stream) -> None:
        if "contents" in body or "generateContentRequest" in body:  # Gemini countTokens
            self._send(200, json.dumps({"totalTokens": _tokens(prompt)}).encode())
            return
        self._send(200, json.dumps({"input_tokens": _tokens(prompt)}).encode())

    # --- Gemini ---------------------------------------------------------------------------
    def _api_generate(self, body, model, prompt, reply, chunk, stream) -> None:
        usage = {"promptTokenCount": _tokens(prompt), "candidatesTokenCount": _tokens(reply),
                 "totalTokenCount": _tokens(prompt) + _tokens(reply)}
        if not stream:
            self._send(200, json.dumps({"candidates": [{"content": {"parts": [{"text": reply}], "role": "model"},
                                                        "finishReason": "STOP", "index": 0}],
                                        "usageMetadata": usage, "modelVersion": model}).encode())
            return

        sse_mode = "alt=sse" in urlsplit(self.path).query

        def events() -> Iterator[bytes]:
            pieces = split_reply(reply, chunk)
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                cand: dict = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
                if last:
                    cand["finishReason"] = "STOP"
                ev = {"candidates": [cand], "modelVersion": model}
                if last:
                    ev["usageMetadata"] = usage
                data = json.dumps(ev, separators=(",", ":"))
                if sse_mode:  # Gemini frames SSE with CRLF
                    yield ("data: " + data + "\r\n\r\n").encode()
                else:  # without alt=sse: one JSON array, streamed element by element
                    yield (("[" if i == 0 else ",\r\n") + data + ("]" if last else "")).encode()
        self._stream(events(), "text/event-stream" if sse_mode else "application/json")

    # --- Bedrock --------------------------------------------------------------------------
    def _api_converse(self, body, model, prompt, reply, chunk, stream) -> None:
        if stream:
            def events() -> Iterator[bytes]:
                yield eventstream_message("messageStart", {"role": "assistant"})
                if self._as_tool():
                    yield eventstream_message("contentBlockStart", {"contentBlockIndex": 0, "start": {
                        "toolUse": {"toolUseId": "tooluse_1", "name": "lookup"}}})
                for piece in split_reply(reply, chunk):
                    delta = {"toolUse": {"input": piece}} if self._as_tool() else {"text": piece}
                    yield eventstream_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
                yield eventstream_message("contentBlockStop", {"contentBlockIndex": 0})
                yield eventstream_message("messageStop", {"stopReason": "end_turn"})
                yield eventstream_message("metadata", {
                    "usage": {"inputTokens": _tokens(prompt), "outputTokens": _tokens(reply),
                              "totalTokens": _tokens(prompt) + _tokens(reply)}, "metrics": {"latencyMs": 1}})
            self._stream(events(), "application/vnd.amazon.eventstream")
            return
        self._send(200, json.dumps({
            "output": {"message": {"role": "assistant", "content": [{"text": reply}]}}, "stopReason": "end_turn",
            "usage": {"inputTokens": _tokens(prompt), "outputTokens": _tokens(reply),
                      "totalTokens": _tokens(prompt) + _tokens(reply)},
            "metrics": {"latencyMs": 1}}).encode())

    def _api_invoke(self, body, model, prompt, reply, chunk, stream) -> None:
        if stream:  # invoke-with-response-stream: each event's bytes are one model-native JSON chunk
            def chunk_event(obj: dict) -> bytes:
                return eventstream_message("chunk", {"bytes": base64.b64encode(
                    json.dumps(obj, separators=(",", ":")).encode()).decode()})

            def events() -> Iterator[bytes]:
                if "messages" in body:
                    yield chunk_event({"type": "message_start", "message": {
                        "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": None, "usage": {"input_tokens": _tokens(prompt), "output_tokens": 1}}})
                    yield chunk_event({"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})
                    for piece in split_reply(reply, chunk):
                        yield chunk_event({"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": piece}})
                    yield chunk_event({"type": "content_block_stop", "index": 0})
                    yield chunk_event({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": _tokens(reply)}})
                    yield chunk_event({"type": "message_stop"})
                else:
                    pieces = split_reply(reply, chunk)
                    for i, piece in enumerate(pieces):
                        yield chunk_event({"outputText": piece, "index": 0, "totalOutputTextTokenCount": None,
                                           "completionReason": "FINISH" if i == len(pieces) - 1 else None,
                                           "inputTextTokenCount": _tokens(prompt) if i == 0 else None})
            self._stream(events(), "application/vnd.amazon.eventstream")
            return
        if "messages" in body:
            self._send(200, json.dumps({
                "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": _tokens(prompt), "output_tokens": _tokens(reply)}}).encode())
        else:
            self._send(200, json.dumps({"inputTextTokenCount": _tokens(prompt), "results": [
                {"tokenCount": _tokens(reply), "outputText": reply, "completionReason": "FINISH"}]}).encode())


class MockProviderServer:
    """The mock providers on one port, in a background thread (tests, `ledgergate up`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, fail_status: int = 0) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        # Answer every API call with this error status (a provider that is down, for failover tests).
        self.httpd.fail_status = fail_status  # type: ignore[attr-defined]
        self.httpd.daemon_threads = True
        self.httpd.requests = collections.deque(maxlen=200)  # type: ignore[attr-defined]
        self.httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mock-providers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(host: str, port: int, fail_status: int = 0) -> None:
    srv = MockProviderServer(host, port, fail_status=fail_status)
    print(f"mock providers on http://{host}:{srv.port}", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()
