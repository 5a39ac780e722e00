"""Errors in each provider's own format, so the official SDKs raise their usual typed errors."""

from __future__ import annotations

import json

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 422: "invalid_request_error", 500: "server_error", 502: "server_error",
                 503: "service_unavailable", 504: "timeout"}
# https://docs.anthropic.com/en/api/errors
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "timeout_error",
                    529: "overloaded_error"}
# google.rpc.Code names as Gemini returns them in error.status
_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                  500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_BEDROCK_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
                  404: "ResourceNotFoundException", 408: "ModelTimeoutException", 409: "ConflictException",
                  413: "ValidationException", 424: "ModelErrorException", 429: "ThrottlingException",
                  500: "InternalServerException", 503: "ServiceUnavailableException",
                  504: "ModelTimeoutException"}
PROVIDERS = ("openai", "azure", "anthropic", "gemini", "bedrock")


def _openai_type(status: int, code: str) -> str:
    if status == 429:
        # OpenAI names the exhausted budget in `type`: "requests" or "tokens".
        return "tokens" if "token" in code.lower() else "requests"
    return _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(provider: str, status: int, code: str, message: str) -> tuple[dict[str, str], bytes]:
    """Response headers and body for an error in PROVIDER's own format (unknown providers get OpenAI's).

    `code` is a stable machine code (OpenAI's error.code); `message` must already be safe to show."""
    headers = {"content-type": "application/json"}
    if provider == "anthropic":
        body: dict = {"type": "error",
                      "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500
                                                             else "invalid_request_error"),
                                "message": message}}
    elif provider == "gemini":
        body = {"error": {"code": status, "message": message,
                          "status": _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")}}
    elif provider == "bedrock":
        headers["x-amzn-errortype"] = _BEDROCK_TYPES.get(
            status, "InternalServerException" if status >= 500 else "ValidationException")
        body = {"message": message}
    else:  # openai, azure, unknown routes
        body = {"error": {"message": message, "type": _openai_type(status, code), "param": None, "code": code}}
    return headers, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
