"""Envoy's response flags (%RESPONSE_FLAGS%, sent to ledgergate as x-ledgergate-upstream-flags by
the route config) as the error an outcome record carries when Envoy, not the provider, ended the
exchange: an upstream timeout, a refused connection, retries exhausted."""

from __future__ import annotations

# Set by Envoy's route (response_headers_to_add) for ledgergate's eyes only: the upstream that
# answered and the response flags. Envoy adds them to every response of the route, local replies
# included: ledgergate removes them from the responses it passes on (server/response_side.py) and
# from every reply of its own (server/replies.immediate).
UPSTREAM_HOST_HEADER = "x-ledgergate-upstream-host"
UPSTREAM_FLAGS_HEADER = "x-ledgergate-upstream-flags"

# https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#config-access-log-format-response-flags
FLAG_NAMES = {
    "UT": "upstream_request_timeout",
    "UF": "upstream_connection_failure",
    "UC": "upstream_connection_termination",
    "UR": "upstream_remote_reset",
    "URX": "upstream_retry_limit_exceeded",
    "UH": "no_healthy_upstream",
    "UO": "upstream_overflow",
    "NR": "no_route",
    "SI": "stream_idle_timeout",
    "LR": "local_reset",
    "DC": "downstream_connection_termination",
    "UMSDR": "upstream_max_stream_duration_reached",
    "DPE": "downstream_protocol_error",
    "OM": "overload_manager",
    "DR": "downstream_remote_reset",
}


def upstream_error(flags: str | None) -> str | None:
    """`upstream_request_timeout`, or several joined by `+`; None when Envoy set no flag ("-").
    Unknown flags are kept as `envoy_flag_<FLAG>` (bounded: letters only, at most 8 of them)."""
    if not flags or flags == "-":
        return None
    names = []
    for flag in flags.split(",")[:8]:
        flag = flag.strip()
        if flag.isalpha() and len(flag) <= 8:
            names.append(FLAG_NAMES.get(flag, f"envoy_flag_{flag}"))
    return "+".join(names) or None
