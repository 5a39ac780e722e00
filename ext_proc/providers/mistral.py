"""Mistral's chat API (POST https://api.mistral.ai/v1/chat/completions), reached through the
/mistral/ route prefix (Envoy strips it and sends the request to api.mistral.ai).

The body is OpenAI-like with Mistral's own fields (`max_tokens` only, `prompt_mode`, `prefix` on an
assistant turn, `document_url` and `reference` chunks); the answer and the SSE stream are OpenAI's
chat shape ending with `data: [DONE]`, with the usage in the last chunk always: Mistral takes no
`stream_options` (it refuses unknown fields), so none is injected. Errors are Mistral's flat
`{"object": "error", ...}`, which both the mistralai and the openai SDKs read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ext_proc.providers import openai
from ext_proc.providers.body import (
    Path,
    TextSegment,
    as_dict,
    as_list,
    content_segments,
    free_json,
    messages_of,
    strings,
)
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, SurfaceRules
from ext_proc.providers.surfaces import Surface

ROUTE_PREFIX = "/mistral"      # ledgergate's route; the provider's own path follows it


def match(method: str, path: str) -> Surface | None:
    if method == "POST" and path == ROUTE_PREFIX + "/v1/chat/completions":
        return Surface(name="mistral.chat_completions", provider=Provider.MISTRAL, api="chat")
    return None


def read_chat(body: dict[str, Any]) -> Iterator[TextSegment]:
    """The turns in order (content as a string or chunks, then an assistant's tool calls), then
    the tools and the JSON schema of the answer, which the model reads as part of its prompt."""
    for i, m in enumerate(messages_of(body)):
        p: Path = ("messages", i)
        yield from content_segments(m.get("content"), p + ("content",))
        for j, call in enumerate(as_list(m.get("tool_calls"), p + ("tool_calls",))):
            as_dict(call, p + ("tool_calls", j))
            yield from strings(call, p + ("tool_calls", j), free=True)
    as_list(body.get("tools"), ("tools",))
    for key in ("tools", "response_format", "prediction"):
        yield from free_json(body, key)


def error_body(status: int, code: str, message: str) -> tuple[dict[str, str], dict[str, Any]]:
    _headers, shaped = openai.error_body(status, code, message)
    return {}, {"object": "error", "message": message, "type": shaped["error"]["type"], "param": None,
                "code": code}


SPEC = ProviderSpec(
    name=Provider.MISTRAL,
    match=match,
    surfaces={"mistral.chat_completions": SurfaceRules(read_chat, cap_field=("max_tokens",))},
    error_body=error_body,
    stream_error=openai.stream_error,     # its stream is OpenAI's chat shape: the openai SDK raises on it
    genai_name="mistral_ai",
    cluster="mistral",
    upstream_host="api.mistral.ai",
    route_prefix=ROUTE_PREFIX,
)
