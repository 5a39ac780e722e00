"""The outcome of one response, decided from what the response side saw: the outcome record,
what the status delivered to the client was, and what a rate-limit reservation settles at.
Sans-I/O: the server passes the time and the sealed capture; it commits the record and settles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ext_proc.audit.record import OutcomeRecord, ResponseInspection
from ext_proc.pipeline.verdict import Verdict, annotated
from ext_proc.streaming.inspector import BLOCKED_STATUS
from ext_proc.streaming.transparency import TransparencyMarker


@dataclass(frozen=True)
class ResponseSeen:
    """What the response side observed of one released request. `summary` is the response
    inspector's `outcome()` ({} when no answer was inspected: the stream ended before one)."""

    request_id: str
    completed_ms: int
    status: int | None
    summary: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    upstream_host: str | None = None
    # The answer's headers were held for its whole body, so a block replaced the status.
    status_held: bool = False
    block_status_sent: bool = False
    capture: Mapping[str, Any] | None = None
    transparency: TransparencyMarker | None = None


@dataclass(frozen=True)
class Outcome:
    """The outcome record, and what follows from it: `settle_tokens` is what the request's
    reservation is charged (None: it stays charged as estimated, e.g. an upstream error or a
    blocked stream without usage: the request was released, so it counts)."""

    record: OutcomeRecord
    usage: Mapping[str, Any] | None
    settle_tokens: int | None
    error: str | None


def tokens_used(usage: Mapping[str, Any] | None) -> int | None:
    if not usage:
        return None
    return int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)


def response_outcome(seen: ResponseSeen) -> Outcome:
    summary = seen.summary
    usage = summary.get("usage")
    blocked = summary.get("blocked")
    status_replaced = seen.block_status_sent or (seen.status_held and bool(blocked))
    record = OutcomeRecord(
        request_id=seen.request_id, completed_ms=seen.completed_ms, status=seen.status,
        response=ResponseInspection.from_summary(summary, streamed=bool(summary.get("streamed")), usage=usage),
        delivered_status=BLOCKED_STATUS if status_replaced else None, error=seen.error,
        capture=dict(seen.capture) if seen.capture is not None else None, upstream_host=seen.upstream_host,
        transparency=(seen.transparency.record(json_field_sent=bool(summary.get("marker_field")))
                      if seen.transparency is not None else None))
    return Outcome(record, usage, tokens_used(usage), seen.error)


@dataclass(frozen=True)
class CacheHit:
    """A cached answer served in place of the provider's: the verdict (no upstream, nothing
    forwarded), its outcome, and the status the client gets."""

    verdict: Verdict
    outcome: Outcome
    status: int


def cache_hit(verdict: Verdict, lookup: Mapping[str, Any], served: Mapping[str, Any], *, request_id: str,
              completed_ms: int, summary: Mapping[str, Any], streamed: bool,
              capture: Mapping[str, Any] | None) -> CacheHit:
    """SERVED names the entry (key, who filled it, when, under which policy); SUMMARY is the
    response inspection of the cached answer under the policy in force now. A whole answer the
    response policy blocks goes out as the blocked status; a streamed one carries the block in
    its events under a 200."""
    status = BLOCKED_STATUS if summary.get("blocked") and not streamed else 200
    hit = replace(annotated(verdict, cache={**lookup, "result": "hit"}, served_from_cache=dict(served),
                            upstream=None, forwarded_sha256=None), new_body=None)
    record = OutcomeRecord(
        request_id=request_id, completed_ms=completed_ms, status=200,
        response=ResponseInspection.from_summary(summary, streamed=streamed, usage=None), delivered_status=status,
        capture=dict(capture, truncated=False) if capture is not None else None,
        served_from_cache=dict(served, usage=summary.get("usage")))
    return CacheHit(hit, Outcome(record, None, None, None), status)
