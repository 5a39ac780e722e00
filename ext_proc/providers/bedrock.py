"""Amazon Bedrock runtime: Converse and ConverseStream (Bedrock's own shape), InvokeModel and its
response stream (the model family's native body: Anthropic messages, Titan, Llama, Cohere...),
with the model in the path. Streams are AWS event streams (ext_proc/wire/eventstream.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from ext_proc.providers import anthropic, openai
from ext_proc.providers import translation as tr
from ext_proc.providers.body import (
    TextSegment,
    as_dict,
    as_list,
    expect,
    free_json,
    messages_of,
    opt_str,
    strings,
)
from ext_proc.providers.events import ALL, Slot, StreamKey, index
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, StreamRules, SurfaceRules
from ext_proc.providers.surfaces import Surface, model_segment
from ext_proc.providers.translation import Emitter, Target, TranslatedRequest, Translation, TranslationError
from ext_proc.wire.eventstream import Message

_VERBS = {
    "converse": ("bedrock.converse", "converse", False),
    "converse-stream": ("bedrock.converse_stream", "converse", True),
    "invoke": ("bedrock.invoke", "invoke", False),
    "invoke-with-response-stream": ("bedrock.invoke_stream", "invoke", True),
}


def match(method: str, path: str) -> Surface | None:
    if method != "POST" or not path.startswith("/model/"):
        return None
    raw_model, _, verb = path[len("/model/"):].rpartition("/")
    if verb not in _VERBS:
        return None
    model = model_segment(raw_model)
    if model is None:
        return None
    name, api, stream = _VERBS[verb]
    return Surface(name=name, provider=Provider.BEDROCK, api=api, model_from_path=model, stream_from_path=stream)


def read_converse(body: dict[str, Any]) -> Iterator[TextSegment]:
    # In the order the model reads them: the system blocks come before the turns.
    for j, s in enumerate(as_list(body.get("system"), ("system",))):
        as_dict(s, ("system", j))
        yield from strings(s, ("system", j), free=False)
    for i, m in enumerate(messages_of(body)):
        content = as_list(m.get("content"), ("messages", i, "content"), optional=False)
        for j, block in enumerate(content):
            as_dict(block, ("messages", i, "content", j))
            yield from strings(block, ("messages", i, "content", j), free=False)
    if body.get("toolConfig") is not None:
        as_dict(body["toolConfig"], ("toolConfig",))
        yield from free_json(body, "toolConfig")
    for key in ("promptVariables", "requestMetadata"):
        yield from free_json(body, key)


def read_invoke(body: dict[str, Any]) -> Iterator[TextSegment]:
    # One body may carry several of these shapes (the model family decides which it reads, and
    # ledgergate cannot know the family for sure): every one present is read.
    shapes = [k for k in ("messages", "inputText", "prompt", "texts", "message") if k in body]
    expect(bool(shapes), "unrecognised Bedrock invoke body (expected messages, inputText, prompt, texts or message)")
    if "messages" in body:  # Anthropic-on-Bedrock, Nova, Mistral chat: message arrays
        yield from anthropic.read_messages(body)
    for key in ("inputText", "prompt"):  # Titan text and embeddings; Llama, Mistral, Claude v2 completions
        if key in body:
            expect(isinstance(body[key], str), f"{key} must be a string")
            yield TextSegment((key,), body[key])
    if "texts" in body:  # Cohere embed
        for i, t in enumerate(as_list(body["texts"], ("texts",), optional=False)):
            expect(isinstance(t, str), f"texts[{i}] must be a string")
            yield TextSegment(("texts", i), t)
    if "message" in body:  # Cohere command R
        expect(isinstance(body["message"], str), "message must be a string")
        yield TextSegment(("message",), body["message"])
        yield from free_json(body, "chat_history")
        yield from free_json(body, "documents")
        yield from opt_str(body, "preamble")


# --- streamed events: ConverseStream (the event type is in the frame's headers) and the model-native
# chunks of InvokeModelWithResponseStream that are not Anthropic-shaped (Titan's outputText).

def stream_slots(ev: dict[str, Any]) -> list[Slot]:
    if isinstance(ev.get("outputText"), str):            # Titan invoke stream chunk
        return [Slot(("titan", index(ev.get("index"), 0)), ("outputText",), ev["outputText"])]
    return []


def stream_terminated(ev: dict[str, Any]) -> list[StreamKey]:
    return [ALL] if ev.get("completionReason") else []


def stream_usage(ev: dict[str, Any]) -> dict[str, Any] | None:
    metrics = ev.get("amazon-bedrock-invocationMetrics")   # invoke stream, last chunk
    if isinstance(metrics, dict) and ("inputTokenCount" in metrics or "outputTokenCount" in metrics):
        return {"input_tokens": metrics.get("inputTokenCount"), "output_tokens": metrics.get("outputTokenCount")}
    return None


def frame_slots(event_type: str | None, payload: dict[str, Any]) -> list[Slot]:
    out: list[Slot] = []
    if event_type == "contentBlockDelta" and isinstance(payload.get("delta"), dict):
        d, idx = payload["delta"], index(payload.get("contentBlockIndex"), 0)
        if isinstance(d.get("text"), str):
            out.append(Slot(("bedrock", idx, "text"), ("delta", "text"), d["text"]))
        tool = d.get("toolUse")
        if isinstance(tool, dict) and isinstance(tool.get("input"), str):
            out.append(Slot(("bedrock", idx, "tool"), ("delta", "toolUse", "input"), tool["input"], json_text=True))
        reasoning = d.get("reasoningContent")
        if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
            out.append(Slot(("bedrock", idx, "reasoning"), ("delta", "reasoningContent", "text"), reasoning["text"]))
    return out


def frame_terminated(event_type: str | None, payload: dict[str, Any]) -> list[StreamKey]:
    if event_type == "contentBlockStop":
        return [("bedrock", index(payload.get("contentBlockIndex"), 0))]
    if event_type in ("messageStop", "metadata"):
        return [ALL]
    return []


STREAM = StreamRules(slots=stream_slots, terminated=stream_terminated, usage=stream_usage,
                     frame_slots=frame_slots, frame_terminated=frame_terminated)


# --- errors ------------------------------------------------------------------------------------

_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
          404: "ResourceNotFoundException", 408: "ModelTimeoutException", 409: "ConflictException",
          413: "ValidationException", 424: "ModelErrorException", 429: "ThrottlingException",
          500: "InternalServerException", 503: "ServiceUnavailableException",
          504: "ModelTimeoutException"}


def error_body(status: int, code: str, message: str) -> tuple[dict[str, str], dict[str, Any]]:
    """botocore reads the error's type from x-amzn-errortype and raises it as that exception."""
    kind = _TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException")
    return {"x-amzn-errortype": kind}, {"message": message}



