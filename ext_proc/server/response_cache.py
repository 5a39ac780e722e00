"""The servicer's side of the response cache: look up after the decision, answer a hit with an
ext_proc immediate response (records committed first), fill after a miss's outcome committed.

Kept out of servicer.py so the hooks there stay a few lines each (docs/cache.md)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD
from ext_proc.cache import (
    CachePlan,
    CacheUnavailable,
    Entry,
    NotReplayable,
    fillable,
    plan_request,
    replay_stream,
    request_policy_version,
)
from ext_proc.pipeline.outcome import cache_hit
from ext_proc.pipeline.verdict import annotated
from ext_proc.server import replies
from ext_proc.server.cache_state import CacheTurn, ResponseCache
from ext_proc.streaming import ResponseInspector, ResponseRules
from ext_proc.streaming.inspector import BLOCKED_STATUS

if TYPE_CHECKING:
    from ext_proc.pipeline.verdict import Verdict
    from ext_proc.server.exchange_view import ExchangeView

log = structlog.get_logger("ledgergate.cache")
CACHE_HEADER = "x-ledgergate-cache"


def _plan(ex: ExchangeView, verdict: Verdict, policy, body: bytes | None) -> CachePlan:
    head, identity, decision = ex.head, verdict.identity, verdict.decision
    assert head is not None
    forwarded = verdict.new_body if verdict.new_body is not None else body
    subject = f"{identity.issuer}|{identity.subject}" if identity is not None and identity.subject else None
    return plan_request(
        cache_rules=policy.compiled.get("cache") or (), route=getattr(decision, "route", None),
        matched_rules=[m.get("rule") for m in getattr(decision, "matched", ())],
        outcome=getattr(decision, "outcome", "deny"), surface=head.surface.name if head.surface else None,
        provider=head.surface.provider if head.surface else None, model=verdict.model,
        forwarded_body=forwarded, tenant=identity.tenant if identity is not None else None,
        subject_scope=subject, client_headers=head.headers,
        policy_request_version=request_policy_version(policy.compiled, policy.version),
        multiplexed=ex.multiplex is not None)


async def answer_from_cache(ex: ExchangeView, verdict: Verdict,
                            body: bytes | None) -> tuple[Verdict, pb.ProcessingResponse | None]:
    """After a forward decision: the verdict with its `cache` section, and the immediate
    response of a hit (both records committed), or None to forward (miss, bypass, store outage;
    the decision record says which)."""
    rc: ResponseCache = ex.rt.cache
    policy = ex.rt.policies.current
    if verdict.decision is None or verdict.decision.policy_version != policy.version:
        rc.metrics.lookup("bypass")
        return annotated(verdict, cache={"result": "bypass", "reason": "policy_reloaded_during_decision"}), None
    plan = _plan(ex, verdict, policy, body)
    if not plan.cacheable:
        if plan.reason == "off":
            return verdict, None
        rc.metrics.lookup("bypass")
        return annotated(verdict, cache=plan.to_record()), None
    key = plan.key
    if key is None:  # plan_request gives every cacheable plan its key: anything else is a bug
        raise RuntimeError("a cacheable plan without a store key")
    lookup: dict[str, Any] = {"rule": plan.rule, "key_sha256": plan.key_sha256}
    try:
        entry = await rc.store.get(key)
    except CacheUnavailable as exc:
        # An outage never fails a request: it is forwarded, and the record says so.
        rc.metrics.lookup("unavailable")
        ex.cache_turn = CacheTurn(plan, "unavailable", 0)
        return annotated(verdict, cache={**lookup, "result": "unavailable", "error": str(exc)[:64]}), None
    if entry is not None:
        try:
            answer, ctype = ((replay_stream(plan_surface(ex), entry.body, include_usage=not verdict.usage_injected),
                              "text/event-stream") if plan.stream else (entry.body, entry.content_type))
        except NotReplayable as exc:
            rc.metrics.lookup("miss")
            ex.cache_turn = CacheTurn(plan, "miss", 0)
            return annotated(verdict, cache={**lookup, "result": "miss", "reason": f"not_replayable_{exc}"}), None
        rc.metrics.lookup("hit")
        return await _serve(ex, verdict, plan, entry, answer, ctype, lookup)
    rc.metrics.lookup("miss")
    ex.cache_turn = CacheTurn(plan, "miss", rc.max_entry_bytes)
    return annotated(verdict, cache={**lookup, "result": "miss"}), None


def plan_surface(ex: ExchangeView) -> str:
    return ex.head.surface.name if ex.head is not None and ex.head.surface is not None else "unknown"


async def _serve(ex: ExchangeView, verdict: Verdict, plan: CachePlan, entry: Entry, body: bytes, ctype: str,
                 lookup: dict) -> tuple[Verdict, pb.ProcessingResponse]:
    rt, head = ex.rt, ex.head
    assert head is not None
    decision = verdict.decision
    if decision is None:  # answer_from_cache bypasses a verdict without a decision before a lookup
        raise RuntimeError("a cache hit served without a policy decision")
    policy = rt.policies.current
    # The response policy in force now, on the whole cached answer, with the same inspector a
    # provider's answer goes through.
    rules = ResponseRules.from_policy(decision.response)
    tenant = verdict.identity.tenant if verdict.identity else None
    memo = rt.cache.inspections
    memo_key = memo.key(body, surface=plan_surface(ex), content_type=ctype, policy_version=policy.version,
                        rules=rules, tenant=tenant, hash_key=rt.hash_key, max_buffer_bytes=rt.config.max_response_buffer_bytes,
                        max_block_chars=rt.config.max_finding_chars)
    summary = memo.get(memo_key)
    if summary is not None:
        released = body     # this answer went through this response policy unchanged before
    else:
        inspector = ResponseInspector(
            plan_surface(ex), status=200, content_type=ctype, content_encoding=None,
            classifier=rt.classifier_for(policy), rules=rules, hash_key=rt.hash_key, tenant=tenant,
            max_buffer_bytes=rt.config.max_response_buffer_bytes, drop_usage_chunk=False,
            max_block_chars=rt.config.max_finding_chars)
        released = b"".join(r.body for r in inspector.feed(body, True))
        summary = inspector.outcome()
        if inspector.finished:
            memo.put(memo_key, body, released, summary)
    served = {"key_sha256": plan.key_sha256, "filled_by_request_id": entry.filled_by,
              "filled_ms": entry.filled_ms, "filled_policy_version": entry.policy_version, "rule": plan.rule}
    capture = None
    if rt.capture_key is not None:
        # Legal hold: the answer as delivered, bound to this request like a forwarded answer's.
        capture = rt.capture_key.seal(released, head.request_id.encode() + RESPONSE_CAPTURE_AAD)
    hit = cache_hit(verdict, lookup, served, request_id=head.request_id, completed_ms=int(rt.clock() * 1000),
                    summary=summary, streamed=plan.stream, capture=capture)
    if ex.reservation is not None:
        # Nothing is asked of the provider: the tokens reserved for it are given back.
        await rt.release(ex.reservation)
        ex.reservation = None
    started = time.perf_counter()
    # Both records in one durable write, one fsync (sealed in this order: decision, then
    # outcome); nothing is sent before both are durable, and a failed commit sends nothing
    # (AuditUnavailable). Two commits cost two fsyncs when the writer woke between them, most of
    # a hit's added latency (issue 22). The answer is built while the writer makes them durable,
    # and returned only once they are.
    bodies = [hit.verdict.record.to_dict(), hit.outcome.record.to_dict()]
    with ex.trace.audit_commit(bodies[0]), ex.trace.audit_commit(bodies[1]):
        _records, durable = rt.audit.begin_together(bodies)
        headers = {"content-type": "application/json" if hit.status == BLOCKED_STATUS else ctype,
                   CACHE_HEADER: "hit", "x-request-id": head.request_id}
        headers.update(ex.ratelimit_headers)
        marker = (decision.response or {}).get("marker_header")
        if marker:
            headers[marker["name"]] = marker["value"]
        if plan.stream:
            headers["cache-control"] = "no-cache"
        reply = replies.immediate(hit.status, headers, released, "served_from_cache")
        await durable
    rt.metrics.phase("cache_hit_commit", time.perf_counter() - started)
    rt.cache.metrics.bytes_moved("served", len(released))
    return hit.verdict, reply


def response_headers(ex: ExchangeView, content_type: str | None) -> dict[str, str]:
    """`x-ledgergate-cache: miss` on a forwarded answer that was looked up."""
    turn = ex.cache_turn
    if turn is None:
        return {}
    turn.content_type = content_type
    return {CACHE_HEADER: "miss"}


def after_outcome(ex: ExchangeView, summary: Mapping[str, Any], error: str | None, status: int | None,
                  finished: bool) -> None:
    """The outcome record of a miss is committed: fill the entry if the answer qualifies
    (FINISHED: the response inspection saw the whole answer)."""
    turn, rt = ex.cache_turn, ex.rt
    if turn is None or turn.result != "miss" or ex.head is None or ex.verdict is None:
        return
    ex.cache_turn = None
    why_not = fillable(plan=turn.plan, status=status, outcome=summary, error=error,
                       finished=finished and not turn.oversize,
                       content_type=turn.content_type, body_len=len(turn.body),
                       max_entry_bytes=rt.cache.max_entry_bytes)
    if why_not is not None:
        rt.cache.metrics.fills.labels(why_not).inc()
        return
    decision = ex.verdict.decision
    entry = Entry(body=bytes(turn.body), content_type=turn.content_type or "application/json",
                  filled_by=ex.head.request_id, filled_ms=int(rt.clock() * 1000),
                  policy_version=decision.policy_version if decision is not None else "",
                  surface=plan_surface(ex))
    key = turn.plan.key
    if key is None:  # a turn is made only for a cacheable plan, which has its key: never fill under None
        raise RuntimeError("a cache turn without a store key")
    rt.cache.schedule_fill(key, entry, turn.plan.ttl_s)
