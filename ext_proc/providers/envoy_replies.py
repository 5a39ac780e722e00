"""Envoy's own replies in each provider's error format, and the access log that records the ones
ledgergate never sees.

Envoy answers some requests itself (a local reply): a body over its buffer limit (413), a
malformed request (400), an upstream overflow or no healthy upstream (503), ledgergate
unreachable (an ext_proc gRPC UNAVAILABLE, which Envoy answers 500 with an empty body). The
official SDKs raise their typed errors only for a body in their provider's format, and they retry
5xx: so every such reply gets a provider-shaped body (the same shapes as registry.error_body), a
503 gets `retry-after`, and "ledgergate unreachable" becomes a 503 with `retry-after` instead of
an empty 500.

Rendered into the HttpConnectionManager of envoy/local.yaml, sidecar.yaml and edge.yaml by
`python -m ext_proc.cli.mesh` (tests/unit/test_mesh_filter_source.py fails on drift).

Which replies are Envoy's own: at the time the mappers run, Envoy's local replies have no
content-type yet, while ledgergate's own refusals (ext_proc immediate responses, which Envoy
also passes through local_reply_config) already carry `content-type: application/json`; the
mappers leave those untouched.
"""

from __future__ import annotations

import json
from typing import Any

from ext_proc.providers.registry import error_body

# Seconds an SDK should wait before retrying a 503 of Envoy's (overflow, no healthy upstream,
# ledgergate restarting or draining); the OpenAI and Anthropic SDKs honour retry-after.
RETRY_AFTER_S = 1

_CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
_CEL_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"

# A local reply of Envoy's own (not ledgergate's refusal, which already has its content-type).
OWN_REPLY = "!('content-type' in response.headers)"
# ledgergate could not be reached (down, draining, its cluster overflowing): gRPC UNAVAILABLE.
PROCESSOR_UNAVAILABLE = "response.code_details.startsWith('ext_proc_error_gRPC_error_14')"

# Provider by path, as the provider modules' `match` does; anything else gets OpenAI's format
# (also what ledgergate answers for unknown routes). A reply without a path (a codec error before
# the request line was read) makes these expressions fail, so it falls to OpenAI's as well.
PROVIDER_PATHS = {
    "mistral": "request.path.startsWith('/mistral/')",
    "anthropic": "request.path.startsWith('/v1/messages')",
    "gemini": "request.path.matches('^/v1(beta)?/models/[^/?]+:')",
    "bedrock": "request.path.startsWith('/model/')",
    "openai": None,
}

# status -> (reason, message): the reason names the decision in ledgergate's records
# (`envoy_<reason>`); the message is what the client reads (Envoy's own text is not shown).
REASONS = {
    413: ("request_too_large", "the request body is larger than the gateway accepts"),
    400: ("bad_request", "the gateway refused a malformed request"),
    431: ("request_headers_too_large", "the request headers are larger than the gateway accepts"),
    404: ("no_route", "the gateway found no route for the request"),
    408: ("request_timeout", "the request did not arrive in time"),
    503: ("unavailable", "the gateway cannot take the request now; retry after the delay in retry-after"),
    504: ("timeout", "the gateway timed out"),
    500: ("error", "the gateway failed to process the request"),
}
_MESSAGES = {status: message for status, (_reason, message) in REASONS.items()}


def reason_for(status: int, details: str = "") -> tuple[str, str]:
    """(reason, message) of an Envoy reply with STATUS and response code DETAILS."""
    if details.startswith("ext_proc_error"):
        return "processor_error", _MESSAGES[503 if status == 503 else 500]
    if status in REASONS:
        return REASONS[status]
    return ("error", _MESSAGES[500]) if status >= 500 else ("client_error", _MESSAGES[400])


def _cel(expression: str) -> dict[str, Any]:
    return {"extension_filter": {"name": _CEL_FILTER, "typed_config": {"@type": _CEL_TYPE, "expression": expression}}}


