"""Route matching: every surface ledgergate knows, and paths that must not match."""

from __future__ import annotations

import pytest

from ext_proc.providers import Surface, match_surface

CASES = [
    # method, path, name, provider, api, inspectable, model_from_path, stream_from_path
    ("POST", "/v1/chat/completions", "openai.chat_completions", "openai", "chat", True, None, False),
    ("post", "/v1/chat/completions?foo=1", "openai.chat_completions", "openai", "chat", True, None, False),
    ("POST", "/v1/responses", "openai.responses", "openai", "responses", True, None, False),
    ("POST", "/v1/embeddings", "openai.embeddings", "openai", "embeddings", True, None, False),
    ("POST", "/v1/completions", "openai.completions", "openai", "completions", True, None, False),
    ("POST", "/v1/moderations", "openai.moderations", "openai", "moderations", True, None, False),
    ("GET", "/v1/models", "openai.models", "openai", "models", False, None, False),
    ("GET", "/v1/models/gpt-4o", "openai.models", "openai", "models", False, "gpt-4o", False),
    ("POST", "/v1/files", "openai.files", "openai", "files", False, None, False),
    ("GET", "/v1/files/file-abc/content", "openai.files", "openai", "files", False, None, False),
    ("POST", "/v1/uploads/up_1/parts", "openai.files", "openai", "files", False, None, False),
    ("POST", "/v1/batches", "openai.batches", "openai", "batch", False, None, False),
    ("POST", "/v1/audio/transcriptions", "openai.audio", "openai", "audio", False, None, False),
    ("POST", "/v1/audio/speech", "openai.audio", "openai", "audio", False, None, False),
    ("POST", "/v1/messages", "anthropic.messages", "anthropic", "messages", True, None, False),
    ("POST", "/v1/messages/count_tokens", "anthropic.count_tokens", "anthropic", "count_tokens", True, None, False),
    ("POST", "/v1/messages/batches", "anthropic.batches", "anthropic", "batch", False, None, False),
    ("POST", "/v1beta/models/gemini-2.0-flash:generateContent", "gemini.generate_content", "gemini",
     "generate", True, "gemini-2.0-flash", False),
    ("POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", "gemini.stream_generate_content",
     "gemini", "generate", True, "gemini-2.0-flash", True),
    ("POST", "/v1/models/gemini-pro:generateContent", "gemini.generate_content", "gemini", "generate", True,
     "gemini-pro", False),
    ("POST", "/v1beta/models/gemini-pro:countTokens", "gemini.count_tokens", "gemini", "count_tokens", True,
     "gemini-pro", False),
    ("POST", "/v1beta/models/text-embedding-004:embedContent", "gemini.embed_content", "gemini", "embeddings",
     True, "text-embedding-004", False),
    ("POST", "/v1beta/tunedModels/my-tune:generateContent", "gemini.generate_content", "gemini", "generate",
     True, "my-tune", False),
    ("POST", "/model/anthropic.claude-3-haiku-20240307-v1:0/converse", "bedrock.converse", "bedrock", "converse",
     True, "anthropic.claude-3-haiku-20240307-v1:0", False),
    ("POST", "/model/anthropic.claude-3-haiku-20240307-v1:0/converse-stream", "bedrock.converse_stream",
     "bedrock", "converse", True, "anthropic.claude-3-haiku-20240307-v1:0", True),
    ("POST", "/model/amazon.titan-text-express-v1/invoke", "bedrock.invoke", "bedrock", "invoke", True,
     "amazon.titan-text-express-v1", False),
    ("POST", "/model/m/invoke-with-response-stream", "bedrock.invoke_stream", "bedrock", "invoke", True, "m", True),
    ("POST", "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse", "bedrock.converse",
     "bedrock", "converse", True, "arn:aws:bedrock:us-east-1:1:inference-profile/us.x", False),
    ("POST", "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21", "azure.chat_completions",
     "azure", "chat", True, "my-gpt4o", False),
    ("POST", "/openai/deployments/emb/embeddings?api-version=2024-10-21", "azure.embeddings", "azure",
     "embeddings", True, "emb", False),
    ("POST", "/openai/deployments/inst/completions?api-version=1", "azure.completions", "azure", "completions",
     True, "inst", False),
    ("POST", "/openai/deployments/whisper/audio/transcriptions?api-version=1", "azure.audio", "azure", "audio",
     False, "whisper", False),
    ("POST", "/openai/v1/chat/completions", "azure.chat_completions", "azure", "chat", True, None, False),
    ("POST", "/openai/responses?api-version=preview", "azure.responses", "azure", "responses", True, None, False),
]


@pytest.mark.parametrize("method,path,name,provider,api,inspectable,model,stream", CASES)
def test_known_surfaces(method, path, name, provider, api, inspectable, model, stream):
    s = match_surface(method, path)
    assert s == Surface(name=name, provider=provider, api=api, inspectable=inspectable,
                        model_from_path=model, stream_from_path=stream)
    rec = s.to_record()
    assert rec == {"name": name, "provider": provider, "api": api, "inspectable": inspectable,
                   "model_from_path": model, "stream_from_path": stream}


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/chat/completions"),            # method matters
    ("POST", "/v1/chat/completions/"),          # exact paths only: no trailing slash
    ("POST", "//v1/chat/completions"),
    ("POST", "/V1/chat/completions"),
    ("POST", "/v1/chat%2Fcompletions"),
    ("POST", "v1/chat/completions"),
    ("POST", "/v1/models"),                     # models is GET
    ("GET", "/v1/models/a/b"),
    ("POST", "/v1beta/models/gemini:unknownVerb"),
    ("POST", "/v1beta/models/:generateContent"),
    ("POST", "/v1beta/models/a/b:generateContent"),
    ("GET", "/v1beta/models/g:generateContent"),
    ("POST", "/model//converse"),
    ("POST", "/model/m/other"),
    ("POST", "/model/%ff%fe/converse"),         # not UTF-8 after decoding
    ("POST", "/model/a%0Ab/converse"),          # control character in the model id
    ("POST", "/openai/deployments//chat/completions"),
    ("POST", "/openai/deployments/d/images/generations"),
    ("POST", "/" + "a" * 10000),
    ("POST", ""),
    ("DELETE", "/v1/messages"),
])
def test_unknown_paths_are_none(method, path):
    assert match_surface(method, path) is None


def test_model_in_path_is_bounded():
    assert match_surface("POST", "/model/" + "m" * 512 + "/converse") is not None
    assert match_surface("POST", "/model/" + "m" * 513 + "/converse") is None


def test_non_string_input_is_none():
    assert match_surface(None, "/v1/messages") is None  # type: ignore[arg-type]
    assert match_surface("POST", b"/v1/messages") is None  # type: ignore[arg-type]


def test_surface_is_frozen():
    s = match_surface("POST", "/v1/messages")
    with pytest.raises(AttributeError):
        s.name = "x"  # type: ignore[misc]
