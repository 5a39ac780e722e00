"""One HTTP request/response pair as seen through one router-level ext_proc stream: the phase it
is in, what was decided, and the awaits (identity, decision, audit commits) around the pure
pipeline. The loop is server/stream.py; replies are built in server/replies.py and
server/forwarding.py; the response half is server/response_side.py.

No unaudited byte: the decision record is committed before the request is released, the outcome
record before the end of the response.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import AsyncIterator, Mapping

import grpc
import structlog
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.audit.log import AuditUnavailable
from ext_proc.audit.record import AuditRecord
from ext_proc.identity import Identity, IdentityError
from ext_proc.pipeline.envelope import Envelope, EnvelopeRejected, EnvelopeRules, body_refused, inspect_envelope
from ext_proc.pipeline.multiplex import FailoverChain, Translated
from ext_proc.pipeline.outcome import ResponseSeen, response_outcome
from ext_proc.pipeline.request import RequestHead, reject_identity, reject_unprocessable
from ext_proc.pipeline.verdict import Verdict, annotated
from ext_proc.providers import error_body, match_surface
from ext_proc.ratelimit.limits import Reservation
from ext_proc.server import forwarding, replies, response_cache
from ext_proc.server.decide import decide
from ext_proc.server.local_reply import answer_envoy_reply
from ext_proc.server.messages import attributes_of, headers_to_dict
from ext_proc.server.response_side import ResponseSide
from ext_proc.server.runtime import Runtime
from ext_proc.server.stream import Failure, ProtocolViolation

log = structlog.get_logger("ledgergate.server")


class Phase(enum.Enum):
    AWAITING_HEADERS = "awaiting_headers"
    AWAITING_BODY = "awaiting_body"     # the headers were answered; no decision yet
    REFUSED = "refused"                 # a committed refusal went out as an immediate response
    RELEASED = "released"               # the decision is committed and the request forwarded
    RESPONDING = "responding"           # the upstream's answer is being inspected
    COMPLETED = "completed"             # the outcome is committed (or a cache hit answered)
    ENVOY_REPLY = "envoy_reply"         # Envoy's own reply to a request ledgergate never saw passes on


class Exchange:
    def __init__(self, rt: Runtime, grpc_context: grpc.aio.ServicerContext | None = None) -> None:
        self.rt = rt
        self.trace = rt.tracing.exchange(grpc_context)
        self.phase = Phase.AWAITING_HEADERS
        self.head: RequestHead | None = None
        self.identity: Identity | None = None
        self.envelope: Envelope | None = None   # headers / query as forwarded (pipeline/envelope.py)
        self.verdict: Verdict | None = None
        self.multiplex: Translated | FailoverChain | None = None   # when another provider serves it
        self.reservation: Reservation | None = None
        self.ratelimit_headers: Mapping[str, str] = {}
        self.cache_turn: response_cache.CacheTurn | None = None   # a cache miss to fill (docs/cache.md)
        self.response: ResponseSide | None = None

    @property
    def released(self) -> bool:
        return self.phase in (Phase.RELEASED, Phase.RESPONDING)

    # --- request side -------------------------------------------------------------------
    async def on_request_headers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.phase is not Phase.AWAITING_HEADERS:
            raise ProtocolViolation("request headers twice")
        msg = req.request_headers
        headers, attrs, now = headers_to_dict(msg.headers), attributes_of(req), self.rt.clock()
        path = (headers.get(":path") or [attrs.get("request.path", "/")])[0]
        method = (headers.get(":method") or [attrs.get("request.method", "GET")])[0]
        request_id = attrs.get("request.id") or (headers.get("x-request-id") or [""])[0] or \
            hashlib.sha256(repr((now, id(self))).encode()).hexdigest()[:32]
        self.head = head = RequestHead(request_id=request_id, method=method, path=path, headers=headers,
                                       attributes=attrs, received_ms=int(now * 1000),
                                       surface=match_surface(method, path))
        self.phase = Phase.AWAITING_BODY
        self.trace.start(head)
        try:
            with self.trace.phase("identity"):
                self.identity = await self.rt.identity.resolve(headers, attrs, now)
        except IdentityError as exc:
            self.rt.metrics.identity_failure(exc.reason)
            return [await self.refuse(reject_identity(head, exc, self._now_ms(), self.rt.policies.current,
                                                       classifier=self.rt.classifier_for(self.rt.policies.current)))]
        rules = self.rt.config.envelope if isinstance(self.rt.config.envelope, EnvelopeRules) else EnvelopeRules()
        try:
            if not msg.end_of_stream and body_refused(method, headers, None):
                raise EnvelopeRejected(400, "body_not_allowed", f"a {method.upper()} request must not carry a body")
            self.envelope = inspect_envelope(method, path, headers, head.surface, rules,
                                             keep=forwarding.own_header_names(self.rt, head, self.identity),
                                             has_findings=forwarding.has_findings(self.rt))
        except EnvelopeRejected as exc:
            return [await self.refuse(self._envelope_refusal(exc))]
        if msg.end_of_stream:
            return await self._decide(None, headers_phase=True)   # no body will follow (GET /v1/models)
        return [forwarding.request_headers_reply(self.rt, head, self.identity, self.envelope, None)]

    async def on_request_body(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.head is None:
            raise ProtocolViolation("request body before request headers")
        if self.verdict is not None:
            # Envoy re-delivered the end of the body (envoyproxy/envoy#46237): answer it the same way.
            return [forwarding.request_body_reply(self.rt, self.verdict, self.envelope, self.multiplex)]
        body = bytes(req.request_body.body)
        if body and body_refused(self.head.method, self.head.headers, len(body)):
            # A body the provider's API does not read (GET /v1/models): never forwarded.
            return [await self.refuse(self._envelope_refusal(EnvelopeRejected(
                400, "body_not_allowed", f"a {self.head.method.upper()} request must not carry a body"), body))]
        return await self._decide(body, headers_phase=False)

    async def on_request_trailers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        return [replies.request_trailers()]

    def _now_ms(self) -> int:
        return int(self.rt.clock() * 1000)

    def _envelope_refusal(self, exc: EnvelopeRejected, body: bytes | None = None) -> Verdict:
        assert self.head is not None
        verdict = reject_unprocessable(self.head, self.identity, exc.status, exc.code, str(exc), self._now_ms(),
                                       body, self.rt.policies.current,
                                       classifier=self.rt.classifier_for(self.rt.policies.current))
        if self.envelope is not None:
            verdict = annotated(verdict, envelope=self.envelope.to_record(forwarding.has_findings(self.rt)))
        return verdict

    async def _decide(self, body: bytes | None, *, headers_phase: bool) -> list[pb.ProcessingResponse]:
        assert self.head is not None and self.identity is not None
        decided = await decide(self.rt, self.head, self.identity, self.envelope, body,
                               forwarding.has_findings(self.rt), self.trace)
        self.verdict, self.multiplex, self.reservation = decided.verdict, decided.multiplexed, decided.reservation
        self.ratelimit_headers = decided.answer_headers
        if not decided.verdict.forward:
            return [await self.refuse(decided.verdict, decided.refusal_headers)]
        self.verdict, hit = await response_cache.answer_from_cache(self, decided.verdict, body)
        if hit is not None:
            self.phase = Phase.COMPLETED   # served from cache: both records are committed, nothing goes upstream
            return [hit]
        await self.commit(self.verdict.record)
        self.phase = Phase.RELEASED
        if headers_phase:
            return [forwarding.request_headers_reply(self.rt, self.head, self.identity, self.envelope, self.verdict)]
        return [forwarding.request_body_reply(self.rt, self.verdict, self.envelope, self.multiplex)]

    async def refuse(self, verdict: Verdict, extra_headers: Mapping[str, str] | None = None) -> pb.ProcessingResponse:
        assert self.head is not None
        self.verdict = verdict
        await self.commit(verdict.record)
        if self.reservation is not None:
            await self.rt.release(self.reservation)
            self.reservation = None
        self.phase = Phase.REFUSED
        log.info("request_denied", request_id=self.head.request_id, status=verdict.status, code=verdict.code)
        return replies.rejection(verdict, self.head.request_id, extra_headers)

    async def commit(self, record: AuditRecord) -> None:
        started = time.perf_counter()
        body = record.to_dict()
        with self.trace.audit_commit(body):
            await self.rt.audit.commit(body)
        self.rt.metrics.phase("audit_commit", time.perf_counter() - started)

    # --- response side (server/response_side.py) ----------------------------------------
    async def on_response_headers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.phase is Phase.AWAITING_BODY:
            # Envoy answered a request ledgergate holds (413 over its buffer limit, 400): a decision too.
            return await answer_envoy_reply(self, req)
        if self.phase is Phase.AWAITING_HEADERS:
            # Envoy refused the request before ledgergate saw it (a path with `#`): nothing was
            # released, so its reply passes on as Envoy shaped it, body echoed (server/local_reply.py).
            self.phase = Phase.ENVOY_REPLY
            return [replies.response_headers()]
        if self.phase is not Phase.RELEASED:
            raise ProtocolViolation("response before the request was released")
        self.trace.begin("response")
        self.phase = Phase.RESPONDING
        self.response = ResponseSide(self, req.response_headers)
        return await self.response.headers_replies(req.response_headers.end_of_stream)

    def on_response_body(self, req: pb.ProcessingRequest) -> AsyncIterator[pb.ProcessingResponse] | list:
        if self.phase is Phase.ENVOY_REPLY:
            return [replies.body_chunk(req.response_body.body, req.response_body.end_of_stream)]
        if self.response is None:
            raise ProtocolViolation("response body before response headers")
        return self.response.body_replies(req.response_body)

    async def on_response_trailers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        return await self.response.trailers_replies() if self.response is not None else [replies.response_trailers()]

    async def commit_outcome(self, error: str | None = None) -> None:
        if self.phase is Phase.COMPLETED or self.head is None:
            return
        self.phase = Phase.COMPLETED
        request_id, now_ms = self.head.request_id, self._now_ms()
        seen = self.response.seen(request_id, now_ms, error) if self.response is not None else \
            ResponseSeen(request_id=request_id, completed_ms=now_ms, status=None, error=error)
        outcome = response_outcome(seen)
        if self.verdict is not None and outcome.usage:
            self.rt.metrics.spend(dict(outcome.usage), tenant=self.identity.tenant if self.identity else None,
                                  model=self.verdict.record.routing.model_routed or self.verdict.model,
                                  provider=self.verdict.record.routing.upstream or self.head.provider)
        if self.reservation is not None:
            try:
                if outcome.settle_tokens is not None:
                    await self.rt.settle(self.reservation, outcome.settle_tokens)
            finally:
                self.reservation = None
        await self.commit(outcome.record)
        response_cache.after_outcome(self, seen.summary, outcome.error, seen.status,
                                     self.response is not None and self.response.inspector.finished)

    # --- the stream's end (server/stream.py) --------------------------------------------
    def failure(self, exc: Exception) -> Failure:
        request_id = self.head.request_id if self.head else None
        if not isinstance(exc, AuditUnavailable):
            self.rt.metrics.error("internal")
            log.error("stream_error", request_id=request_id, error_type=type(exc).__name__)
            return Failure(type(exc).__name__)
        self.rt.metrics.error("audit_unavailable")
        log.error("audit_unavailable", request_id=request_id)
        if self.head is None or self.phase is not Phase.AWAITING_BODY:
            return Failure("audit_unavailable", status=grpc.StatusCode.UNAVAILABLE, detail="audit store unavailable")
        # Nothing was released: tell the client clearly, in its provider's format.
        headers, body = error_body(self.head.provider, 503, "audit_unavailable",
                                   "the audit store is unavailable; the request was not forwarded")
        return Failure("audit_unavailable", replies.immediate(503, {**headers, "x-request-id": self.head.request_id},
                                                              body, "audit_unavailable"))

    def finish_now(self, error: str | None) -> bool:
        """The stream's end when it has nothing to wait for (a hit, a refusal: nothing released
        whose outcome is missing, no reservation to give back): done here, and True; False when
        `finish` must run (server/stream.py then runs it shielded, as a task of its own)."""
        if self.released or self.reservation is not None:
            return False
        self.rt.metrics.stream_ended()
        self.trace.finish(error)
        return True

    async def finish(self, error: str | None) -> None:
        """The stream ended: a released request whose outcome is not on record gets one now."""
        self.rt.metrics.stream_ended()
        try:
            if self.released:
                try:
                    await self.commit_outcome(error=error or "stream_ended_before_response_completed")
                except Exception as exc:  # noqa: BLE001 - the stream is already gone; log, never leak content
                    log.error("outcome_commit_failed", request_id=self.head.request_id if self.head else None,
                              error_type=type(exc).__name__)
            elif self.reservation is not None:
                await self.rt.release(self.reservation)
                self.reservation = None
        finally:
            self.trace.finish(error)
