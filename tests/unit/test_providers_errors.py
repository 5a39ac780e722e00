"""Provider error formats: the official SDKs must raise their typed errors on what we send."""

from __future__ import annotations

import json

import anthropic
import httpx
import httpx2
import openai
import pytest

from ext_proc.providers import error_body


def _transport(provider: str, status: int, code: str, message: str, lib=httpx):
    def handler(request):
        headers, body = error_body(provider, status, code, message)
        return lib.Response(status, headers=headers, content=body)
    return lib.MockTransport(handler)


@pytest.mark.parametrize("status,exc,etype", [
    (400, openai.BadRequestError, "invalid_request_error"), (401, openai.AuthenticationError, "authentication_error"),
    (403, openai.PermissionDeniedError, "permission_error"), (404, openai.NotFoundError, "not_found_error"),
    (409, openai.ConflictError, "conflict_error"), (413, openai.APIStatusError, "invalid_request_error"),
    (422, openai.UnprocessableEntityError, "invalid_request_error"), (429, openai.RateLimitError, "requests"),
    (500, openai.InternalServerError, "server_error"), (503, openai.InternalServerError, "service_unavailable"),
])
@pytest.mark.parametrize("provider", ["openai", "azure", "something-unknown"])
def test_openai_sdk_raises_typed_error(provider, status, exc, etype):
    client = openai.OpenAI(base_url="http://upstream.test/v1", api_key="x", max_retries=0,
                           http_client=httpx.Client(transport=_transport(provider, status, "policy_denied", "denied by policy")))
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert type(err) is exc and err.status_code == status
    assert err.body == {"message": "denied by policy", "type": etype, "param": None, "code": "policy_denied"}
    assert err.code == "policy_denied" and err.type == etype


def test_openai_429_type_names_the_budget():
    for code, etype in (("rate_limited", "requests"), ("token_budget_exhausted", "tokens"),
                        ("tokens_per_minute", "tokens")):
        _, body = error_body("openai", 429, code, "slow down")
        assert json.loads(body)["error"]["type"] == etype


@pytest.mark.parametrize("status,exc,etype", [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"), (404, anthropic.NotFoundError, "not_found_error"),
    (413, anthropic.RequestTooLargeError, "request_too_large"), (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"), (503, anthropic.ServiceUnavailableError, "overloaded_error"),
    (529, anthropic.OverloadedError, "overloaded_error"), (418, anthropic.APIStatusError, "invalid_request_error"),
])
def test_anthropic_sdk_raises_typed_error(status, exc, etype):
    client = anthropic.Anthropic(base_url="http://upstream.test", api_key="x", max_retries=0,
                                 http_client=httpx2.Client(transport=_transport("anthropic", status, "c", "nope", httpx2)))
    with pytest.raises(exc) as info:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert isinstance(info.value, exc) and info.value.status_code == status
    assert info.value.body == {"type": "error", "error": {"type": etype, "message": "nope"}}


@pytest.mark.parametrize("status,gstatus", [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"),
                                             (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
                                             (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (503, "UNAVAILABLE"),
                                             (504, "DEADLINE_EXCEEDED"), (418, "FAILED_PRECONDITION")])
def test_gemini_error_format(status, gstatus):
    headers, body = error_body("gemini", status, "x", "msg")
    assert headers == {"content-type": "application/json"}
    assert json.loads(body) == {"error": {"code": status, "message": "msg", "status": gstatus}}


@pytest.mark.parametrize("status,etype", [(400, "ValidationException"), (403, "AccessDeniedException"),
                                          (404, "ResourceNotFoundException"), (413, "ValidationException"),
                                          (429, "ThrottlingException"), (500, "InternalServerException"),
                                          (503, "ServiceUnavailableException"), (502, "InternalServerException"),
                                          (418, "ValidationException")])
def test_bedrock_error_format(status, etype):
    headers, body = error_body("bedrock", status, "x", "msg")
    assert headers == {"content-type": "application/json", "x-amzn-errortype": etype}
    assert json.loads(body) == {"message": "msg"}


def test_error_body_is_compact_utf8_json():
    _, body = error_body("openai", 400, "c", "Grüße \"quoted\"")
    assert json.loads(body.decode("utf-8"))["error"]["message"] == "Grüße \"quoted\""
    assert b'", "' not in body and b'": ' not in body and "Grüße".encode() in body