# --- multiplexing: an OpenAI chat request served by Converse ----------------------------------

# Looked up with the answer's stop reason, which may be absent (None: "stop", as any unknown one).
_FINISH: dict[str | None, str] = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
           "content_filtered": "content_filter", "guardrail_intervened": "content_filter"}


def _image(url: str, where: str) -> dict[str, Any]:
    media, data = tr.data_url(url, where)
    fmt = media.split("/", 1)[-1]
    if fmt not in ("png", "jpeg", "gif", "webp"):
        raise TranslationError(f"{where}: image type {media!r} cannot be translated")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _tool_config(body: dict[str, Any], fns: list[dict[str, Any]]) -> dict[str, Any]:
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
    return tool_config


def from_openai(body: dict[str, Any], target: Target) -> TranslatedRequest:
    system_texts, turns = tr.conversation(
        body, assistant_role="assistant", text_block=lambda text: {"text": text},
        user_parts=lambda c, w: tr.user_parts(c, w, text=lambda t: {"text": t}, image=_image),
        tool_call_block=lambda cid, name, args: {"toolUse": {"toolUseId": cid, "name": name, "input": args}},
        tool_result_block=lambda cid, _name, text, _w: {"toolResult": {"toolUseId": cid, "content": [{"text": text}]}})
    system = [{"text": t} for t in system_texts]
    messages = [{"role": t["role"], "content": t["blocks"]} for t in turns]
    if not messages or messages[0]["role"] != "user":
        raise TranslationError("the conversation must start with a user message for this model")
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference = tr.sampling(body, max_tokens_key="maxTokens")
    if inference:
        out["inferenceConfig"] = inference
    fns = tr.functions(body)
    if fns:
        out["toolConfig"] = _tool_config(body, fns)
    stream = body.get("stream") is True
    path = f"/model/{quote(target.model, safe='')}/{'converse-stream' if stream else 'converse'}"
    return TranslatedRequest("POST", path, {"content-type": "application/json"}, tr.dumps(out), stream)


