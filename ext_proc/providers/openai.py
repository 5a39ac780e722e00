"""OpenAI: chat completions, responses, embeddings, completions, moderations, models, and the
opaque upload surfaces (files, batches, audio). Its chat and embeddings shapes are also the
OpenAI-compatible ones (Azure, Mistral) and the one multiplexing translates to and from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ext_proc.providers.body import (
    Path,
    TextSegment,
    as_dict,
    as_list,
    content_segments,
    dump_json,
    expect,
    free_json,
    messages_of,
    opt_str,
    strings,
    where_of,
)
from ext_proc.providers.events import ALL, BY_TYPE, COMMON, NotReplayable, Shape, Slot, StreamKey, index, replay_pieces
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, StreamRules, SurfaceRules
from ext_proc.providers.surfaces import Surface, model_segment, under
from ext_proc.wire.sse import event_bytes

# --- routes -----------------------------------------------------------------------------------

_EXACT = {
    "/v1/chat/completions": ("openai.chat_completions", "chat"),
    "/v1/responses": ("openai.responses", "responses"),
    "/v1/embeddings": ("openai.embeddings", "embeddings"),
    "/v1/completions": ("openai.completions", "completions"),
    "/v1/moderations": ("openai.moderations", "moderations"),
}
# Uploads and binary media: no JSON text to inspect; policy governs them by route.
_OPAQUE_PREFIXES = (
    ("/v1/files", "openai.files", "files"),
    ("/v1/uploads", "openai.files", "files"),
    ("/v1/batches", "openai.batches", "batch"),
    ("/v1/audio/", "openai.audio", "audio"),
)


def match(method: str, path: str) -> Surface | None:
    hit = _EXACT.get(path) if method == "POST" else None
    if hit is not None:
        return Surface(name=hit[0], provider=Provider.OPENAI, api=hit[1])
    if method == "GET" and path == "/v1/models":
        return Surface(name="openai.models", provider=Provider.OPENAI, api="models", inspectable=False)
    if method == "GET" and path.startswith("/v1/models/") and ":" not in path and path.count("/") == 3:
        return Surface(name="openai.models", provider=Provider.OPENAI, api="models", inspectable=False,
                       model_from_path=model_segment(path[len("/v1/models/"):]))
    for prefix, name, api in _OPAQUE_PREFIXES:
        if under(path, prefix):
            return Surface(name=name, provider=Provider.OPENAI, api=api, inspectable=False)
    return None


# --- request bodies: the reading view ----------------------------------------------------------

def read_chat(body: dict) -> Iterator[TextSegment]:
    for i, m in enumerate(messages_of(body)):
        p: Path = ("messages", i)
        for key in ("name", "refusal"):
            if m.get(key) is not None:
                expect(isinstance(m[key], str), f"{where_of(p + (key,))} must be a string")
                yield TextSegment(p + (key,), m[key])
        yield from content_segments(m.get("content"), p + ("content",))
        for j, tc in enumerate(as_list(m.get("tool_calls"), p + ("tool_calls",))):
            tcp = p + ("tool_calls", j)
            as_dict(tc, tcp)
            for kind in ("function", "custom"):
                if tc.get(kind) is not None:
                    yield from strings(as_dict(tc[kind], tcp + (kind,)), tcp + (kind,), free=True)
        if m.get("function_call") is not None:
            yield from strings(as_dict(m["function_call"], p + ("function_call",)), p + ("function_call",), free=True)
        if m.get("audio") is not None:
            as_dict(m["audio"], p + ("audio",))
    for key in ("tools", "functions"):
        as_list(body.get(key), (key,))
        yield from free_json(body, key)
    yield from opt_str(body, "user")
    for key in ("metadata", "response_format", "prediction", "web_search_options"):
        if body.get(key) is not None:
            as_dict(body[key], (key,))
            yield from free_json(body, key)


def _responses_item(item: Any, path: Path) -> Iterator[TextSegment]:
    if isinstance(item, str):  # shorthand some SDKs accept
        yield TextSegment(path, item)
        return
    as_dict(item, path)
    if "content" in item:
        yield from content_segments(item["content"], path + ("content",))
    for key in ("arguments", "input"):
        v = item.get(key)
        if isinstance(v, str):
            yield TextSegment(path + (key,), v)
        elif v is not None:
            yield from strings(v, path + (key,), free=True)
    out = item.get("output")
    if isinstance(out, str):
        yield TextSegment(path + ("output",), out)
    elif out is not None:
        yield from strings(out, path + ("output",), free=False)
    if item.get("summary") is not None:
        yield from strings(as_list(item["summary"], path + ("summary",)), path + ("summary",), free=False)


def read_responses(body: dict) -> Iterator[TextSegment]:
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield TextSegment(("instructions",), instructions)
    elif instructions is not None:
        for i, item in enumerate(as_list(instructions, ("instructions",))):
            yield from _responses_item(item, ("instructions", i))
    inp = body.get("input")
    if isinstance(inp, str):
        yield TextSegment(("input",), inp)
    elif inp is not None:
        for i, item in enumerate(as_list(inp, ("input",))):
            yield from _responses_item(item, ("input", i))
    as_list(body.get("tools"), ("tools",))
    yield from free_json(body, "tools")
    yield from opt_str(body, "user")
    for key in ("metadata", "text", "prompt", "reasoning"):
        if body.get(key) is not None:
            as_dict(body[key], (key,))
            yield from free_json(body, key)


def _prompt_like(body: dict, key: str, *, required: bool) -> Iterator[TextSegment]:
    """embeddings input / completions prompt / moderations input: a string, an array of strings,
    token arrays, or (moderations) multimodal part objects."""
    v = body.get(key)
    if v is None:
        expect(not required, f"{key} is required")
        return
    if isinstance(v, str):
        yield TextSegment((key,), v)
        return
    expect(isinstance(v, list), f"{key} must be a string or an array")
    for i, item in enumerate(v):
        if isinstance(item, str):
            yield TextSegment((key, i), item)
        elif isinstance(item, dict):
            yield from strings(item, (key, i), free=False)
        elif isinstance(item, list):
            expect(all(isinstance(t, int) and not isinstance(t, bool) for t in item),
                    f"{key}[{i}] must be a string or an array of token ids")
        else:
            expect(isinstance(item, int) and not isinstance(item, bool),
                    f"{key}[{i}] must be a string or a token id")


def read_embeddings(body: dict) -> Iterator[TextSegment]:
    yield from _prompt_like(body, "input", required=True)
    yield from opt_str(body, "user")


def read_completions(body: dict) -> Iterator[TextSegment]:
    yield from _prompt_like(body, "prompt", required=False)
    yield from opt_str(body, "suffix")
    yield from opt_str(body, "user")


def read_moderations(body: dict) -> Iterator[TextSegment]:
    yield from _prompt_like(body, "input", required=True)



# --- streamed events ---------------------------------------------------------------------------

# The strings of a chat delta that carry the model's text and are held back like it.
DELTA_TEXT_KEYS = frozenset({"content", "refusal", "reasoning_content", "reasoning", "arguments", "text",
                             "transcript"})   # audio answers: delta.audio.transcript
_RESPONSE_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete"})
# The roles an OpenAI delta names: constants, not text (every other string, a tool call's id or
# name included, is held and joined like text: the SDK joins it).
DELTA_ROLES = frozenset({"assistant", "user", "system", "developer", "tool", "function"})


def _continued(obj: Any, key: StreamKey, path: Path, out: list[Slot]) -> None:
    """Every string of a chat delta continues the one under the same key in earlier deltas
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
                _continued(item, key + (("#", index(item.get("index"), j)),), path + (j,), out)


