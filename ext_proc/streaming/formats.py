"""What the provider stream formats look like to the inspector, recognized by the event's shape
(so Azure, OpenAI-compatible and proxied streams work whatever the route was called):

* which strings of an event are text deltas, and of which content stream (``slots``);
* which event ends which streams (``terminated``): held text must be flushed before or into it;
* whether an event whose deltas are all held back can be left out (``droppable``);
* a minimal event carrying only held text for one stream (``synthesize``);
* usage counts, and the provider-shaped error event that ends a blocked stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

Path = tuple
StreamKey = tuple

# Keys whose values are identifiers or enums, not model output: not scanned.
METADATA_KEYS = frozenset({
    "id", "object", "model", "type", "role", "finish_reason", "stop_reason", "status", "system_fingerprint",
    "item_id", "call_id", "tool_call_id", "finishReason", "modelVersion", "responseId", "service_tier",
    "signature", "encrypted_content", "stopReason", "created", "created_at", "event", "stop_sequence",
})

ALL: StreamKey = ()   # a key prefix matching every stream

# Events after which an SDK considers the response complete (besides OpenAI's `data: [DONE]`).
FINAL_TYPES = frozenset({"message_stop", "response.completed", "response.failed", "response.incomplete"})


@dataclass(frozen=True, slots=True)
class Slot:
    key: StreamKey   # the content stream the text belongs to
    path: Path       # where the text sits in the event
    text: str


def get_path(obj: Any, path: Path) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def set_path(obj: Any, path: Path, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _idx(value: Any, default: int) -> Any:
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else default


def slots(ev: dict) -> list[Slot]:
    out: list[Slot] = []
    choices = ev.get("choices")
    if isinstance(choices, list):
        for i, ch in enumerate(choices):
            if not isinstance(ch, dict):
                continue
            idx = _idx(ch.get("index"), i)
            delta = ch.get("delta")
            if isinstance(delta, dict):
                for field in ("content", "refusal", "reasoning_content"):
                    if isinstance(delta.get(field), str):
                        out.append(Slot(("chat", idx, field), ("choices", i, "delta", field), delta[field]))
                tool_calls = delta.get("tool_calls")
                if isinstance(tool_calls, list):
                    for j, tc in enumerate(tool_calls):
                        fn = tc.get("function") if isinstance(tc, dict) else None
                        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                            out.append(Slot(("chat", idx, "tool", _idx(tc.get("index"), j)),
                                            ("choices", i, "delta", "tool_calls", j, "function", "arguments"),
                                            fn["arguments"]))
            elif isinstance(ch.get("text"), str):           # legacy completions
                out.append(Slot(("cmpl", idx), ("choices", i, "text"), ch["text"]))
    t = ev.get("type")
    if t == "content_block_delta" and isinstance(ev.get("delta"), dict):
        d, idx = ev["delta"], _idx(ev.get("index"), 0)
        field = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}.get(d.get("type"))
        if field and isinstance(d.get(field), str):
            out.append(Slot(("anth", idx, field), ("delta", field), d[field]))
    elif isinstance(t, str) and t.startswith("response.") and t.endswith(".delta") and isinstance(ev.get("delta"), str):
        kind = t[len("response."):-len(".delta")]
        part = ev.get("content_index", ev.get("summary_index", 0))
        out.append(Slot(("resp", _idx(ev.get("output_index"), 0), kind, _idx(part, 0)), ("delta",), ev["delta"]))
    cands = ev.get("candidates")
    if isinstance(cands, list):
        for i, c in enumerate(cands):
            content = c.get("content") if isinstance(c, dict) else None
            parts = content.get("parts") if isinstance(content, dict) else None
            if not isinstance(parts, list):
                continue
            idx = _idx(c.get("index"), i)
            for j, p in enumerate(parts):
                if isinstance(p, dict) and isinstance(p.get("text"), str):
                    kind = "thought" if p.get("thought") else "text"
                    out.append(Slot(("gem", idx, kind), ("candidates", i, "content", "parts", j, "text"), p["text"]))
    return out


def terminated(ev: dict) -> list[StreamKey]:
    """Key prefixes of the streams this event ends (their held text must not come after it)."""
    ends: list[StreamKey] = []
    for i, ch in enumerate(ev.get("choices") or ()):
        if isinstance(ch, dict) and ch.get("finish_reason") is not None:
            idx = _idx(ch.get("index"), i)
            ends += [("chat", idx), ("cmpl", idx)]
    t = ev.get("type")
    if t == "content_block_stop":
        ends.append(("anth", _idx(ev.get("index"), 0)))
    elif t in ("message_delta", "message_stop", "error", "response.completed", "response.failed",
               "response.incomplete"):
        ends.append(ALL)
    elif isinstance(t, str) and t.startswith("response.") and t.endswith(".done"):
        oi = _idx(ev.get("output_index"), 0)
        if t in ("response.output_item.done", "response.content_part.done"):
            ends.append(("resp", oi))
        else:
            kind = t[len("response."):-len(".done")]
            part = ev.get("content_index", ev.get("summary_index", 0))
            ends.append(("resp", oi, kind, _idx(part, 0)))
    for i, c in enumerate(ev.get("candidates") or ()):
        if isinstance(c, dict) and c.get("finishReason"):
            ends.append(("gem", _idx(c.get("index"), i)))
    if "error" in ev:
        ends.append(ALL)
    return ends


def restates(ev: dict) -> bool:
    """Events that repeat text already streamed as deltas (Responses API *.done, response.completed):
    scanned and redacted, but not counted twice in the classification."""
    t = ev.get("type")
    return isinstance(t, str) and t.startswith("response.") and (
        t.endswith(".done") or t in ("response.completed", "response.incomplete", "response.failed"))


def _only(d: Any, allowed: frozenset) -> bool:
    return isinstance(d, dict) and set(d) <= allowed


_CHAT_CHOICE = frozenset({"index", "delta", "finish_reason", "logprobs"})
_CHAT_DELTA = frozenset({"content", "refusal", "reasoning_content", "tool_calls"})
_CMPL_CHOICE = frozenset({"index", "text", "finish_reason", "logprobs"})
_GEM_TOP = frozenset({"candidates", "modelVersion", "responseId", "createTime"})
_GEM_CAND = frozenset({"content", "index"})


def droppable(ev: dict) -> bool:
    """True if the event carries nothing but text deltas (so, with all of them held, nothing)."""
    t = ev.get("type")
    if t == "content_block_delta":
        return True
    if isinstance(t, str) and t.startswith("response.") and t.endswith(".delta"):
        return True
    if isinstance(ev.get("choices"), list):
        if ev.get("usage") is not None:
            return False
        for ch in ev["choices"]:
            if not isinstance(ch, dict) or ch.get("finish_reason") is not None or ch.get("logprobs") is not None:
                return False
            if "delta" in ch:
                d = ch["delta"]
                if not _only(ch, _CHAT_CHOICE) or not _only(d, _CHAT_DELTA):
                    return False
                for tc in d.get("tool_calls") or ():
                    if not _only(tc, frozenset({"index", "function"})) or not _only(tc["function"], frozenset({"arguments"})):
                        return False
            elif not _only(ch, _CMPL_CHOICE):
                return False
        return True
    if isinstance(ev.get("candidates"), list) and _only(ev, _GEM_TOP):
        for c in ev["candidates"]:
            if not _only(c, _GEM_CAND) or not _only(c.get("content"), frozenset({"parts", "role"})):
                return False
            if not all(_only(p, frozenset({"text", "thought"})) for p in c["content"].get("parts") or ()):
                return False
        return True
    return False


def synthesize(template: dict, key: StreamKey, text: str) -> dict:
    """A minimal event of the template's format carrying ``text`` for one stream, nothing else
    (no finish marker, no usage, no tool-call id or name that an SDK would concatenate again)."""
    fam = key[0]
    if fam in ("chat", "cmpl"):
        ev = {k: v for k, v in template.items() if k not in ("choices", "usage")}
        if fam == "cmpl":
            ev["choices"] = [{"index": key[1], "text": text, "finish_reason": None, "logprobs": None}]
        elif key[2] == "tool":
            ev["choices"] = [{"index": key[1], "delta": {"tool_calls": [{"index": key[3], "function": {"arguments": text}}]},
                              "finish_reason": None}]
        else:
            ev["choices"] = [{"index": key[1], "delta": {key[2]: text}, "finish_reason": None}]
        return ev
    if fam == "anth":
        dtype = {"text": "text_delta", "partial_json": "input_json_delta", "thinking": "thinking_delta"}[key[2]]
        return {"type": "content_block_delta", "index": key[1], "delta": {"type": dtype, key[2]: text}}
    if fam == "resp":
        ev = dict(template)
        ev["delta"] = text
        return ev
    if fam == "gem":
        part: dict[str, Any] = {"text": text}
        if key[2] == "thought":
            part["thought"] = True
        ev = {k: template[k] for k in ("modelVersion", "responseId") if k in template}
        ev["candidates"] = [{"content": {"parts": [part], "role": "model"}, "index": key[1]}]
        return ev
    raise ValueError(f"no event format for stream family {fam!r}")


def usage(ev: Any) -> dict | None:
    """{"input_tokens", "output_tokens"} if the event (or whole body) reports usage."""
    if not isinstance(ev, dict):
        return None
    t = ev.get("type")
    if t == "message_start" and isinstance(ev.get("message"), dict):
        return usage(ev["message"])
    if t in ("response.completed", "response.incomplete", "response.failed") and isinstance(ev.get("response"), dict):
        return usage(ev["response"])
    u = ev.get("usage")
    if isinstance(u, dict):
        if "prompt_tokens" in u or "completion_tokens" in u:
            return {"input_tokens": u.get("prompt_tokens"), "output_tokens": u.get("completion_tokens")}
        if "input_tokens" in u or "output_tokens" in u:
            return {"input_tokens": u.get("input_tokens"), "output_tokens": u.get("output_tokens")}
        if "inputTokens" in u or "outputTokens" in u:
            return {"input_tokens": u.get("inputTokens"), "output_tokens": u.get("outputTokens")}
    um = ev.get("usageMetadata")
    if isinstance(um, dict):
        out = um.get("candidatesTokenCount")
        if isinstance(um.get("thoughtsTokenCount"), int):
            out = (out or 0) + um["thoughtsTokenCount"]
        return {"input_tokens": um.get("promptTokenCount"), "output_tokens": out}
    return None


def merge_usage(have: dict | None, new: dict | None, ev: Any) -> dict | None:
    """Anthropic's message_delta reports output only (input came with message_start)."""
    if new is None:
        return have
    if have and isinstance(ev, dict) and ev.get("type") == "message_delta":
        return {"input_tokens": new.get("input_tokens") if new.get("input_tokens") is not None
                else have.get("input_tokens"), "output_tokens": new.get("output_tokens")}
    return new


