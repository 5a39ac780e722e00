"""Which provider API a request path is: the route table of every surface ledgergate knows."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Surface:
    name: str
    provider: str
    api: str
    inspectable: bool = True
    model_from_path: str | None = None
    stream_from_path: bool = False

    def to_record(self) -> dict:
        return {"name": self.name, "provider": self.provider, "api": self.api,
                "inspectable": self.inspectable, "model_from_path": self.model_from_path,
                "stream_from_path": self.stream_from_path}


_OPENAI_EXACT = {
    ("POST", "/v1/chat/completions"): ("openai.chat_completions", "chat"),
    ("POST", "/v1/responses"): ("openai.responses", "responses"),
    ("POST", "/v1/embeddings"): ("openai.embeddings", "embeddings"),
    ("POST", "/v1/completions"): ("openai.completions", "completions"),
    ("POST", "/v1/moderations"): ("openai.moderations", "moderations"),
    ("POST", "/v1/messages"): ("anthropic.messages", "messages"),
    ("POST", "/v1/messages/count_tokens"): ("anthropic.count_tokens", "count_tokens"),
}


def match_surface(method: str, path: str) -> Surface | None:
    """The surface for METHOD PATH (PATH may carry a query string), or None when unknown."""
    method = method.upper()
    path = path.split("?", 1)[0]
    if len(path) > 2048:
        return None
    hit = _OPENAI_EXACT.get((method, path))
    if hit is not None:
        name, api = hit
        return Surface(name=name, provider=name.split(".", 1)[0], api=api)
    if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")) and ":" not in path:
        return Surface(name="openai.models", provider="openai", api="models", inspectable=False)
    if path.startswith("/v1/files"):
        return Surface(name="openai.files", provider="openai", api="files", inspectable=False)
    if path.startswith("/v1/batches"):
        return Surface(name="openai.batches", provider="openai", api="batch", inspectable=False)
    if path.startswith("/v1/audio"):
        return Surface(name="openai.audio", provider="openai", api="audio", inspectable=False)
    if path.startswith("/openai/deployments/") and method == "POST":
        rest = path[len("/openai/deployments/"):]
        deployment, _, tail = rest.partition("/")
        if deployment and tail == "chat/completions":
            return Surface(name="azure.chat_completions", provider="azure", api="chat",
                           model_from_path=unquote(deployment))
        if deployment and tail == "embeddings":
            return Surface(name="azure.embeddings", provider="azure", api="embeddings",
                           model_from_path=unquote(deployment))
        return None
    for prefix in ("/v1beta/models/", "/v1/models/"):
        if path.startswith(prefix) and method == "POST":
            model, _, verb = path[len(prefix):].rpartition(":")
            if not model:
                return None
            if verb == "generateContent":
                return Surface(name="gemini.generate_content", provider="gemini", api="generate",
                               model_from_path=unquote(model))
            if verb == "streamGenerateContent":
                return Surface(name="gemini.stream_generate_content", provider="gemini", api="generate",
                               model_from_path=unquote(model), stream_from_path=True)
            if verb == "countTokens":
                return Surface(name="gemini.count_tokens", provider="gemini", api="count_tokens",
                               model_from_path=unquote(model))
            return None
    if path.startswith("/model/") and method == "POST":
        model, _, verb = path[len("/model/"):].rpartition("/")
        model = unquote(model)
        if not model:
            return None
        if verb == "converse":
            return Surface(name="bedrock.converse", provider="bedrock", api="converse", model_from_path=model)
        if verb == "converse-stream":
            return Surface(name="bedrock.converse_stream", provider="bedrock", api="converse",
                           model_from_path=model, stream_from_path=True)
        if verb == "invoke":
            return Surface(name="bedrock.invoke", provider="bedrock", api="invoke", model_from_path=model)
        if verb == "invoke-with-response-stream":
            return Surface(name="bedrock.invoke_stream", provider="bedrock", api="invoke",
                           model_from_path=model, stream_from_path=True)
    return None
