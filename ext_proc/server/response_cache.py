"""The servicer's side of the response cache: look up after the decision, answer a hit with an
ext_proc immediate response (records committed first), fill after a miss's outcome committed.

Kept out of servicer.py so the hooks there stay a few lines each (docs/cache.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD, seal_capture
from ext_proc.cache import (
    CachePlan,
    CacheUnavailable,
    Entry,
    NotReplayable,
    cache_settings,
    fillable,
    open_store,
    plan_request,
    replay_stream,
    request_policy_version,
)
from ext_proc.cache.metrics import CacheMetrics
from ext_proc.pipeline.outcome import cache_hit
from ext_proc.pipeline.verdict import annotated
from ext_proc.server import replies
from ext_proc.streaming import ResponseInspector, ResponseRules
from ext_proc.streaming.inspector import BLOCKED_STATUS

if TYPE_CHECKING:
    from ext_proc.pipeline.verdict import Verdict
    from ext_proc.server.exchange import Exchange

log = structlog.get_logger("ledgergate.cache")
CACHE_HEADER = "x-ledgergate-cache"


class ResponseCache:
    """One per process: the store, its settings and metrics, the fills under way."""

    def __init__(self, section: Mapping[str, Any] | None, registry: Any, clock: Callable[[], float]) -> None:
        self.settings = cache_settings(section)
        self.metrics = CacheMetrics(registry)
        self.store = open_store(self.settings, clock=clock, on_evict=self.metrics.evicted)
        self.max_entry_bytes = int(self.settings["max_entry_bytes"])
        self._fills: set[asyncio.Task] = set()

    def schedule_fill(self, key: str, entry: Entry, ttl_s: int) -> None:
        task = asyncio.get_running_loop().create_task(self._fill(key, entry, ttl_s))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, key: str, entry: Entry, ttl_s: int) -> None:
        try:
            await self.store.put(key, entry, ttl_s)
        except CacheUnavailable as exc:
            self.metrics.fills.labels("store_unavailable").inc()
            log.warning("cache_fill_failed", error_type=str(exc))
            return
        self.metrics.fills.labels("stored").inc()
        self.metrics.bytes.labels("stored").inc(len(entry.body))
        if hasattr(self.store, "bytes_held"):
            self.metrics.held.set(self.store.bytes_held)

    async def close(self) -> None:
        if self._fills:
            await asyncio.gather(*self._fills, return_exceptions=True)
        await self.store.close()


class CacheTurn:
    """One exchange's cache state after a miss: the plan, and the answer as it was delivered."""

    def __init__(self, plan: CachePlan, result: str, max_bytes: int) -> None:
        self.plan = plan
        self.result = result              # "miss" or "unavailable"
        self.max_bytes = max_bytes
        self.body = bytearray()
        self.oversize = False
        self.content_type: str | None = None

    def collect(self, data: bytes) -> None:
        if self.oversize or not data or self.plan.stream:
            return
        if len(self.body) + len(data) > self.max_bytes:
            self.oversize, self.body = True, bytearray()
            return
        self.body += data


def _plan(ex: Exchange, verdict: Verdict, policy, body: bytes | None) -> CachePlan:
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


async def answer_from_cache(ex: Exchange, verdict: Verdict,
                            body: bytes | None) -> tuple[Verdict, pb.ProcessingResponse | None]:
    """After a forward decision: the verdict with its `cache` section, and the immediate
    response of a hit (both records committed), or None to forward (miss, bypass, store outage;
    the decision record says which)."""
    rc: ResponseCache = ex.rt.cache
    policy = ex.rt.policies.current
    if verdict.decision is None or verdict.decision.policy_version != policy.version:
        rc.metrics.lookups.labels("bypass").inc()
        return annotated(verdict, cache={"result": "bypass", "reason": "policy_reloaded_during_decision"}), None
    plan = _plan(ex, verdict, policy, body)
    if not plan.cacheable:
        if plan.reason == "off":
            return verdict, None
        rc.metrics.lookups.labels("bypass").inc()
        return annotated(verdict, cache=plan.to_record()), None
    lookup: dict[str, Any] = {"rule": plan.rule, "key_sha256": plan.key_sha256}
    try:
        entry = await rc.store.get(plan.key)
    except CacheUnavailable as exc:
        # An outage never fails a request: it is forwarded, and the record says so.
        rc.metrics.lookups.labels("unavailable").inc()
        ex.cache_turn = CacheTurn(plan, "unavailable", 0)
        return annotated(verdict, cache={**lookup, "result": "unavailable", "error": str(exc)[:64]}), None
    if entry is not None:
        try:
            answer, ctype = ((replay_stream(plan_surface(ex), entry.body, include_usage=not verdict.usage_injected),
                              "text/event-stream") if plan.stream else (entry.body, entry.content_type))
        except NotReplayable as exc:
            rc.metrics.lookups.labels("miss").inc()
            ex.cache_turn = CacheTurn(plan, "miss", 0)
            return annotated(verdict, cache={**lookup, "result": "miss", "reason": f"not_replayable_{exc}"}), None
        rc.metrics.lookups.labels("hit").inc()
        return await _serve(ex, verdict, plan, entry, answer, ctype, lookup)
    rc.metrics.lookups.labels("miss").inc()
    ex.cache_turn = CacheTurn(plan, "miss", rc.max_entry_bytes)
    return annotated(verdict, cache={**lookup, "result": "miss"}), None


