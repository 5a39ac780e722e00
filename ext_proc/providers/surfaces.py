"""Which provider API a request path is: the route table of every surface ledgergate knows.

Paths are matched exactly (after the query string is cut off); anything else is None, which the
policy sees as the surface "unknown" (default deny in the shipped policies)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

MAX_PATH = 4096


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


# (method, path) -> (surface name, api)
_EXACT = {
    ("POST", "/v1/chat/completions"): ("openai.chat_completions", "chat"),
    ("POST", "/v1/responses"): ("openai.responses", "responses"),
    ("POST", "/v1/embeddings"): ("openai.embeddings", "embeddings"),
    ("POST", "/v1/completions"): ("openai.completions", "completions"),
    ("POST", "/v1/moderations"): ("openai.moderations", "moderations"),
    ("POST", "/v1/messages"): ("anthropic.messages", "messages"),
    ("POST", "/v1/messages/count_tokens"): ("anthropic.count_tokens", "count_tokens"),
    # Azure OpenAI v1 API (model in the body) and its responses API
    ("POST", "/openai/v1/chat/completions"): ("azure.chat_completions", "chat"),
    ("POST", "/openai/v1/responses"): ("azure.responses", "responses"),
    ("POST", "/openai/responses"): ("azure.responses", "responses"),
    ("POST", "/openai/v1/embeddings"): ("azure.embeddings", "embeddings"),
}
# Uploads and binary media: no JSON text to inspect; policy governs them by route.
_OPAQUE_PREFIXES = (
    ("/v1/files", "openai.files", "openai", "files"),
    ("/v1/uploads", "openai.files", "openai", "files"),
    ("/v1/batches", "openai.batches", "openai", "batch"),
    ("/v1/audio/", "openai.audio", "openai", "audio"),
    ("/v1/messages/batches", "anthropic.batches", "anthropic", "batch"),
)
_AZURE_DEPLOYMENT_TAILS = {
    "chat/completions": ("azure.chat_completions", "chat"),
    "completions": ("azure.completions", "completions"),
    "embeddings": ("azure.embeddings", "embeddings"),
}
_GEMINI_VERBS = {
    "generateContent": ("gemini.generate_content", "generate", False),
    "streamGenerateContent": ("gemini.stream_generate_content", "generate", True),
    "countTokens": ("gemini.count_tokens", "count_tokens", False),
    "embedContent": ("gemini.embed_content", "embeddings", False),
}
_BEDROCK_VERBS = {
    "converse": ("bedrock.converse", "converse", False),
    "converse-stream": ("bedrock.converse_stream", "converse", True),
    "invoke": ("bedrock.invoke", "invoke", False),
    "invoke-with-response-stream": ("bedrock.invoke_stream", "invoke", True),
}


def _model_segment(raw: str) -> str | None:
    """A model id or deployment taken from the path: percent-decoded, non-empty, printable."""
    model = unquote(raw, errors="strict") if "%" in raw else raw
    if not model or len(model) > 512 or not model.isprintable():
        return None
    return model


def match_surface(method: str, path: str) -> Surface | None:
    """The surface for METHOD PATH (PATH may carry a query string), or None when unknown."""
    if not isinstance(method, str) or not isinstance(path, str):
        return None
    method = method.upper()
    path = path.split("?", 1)[0].split("#", 1)[0]
    if len(path) > MAX_PATH or not path.startswith("/"):
        return None
    try:
        return _match(method, path)
    except UnicodeDecodeError:  # percent-encoded bytes that are not UTF-8
        return None


def _match(method: str, path: str) -> Surface | None:
    hit = _EXACT.get((method, path))
    if hit is not None:
        name, api = hit
        return Surface(name=name, provider=name.split(".", 1)[0], api=api)
    if method == "GET" and path == "/v1/models":
        return Surface(name="openai.models", provider="openai", api="models", inspectable=False)
    if method == "GET" and path.startswith("/v1/models/") and ":" not in path and path.count("/") == 3:
        return Surface(name="openai.models", provider="openai", api="models", inspectable=False,
                       model_from_path=_model_segment(path[len("/v1/models/"):]))
    for prefix, name, provider, api in _OPAQUE_PREFIXES:
        if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
            return Surface(name=name, provider=provider, api=api, inspectable=False)
    if path.startswith("/openai/deployments/"):
        deployment, _, tail = path[len("/openai/deployments/"):].partition("/")
        model = _model_segment(deployment)
        if model is None:
            return None
        if method == "POST" and tail in _AZURE_DEPLOYMENT_TAILS:
            name, api = _AZURE_DEPLOYMENT_TAILS[tail]
            return Surface(name=name, provider="azure", api=api, model_from_path=model)
        if tail.startswith("audio/"):
            return Surface(name="azure.audio", provider="azure", api="audio", inspectable=False,
                           model_from_path=model)
        return None
    if method == "POST":
        for prefix in ("/v1beta/models/", "/v1/models/", "/v1beta/tunedModels/", "/v1/tunedModels/"):
            if path.startswith(prefix):
                raw_model, sep, verb = path[len(prefix):].rpartition(":")
                if not sep or "/" in raw_model or verb not in _GEMINI_VERBS:
                    return None
                model = _model_segment(raw_model)
                if model is None:
                    return None
                name, api, stream = _GEMINI_VERBS[verb]
                return Surface(name=name, provider="gemini", api=api, model_from_path=model,
                               stream_from_path=stream)
        if path.startswith("/model/"):
            raw_model, _, verb = path[len("/model/"):].rpartition("/")
            if verb not in _BEDROCK_VERBS:
                return None
            model = _model_segment(raw_model)
            if model is None:
                return None
            name, api, stream = _BEDROCK_VERBS[verb]
            return Surface(name=name, provider="bedrock", api=api, model_from_path=model, stream_from_path=stream)
    return None