def _logprob_tokens(logprobs: Any, key: StreamKey, path: Path, out: list[Slot]) -> None:
    """Logprob tokens spell the text out again, token by token: one more stream per kind."""
    if not isinstance(logprobs, dict):
        return
    for kind in ("content", "refusal"):
        entries = logprobs.get(kind)
        if isinstance(entries, list):
            for k, item in enumerate(entries):
                if isinstance(item, dict) and isinstance(item.get("token"), str):
                    out.append(Slot(key + ("logprobs", kind), path + ("logprobs", kind, k, "token"), item["token"]))
    tokens = logprobs.get("tokens")                    # legacy completions
    if isinstance(tokens, list):
        for k, tok in enumerate(tokens):
            if isinstance(tok, str):
                out.append(Slot(key + ("logprobs", "tokens"), path + ("logprobs", "tokens", k), tok))


def _choice_slots(ev: dict, out: list[Slot]) -> None:
    choices = ev.get("choices")
    if not isinstance(choices, list):
        return
    for i, ch in enumerate(choices):
        if not isinstance(ch, dict):
            continue
        idx = index(ch.get("index"), i)
        delta = ch.get("delta")
        if isinstance(delta, dict):
            _continued(delta, ("chat", idx), ("choices", i, "delta"), out)
            _logprob_tokens(ch.get("logprobs"), ("chat", idx), ("choices", i), out)
        elif isinstance(ch.get("text"), str):           # legacy completions
            out.append(Slot(("cmpl", idx), ("choices", i, "text"), ch["text"]))
            _logprob_tokens(ch.get("logprobs"), ("cmpl", idx), ("choices", i), out)
        elif isinstance(ch.get("message"), dict):       # a whole chat completion
            _logprob_tokens(ch.get("logprobs"), ("chat", idx), ("choices", i), out)


def stream_slots(ev: dict) -> list[Slot]:
    out: list[Slot] = []
    _choice_slots(ev, out)
    t = ev.get("type")
    if isinstance(t, str) and t.startswith("response.") and t.endswith(".delta") and isinstance(ev.get("delta"), str):
        kind = t[len("response."):-len(".delta")]
        part = ev.get("content_index", ev.get("summary_index", 0))
        out.append(Slot(("resp", index(ev.get("output_index"), 0), kind, index(part, 0)), ("delta",), ev["delta"],
                        json_text=kind == "function_call_arguments"))
    return out


