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
from typing import Any

Path = tuple
StreamKey = tuple

# Every string of an event or body is scanned (ids, fingerprints, model names and enums included:
# the SDK hands them to the application too), but for these: opaque values the provider generates
# and checks (thinking signatures, encrypted reasoning), which a redaction would break and which
# carry no text.
OPAQUE_KEYS = frozenset({"signature", "encrypted_content", "thoughtSignature", "thought_signature"})

ALL: StreamKey = ()   # a key prefix matching every stream

# Events after which an SDK considers the response complete (besides OpenAI's `data: [DONE]`).
FINAL_TYPES = frozenset({"message_stop", "response.completed", "response.failed", "response.incomplete"})


@dataclass(frozen=True, slots=True)
class Slot:
    key: StreamKey   # the content stream the text belongs to
    path: Path       # where the text sits in the event
    text: str
    json_text: bool = False   # the stream is JSON text (tool arguments): scanned with escapes decoded
    # Decided at once: a value from a fixed public set (a chat role) discloses nothing, so the
    # event carrying it need not wait; a later piece continuing it is held and masked as usual.
    eager: bool = False


# The strings of an OpenAI delta that carry the model's text and are held back like it.
DELTA_TEXT_KEYS = frozenset({"content", "refusal", "reasoning_content", "reasoning", "arguments", "text",
                             "transcript"})   # audio answers: delta.audio.transcript
# The roles an OpenAI delta names: constants, not text (every other string, a tool call's id or
# name included, is held and joined like text: the SDK joins it).
DELTA_ROLES = frozenset({"assistant", "user", "system", "developer", "tool", "function"})


@dataclass(frozen=True, slots=True)
class KeyOf:
    """A path's last step naming an object's key itself (a model-chosen key of tool arguments)."""
    name: str


def get_path(obj: Any, path: Path) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def set_path(obj: Any, path: Path, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    last = path[-1]
    if isinstance(last, KeyOf):           # rename the key, keeping the order of the others
        items = list(obj.items())
        obj.clear()
        for k, v in items:
            obj[value if k == last.name else k] = v
        return
    obj[last] = value


def _idx(value: Any, default: int) -> Any:
    """An index as the SDKs read it: their (pydantic) models coerce "0", 0.0 and True to 0 and 1,
    so "0" in one event and 0 in the next are the same choice or block."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        v = value.strip()
        if v[1:].isdigit() and v[:1] in "+-" and v.isascii() or v.isdigit() and v.isascii():
            return int(v)
        return value
    return default


def _continued(obj: Any, key: StreamKey, path: Path, out: list["Slot"]) -> None:
    """Every string of an OpenAI delta continues the one under the same key in earlier deltas
    (the SDK's accumulate_delta concatenates them; list items with an "index" merge by it; "index"
    and "type" are replaced, not joined)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("index", "type"):
                continue
            if isinstance(v, str):
                out.append(Slot(key + (k,), path + (k,), v, json_text=k == "arguments",
                                eager=k == "role" and v in DELTA_ROLES))
            elif isinstance(v, (dict, list)):
                _continued(v, key + (k,), path + (k,), out)
    elif isinstance(obj, list):
        for j, item in enumerate(obj):
            if isinstance(item, dict):
                _continued(item, key + (("#", _idx(item.get("index"), j)),), path + (j,), out)


def _logprob_tokens(logprobs: Any, key: StreamKey, path: Path, out: list["Slot"]) -> None:
    """Logprob tokens spell the text out again, token by token: one more stream per kind."""
    if not isinstance(logprobs, dict):
        return
    for kind in ("content", "refusal"):
        items = logprobs.get(kind)
        if isinstance(items, list):
            for k, item in enumerate(items):
                if isinstance(item, dict) and isinstance(item.get("token"), str):
                    out.append(Slot(key + ("logprobs", kind), path + ("logprobs", kind, k, "token"), item["token"]))
    tokens = logprobs.get("tokens")                    # legacy completions
    if isinstance(tokens, list):
        for k, tok in enumerate(tokens):
            if isinstance(tok, str):
                out.append(Slot(key + ("logprobs", "tokens"), path + ("logprobs", "tokens", k), tok))


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
                _continued(delta, ("chat", idx), ("choices", i, "delta"), out)
                _logprob_tokens(ch.get("logprobs"), ("chat", idx), ("choices", i), out)
            elif isinstance(ch.get("text"), str):           # legacy completions
                out.append(Slot(("cmpl", idx), ("choices", i, "text"), ch["text"]))
                _logprob_tokens(ch.get("logprobs"), ("cmpl", idx), ("choices", i), out)
            elif isinstance(ch.get("message"), dict):       # a whole chat completion
                _logprob_tokens(ch.get("logprobs"), ("chat", idx), ("choices", i), out)
    t = ev.get("type")
    if t == "content_block_delta" and isinstance(ev.get("delta"), dict):
        d, idx = ev["delta"], _idx(ev.get("index"), 0)
        field = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}.get(d.get("type"))
        if field and isinstance(d.get(field), str):
            out.append(Slot(("anth", idx, field), ("delta", field), d[field], json_text=field == "partial_json"))
    elif t == "content_block_start" and isinstance(ev.get("content_block"), dict):
        # The SDK starts the block's text (or thinking) with what this event carries and appends
        # the deltas to it: the same stream.
        b, idx = ev["content_block"], _idx(ev.get("index"), 0)
        for field in ("text", "thinking"):
            if isinstance(b.get(field), str):
                out.append(Slot(("anth", idx, field), ("content_block", field), b[field]))
    elif isinstance(t, str) and t.startswith("response.") and t.endswith(".delta") and isinstance(ev.get("delta"), str):
        kind = t[len("response."):-len(".delta")]
        part = ev.get("content_index", ev.get("summary_index", 0))
        out.append(Slot(("resp", _idx(ev.get("output_index"), 0), kind, _idx(part, 0)), ("delta",), ev["delta"],
                        json_text=kind == "function_call_arguments"))
    if isinstance(ev.get("outputText"), str):            # Bedrock Titan invoke stream chunk
        out.append(Slot(("titan", _idx(ev.get("index"), 0)), ("outputText",), ev["outputText"]))
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
    if "error" in ev or ev.get("completionReason"):
        ends.append(ALL)
    return ends