def plan_surface(ex: Exchange) -> str:
    return ex.head.surface.name if ex.head is not None and ex.head.surface is not None else "unknown"


async def _serve(ex: Exchange, verdict: Verdict, plan: CachePlan, entry: Entry, body: bytes, ctype: str,
                 lookup: dict) -> tuple[Verdict, pb.ProcessingResponse]:
    rt, head = ex.rt, ex.head
    assert head is not None
    decision = verdict.decision
    # The response policy in force now, on the whole cached answer, with the same inspector a
    # provider's answer goes through.
    inspector = ResponseInspector(
        plan_surface(ex), status=200, content_type=ctype, content_encoding=None,
        classifier=rt.classifier_for(rt.policies.current), rules=ResponseRules.from_policy(decision.response),
        hash_key=rt.hash_key, tenant=verdict.identity.tenant if verdict.identity else None,
        max_buffer_bytes=rt.config.max_response_buffer_bytes, drop_usage_chunk=False,
        max_block_chars=rt.config.max_finding_chars)
    released = b"".join(r.body for r in inspector.feed(body, True))
    served = {"key_sha256": plan.key_sha256, "filled_by_request_id": entry.filled_by,
              "filled_ms": entry.filled_ms, "filled_policy_version": entry.policy_version, "rule": plan.rule}
    capture = None
    if rt.capture_key is not None:
        # Legal hold: the answer as delivered, bound to this request like a forwarded answer's.
        capture = seal_capture(rt.capture_key, rt.capture_key_id, released,
                               head.request_id.encode() + RESPONSE_CAPTURE_AAD)
    hit = cache_hit(verdict, lookup, served, request_id=head.request_id, completed_ms=int(rt.clock() * 1000),
                    summary=inspector.outcome(), streamed=plan.stream, capture=capture)
    if ex.reservation is not None:
        # Nothing is asked of the provider: the tokens reserved for it are given back.
        await rt.release(ex.reservation)
        ex.reservation = None
    started = time.perf_counter()
    # Both records in one durable write, one fsync (sealed in this order: decision, then
    # outcome); nothing is sent before both are durable, and a failed commit sends nothing
    # (AuditUnavailable). Two commits cost two fsyncs when the writer woke between them, most of
    # a hit's added latency (issue 22).
    bodies = [hit.verdict.record.to_dict(), hit.outcome.record.to_dict()]
    with ex.trace.audit_commit(bodies[0]), ex.trace.audit_commit(bodies[1]):
        await rt.audit.commit_together(bodies)
    rt.metrics.phase("cache_hit_commit", time.perf_counter() - started)
    rt.cache.metrics.bytes.labels("served").inc(len(released))
    headers = {"content-type": "application/json" if hit.status == BLOCKED_STATUS else ctype,
               CACHE_HEADER: "hit", "x-request-id": head.request_id}
    headers.update(ex.ratelimit_headers)
    marker = (decision.response or {}).get("marker_header")
    if marker:
        headers[marker["name"]] = marker["value"]
    if plan.stream:
        headers["cache-control"] = "no-cache"
    return hit.verdict, replies.immediate(hit.status, headers, released, "served_from_cache")


def response_headers(ex: Exchange, content_type: str | None) -> dict[str, str]:
    """`x-ledgergate-cache: miss` on a forwarded answer that was looked up."""
    turn = ex.cache_turn
    if turn is None:
        return {}
    turn.content_type = content_type
    return {CACHE_HEADER: "miss"}


def after_outcome(ex: Exchange, summary: Mapping[str, Any], error: str | None, status: int | None,
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
    rt.cache.schedule_fill(turn.plan.key, entry, turn.plan.ttl_s)
