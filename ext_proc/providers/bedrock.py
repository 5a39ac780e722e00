"""Amazon Bedrock runtime: Converse and ConverseStream (Bedrock's own shape), InvokeModel and its
response stream (the model family's native body: Anthropic messages, Titan, Llama, Cohere...),
with the model in the path. Streams are AWS event streams (ext_proc/wire/eventstream.py)."""

from __future__ import annotations

from typing import Iterator

from ext_proc.providers import anthropic, openai
from ext_proc.providers.body import (
    TextSegment,
    as_dict,
    as_list,
    expect,
    free_json,
    items,
    messages_of,
    obj_or_none,
    opt_str,
    strings,
    text_at,
    usage_of,
)
from ext_proc.providers.events import ALL, Slot, StreamKey, index
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, StreamRules, SurfaceRules
from ext_proc.providers.surfaces import Surface, model_segment

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


def read_converse(body: dict) -> Iterator[TextSegment]:
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


def read_invoke(body: dict) -> Iterator[TextSegment]:
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


def answer_converse(obj: dict) -> tuple[list[TextSegment], dict | None]:
    segs: list[TextSegment] = []
    msg = obj_or_none((obj_or_none(obj.get("output"), "output") or {}).get("message"), "output.message")
    if msg is not None:
        for j, block in enumerate(items(msg.get("content"), "output.message.content")):
            block = obj_or_none(block, "content[]") or {}
            text_at(segs, block, "text", ("output", "message", "content", j))
            tu = obj_or_none(block.get("toolUse"), "toolUse")
            if tu is not None and tu.get("input") is not None:
                segs.extend(strings(tu["input"], ("output", "message", "content", j, "toolUse", "input"),
                                    free=True))
    return segs, usage_of(obj.get("usage"), "inputTokens", "outputTokens")


def answer_invoke(obj: dict) -> tuple[list[TextSegment], dict | None]:
    """Titan's results, else the messages shape (Anthropic-on-Bedrock and the like)."""
    if "results" not in obj:
        return anthropic.answer_messages(obj)
    segs: list[TextSegment] = []
    out = 0
    for i, r in enumerate(items(obj.get("results"), "results")):
        r = obj_or_none(r, "results[]") or {}
        text_at(segs, r, "outputText", ("results", i))
        if isinstance(r.get("tokenCount"), int):
            out += r["tokenCount"]
    inp = obj.get("inputTextTokenCount")
    return segs, {"input_tokens": inp if isinstance(inp, int) else None, "output_tokens": out}


# --- streamed events: ConverseStream (the event type is in the frame's headers) and the model-native
# chunks of InvokeModelWithResponseStream that are not Anthropic-shaped (Titan's outputText).

def stream_slots(ev: dict) -> list[Slot]:
    if isinstance(ev.get("outputText"), str):            # Titan invoke stream chunk
        return [Slot(("titan", index(ev.get("index"), 0)), ("outputText",), ev["outputText"])]
    return []


def stream_terminated(ev: dict) -> list[StreamKey]:
    return [ALL] if ev.get("completionReason") else []


def stream_usage(ev: dict) -> dict | None:
    metrics = ev.get("amazon-bedrock-invocationMetrics")   # invoke stream, last chunk
    if isinstance(metrics, dict) and ("inputTokenCount" in metrics or "outputTokenCount" in metrics):
        return {"input_tokens": metrics.get("inputTokenCount"), "output_tokens": metrics.get("outputTokenCount")}
    return None


def frame_slots(event_type: str | None, payload: dict) -> list[Slot]:
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


def frame_terminated(event_type: str | None, payload: dict) -> list[StreamKey]:
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


def error_body(status: int, code: str, message: str) -> tuple[dict[str, str], dict]:
    """botocore reads the error's type from x-amzn-errortype and raises it as that exception."""
    kind = _TYPES.get(status, "InternalServerException" if status >= 500 else "ValidationException")
    return {"x-amzn-errortype": kind}, {"message": message}


SPEC = ProviderSpec(
    name=Provider.BEDROCK,
    match=match,
    surfaces={"bedrock.converse": SurfaceRules(read_converse, answer_converse),
              "bedrock.converse_stream": SurfaceRules(read_converse, answer_converse),
              "bedrock.invoke": SurfaceRules(read_invoke, answer_invoke),
              "bedrock.invoke_stream": SurfaceRules(read_invoke, answer_invoke)},
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
)