def _body_format(provider: str, status: int, message: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(body_format_override, headers_to_add) for PROVIDER's error at STATUS, with Envoy's
    response code details as the machine code."""
    headers, body = error_body(provider, status, "%RESPONSE_CODE_DETAILS%", f"{message} (%RESPONSE_CODE_DETAILS%)")
    shape = json.loads(body)
    add = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
           for k, v in headers.items() if k != "content-type"]
    return {"json_format": shape, "content_type": "application/json"}, add


def _mapper(provider: str, condition: str, status: int, message: str, *, rewrite_status: int | None = None,
            retry: bool = False, catch_all: bool = False) -> dict[str, Any]:
    path = PROVIDER_PATHS[provider]
    when = [OWN_REPLY, condition] if path is None else [OWN_REPLY, path, condition]
    fmt, headers = _body_format(provider, status, message)
    if catch_all and provider == "gemini":
        fmt["json_format"]["error"]["code"] = "%RESPONSE_CODE%"   # a number: Envoy keeps its type
    if retry:
        headers.append({"header": {"key": "retry-after", "value": str(RETRY_AFTER_S)},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"})
    m: dict[str, Any] = {"filter": _cel(" && ".join(when))}
    if rewrite_status is not None:
        m["status_code"] = rewrite_status
    if headers:
        m["headers_to_add"] = headers
    m["body_format_override"] = fmt
    return m


def local_reply_mappers() -> list[dict[str, Any]]:
    """The mappers, first match wins: per provider, ledgergate unreachable (-> 503 + retry-after),
    503, 413, 400, 404, then any other 5xx and 4xx."""
    out = []
    for provider in PROVIDER_PATHS:
        out.append(_mapper(provider, PROCESSOR_UNAVAILABLE, 503, _MESSAGES[503], rewrite_status=503, retry=True))
        out.append(_mapper(provider, "response.code == 503", 503, _MESSAGES[503], retry=True))
        for status in (413, 400, 404):
            out.append(_mapper(provider, f"response.code == {status}", status, _MESSAGES[status]))
        out.append(_mapper(provider, "response.code >= 500", 500, _MESSAGES[500], catch_all=True))
        out.append(_mapper(provider, "response.code >= 400", 400, _MESSAGES[400], catch_all=True))
    return out


# The access log that records Envoy's replies ledgergate never sees: a request Envoy refused
# before the filter chain (a path with `#`, a codec error) or one it answered because ledgergate
# failed (ext_proc_error...). Envoy's replies to requests ledgergate did see (413 over the buffer
# limit) reach ledgergate's response phase and are recorded there, before the client gets them
# (server/local_reply.py); so are the upstream errors after a request was released (the outcome
# record's `error`).
# Listed by Envoy's response code details: the connection manager's own checks before the filter
# chain (a path it cannot normalize, e.g. one with `#`; codec errors) and ext_proc failures.
_UNSEEN = ("response.code_details.startsWith('ext_proc_error')",
           "response.code_details == 'path_normalization_failed'",
           "response.code_details.startsWith('http1.')",
           "response.code_details.startsWith('http2.')",
           "response.code_details.startsWith('codec_error')",
           "response.code_details.startsWith('missing_host_header')",
           "response.code_details.startsWith('missing_path')")
UNSEEN_BY_LEDGERGATE = " || ".join(_UNSEEN)
ACCESS_LOG_NAME = "ledgergate.local_replies"


def local_reply_access_log(cluster_name: str = "ledgergate") -> list[dict[str, Any]]:
    return [{
        "name": "envoy.access_loggers.http_grpc",
        "filter": _cel(UNSEEN_BY_LEDGERGATE),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": ACCESS_LOG_NAME,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster_name}},
                # Small batches, sent at once: these are refusals, rare, and each is evidence.
                "buffer_flush_interval": "0.1s",
                "buffer_size_bytes": 4096,
            },
        },
    }]


def local_reply_config() -> dict[str, Any]:
    return {"mappers": local_reply_mappers()}
