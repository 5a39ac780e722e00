"""The gRPC adapter: one ext_proc stream per HTTP request, turned into calls on the sans-I/O
pipeline and its answers turned back into ext_proc replies.

Fail closed: every path out of `Process` other than Envoy closing the stream aborts the RPC with
a gRPC error, because a handler that simply returns makes Envoy forward the rest of the request
without the processor (shared/notes/ext_proc.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import grpc
import structlog
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2

from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD, seal_capture
from ext_proc.audit.log import AuditUnavailable
from ext_proc.audit.record import outcome_record
from ext_proc.identity import IdentityError, forwarded_identity_headers
from ext_proc.pipeline.request import (
    RequestHead,
    Verdict,
    decide_request,
    reject_identity,
    reject_unprocessable,
    strip_headers,
)
from ext_proc.providers import Provider, error_body, match_surface
from ext_proc.server.messages import attributes_of as _attributes
from ext_proc.server.messages import headers_to_dict as _headers_to_dict
from ext_proc.server.messages import set_header as _set_header
from ext_proc.server.envoy_flags import upstream_error
from ext_proc.server.runtime import Runtime
from ext_proc.server import response_cache
from ext_proc.server.upstream import process_upstream
from ext_proc.pipeline.budget import BudgetedClassifier, ScanPool
from ext_proc.pipeline.envelope import (Envelope, EnvelopeRejected, EnvelopeRules, body_refused, inspect_envelope,
                                        rewritable)
from ext_proc.pipeline.multiplex import CHAIN_HEADER, ModelListAliases, alias_refusal, route_for
from ext_proc.pipeline.request import sha256_hex
from ext_proc.providers.translate import ResponseTranslator, TranslationError, translate_request
from ext_proc.ratelimit import refusal
from ext_proc.streaming import Release, ResponseInspector, ResponseRules
from ext_proc.streaming.inspector import BLOCKED_STATUS
from ext_proc.streaming.transparency import DISCLOSURE_HEADER, TransparencyMarker, transparency_marker

log = structlog.get_logger("ledgergate.server")


# Bodies from this size up are decided on one worker thread, one at a time, off the event loop,
# and their large texts are classified in a separate process (ScanPool): a caller sending large
# or pathological bodies then delays other large bodies, never the small requests the loop
# decides inline. A thread alone is not enough: the classifier's checks are Python and hold the
# GIL the loop needs (docs/benchmarks.md, bench-abuse).
HEAVY_BODY_BYTES = 64 * 1024
# Large bodies waiting for (or in) the lane: past this a new one is refused at once with a 503
# (inspection would outlast Envoy's message timeout; the caller may retry) rather than queued.
HEAVY_QUEUE_MAX = 8


class _HeavyLane:
    """One thread for the decisions on large bodies (started on first use), and how many are
    waiting for it. Used from the event loop only."""

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.pending = 0
        self.scan_pool = ScanPool(workers=1)

    async def run(self, fn):
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledgergate-inspect")
        loop = asyncio.get_running_loop()
        job = self.executor.submit(fn)
        self.pending += 1
        # Counted until the work is really over (or cancelled before it started): a caller that
        # disconnects while its body is being inspected still occupies the lane.
        job.add_done_callback(lambda _job: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(job, loop=loop)

    def _release(self) -> None:
        self.pending -= 1


_heavy_lane = _HeavyLane()


class ProtocolViolation(Exception):
    """Envoy sent a message this processing mode never produces."""


def _immediate(verdict: Verdict, request_id: str, extra_headers: dict[str, str] | None = None) -> pb.ProcessingResponse:
    headers = dict(verdict.error_headers)
    headers["x-request-id"] = request_id
    if extra_headers:
        headers.update(extra_headers)
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=verdict.status),
        headers=pb.HeaderMutation(set_headers=[_set_header(k, v) for k, v in headers.items()]),
        body=verdict.error_body,
        details=verdict.code))


class Exchange:
    """State of one HTTP request/response pair as seen through one ext_proc stream."""

    def __init__(self, rt: Runtime, grpc_context: grpc.aio.ServicerContext | None = None) -> None:
        self.rt = rt
        self.head: RequestHead | None = None
        self.identity = None
        self.trace = rt.tracing.exchange(grpc_context)
        self.verdict: Verdict | None = None
        self.reservation = None
        self.inspector: ResponseInspector | None = None
        self.response_status: int | None = None
        self.pending_headers: tuple[list, list[str]] | None = None  # response headers held for a whole body
        self.blocked_status_sent = False   # the held headers went out as the block's error status
        self.multiplex: tuple | None = None       # (Route, TranslatedRequest) when another provider serves it
        self.translator: ResponseTranslator | ModelListAliases | None = None
        self.upstream_host: str | None = None
        self.ratelimit_headers: dict[str, str] = {}
        self.upstream_error: str | None = None   # Envoy ended the exchange itself (timeout, reset)
        self.transparency: TransparencyMarker | None = None
        self.outcome_committed = False
        self.request_released = False
        # Legal-hold capture of the response as delivered (after redaction), bounded.
        self.captured: bytearray | None = bytearray() if rt.capture_key is not None else None
        self.capture_truncated = False
        self.envelope: Envelope | None = None   # headers / query as forwarded (pipeline/envelope.py)
        self.cache_turn: response_cache.CacheTurn | None = None   # a cache miss to fill (docs/cache.md)

    # --- request side -------------------------------------------------------------------
    async def on_request_headers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        msg = req.request_headers
        headers = _headers_to_dict(msg.headers)
        attrs = _attributes(req)
        now = self.rt.clock()
        path = (headers.get(":path") or [attrs.get("request.path", "/")])[0]
        method = (headers.get(":method") or [attrs.get("request.method", "GET")])[0]
        request_id = attrs.get("request.id") or (headers.get("x-request-id") or [""])[0] or \
            hashlib.sha256(repr((now, id(self))).encode()).hexdigest()[:32]
        self.head = RequestHead(request_id=request_id, method=method, path=path, headers=headers,
                                attributes=attrs, received_ms=int(now * 1000),
                                surface=match_surface(method, path))
        self.trace.start(self.head)
        try:
            with self.trace.phase("identity"):
                self.identity = await self.rt.identity.resolve(headers, attrs, now)
        except IdentityError as exc:
            self.rt.metrics.identity_failure(exc.reason)
            verdict = reject_identity(self.head, exc, int(self.rt.clock() * 1000), self.rt.policies.current)
            return [await self._finish_rejected(verdict)]
        rejected = self._inspect_envelope(end_of_stream=msg.end_of_stream)
        if rejected is not None:
            return [await self._finish_rejected(rejected)]
        if msg.end_of_stream:
            # No body will follow (GET /v1/models): decide now.
            return await self._decide(None, phase="headers")
        return [pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=self._request_header_mutation()))]

    # --- envelope: headers, query string, method (pipeline/envelope.py) ---------------------
    def _own_header_names(self) -> list[str]:
        """Headers ledgergate sets itself: never on the removal list."""
        assert self.head is not None
        names = ["accept-encoding", "content-length"]
        if self.head.surface is not None:
            cred = self.rt.config.upstream_credentials.get(self.head.surface.provider)
            if cred:
                names.append(cred["header"].lower())
        if self.identity is not None:
            names += [k.lower() for k in forwarded_identity_headers(self.identity, self.rt.identity.config)]
        return names

    def _has_findings(self, text: str) -> bool:
        """Whether a header name is safe to record as written. A classifier that fails here says
        yes to nothing: the name is recorded as a placeholder, and the decision itself (which
        scans again) fails closed in its own way."""
        try:
            return bool(self.rt.classifier_for(self.rt.policies.current).scan(text))
        except Exception:  # noqa: BLE001 - recording must not turn a clean refusal into a stream abort
            return True

    def _inspect_envelope(self, *, end_of_stream: bool) -> Verdict | None:
        """Parse the envelope once, at the request headers; a refusal is a recorded 400."""
        head = self.head
        assert head is not None
        rules = self.rt.config.envelope if isinstance(self.rt.config.envelope, EnvelopeRules) else EnvelopeRules()
        try:
            if not end_of_stream and body_refused(head.method, head.headers, None):
                raise EnvelopeRejected(400, "body_not_allowed",
                                       f"a {head.method.upper()} request must not carry a body")
            self.envelope = inspect_envelope(head.method, head.path, head.headers, head.surface, rules,
                                             keep=self._own_header_names(), has_findings=self._has_findings)
        except EnvelopeRejected as exc:
            return self._reject_envelope(exc)
        return None

    def _reject_envelope(self, exc: EnvelopeRejected, body: bytes | None = None) -> Verdict:
        head = self.head
        assert head is not None
        verdict = reject_unprocessable(head, self.identity, exc.status, exc.code, str(exc),
                                       int(self.rt.clock() * 1000), body, self.rt.policies.current)
        if self.envelope is not None:
            verdict.record["envelope"] = self.envelope.to_record(self._has_findings)
        return verdict

    def _envelope_mutation(self, verdict: Verdict | None) -> tuple[list, list[str]]:
        """(set_headers, remove_headers) that make the forwarded headers and query what the
        envelope allows, with the decision's redactions of header and query values."""
        env = self.envelope
        if env is None:
            return [], []
        redacted = verdict.envelope_redacted if verdict is not None else {}
        set_headers = []
        query_redacted: dict[int, str] = {}
        for i, value in redacted.items():
            seg = env.segments[i]
            if not rewritable(seg):
                continue        # the decision was turned into a deny (_decide)
            if seg.where.startswith("query:"):
                query_redacted[seg.position] = value
            else:
                set_headers.append(_set_header(seg.name, value))
        if env.query_changed or query_redacted:
            set_headers.append(_set_header(":path", env.forwarded_path(query_redacted)))
        return set_headers, list(env.removed_headers)

    def _request_header_mutation(self, *, body_len: int | None = None) -> pb.CommonResponse:
        assert self.head is not None
        envelope_set, envelope_remove = self._envelope_mutation(self.verdict)
        remove = sorted(set(strip_headers(self.head.headers)) | set(envelope_remove))
        set_headers = [_set_header("accept-encoding", "identity")]
        if self.head.surface is not None:
            cred = self.rt.config.upstream_credentials.get(self.head.surface.provider)
            if cred:
                set_headers.append(_set_header(cred["header"], self.rt.upstream_secret(self.head.surface.provider)))
                remove = [h for h in remove if h != cred["header"].lower()]
        if self.identity is not None:
            for k, v in forwarded_identity_headers(self.identity, self.rt.identity.config).items():
                set_headers.append(_set_header(k, v))
        if body_len is not None:
            set_headers.append(_set_header("content-length", str(body_len)))
        set_headers += envelope_set
        # A route chosen with a header the client sent in our namespace (Envoy may have resolved
        # it already) is chosen again without it.
        spoofed = any(h.startswith("x-ledgergate-") for h in remove)
        return pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove),
                                 clear_route_cache=spoofed)

    async def on_request_body(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.head is None:
            raise ProtocolViolation("request body before request headers")
        if self.verdict is not None:
            # Envoy re-delivered the end of the body (envoyproxy/envoy#46237): answer it the same way.
            return [self._body_continue(self.verdict)]
        body = bytes(req.request_body.body)
        if body and body_refused(self.head.method, self.head.headers, len(body)):
            # A body the provider's API does not read (GET /v1/models): never forwarded.
            return [await self._finish_rejected(self._reject_envelope(EnvelopeRejected(
                400, "body_not_allowed", f"a {self.head.method.upper()} request must not carry a body"), body))]
        return await self._decide(body, phase="body")

    async def _decide(self, body: bytes | None, *, phase: str) -> list[pb.ProcessingResponse]:
        rt, head = self.rt, self.head
        assert head is not None and self.identity is not None
        policy = rt.policies.current
        started = time.perf_counter()
        self.trace.begin("decide")
        heavy = body is not None and len(body) >= HEAVY_BODY_BYTES
        budget = BudgetedClassifier(rt.classifier_for(policy), max_bytes=rt.config.max_inspection_bytes,
                                    max_candidates=rt.config.max_inspection_candidates,
                                    pool=_heavy_lane.scan_pool if heavy else None, custom_terms=policy.dictionaries)

        def decide() -> Verdict:   # the time of the decision is read when it is taken (after any wait)
            return decide_request(head, self.identity, body, policy=policy, classifier=budget,
                                  hash_key=rt.hash_key, now_ms=int(rt.clock() * 1000),
                                  max_body_bytes=rt.config.max_body_bytes,
                                  envelope_segments=self.envelope.segments if self.envelope else ())
        try:
            if heavy and _heavy_lane.pending >= HEAVY_QUEUE_MAX:
                verdict = reject_unprocessable(head, self.identity, 503, "inspection_busy",
                                               "too many large requests are waiting for inspection; retry later",
                                               int(rt.clock() * 1000), body, policy)
            elif heavy:
                verdict = await _heavy_lane.run(decide)
            else:
                verdict = decide()
        except Exception as exc:  # noqa: BLE001 - any pipeline failure is a fail-closed denial
            log.error("pipeline_error", request_id=head.request_id, error_type=type(exc).__name__)
            verdict = reject_unprocessable(head, self.identity, 503, "processing_error",
                                           "the request could not be inspected; it was not forwarded",
                                           int(rt.clock() * 1000), body, policy)
        verdict.record["inspection"] = budget.to_record()
        if self.envelope is not None:
            verdict.record["envelope"] = self.envelope.to_record(self._has_findings)
            stuck = [i for i in verdict.envelope_redacted if not rewritable(self.envelope.segments[i])]
            if verdict.forward and stuck:
                # Envoy lets no processor rewrite its own headers, and the model segment of the path
                # names the model: what cannot be redacted is refused.
                code = "unredactable_header" if self.envelope.segments[stuck[0]].where.startswith("header:") \
                    else "unredactable_path"
                verdict.record["decision"] = dict(verdict.record["decision"], outcome="deny", status=403,
                                                  code=code, policy_outcome=verdict.record["decision"].get("outcome"))
                verdict.record["forwarded_sha256"] = None
                verdict.reject(403, code, "a part of the request that cannot be rewritten holds classified data; "
                               "the request was not forwarded", head.provider)
        if verdict.forward and rt.config.multiplex_models:
            self._multiplex(verdict, body)
        rt.metrics.phase("decide", time.perf_counter() - started)
        self.trace.end("decide")
        extra_headers: dict[str, str] = {}
        if verdict.forward and verdict.limits:
            with self.trace.phase("ratelimit"):
                admission = await rt.reserve(head, verdict)
            verdict.record["ratelimit"] = admission.to_record()
            extra_headers = dict(admission.headers)
            if admission.admitted:
                self.reservation = admission.reservation
                # The answer carries the budget it was admitted under, like OpenAI's own answers.
                self.ratelimit_headers = {k: v for k, v in admission.headers.items() if k.startswith("x-ratelimit-")}
            else:
                provider = head.provider
                policy_outcome = verdict.record["decision"].get("outcome")
                status, code, message = refusal(admission)
                verdict.record["decision"] = dict(verdict.record["decision"], outcome="deny", status=status,
                                                  code=code, throttled_by=admission.throttled_by,
                                                  policy_outcome=policy_outcome)
                verdict.forward = False
                verdict.record["forwarded_sha256"] = None
                verdict.reject(status, code, message, provider)
        if rt.capture_key is not None and body:
            verdict.record["capture"] = seal_capture(rt.capture_key, rt.capture_key_id, body, head.request_id.encode())
        self.verdict = verdict
        rt.metrics.decision(verdict.record["decision"].get("outcome", "deny"), head.route_record()["surface"])
        if not verdict.forward:
            return [await self._finish_rejected(verdict, extra_headers)]
        if (hit := await response_cache.answer_from_cache(self, verdict, body)) is not None:
            return [hit]   # served from cache: both records are committed, nothing goes upstream
        await self._commit(verdict.record)
        self.request_released = True
        if phase == "headers":
            return [pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=self._request_header_mutation()))]
        return [self._body_continue(verdict)]

    def _multiplex(self, verdict: Verdict, body: bytes | None) -> None:
        """A model the deployer maps to another provider: the forwarded body (after redaction) is
        translated for it, and the decision record names the provider and why, before anything is
        committed or released."""
        assert self.head is not None
        surface = self.head.surface.name if self.head.surface else None
        chosen = verdict.decision.serve_with if verdict.decision is not None else None
        refused = alias_refusal(surface, verdict.model, self.rt.config.multiplex_models)
        if refused:
            verdict.record["decision"] = dict(verdict.record["decision"], outcome="deny", status=400,
                                              code="model_alias_not_on_this_api",
                                              policy_outcome=verdict.record["decision"].get("outcome"))
            verdict.record["forwarded_sha256"] = None
            verdict.reject(400, "model_alias_not_on_this_api", refused, self.head.provider)
            return
        route = route_for(surface, chosen or verdict.model, self.rt.config.multiplex_models)
        if chosen and route is None:
            # The policy names a model the deployer's map does not have: a configuration error,
            # never a silent fallback to the model the client asked for.
            verdict.record["decision"] = dict(verdict.record["decision"], outcome="deny", status=503,
                                              code="route_unavailable", policy_outcome=verdict.record["decision"].get("outcome"))
            verdict.record["forwarded_sha256"] = None
            verdict.reject(503, "route_unavailable", "the model the policy chose for this request is not configured",
                           Provider.OPENAI)
            return
        if route is None:
            return
        if chosen:
            route = dataclasses.replace(route, rationale=f"policy serve_with {chosen!r}: {route.rationale}")
        if route.chain:
            # Translated per attempt by the chain cluster's upstream filter (server/upstream.py):
            # the router sends the (redacted) OpenAI body to whichever provider each attempt reaches.
            self.multiplex = (route, None)
            if verdict.new_body is None and body is not None:
                verdict.new_body = body
            verdict.record.update(multiplex=route.to_record(), upstream=f"multiplex:{route.name}",
                                  model_routed=None)
            return
        forwarded = verdict.new_body if verdict.new_body is not None else body
        try:
            translated = translate_request(json.loads(forwarded or b"{}"), route.target)
        except (TranslationError, ValueError) as exc:
            message = str(exc) if isinstance(exc, TranslationError) else "the body is not JSON"
            verdict.record["decision"] = dict(verdict.record["decision"], outcome="deny", status=400,
                                              code="translation_error", policy_outcome=verdict.record["decision"].get("outcome"))
            verdict.record["forwarded_sha256"] = None
            verdict.reject(400, "translation_error", message, Provider.OPENAI)
            return
        self.multiplex = (route, translated)
        verdict.new_body = translated.body
        verdict.record.update(multiplex=route.to_record(), upstream=route.target.provider,
                              model_routed=route.target.model, forwarded_sha256=sha256_hex(translated.body))

    def _body_continue(self, verdict: Verdict) -> pb.ProcessingResponse:
        # Header and query values redacted by the decision (the envelope's removals went out with
        # the request headers already).
        envelope_set = self._envelope_mutation(verdict)[0] if verdict.envelope_redacted else []
        if verdict.new_body is None:
            return pb.ProcessingResponse(request_body=pb.BodyResponse(response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=envelope_set) if envelope_set else None)))
        set_headers = [_set_header("content-length", str(len(verdict.new_body)))] + envelope_set
        remove: list[str] = []
        clear_route = False
        if self.multiplex is not None and self.multiplex[1] is None:
            route = self.multiplex[0]
            set_headers.append(_set_header(CHAIN_HEADER, route.name))
            openai_cred = self.rt.config.upstream_credentials.get(Provider.OPENAI)
            if openai_cred:
                remove.append(openai_cred["header"].lower())
            clear_route = True
        elif self.multiplex is not None:
            route, translated = self.multiplex
            # The new path routes it (Envoy's routes match the providers' own paths) once the
            # route cache is cleared; the target's credential replaces the one set for OpenAI.
            set_headers.append(_set_header(":path", translated.path))
            set_headers += [_set_header(k, v) for k, v in translated.headers.items()]
            set_headers.append(_set_header("x-ledgergate-upstream", route.target.provider))
            openai_cred = self.rt.config.upstream_credentials.get(Provider.OPENAI)
            cred = self.rt.config.upstream_credentials.get(route.target.provider)
            if openai_cred:
                remove.append(openai_cred["header"].lower())
            if cred:
                set_headers.append(_set_header(cred["header"], self.rt.upstream_secret(route.target.provider)))
                remove = [h for h in remove if h != cred["header"].lower()]
            clear_route = True
        common = pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove),
            body_mutation=pb.BodyMutation(body=verdict.new_body), clear_route_cache=clear_route)
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))

    async def _finish_rejected(self, verdict: Verdict, extra_headers: dict[str, str] | None = None) -> pb.ProcessingResponse:
        self.verdict = verdict
        await self._commit(verdict.record)
        if self.reservation is not None:
            await self.rt.release(self.reservation)
            self.reservation = None
        log.info("request_denied", request_id=self.head.request_id if self.head else None,
                 status=verdict.status, code=verdict.code)
        return _immediate(verdict, self.head.request_id if self.head else "", extra_headers)

    async def _commit(self, record: dict) -> None:
        started = time.perf_counter()
        with self.trace.audit_commit(record):
            await self.rt.audit.commit(record)
        self.rt.metrics.phase("audit_commit", time.perf_counter() - started)

    # --- response side ------------------------------------------------------------------
    async def on_response_headers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.head is None or self.verdict is None or not self.request_released:
            raise ProtocolViolation("response before the request was released")
        self.trace.begin("response")
        headers = _headers_to_dict(req.response_headers.headers)
        self.response_status = int((headers.get(":status") or ["0"])[0] or 0)
        self.upstream_host = (headers.get("x-ledgergate-upstream-host") or [None])[0]
        self.upstream_error = upstream_error((headers.get("x-ledgergate-upstream-flags") or [None])[0])
        content_type = (headers.get("content-type") or [None])[0]
        decision = self.verdict.decision
        rules = ResponseRules.from_policy(decision.response if decision is not None else {})
        set_headers = [_set_header("x-request-id", self.head.request_id)]
        set_headers += [_set_header(k, v) for k, v in self.ratelimit_headers.items()]
        if self.multiplex is not None and self.multiplex[1] is not None:
            route, translated = self.multiplex
            self.translator = ResponseTranslator(
                route.target, stream=translated.stream, client_model=self.verdict.model or route.target.model,
                response_id="chatcmpl-" + hashlib.sha256(self.head.request_id.encode()).hexdigest()[:24],
                created=int(self.rt.clock()), include_usage=True)
            self.translator.start(self.response_status, content_type)
            content_type = self.translator.content_type
            set_headers.append(_set_header("content-type", content_type))
        elif (self.rt.config.multiplex_models and self.response_status == 200 and self.head.surface is not None
              and self.head.surface.name == "openai.models" and not self.head.surface.model_from_path
              and not req.response_headers.end_of_stream):
            self.translator = ModelListAliases(self.rt.config.multiplex_models,
                                               self.rt.config.max_response_buffer_bytes)
        # Article 50 transparency marker (ext_proc/streaming/transparency.py).
        target = self.multiplex[0].target if self.multiplex is not None and self.multiplex[1] is not None else None
        self.transparency = transparency_marker(
            (decision.response or {}).get("marker_header") if decision is not None else None,
            provider=target.provider if target else self.head.provider, model=target.model if target else self.verdict.model,
            policy_id=decision.policy_id if decision is not None else "", policy_version=decision.policy_version
            if decision is not None else "")
        self.inspector = ResponseInspector(
            self.head.surface.name if self.head.surface else "unknown",
            status=self.response_status,
            content_type=content_type,
            content_encoding=(headers.get("content-encoding") or [None])[0],
            classifier=self.rt.classifier_for(self.rt.policies.current), rules=rules,
            hash_key=self.rt.hash_key, tenant=self.identity.tenant if self.identity else None,
            max_buffer_bytes=self.rt.config.max_response_buffer_bytes,
            drop_usage_chunk=self.verdict.usage_injected,
            marker_field=(self.transparency.json_field, self.transparency.json_value())
            if self.transparency is not None and self.transparency.json_field else None)
        remove = ["content-length", "x-ledgergate-upstream-host", "x-ledgergate-upstream-flags"]
        mutation = getattr(self.inspector, "release_headers_mutation", None) or {}
        remove += [h for h in mutation.get("remove", []) if h not in remove]
        if self.transparency is not None:
            set_headers.append(_set_header(self.transparency.header_name, self.transparency.header_value))
            set_headers.append(_set_header(DISCLOSURE_HEADER, self.transparency.disclosure))
        cache_headers = response_cache.response_headers(self, content_type)
        set_headers += cache_headers
        if not cache_headers:
            remove.append(response_cache.CACHE_HEADER)   # only ledgergate says hit or miss
        if self.inspector.whole_body and not req.response_headers.end_of_stream:
            # Envoy keeps the headers until we answer them while the body keeps coming (full-duplex
            # streaming), so a whole JSON body is judged before its status is: a blocked answer
            # goes out as an error status, not as an error body under the upstream's 200.
            self.pending_headers = (set_headers, remove)
            return []
        common = pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove))
        out = [pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))]
        if req.response_headers.end_of_stream:
            # No body: the outcome is known now and must be durable before the headers go out.
            await self._commit_outcome()
        return out

    def _release_pending_headers(self) -> list[pb.ProcessingResponse]:
        if self.pending_headers is None or self.inspector is None:
            return []
        set_headers, remove = self.pending_headers
        self.pending_headers = None
        if self.inspector.blocked:
            self.blocked_status_sent = True
            set_headers = set_headers + [_set_header(":status", str(BLOCKED_STATUS)),
                                         _set_header("content-type", "application/json")]
            remove = [h for h in remove if h != "content-type"]
        common = pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove))
        return [pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))]

    # A chunk is inspected in slices, and each slice's releases are sent before the next is
    # scanned: Envoy coalesces a fast upstream's events into one large chunk, and scanning all of
    # it before releasing anything would put its whole cost in front of the first token. Slices
    # double in size so a large chunk still goes out in a handful of messages.
    FIRST_RESPONSE_SLICE_BYTES = 2048
    MAX_UNSENT_SLICE_BYTES = 16384

    async def iter_response_body(self, req: pb.ProcessingRequest) -> AsyncIterator[pb.ProcessingResponse]:
        if self.inspector is None:
            raise ProtocolViolation("response body before response headers")
        chunk = req.response_body
        data, end = bytes(chunk.body), chunk.end_of_stream
        if self.translator is not None:
            try:
                data = self.translator.feed(data, end)
            except TranslationError as exc:
                for rel in self.inspector.stop("translation_error", str(exc)):
                    self._capture(rel.body)
                    await self._commit_outcome()
                    for r in self._release_pending_headers():
                        yield r
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
                        body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
                            body=rel.body, end_of_stream=True)))))
                return
        start, step = 0, self.FIRST_RESPONSE_SLICE_BYTES
        ready: list[Release] = []
        text_sent = self.inspector.text_events_released
        while True:
            last = start + step >= len(data)
            piece = data[start:start + step]
            start, step = start + step, step * 2
            ready += self.inspector.feed(piece, end and last)
            # Releases without text (the role chunk, a ping) wait for the slice that releases the
            # first text, up to a bound: one message instead of two in front of the first token.
            if not ready or not (last or ready[-1].end_of_stream or start >= self.MAX_UNSENT_SLICE_BYTES
                                 or not self.inspector.streamed_sse
                                 or self.inspector.text_events_released > text_sent):
                if last:
                    return
                continue
            body, eos = b"".join(r.body for r in ready), ready[-1].end_of_stream
            ready, text_sent = [], self.inspector.text_events_released
            self._capture(body)
            # Held headers go out first: they travel to Envoy while the outcome is made
            # durable. Only the end of the body waits for the commit (no unaudited end of
            # response); if the commit fails the stream is aborted and the body never follows.
            for r in self._release_pending_headers():
                yield r
            if eos:
                await self._commit_outcome()
            yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
                body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
                    body=body, end_of_stream=eos)))))
            if last or eos:
                return

    async def on_response_trailers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        out: list[pb.ProcessingResponse] = []
        if self.inspector is not None and not self.inspector.finished:
            for rel in self.inspector.feed(b"", True):
                self._capture(rel.body)
                if rel.end_of_stream:
                    await self._commit_outcome()
                out.extend(self._release_pending_headers())
                # The trailers end the stream; the held tail goes out as the last body data.
                out.append(pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
                    body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
                        body=rel.body, end_of_stream=False))))))
        out.append(pb.ProcessingResponse(response_trailers=pb.TrailersResponse()))
        return out

    def _capture(self, data: bytes) -> None:
        if self.cache_turn is not None:
            self.cache_turn.collect(data)
        if self.captured is None or self.capture_truncated or not data:
            return
        room = self.rt.config.capture_max_response_bytes - len(self.captured)
        if len(data) > room:
            data, self.capture_truncated = data[:max(room, 0)], True
        self.captured += data

    async def _commit_outcome(self, error: str | None = None) -> None:
        if self.outcome_committed or self.head is None:
            return
        self.outcome_committed = True
        summary = self.inspector.outcome() if self.inspector is not None else {}
        usage = summary.get("usage")
        capture = None
        if self.captured is not None and self.inspector is not None:
            # Bound to this request's response, so it cannot be passed off as its request body.
            capture = seal_capture(self.rt.capture_key, self.rt.capture_key_id, bytes(self.captured),
                                   self.head.request_id.encode() + RESPONSE_CAPTURE_AAD)
            capture["truncated"] = self.capture_truncated
        record = outcome_record(
            request_id=self.head.request_id, completed_ms=int(self.rt.clock() * 1000),
            status=self.response_status, response_sha256=summary.get("response_sha256"),
            classification=summary.get("classification") or {}, redactions=summary.get("redactions") or [],
            usage=usage, blocked=summary.get("blocked"), streamed=bool(summary.get("streamed")),
            error=error or self.upstream_error,
            capture=capture, upstream_host=self.upstream_host,
            delivered_status=BLOCKED_STATUS if self.blocked_status_sent or (
                self.pending_headers is not None and summary.get("blocked")) else None)
        if self.verdict is not None and usage:
            self.rt.metrics.spend(usage, tenant=self.identity.tenant if self.identity else None,
                                  model=self.verdict.record.get("model_routed") or self.verdict.model,
                                  provider=self.verdict.record.get("upstream") or self.head.provider)
        if self.transparency is not None:
            record["transparency"] = self.transparency.record(json_field_sent=bool(summary.get("marker_field")))
        if self.reservation is not None:
            actual = None
            if usage:
                actual = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
            try:
                # Without usage (an upstream error, a blocked stream) the reservation stays charged
                # as estimated: the request was released, so it counts.
                if actual is not None:
                    await self.rt.settle(self.reservation, actual)
            finally:
                self.reservation = None
        await self._commit(record)
        response_cache.after_outcome(self, summary, error or self.upstream_error)

    async def on_stream_end(self, error: str | None) -> None:
        """The stream ended: a released request whose outcome is not on record gets one now."""
        if self.request_released and not self.outcome_committed:
            try:
                await self._commit_outcome(error=error or "stream_ended_before_response_completed")
            except Exception as exc:  # noqa: BLE001 - the stream is already gone; log, never leak content
                log.error("outcome_commit_failed", request_id=self.head.request_id if self.head else None,
                          error_type=type(exc).__name__)
        elif self.reservation is not None:
            await self.rt.release(self.reservation)
            self.reservation = None


class Servicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        if ("x-ledgergate-stage", "upstream") in tuple(context.invocation_metadata() or ()):
            async for r in process_upstream(self.rt, request_iterator, context):
                yield r
            return
        ex = Exchange(self.rt, context)
        self.rt.metrics.stream_started()
        error: str | None = None
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request")
                if kind == "request_headers":
                    replies = await ex.on_request_headers(req)
                elif kind == "request_body":
                    replies = await ex.on_request_body(req)
                elif kind == "response_headers":
                    replies = await ex.on_response_headers(req)
                elif kind == "response_body":
                    async for r in ex.iter_response_body(req):
                        yield r
                    continue
                elif kind == "response_trailers":
                    replies = await ex.on_response_trailers(req)
                elif kind == "request_trailers":
                    replies = [pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]
                else:
                    raise ProtocolViolation(f"unexpected message {kind!r}")
                for r in replies:
                    yield r
                if replies and replies[-1].WhichOneof("response") == "immediate_response":
                    return  # Envoy ends the stream after an immediate response.
        except AuditUnavailable:
            error = "audit_unavailable"
            self.rt.metrics.error("audit_unavailable")
            log.error("audit_unavailable", request_id=ex.head.request_id if ex.head else None)
            if ex.head is not None and not ex.request_released:
                # Nothing was released: tell the client clearly, in its provider's format.
                headers, body = error_body(ex.head.provider, 503, "audit_unavailable",
                                           "the audit store is unavailable; the request was not forwarded")
                v = Verdict(forward=False, status=503, code="audit_unavailable", message="", record={},
                            error_headers=headers, error_body=body)
                yield _immediate(v, ex.head.request_id)
                return
            await context.abort(grpc.StatusCode.UNAVAILABLE, "audit store unavailable")
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        except Exception as exc:  # noqa: BLE001
            error = type(exc).__name__
            self.rt.metrics.error("internal")
            log.error("stream_error", request_id=ex.head.request_id if ex.head else None,
                      error_type=type(exc).__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "ledgergate processing error")
        finally:
            self.rt.metrics.stream_ended()
            try:
                # Shielded: when Envoy resets a finished stream, gRPC cancels this handler, and
                # the await below is cancelled again while the outcome commit goes on.
                await asyncio.shield(ex.on_stream_end(error))
            finally:
                ex.trace.finish(error)