def strings(obj: Any, path: Path = (), depth: int = 0) -> Iterator[tuple[Path, str]]:
    """String leaves worth scanning (not identifiers or enums), with their paths."""
    if depth > 256:
        raise RecursionError("JSON nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str):
                if k not in METADATA_KEYS:
                    yield path + (k,), v
            elif isinstance(v, (dict, list)):
                yield from strings(v, path + (k,), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, str):
                yield path + (i,), v
            elif isinstance(v, (dict, list)):
                yield from strings(v, path + (i,), depth + 1)


class DuplicateKeys(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        # Parsers disagree on which duplicate wins: what was scanned might not be what the client reads.
        raise DuplicateKeys("duplicate object keys")
    return d


def loads(data: bytes) -> Any:
    return json.loads(data, object_pairs_hook=_no_duplicates)


def dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:       # a lone surrogate (split emoji): keep it as a JSON escape
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def family(surface_name: str) -> str:
    head = surface_name.split(".", 1)[0].lower()
    return head if head in ("openai", "azure", "anthropic", "gemini", "bedrock") else "openai"


def error_event(surface_name: str, message: str, *, responses_api: bool = False, sequence_number: int = 0) -> bytes:
    """The SSE event that ends a blocked stream in the provider's own shape; the SDKs raise on it
    (openai: APIError on any data with "error"; anthropic: APIStatusError on `event: error`)."""
    fam = family(surface_name)
    if fam == "anthropic":
        data = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + dumps(data) + b"\n\n"
    if fam == "gemini":
        data = {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
        return b"data: " + dumps(data) + b"\n\n"
    err = {"message": message, "type": "server_error", "param": None, "code": "response_blocked"}
    if responses_api or surface_name == "openai.responses":
        data = {"type": "error", "code": "response_blocked", "message": message, "param": None,
                "sequence_number": sequence_number, "error": err}
        return b"event: error\ndata: " + dumps(data) + b"\n\n"
    return b"data: " + dumps({"error": err}) + b"\n\n"
