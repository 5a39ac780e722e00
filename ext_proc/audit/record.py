"""Audit record bodies: a decision record per request and an outcome record per response.

Field names follow OPA's decision log where they mean the same thing (decision_id, input, result
-> here `decision`, timestamp). No record holds prompt or response text, tokens or matched values.
"""

from __future__ import annotations

import uuid
from typing import Any

SCHEMA_VERSION = "ledgergate.audit/v1"


def decision_record(*, request_id: str, received_ms: int, decided_ms: int, identity: dict[str, Any] | None,
                    identity_error: str | None, route: dict[str, Any], provider: str | None, model_requested: str | None,
                    model_routed: str | None, upstream: str | None, classification: dict[str, Any], policy: dict[str, Any],
                    decision: dict[str, Any], input: dict[str, Any], request_sha256: str | None, forwarded_sha256: str | None,
                    ratelimit: dict[str, Any] | None = None, capture: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "kind": "decision", "decision_id": uuid.uuid4().hex,
        "request_id": request_id, "timestamp_ms": decided_ms,
        "received_ms": received_ms, "decided_ms": decided_ms,
        "identity": identity, "identity_error": identity_error,
        "route": route, "provider": provider, "model_requested": model_requested, "model_routed": model_routed,
        "upstream": upstream, "classification": classification, "policy": policy, "decision": decision,
        "input": input, "request_sha256": request_sha256, "forwarded_sha256": forwarded_sha256,
        "ratelimit": ratelimit, "capture": capture,
    }


def outcome_record(*, request_id: str, completed_ms: int, status: int | None, response_sha256: str | None,
                   classification: dict[str, Any], redactions: list[dict[str, Any]], usage: dict[str, Any] | None,
                   blocked: dict[str, Any] | None,
                   streamed: bool, error: str | None = None, capture: dict[str, Any] | None = None,
                   delivered_status: int | None = None, upstream_host: str | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION, "kind": "outcome", "decision_id": uuid.uuid4().hex,
        "request_id": request_id, "timestamp_ms": completed_ms, "completed_ms": completed_ms,
        "status": status, "delivered_status": delivered_status if delivered_status is not None else status,
        "response_sha256": response_sha256, "classification": classification,
        "redactions": redactions, "usage": usage, "blocked": blocked, "streamed": streamed, "error": error,
        "capture": capture, "upstream_host": upstream_host,
    }


def attempt_record(*, request_id: str, attempted_ms: int, provider: str, model: str, upstream_address: str | None,
                   forwarded_sha256: str | None, error: str | None = None) -> dict[str, Any]:
    """One upstream attempt of a cross-provider failover chain, committed before its translated
    body is released: which provider and endpoint it went to and what was sent (digest)."""
    return {
        "schema": SCHEMA_VERSION, "kind": "attempt", "decision_id": uuid.uuid4().hex,
        "request_id": request_id, "timestamp_ms": attempted_ms, "provider": provider, "model": model,
        "upstream_address": upstream_address, "forwarded_sha256": forwarded_sha256, "error": error,
    }