def stream_terminated(ev: dict) -> list[StreamKey]:
    ends: list[StreamKey] = []
    for i, ch in enumerate(ev.get("choices") or ()):
        if isinstance(ch, dict) and ch.get("finish_reason") is not None:
            idx = index(ch.get("index"), i)
            ends += [("chat", idx), ("cmpl", idx)]
    t = ev.get("type")
    if t in _RESPONSE_ENDS:
        ends.append(ALL)
    elif isinstance(t, str) and t.startswith("response.") and t.endswith(".done"):
        oi = index(ev.get("output_index"), 0)
        if t in ("response.output_item.done", "response.content_part.done"):
            ends.append(("resp", oi))
        else:
            kind = t[len("response."):-len(".done")]
            part = ev.get("content_index", ev.get("summary_index", 0))
            ends.append(("resp", oi, kind, index(part, 0)))
    return ends


def _usage_holder(ev: dict) -> Any:
    return ev["response"] if ev.get("type") in _RESPONSE_ENDS and isinstance(ev.get("response"), dict) else None


def _restates(ev: dict) -> bool:
    """Responses API *.done and response.completed repeat text already streamed as deltas."""
    t = ev.get("type")
    return isinstance(t, str) and t.startswith("response.") and (t.endswith(".done") or t in _RESPONSE_ENDS)


def _responses_event(ev: dict) -> bool:
    t = ev.get("type")
    return isinstance(t, str) and t.startswith("response.")


STREAM = StreamRules(slots=stream_slots, terminated=stream_terminated, final_types=_RESPONSE_ENDS,
                     usage_holder=_usage_holder, restates=_restates,
                     shapes=(Shape("openai.responses", _responses_event, BY_TYPE),
                             # Streamed by every OpenAI-compatible API (Mistral's too): asked last.
                             Shape("openai", lambda ev: "choices" in ev, COMMON)))


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def replay_chat(answer: dict, include_usage: bool) -> bytes:
    """A cached chat completion as its stream: role, text deltas, finish, usage when asked, [DONE]."""
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
    out = [event_bytes(_json({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]}))]
    for piece in replay_pieces(text):
        out.append(event_bytes(_json({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                           "logprobs": None, "finish_reason": None}]})))
    out.append(event_bytes(_json({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                       "finish_reason": choice.get("finish_reason") or "stop"}]})))
    if include_usage and isinstance(answer.get("usage"), dict):
        out.append(event_bytes(_json({**base, "choices": [], "usage": answer["usage"]})))
    out.append(event_bytes("[DONE]"))
    return b"".join(out)


# --- errors ------------------------------------------------------------------------------------

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
          422: "invalid_request_error", 500: "server_error", 502: "server_error",
          503: "service_unavailable", 504: "timeout"}


def _error_type(status: int, code: str) -> str:
    if status == 429:
        # OpenAI names the exhausted budget in `type`: "requests" or "tokens".
        return "tokens" if "token" in code.lower() else "requests"
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, code: str, message: str) -> tuple[dict[str, str], dict]:
    return {}, {"error": {"message": message, "type": _error_type(status, code), "param": None, "code": code}}


def stream_error(surface_name: str, message: str, responses_api: bool, sequence_number: int) -> bytes:
    """openai-python raises APIError on any event whose data has "error"; the Responses API's
    stream has its own error event."""
    err = {"message": message, "type": "server_error", "param": None, "code": "response_blocked"}
    if responses_api or surface_name == "openai.responses":
        data = {"type": "error", "code": "response_blocked", "message": message, "param": None,
                "sequence_number": sequence_number, "error": err}
        return b"event: error\ndata: " + dump_json(data) + b"\n\n"
    return b"data: " + dump_json({"error": err}) + b"\n\n"


# --- the provider ------------------------------------------------------------------------------

CHAT = SurfaceRules(read_chat, cap_field=("max_completion_tokens",),
                    usage_option=("stream_options", "include_usage"), replay=replay_chat)
RESPONSES = SurfaceRules(read_responses, cap_field=("max_output_tokens",))
EMBEDDINGS = SurfaceRules(read_embeddings)
COMPLETIONS = SurfaceRules(read_completions, cap_field=("max_tokens",))

SPEC = ProviderSpec(
    name=Provider.OPENAI,
    match=match,
    surfaces={"openai.chat_completions": CHAT, "openai.responses": RESPONSES,
              "openai.embeddings": EMBEDDINGS, "openai.completions": COMPLETIONS,
              "openai.moderations": SurfaceRules(read_moderations)},
    error_body=error_body,
    stream_error=stream_error,
    stream=STREAM,
    token_fields=(("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")),
    ceiling_fields=(("max_completion_tokens",), ("max_tokens",), ("max_output_tokens",)),
    # openai-python: OpenAI-Organization, OpenAI-Project, OpenAI-Beta (assistants, realtime).
    headers=frozenset({"openai-organization", "openai-project", "openai-beta"}),
    query=frozenset({"limit", "after", "before", "order", "purpose", "include[]", "include", "stream",
                     "starting_after"}),
    genai_name="openai",
    cluster="openai",
    upstream_host="api.openai.com",
)