def restates(ev: dict) -> bool:
    """Events that repeat text already streamed as deltas (Responses API *.done, response.completed):
    scanned and redacted, but not counted twice in the classification."""
    t = ev.get("type")
    return isinstance(t, str) and t.startswith("response.") and (
        t.endswith(".done") or t in ("response.completed", "response.incomplete", "response.failed"))


# --- Bedrock: ConverseStream events (the event type is in the frame's headers) and the model-native
# chunks of InvokeModelWithResponseStream that are not Anthropic-shaped (Titan's outputText).

def bedrock_slots(event_type: str | None, payload: dict) -> list[Slot]:
    out: list[Slot] = []
    if event_type == "contentBlockDelta" and isinstance(payload.get("delta"), dict):
        d, idx = payload["delta"], _idx(payload.get("contentBlockIndex"), 0)
        if isinstance(d.get("text"), str):
            out.append(Slot(("bedrock", idx, "text"), ("delta", "text"), d["text"]))
        tool = d.get("toolUse")
        if isinstance(tool, dict) and isinstance(tool.get("input"), str):
            out.append(Slot(("bedrock", idx, "tool"), ("delta", "toolUse", "input"), tool["input"], json_text=True))
        reasoning = d.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            out.append(Slot(("bedrock", idx, "reasoning"), ("delta", "reasoningContent", "text"), reasoning["text"]))
    return out


def bedrock_terminated(event_type: str | None, payload: dict) -> list[StreamKey]:
    if event_type == "contentBlockStop":
        return [("bedrock", _idx(payload.get("contentBlockIndex"), 0))]
    if event_type in ("messageStop", "metadata"):
        return [ALL]
    return []


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
    metrics = ev.get("amazon-bedrock-invocationMetrics")   # Bedrock invoke stream, last chunk
    if isinstance(metrics, dict) and ("inputTokenCount" in metrics or "outputTokenCount" in metrics):
        return {"input_tokens": metrics.get("inputTokenCount"), "output_tokens": metrics.get("outputTokenCount")}
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


def strings(obj: Any, path: Path = (), depth: int = 0) -> list[tuple[Path, str]]:
    """Every string of a JSON value the client's SDK will hand over, object keys included (a key
    is listed with a KeyOf last step), with its path, in document order; opaque provider values
    excepted."""
    out: list[tuple[Path, str]] = []
    _strings(obj, path, depth, out)
    return out


def _strings(obj: Any, path: Path, depth: int, out: list) -> None:
    if depth > 256:
        raise RecursionError("JSON nested too deeply")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k:
                out.append((path + (KeyOf(k),), k))
            if isinstance(v, str):
                if k not in OPAQUE_KEYS:
                    out.append((path + (k,), v))
            elif isinstance(v, (dict, list)):
                _strings(v, path + (k,), depth + 1, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, str):
                out.append((path + (i,), v))
            elif isinstance(v, (dict, list)):
                _strings(v, path + (i,), depth + 1, out)


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
