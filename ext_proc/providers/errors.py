"""Errors in each provider's own format, so the official SDKs raise their usual typed errors."""

from __future__ import annotations

import json

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
                 502: "server_error", 503: "service_unavailable", 504: "timeout"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "api_error"}
_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                  504: "DEADLINE_EXCEEDED"}
_BEDROCK_TYPES = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
                  404: "ResourceNotFoundException", 413: "ValidationException", 429: "ThrottlingException",
                  500: "InternalServerException", 503: "ServiceUnavailableException", 504: "ModelTimeoutException"}


def error_body(provider: str, status: int, code: str, message: str) -> tuple[dict[str, str], bytes]:
    headers = {"content-type": "application/json"}
    if provider == "anthropic":
        body = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    elif provider == "gemini":
        body = {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}
    elif provider == "bedrock":
        headers["x-amzn-errortype"] = _BEDROCK_TYPES.get(status, "InternalServerException")
        body = {"message": message}
    else:  # openai, azure, unknown routes
        etype = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return headers, json.dumps(body, separators=(",", ":")).encode()
