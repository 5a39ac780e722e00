"""Response inspection, streamed or not (sans-I/O). Envoy hands the response body over in
FULL_DUPLEX_STREAMED mode; what `feed` returns is exactly what the client receives, so nothing is
returned before it has been scanned.

SSE streams are parsed into events. Text deltas (OpenAI chat content and tool arguments,
Responses output_text deltas, Anthropic text/input_json deltas, Gemini parts) accumulate per
content stream; only a bounded tail is held back — the last HOLD_CHARS characters, extended to the
start of a trailing unbroken run of non-space characters (a token or key still arriving), capped by
the classifier's longest finding — and the released text is re-framed into the event's own JSON.
Any other event flushes the held text first, so order is kept. Non-SSE bodies are buffered whole
(bounded) and inspected at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zlib

import re2
from dataclasses import dataclass, field
from typing import Any, Mapping

from ext_proc.classify import Classifier, Finding, redact, summarize
from ext_proc.providers import match_surface, parse_response, render_response
from ext_proc.providers.adapters import BadRequestBody

HOLD_CHARS = 64


@dataclass(frozen=True)
class ResponseRules:
    redact: Mapping[str, str] = field(default_factory=dict)
    block: frozenset[str] = frozenset()

    @classmethod
    def from_policy(cls, response: Mapping | None) -> "ResponseRules":
        response = response or {}
        return cls(redact=dict(response.get("redact") or {}), block=frozenset(response.get("block") or ()))


@dataclass(frozen=True)
class Release:
    body: bytes
    end_of_stream: bool


@dataclass
class _TextStream:
    held: str = ""
    template: dict | None = None  # the last event JSON carrying this stream's text
    setter: Any = None            # function(event_json, text) -> None
    prefix: bytes = b""           # the event's non-data lines (event: ...)


class _Blocked(Exception):
    def __init__(self, label: str) -> None:
        self.label = label


class ResponseInspector:
    def __init__(self, surface_name: str, *, status: int, content_type: str | None, content_encoding: str | None,
                 classifier: Classifier, rules: ResponseRules, hash_key: bytes, tenant: str | None,
                 max_event_bytes: int = 1 << 20, max_buffer_bytes: int = 8 << 20) -> None:
        self.surface_name = surface_name
        self.provider = surface_name.split(".", 1)[0] if "." in surface_name else "openai"
        self.status = status
        self.sse = bool(content_type and "text/event-stream" in content_type.lower())
        self.classifier = classifier
        self.rules = rules
        self.hash_key = hash_key
        self.tenant = tenant
        self.max_event_bytes = max_event_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.hold_cap = max(HOLD_CHARS, min(classifier.max_match_chars, 16384))
        self.buf = b""
        self.finished = False
        self.blocked: dict | None = None
        self.usage: dict | None = None
        self.events = 0
        self.findings: list[Finding] = []
        self.redactions: list[dict] = []
        self._digest = hashlib.sha256()
        self._streams: dict[tuple, _TextStream] = {}
        enc = (content_encoding or "identity").strip().lower()
        self._decoder = None
        self.release_headers_mutation: dict[str, list[str]] = {}
        self._refuse: str | None = None
        if enc in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47 if "gzip" in enc else 15)
            self.release_headers_mutation = {"remove": ["content-encoding"]}
        elif enc not in ("identity", ""):
            self._refuse = f"response content-encoding {enc!r} cannot be inspected"
            self.release_headers_mutation = {"remove": ["content-encoding"]}

    # --- public -------------------------------------------------------------------------
    def feed(self, chunk: bytes, end_of_stream: bool) -> list[Release]:
        if self.finished:
            return []  # Envoy may re-deliver the end of the body (envoyproxy/envoy#46237)
        if self._refuse:
            return self._block_now("unsupported_encoding", self._refuse)
        if self._decoder is not None:
            try:
                chunk = self._decoder.decompress(chunk, self.max_buffer_bytes - len(self.buf) + 1)
            except zlib.error:
                return self._block_now("bad_encoding", "the compressed response could not be decoded")
        self.buf += chunk
        try:
            if self.sse:
                out = self._feed_sse(end_of_stream)
            else:
                out = self._feed_whole(end_of_stream)
        except _Blocked as b:
            return self._block_now(b.label, f"the response was stopped by policy ({b.label})")
        if end_of_stream:
            self.finished = True
            return self._emit(out, True)
        return self._emit(out, False)

    def outcome(self) -> dict:
        return {"classification": summarize(self.findings), "redactions": self.redactions, "usage": self.usage,
                "blocked": self.blocked, "response_sha256": self._digest.hexdigest(), "streamed": self.sse,
                "events": self.events}

    # --- helpers ------------------------------------------------------------------------
    def _emit(self, body: bytes, end: bool) -> list[Release]:
        self._digest.update(body)
        if not body and not end:
            return []
        return [Release(body=body, end_of_stream=end)]

    def _scan_text(self, text: str, *, final: bool) -> tuple[str, int]:
        """Scan text; block or redact. Returns (released text, number of chars consumed)."""
        findings = self.classifier.scan(text)
        for f in findings:
            if f.label in self.rules.block:
                self.findings.append(f)
                raise _Blocked(f.label)
        cut = len(text)
        if not final:
            cut = max(0, len(text) - HOLD_CHARS)
            # A token still arriving: hold from the start of the trailing unbroken run.
            run = len(text)
            while run > 0 and not text[run - 1].isspace() and len(text) - run < self.hold_cap:
                run -= 1
            cut = min(cut, run)
            for f in findings:
                if f.start < cut < f.end:
                    cut = f.start
        done = [f for f in findings if f.end <= cut]
        self.findings.extend(done)
        released = text[:cut]
        if done and self.rules.redact:
            shifted = [Finding(f.label, f.start, f.end, f.confidence, f.validator) for f in done]
            released, reds = redact(released, shifted, self.rules.redact, hash_key=self.hash_key, tenant=self.tenant)
            self.redactions.extend(r.to_record() for r in reds)
        return released, cut

    def _block_now(self, label: str, message: str) -> list[Release]:
        self.finished = True
        self.blocked = {"label": label, "at_event": self.events, "reason": message}
        if self.sse:
            body = self._error_event(message)
        else:
            from ext_proc.providers import error_body
            _h, body = error_body(self.provider if self.provider in ("anthropic", "gemini", "bedrock") else "openai",
                                  502, "response_blocked", message)
        return self._emit(body, True)

    def _error_event(self, message: str) -> bytes:
        if self.provider == "anthropic":
            data = {"type": "error", "error": {"type": "api_error", "message": message}}
            return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
        if self.provider == "gemini":
            data = {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}
            return b"data: " + json.dumps(data).encode() + b"\n\n"
        data = {"error": {"message": message, "type": "server_error", "param": None, "code": "response_blocked"}}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    # --- whole bodies -------------------------------------------------------------------
    def _feed_whole(self, end: bool) -> bytes:
        if len(self.buf) > self.max_buffer_bytes:
            raise _Blocked("response_too_large")
        if not end:
            return b""
        body, self.buf = self.buf, b""
        surface = _surface_for(self.surface_name)
        parsed = None
        if surface is not None and self.status < 300:
            try:
                parsed = parse_response(surface, body, max_bytes=self.max_buffer_bytes)
            except BadRequestBody:
                parsed = None
        if parsed is None:
            text = body.decode("utf-8", "replace")
            findings = self.classifier.scan(text)
            self.findings.extend(findings)
            for f in findings:
                if f.label in self.rules.block:
                    raise _Blocked(f.label)
            if any(f.label in self.rules.redact or "*" in self.rules.redact for f in findings):
                # Unparseable text with something to redact: redact the raw text.
                red, reds = redact(text, findings, self.rules.redact, hash_key=self.hash_key, tenant=self.tenant)
                self.redactions.extend(r.to_record() for r in reds)
                return red.encode()
            return body
        self.usage = parsed.usage
        replacements: dict[int, str] = {}
        for i, seg in enumerate(parsed.segments):
            findings = self.classifier.scan(seg.text)
            self.findings.extend(findings)
            for f in findings:
                if f.label in self.rules.block:
                    raise _Blocked(f.label)
            if findings and self.rules.redact:
                red, reds = redact(seg.text, findings, self.rules.redact, hash_key=self.hash_key, tenant=self.tenant)
                if reds:
                    replacements[i] = red
                    self.redactions.extend(dict(r.to_record(), segment=i) for r in reds)
        return render_response(parsed, replacements) if replacements else body

    # --- SSE ----------------------------------------------------------------------------
    def _feed_sse(self, end: bool) -> bytes:
        out: list[bytes] = []
        buf, pos = self.buf, 0
        while True:
            idx, sep_len = _find_boundary(buf, pos)
            if idx < 0:
                break
            raw = buf[pos: idx + sep_len]
            pos = idx + sep_len
            if len(raw) > self.max_event_bytes:
                raise _Blocked("event_too_large")
            out.append(self._event(raw))
        self.buf = buf[pos:]
        if len(self.buf) > self.max_event_bytes:
            raise _Blocked("event_too_large")
        if end:
            if self.buf.strip():
                out.append(self._event(self.buf))
            self.buf = b""
            out.append(self._flush_all())
        return b"".join(out)

    def _event(self, raw: bytes) -> bytes:
        self.events += 1
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        data_lines = [ln[5:].lstrip(b" ") if ln.startswith(b"data:") else None for ln in lines]
        data = b"\n".join(d for d in data_lines if d is not None)
        other = [ln for ln, d in zip(lines, data_lines) if d is None and ln]
        prefix = b"".join(ln + b"\n" for ln in other)
        if not data or data.strip() == b"[DONE]":
            return self._flush_all() + raw
        try:
            ev = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._flush_all() + self._scan_raw_event(raw)
        if not isinstance(ev, dict):
            return self._flush_all() + self._scan_raw_event(raw)
        self._note_usage(ev)
        deltas = list(_text_deltas(ev))
        if not deltas:
            return self._flush_all() + self._scan_json_event(ev, raw, prefix)
        parts: list[bytes] = []
        for key, text, setter in deltas:
            st = self._streams.setdefault(key, _TextStream())
            st.held += text
            st.template, st.setter, st.prefix = ev, setter, prefix
            released, cut = self._scan_text(st.held, final=False)
            st.held = st.held[cut:]
            setter(ev, released if released is not None else "")
        # One event may carry several streams (choices); it is re-framed once with each released text.
        if all(_get_text(ev, k) == "" for k, _t, _s in deltas):
            return b""  # everything held back: the text travels in a later event of the same stream
        parts.append(_frame(prefix, ev, raw))
        return b"".join(parts)

    def _flush_all(self) -> bytes:
        out = []
        for key, st in list(self._streams.items()):
            if st.held and st.template is not None:
                released, _cut = self._scan_text(st.held, final=True)
                ev = copy.deepcopy(st.template)
                for k2, _t, setter in _text_deltas(ev):
                    setter(ev, released if k2 == key else "")
                _strip_finish(ev)
                out.append(_frame(st.prefix, ev, b"\n\n"))
            st.held = ""
        return b"".join(out)

    def _scan_json_event(self, ev: dict, raw: bytes, prefix: bytes) -> bytes:
        """Events that carry whole texts (response.output_text.done, response.completed...)."""
        changed = False
        for path, text in _strings(ev):
            if len(text) < 4:
                continue
            findings = self.classifier.scan(text)
            if not findings:
                continue
            for f in findings:
                if f.label in self.rules.block:
                    raise _Blocked(f.label)
            if self.rules.redact:
                red, reds = redact(text, findings, self.rules.redact, hash_key=self.hash_key, tenant=self.tenant)
                if reds:
                    _set(ev, path, red)
                    changed = True
        return _frame(prefix, ev, raw) if changed else raw

    def _scan_raw_event(self, raw: bytes) -> bytes:
        text = raw.decode("utf-8", "replace")
        for f in self.classifier.scan(text):
            if f.label in self.rules.block or f.label in self.rules.redact or "*" in self.rules.redact:
                raise _Blocked(f.label)
        return raw

    def _note_usage(self, ev: dict) -> None:
        u = ev.get("usage")
        if isinstance(u, dict) and ("prompt_tokens" in u or "completion_tokens" in u):
            self.usage = {"input_tokens": u.get("prompt_tokens"), "output_tokens": u.get("completion_tokens")}
        t = ev.get("type")
        if t == "message_start":
            mu = (ev.get("message") or {}).get("usage") or {}
            self.usage = {"input_tokens": mu.get("input_tokens"), "output_tokens": mu.get("output_tokens")}
        elif t == "message_delta" and isinstance(u, dict):
            self.usage = {**(self.usage or {}), "output_tokens": u.get("output_tokens")}
        elif t == "response.completed":
            ru = ((ev.get("response") or {}).get("usage")) or {}
            self.usage = {"input_tokens": ru.get("input_tokens"), "output_tokens": ru.get("output_tokens")}
        um = ev.get("usageMetadata")
        if isinstance(um, dict):
            self.usage = {"input_tokens": um.get("promptTokenCount"), "output_tokens": um.get("candidatesTokenCount")}


def _surface_for(name: str):
    paths = {"openai.chat_completions": "/v1/chat/completions", "openai.responses": "/v1/responses",
             "openai.completions": "/v1/completions", "anthropic.messages": "/v1/messages",
             "azure.chat_completions": "/openai/deployments/d/chat/completions",
             "gemini.generate_content": "/v1beta/models/m:generateContent"}
    p = paths.get(name)
    return match_surface("POST", p) if p else None


_EVENT_END = re2.compile(rb"\r\n\r\n|\n\n|\r\r")


def _find_boundary(buf: bytes, start: int) -> tuple[int, int]:
    """The next blank line (end of an SSE event) at or after start: one linear re2 scan."""
    m = _EVENT_END.search(buf, start)
    return (m.start(), m.end() - m.start()) if m else (-1, 0)


def _frame(prefix: bytes, ev: dict, raw: bytes) -> bytes:
    sep = b"\r\n\r\n" if raw.endswith(b"\r\n\r\n") else b"\n\n"
    return prefix + b"data: " + json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode() + sep


def _setter(path: tuple):
    def set_text(ev: dict, text: str) -> None:
        _set(ev, path, text)
    return set_text


def _set(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _get_text(ev: dict, key: tuple) -> str:
    for k, t, _s in _text_deltas(ev):
        if k == key:
            return t
    return ""


def _text_deltas(ev: dict):
    """(stream key, text, setter) for every text delta an event carries."""
    choices = ev.get("choices")
    if isinstance(choices, list) and ev.get("object") in ("chat.completion.chunk", None):
        for i, ch in enumerate(choices):
            if not isinstance(ch, dict):
                continue
            delta = ch.get("delta")
            if isinstance(delta, dict):
                idx = ch.get("index", i)
                if isinstance(delta.get("content"), str):
                    yield ("chat", idx, "content"), delta["content"], _setter(("choices", i, "delta", "content"))
                for j, tc in enumerate(delta.get("tool_calls") or []):
                    fn = (tc or {}).get("function") or {}
                    if isinstance(fn.get("arguments"), str):
                        yield (("chat", idx, "tool", tc.get("index", j)), fn["arguments"],
                               _setter(("choices", i, "delta", "tool_calls", j, "function", "arguments")))
            elif isinstance(ch.get("text"), str):  # legacy completions stream
                yield ("cmpl", ch.get("index", i)), ch["text"], _setter(("choices", i, "text"))
    t = ev.get("type")
    if t == "content_block_delta" and isinstance(ev.get("delta"), dict):
        d = ev["delta"]
        if d.get("type") == "text_delta" and isinstance(d.get("text"), str):
            yield ("anth", ev.get("index")), d["text"], _setter(("delta", "text"))
        elif d.get("type") == "input_json_delta" and isinstance(d.get("partial_json"), str):
            yield ("anth", ev.get("index")), d["partial_json"], _setter(("delta", "partial_json"))
    if t in ("response.output_text.delta", "response.function_call_arguments.delta") and isinstance(ev.get("delta"), str):
        yield ("resp", ev.get("output_index"), ev.get("content_index")), ev["delta"], _setter(("delta",))
    cands = ev.get("candidates")
    if isinstance(cands, list):
        for i, c in enumerate(cands):
            parts = ((c or {}).get("content") or {}).get("parts") or []
            for j, p in enumerate(parts):
                if isinstance(p, dict) and isinstance(p.get("text"), str):
                    yield ("gem", i, j), p["text"], _setter(("candidates", i, "content", "parts", j, "text"))


def _strip_finish(ev: dict) -> None:
    """A synthesized flush event carries text only, never a finish marker or usage."""
    for ch in ev.get("choices") or []:
        if isinstance(ch, dict):
            ch["finish_reason"] = None
    ev.pop("usage", None)
    ev.pop("usageMetadata", None)
    for c in ev.get("candidates") or []:
        if isinstance(c, dict):
            c.pop("finishReason", None)


def _strings(obj: Any, path: tuple = ()):
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, path + (i,))
