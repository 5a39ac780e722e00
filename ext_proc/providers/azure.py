"""Azure OpenAI: the v1 API (model in the body) and the deployment paths (model in the path). The
bodies, answers, streams and errors are OpenAI's; the routes, headers and query differ, and the
requests go to the openai cluster (an Azure resource is configured as that upstream)."""

from __future__ import annotations

from dataclasses import replace

from ext_proc.providers import openai
from ext_proc.providers.names import Provider
from ext_proc.providers.spec import ProviderSpec, SurfaceRules
from ext_proc.providers.surfaces import Surface, model_segment

_EXACT = {
    "/openai/v1/chat/completions": ("azure.chat_completions", "chat"),
    "/openai/v1/responses": ("azure.responses", "responses"),
    "/openai/responses": ("azure.responses", "responses"),
    "/openai/v1/embeddings": ("azure.embeddings", "embeddings"),
}
_DEPLOYMENT_TAILS = {
    "chat/completions": ("azure.chat_completions", "chat"),
    "completions": ("azure.completions", "completions"),
    "embeddings": ("azure.embeddings", "embeddings"),
}


def match(method: str, path: str) -> Surface | None:
    hit = _EXACT.get(path) if method == "POST" else None
    if hit is not None:
        return Surface(name=hit[0], provider=Provider.AZURE, api=hit[1])
    if not path.startswith("/openai/deployments/"):
        return None
    deployment, _, tail = path[len("/openai/deployments/"):].partition("/")
    model = model_segment(deployment)
    if model is None:
        return None
    if method == "POST" and tail in _DEPLOYMENT_TAILS:
        name, api = _DEPLOYMENT_TAILS[tail]
        return Surface(name=name, provider=Provider.AZURE, api=api, model_from_path=model)
    if tail.startswith("audio/"):
        return Surface(name="azure.audio", provider=Provider.AZURE, api="audio", inspectable=False,
                       model_from_path=model)
    return None


SPEC = ProviderSpec(
    name=Provider.AZURE,
    match=match,
    # No max_tokens cap is written on its responses and completions surfaces.
    # Answers are not served from the response cache (replay=None): not tried with AzureOpenAI yet.
    surfaces={"azure.chat_completions": replace(openai.CHAT, replay=None), "azure.responses": SurfaceRules(openai.read_responses),
              "azure.embeddings": openai.EMBEDDINGS,
              "azure.completions": SurfaceRules(openai.read_completions)},
    error_body=openai.error_body,
    stream_error=openai.stream_error,
    # AzureOpenAI: the same SDK, plus Azure's request id.
    headers=openai.SPEC.headers | {"x-ms-client-request-id"},
    query=frozenset({"api-version"}),
    genai_name="azure.ai.openai",
    cluster=openai.SPEC.cluster,
    upstream_host="<resource>.openai.azure.com",
)