def whole_to_openai(obj: dict[str, Any]) -> tr.WholeAnswer:
    text, calls = [], []
    for block in ((obj.get("output") or {}).get("message") or {}).get("content") or []:
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            tu = block["toolUse"]
            calls.append(tr.tool_call(tu.get("toolUseId"), tu.get("name"), tu.get("input")))
    u = obj.get("usage") or {}
    usage = {"input_tokens": u.get("inputTokens") or 0, "output_tokens": u.get("outputTokens") or 0}
    return "".join(text), calls, _FINISH.get(obj.get("stopReason"), "stop"), usage


def event_to_openai(out: Emitter, msg: Message) -> bytes:
    try:
        obj = json.loads(msg.payload)
    except ValueError:
        raise TranslationError("an upstream event-stream payload is not JSON") from None
    if msg.message_type != "event":
        return out.stream_error((obj.get("message") if isinstance(obj, dict) else None)
                                or "the upstream stream failed")
    if not isinstance(obj, dict):
        return b""
    t = msg.event_type
    if t == "messageStart":
        return out.chunk({"role": "assistant", "content": ""})
    if t == "contentBlockStart":
        tu = (obj.get("start") or {}).get("toolUse")
        if isinstance(tu, dict):
            n = out.tools.setdefault(obj.get("contentBlockIndex", 0), len(out.tools))
            return out.chunk({"tool_calls": [{"index": n, "id": tu.get("toolUseId"), "type": "function",
                                              "function": {"name": tu.get("name"), "arguments": ""}}]})
        return b""
    if t == "contentBlockDelta":
        d = obj.get("delta") or {}
        if isinstance(d.get("text"), str):
            return out.chunk({"content": d["text"]})
        tu = d.get("toolUse")
        if isinstance(tu, dict) and obj.get("contentBlockIndex", 0) in out.tools:
            return out.chunk({"tool_calls": [{"index": out.tools[obj.get("contentBlockIndex", 0)],
                                              "function": {"arguments": tu.get("input") or ""}}]})
        return b""
    if t == "messageStop":
        out.finish = _FINISH.get(obj.get("stopReason"), "stop")
        return b""
    if t == "metadata":
        u = obj.get("usage") or {}
        out.usage = {"input_tokens": u.get("inputTokens") or 0, "output_tokens": u.get("outputTokens") or 0}
        return out.close()
    return b""


TRANSLATION = Translation(from_openai, whole_to_openai, event_to_openai,
                          stream_content_type="application/vnd.amazon.eventstream")


SPEC = ProviderSpec(
    name=Provider.BEDROCK,
    match=match,
    surfaces={"bedrock.converse": SurfaceRules(read_converse),
              "bedrock.converse_stream": SurfaceRules(read_converse),
              "bedrock.invoke": SurfaceRules(read_invoke),
              "bedrock.invoke_stream": SurfaceRules(read_invoke)},
    error_body=error_body,
    stream_error=openai.stream_error,   # an SSE error from a Bedrock route: the OpenAI-compatible shape
    stream=STREAM,
    token_fields=(("inputTokens", "outputTokens"),),
    ceiling_fields=(("max_gen_len",), ("max_new_tokens",), ("inferenceConfig", "maxTokens"),
                    ("inferenceConfig", "max_new_tokens"), ("textGenerationConfig", "maxTokenCount")),
    # botocore bedrock-runtime: SigV4 headers and the InvokeModel/Converse header parameters.
    headers=frozenset({"x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "amz-sdk-invocation-id",
                       "amz-sdk-request", "x-amzn-bedrock-accept", "x-amzn-bedrock-trace",
                       "x-amzn-bedrock-guardrailidentifier", "x-amzn-bedrock-guardrailversion",
                       "x-amzn-bedrock-performanceconfig-latency", "x-amzn-bedrock-service-tier"}),
    genai_name="aws.bedrock",
    cluster="bedrock",
    upstream_host="bedrock-runtime.us-east-1.amazonaws.com",
    translation=TRANSLATION,
)
