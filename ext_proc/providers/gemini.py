"""Gemini (generativelanguage.googleapis.com): generateContent, streamGenerateContent, countTokens
and embedContent, with the model in the path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ext_proc.providers import translation as tr
from ext_proc.providers.body import (
    Path,
    TextSegment,
    as_dict,
    as_list,
    dump_json,
    expect,
    free_json,
    strings,
)
from ext_proc.providers.events import BY_KEYS, Shape, Slot, StreamKey, index
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, StreamRules, SurfaceRules
from ext_proc.providers.surfaces import Surface, model_segment
from ext_proc.providers.translation import Emitter, Target, TranslatedRequest, Translation, TranslationError

_VERBS = {
    "generateContent": ("gemini.generate_content", "generate", False),
    "streamGenerateContent": ("gemini.stream_generate_content", "generate", True),
    "countTokens": ("gemini.count_tokens", "count_tokens", False),
    "embedContent": ("gemini.embed_content", "embeddings", False),
}
_PREFIXES = ("/v1beta/models/", "/v1/models/", "/v1beta/tunedModels/", "/v1/tunedModels/")


def match(method: str, path: str) -> Surface | None:
    if method != "POST":
        return None
    prefix = next((p for p in _PREFIXES if path.startswith(p)), None)
    if prefix is None:
        return None
    raw_model, sep, verb = path[len(prefix):].rpartition(":")
    if not sep or "/" in raw_model or verb not in _VERBS:
        return None
    model = model_segment(raw_model)
    if model is None:
        return None
    name, api, stream = _VERBS[verb]
    return Surface(name=name, provider=Provider.GEMINI, api=api, model_from_path=model, stream_from_path=stream)


def _gemini_content(c: Any, path: Path) -> Iterator[TextSegment]:
    as_dict(c, path)
    for j, part in enumerate(as_list(c.get("parts"), path + ("parts",))):
        as_dict(part, path + ("parts", j))
        yield from strings(part, path + ("parts", j), free=False)


def _gemini_key(body: dict, camel: str, snake: str) -> str | None:
    # Proto3 JSON accepts both spellings; two of them at once is ambiguous.
    expect(not (camel in body and snake in body), f"both {camel} and {snake} given")
    return camel if camel in body else snake if snake in body else None


def read_generate(body: dict, *, contents_required: bool = True) -> Iterator[TextSegment]:
    # In the order the model reads them: the system instruction comes before the turns.
    key = _gemini_key(body, "systemInstruction", "system_instruction")
    if key is not None and body[key] is not None:
        yield from _gemini_content(body[key], (key,))
    if contents_required or body.get("contents") is not None:
        for i, c in enumerate(as_list(body.get("contents"), ("contents",), optional=False)):
            yield from _gemini_content(c, ("contents", i))
    as_list(body.get("tools"), ("tools",))
    yield from free_json(body, "tools")
    gkey = _gemini_key(body, "generationConfig", "generation_config")
    if gkey is not None and body[gkey] is not None:
        gc = as_dict(body[gkey], (gkey,))
        for skey in ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema"):
            if gc.get(skey) is not None:
                yield from strings(gc[skey], (gkey, skey), free=True)
    nested = _gemini_key(body, "generateContentRequest", "generate_content_request")
    if nested is not None and body[nested] is not None:  # countTokens wraps a whole request
        inner = as_dict(body[nested], (nested,))
        for seg in read_generate(inner):
            yield TextSegment((nested,) + seg.path, seg.text)


def read_embed(body: dict) -> Iterator[TextSegment]:
    return _gemini_content(body.get("content"), ("content",))


# --- streamed events (SSE with ?alt=sse, or a streamed JSON array) ------------------------------

def stream_slots(ev: dict) -> list[Slot]:
    out: list[Slot] = []
    cands = ev.get("candidates")
    if not isinstance(cands, list):
        return out
    for i, c in enumerate(cands):
        content = c.get("content") if isinstance(c, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            continue
        idx = index(c.get("index"), i)
        for j, p in enumerate(parts):
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                kind = "thought" if p.get("thought") else "text"
                out.append(Slot(("gem", idx, kind), ("candidates", i, "content", "parts", j, "text"), p["text"]))
    return out


def stream_terminated(ev: dict) -> list[StreamKey]:
    return [("gem", index(c.get("index"), i)) for i, c in enumerate(ev.get("candidates") or ())
            if isinstance(c, dict) and c.get("finishReason")]


def stream_usage(ev: dict) -> dict | None:
    um = ev.get("usageMetadata")
    if not isinstance(um, dict):
        return None
    out = um.get("candidatesTokenCount")
    if isinstance(um.get("thoughtsTokenCount"), int):
        out = (out or 0) + um["thoughtsTokenCount"]
    return {"input_tokens": um.get("promptTokenCount"), "output_tokens": out}


def recognises(ev: dict) -> bool:
    return "candidates" in ev or "usageMetadata" in ev


STREAM = StreamRules(slots=stream_slots, terminated=stream_terminated, usage=stream_usage,
                     shapes=(Shape("gemini", lambda ev: "candidates" in ev or "usageMetadata" in ev, BY_KEYS),))


# --- errors ------------------------------------------------------------------------------------

# google.rpc.Code names as Gemini returns them in error.status
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
           500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_body(status: int, code: str, message: str) -> tuple[dict[str, str], dict]:
    return {}, {"error": {"code": status, "message": message,
                          "status": _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")}}


def stream_error(surface_name: str, message: str, responses_api: bool, sequence_number: int) -> bytes:
    data = {"error": {"code": 500, "message": message, "status": "INTERNAL"}}
    return b"data: " + dump_json(data) + b"\n\n"



# --- multiplexing: an OpenAI chat request served by generateContent ----------------------------

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
           "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}


def _image(url: str, where: str) -> dict:
    media, data = tr.data_url(url, where)
    return {"inlineData": {"mimeType": media, "data": data}}


def from_openai(body: dict, target: Target) -> TranslatedRequest:
    def tool_result(_cid: str, name: str | None, text: str, where: str) -> dict:
        if name is None:
            raise TranslationError(f"{where}: tool_call_id does not match an earlier tool call")
        return {"functionResponse": {"name": name, "response": {"content": text}}}

    system, turns = tr.conversation(
        body, assistant_role="model", text_block=lambda text: {"text": text},
        user_parts=lambda c, w: tr.user_parts(c, w, text=lambda t: {"text": t}, image=_image),
        tool_call_block=lambda _cid, name, args: {"functionCall": {"name": name, "args": args}},
        tool_result_block=tool_result)
    contents = [{"role": t["role"], "parts": t["blocks"]} for t in turns]
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    gen = tr.sampling(body, max_tokens_key="maxOutputTokens")
    if gen:
        out["generationConfig"] = gen
    fns = tr.functions(body)
    if fns:
        out["tools"] = [{"functionDeclarations": [
            {k: v for k, v in (("name", f["name"]), ("description", f.get("description")),
                               ("parameters", f.get("parameters"))) if v is not None} for f in fns]}]
    stream = body.get("stream") is True
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    path = f"/v1beta/models/{quote(target.model, safe='')}:{method}"
    return TranslatedRequest("POST", path, {"content-type": "application/json"}, tr.dumps(out), stream)


def _usage(um: Any) -> dict | None:
    if not isinstance(um, dict):
        return None
    out = (um.get("candidatesTokenCount") or 0) + (um.get("thoughtsTokenCount") or 0)
    return {"input_tokens": um.get("promptTokenCount") or 0, "output_tokens": out}


def whole_to_openai(obj: dict) -> tr.WholeAnswer:
    text, calls = [], []
    cand = (obj.get("candidates") or [{}])[0]
    for i, part in enumerate((cand.get("content") or {}).get("parts") or []):
        if isinstance(part.get("text"), str) and not part.get("thought"):
            text.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            fc = part["functionCall"]
            calls.append(tr.tool_call(f"call_{i}", fc.get("name"), fc.get("args")))
    finish = "tool_calls" if calls else _FINISH.get(cand.get("finishReason"), "stop")
    return "".join(text), calls, finish, _usage(obj.get("usageMetadata"))


def event_to_openai(out: Emitter, obj: dict) -> bytes:
    if isinstance(obj.get("error"), dict):
        return out.stream_error(obj["error"].get("message") or "the upstream stream failed")
    chunks = []
    if not out.role_sent:
        out.role_sent = True
        chunks.append(out.chunk({"role": "assistant", "content": ""}))
    cand = (obj.get("candidates") or [{}])[0]
    for part in (cand.get("content") or {}).get("parts") or []:
        if isinstance(part.get("text"), str) and not part.get("thought"):
            chunks.append(out.chunk({"content": part["text"]}))
        elif isinstance(part.get("functionCall"), dict):
            fc = part["functionCall"]
            n = out.tools[len(out.tools)] = len(out.tools)   # Gemini sends each call whole
            chunks.append(out.chunk({"tool_calls": [{"index": n, "id": f"call_{n}", "type": "function", "function": {
                "name": fc.get("name"), "arguments": json.dumps(fc.get("args") or {})}}]}))
            out.finish = "tool_calls"
    if cand.get("finishReason") and out.finish is None:
        out.finish = _FINISH.get(cand["finishReason"], "stop")
    if obj.get("usageMetadata"):
        out.usage = _usage(obj["usageMetadata"])
    return b"".join(chunks)


TRANSLATION = Translation(from_openai, whole_to_openai, event_to_openai)


SPEC = ProviderSpec(
    name=Provider.GEMINI,
    match=match,
    surfaces={"gemini.generate_content": SurfaceRules(read_generate),
              "gemini.stream_generate_content": SurfaceRules(read_generate),
              "gemini.count_tokens": SurfaceRules(lambda b: read_generate(b, contents_required=False)),
              "gemini.embed_content": SurfaceRules(read_embed)},
    error_body=error_body,
    stream_error=stream_error,
    stream=STREAM,
    ceiling_fields=(("generationConfig", "maxOutputTokens"), ("generation_config", "max_output_tokens")),
    # google-genai: x-goog-api-client (SDK version), x-goog-user-project (billing project).
    headers=frozenset({"x-goog-api-client", "x-goog-user-project"}),
    query=frozenset({"alt", "pageSize", "pageToken"}),
    credential_query=frozenset({"key"}),
    genai_name="gcp.gemini",
    cluster="gemini",
    upstream_host="generativelanguage.googleapis.com",
    translation=TRANSLATION,
)
