"""Envoy's own replies are decisions too: each one is a signed decision record (outcome deny,
`decided_by: envoy`) in the worker's audit chain, and the client gets it in its provider's error
format. Three ways in, because Envoy answers at three different points:

- **Seen by ledgergate** (`answer_envoy_reply`): Envoy refuses a request whose headers ledgergate
  already has but which it has not released yet (a body over Envoy's buffer limit: 413; a path
  Envoy refuses after the headers were sent: 400). Envoy's reply then arrives as *response*
  headers on the open ext_proc stream. The record is committed, and the client gets ledgergate's
  provider-shaped reply, before anything leaves.
- **Never seen by ledgergate** (`EnvoyReplyLog`): a codec error before the filter chain, or Envoy
  answering because ledgergate itself failed. Envoy's access log (gRPC AccessLogService, filtered
  to these replies in envoy/*.yaml) reports them to the worker, which records them. Envoy ships
  access logs after the reply and drops them when no worker is reachable: these records are
  after the fact, and missing while no ledgergate runs (the reply itself is still provider-shaped
  by Envoy's local_reply_config).
- **During drain** (`DrainGate`): a worker that is draining still accepts new ext_proc streams
  and refuses each with a recorded 503 and `retry-after`, instead of refusing the stream (which
  Envoy turned into an empty 500), while the streams already in flight finish.

No record holds a body, a header value or a query string: the path (without its query), the
method, the status the client got, Envoy's response code details and response flags.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ext_proc.audit.log import AuditUnavailable
from ext_proc.pipeline.request import RequestHead, reject_unprocessable
from ext_proc.pipeline.verdict import Verdict, attributed
from ext_proc.providers import match_surface
from ext_proc.providers.envoy_replies import ACCESS_LOG_NAME, RETRY_AFTER_S, reason_for
from ext_proc.server import replies
from ext_proc.server.envoy_flags import UPSTREAM_FLAGS_HEADER, upstream_error
from ext_proc.server.messages import attributes_of, headers_to_dict
from ext_proc.server.runtime import Runtime
from ext_proc.server.stream import UPSTREAM_STAGE

log = structlog.get_logger("ledgergate.local_reply")

# Bounds what an access-log entry can put into a record.
_MAX_PATH = 2048
_MAX_DETAILS = 256


def _envoy_verdict(rt: Runtime, head: RequestHead, identity, status: int, details: str,
                   flags: str | None) -> Verdict:
    """The recorded refusal for an Envoy reply with STATUS (deny, decided by Envoy)."""
    reason, message = reason_for(status, details)
    verdict = reject_unprocessable(head, identity, status, f"envoy_{reason}", message,
                                   int(rt.clock() * 1000), None, rt.policies.current,
                                   classifier=rt.classifier_for(rt.policies.current))
    return attributed(verdict, "envoy", retry_after_s=RETRY_AFTER_S if status == 503 else None,
                      envoy_details=details[:_MAX_DETAILS] or None, envoy_flags=upstream_error(flags))


# --- seen by ledgergate: Envoy's reply arrives as the response to a request not yet released ----

async def answer_envoy_reply(exchange, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    """EXCHANGE has the request headers, nothing was released upstream, and Envoy's own reply
    arrives as response headers: record it, then answer in the provider's format. The caller
    (Exchange.on_response_headers) ends the stream after this immediate response."""
    head = exchange.head
    headers = headers_to_dict(req.response_headers.headers)
    status = int((headers.get(":status") or ["0"])[0] or 0) or 500
    flags = headers.get(UPSTREAM_FLAGS_HEADER)
    verdict = _envoy_verdict(exchange.rt, head, exchange.identity, status, "", flags[0] if flags else None)
    # Committed, then logged (request_denied, with the envoy_ code), by the exchange.
    return [await exchange.refuse(verdict)]


async def pass_envoy_reply(request_iterator) -> AsyncIterator[pb.ProcessingResponse]:
    """Response headers on a stream that carried no request: Envoy refused the request before
    the filter chain ran and its reply (already in the provider's format, local_reply_config)
    passes through ext_proc. Nothing was released upstream, so it goes on unchanged: the headers,
    then every body chunk echoed (in duplex mode what is not sent back never reaches the client;
    a clean close here would lose the body), then the trailers. The record comes from Envoy's
    access log, which has the path and the details this stream lacks."""
    yield replies.response_headers()
    async for req in request_iterator:
        kind = req.WhichOneof("request")
        if kind == "response_body":
            chunk = req.response_body
            yield replies.body_chunk(chunk.body, chunk.end_of_stream)
            if chunk.end_of_stream:
                return
        elif kind == "response_trailers":
            yield replies.response_trailers()
            return
        else:
            raise ValueError(f"unexpected {kind} after Envoy's own response headers")


# --- never seen by ledgergate: Envoy's access log ---------------------------------------------

def _method_name(entry) -> str:
    value = entry.request.request_method
    if not value:
        return "-"
    return base_pb2.RequestMethod.Name(value)


def envoy_reply_head(entry, now_ms: int) -> RequestHead:
    """A RequestHead for an access-log entry: request id, method and path only (the query, which
    may carry a key, is cut off by route_record like everywhere else)."""
    # Neither the query (a key may ride there) nor a fragment goes into a record.
    path = entry.request.path.split("#", 1)[0][:_MAX_PATH]
    request_id = entry.request.request_id or (
        f"envoy-stream-{entry.common_properties.stream_id}" if entry.common_properties.stream_id
        else "envoy-" + uuid.uuid4().hex)
    start = entry.common_properties.start_time
    received_ms = start.seconds * 1000 + start.nanos // 1_000_000 if start.seconds else now_ms
    method = _method_name(entry)
    return RequestHead(request_id=request_id, method=method, path=path, headers={}, attributes={},
                       received_ms=received_ms, surface=match_surface(method, path) if path else None)


# envoy.data.accesslog.v3.ResponseFlags fields -> %RESPONSE_FLAGS% short names.
_FLAG_FIELDS = {"downstream_protocol_error": "DPE", "no_healthy_upstream": "UH", "upstream_overflow": "UO",
                "upstream_request_timeout": "UT", "upstream_connection_failure": "UF", "local_reset": "LR",
                "no_route_found": "NR", "stream_idle_timeout": "SI", "downstream_connection_termination": "DC",
                "upstream_remote_reset": "UR", "upstream_connection_termination": "UC",
                "upstream_retry_limit_exceeded": "URX", "overload_manager": "OM", "downstream_remote_reset": "DR"}


def _flags_text(entry) -> str | None:
    """Envoy's response flags as the short names %RESPONSE_FLAGS% uses (those upstream_error knows)."""
    f = entry.common_properties.response_flags
    set_flags = [short for field, short in _FLAG_FIELDS.items() if getattr(f, field)]
    return ",".join(set_flags) or None


def envoy_reply_record(rt: Runtime, entry) -> dict:
    head = envoy_reply_head(entry, int(rt.clock() * 1000))
    status = entry.response.response_code.value if entry.response.HasField("response_code") else 0
    details = entry.response.response_code_details
    return _envoy_verdict(rt, head, None, status, details, _flags_text(entry)).record.to_dict()


class EnvoyReplyLog(als_pb2_grpc.AccessLogServiceServicer):
    """Envoy's access log (envoy/*.yaml: ledgergate.local_replies) of the replies ledgergate never
    saw, one decision record each. Other access logs sent here are ignored."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
                               context: grpc.aio.ServicerContext) -> als_pb2.StreamAccessLogsResponse:
        log_name = None
        async for msg in request_iterator:
            if msg.HasField("identifier"):   # only on a stream's first message
                log_name = msg.identifier.log_name
            if log_name != ACCESS_LOG_NAME or not msg.HasField("http_logs"):
                continue
            for entry in msg.http_logs.log_entry:
                record = envoy_reply_record(self.rt, entry)
                try:
                    await self.rt.audit.commit(record)
                except AuditUnavailable:
                    # Envoy reconnects and goes on; this entry is lost (logged, counted).
                    self.rt.metrics.error("audit_unavailable")
                    log.error("envoy_reply_not_recorded", request_id=record["request_id"])
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "audit store unavailable")
                log.info("envoy_reply_recorded", request_id=record["request_id"],
                         status=record["decision"]["status"], code=record["decision"]["code"])
        return als_pb2.StreamAccessLogsResponse()


# --- during drain ---------------------------------------------------------------------------

class DrainGate(pb_grpc.ExternalProcessorServicer):
    """The ext_proc service in front of the servicer: while draining, a new request is refused
    with a recorded 503 + retry-after in its provider's format; everything else, and every
    upstream-stage stream (a failover attempt of a request already in flight), passes on."""

    def __init__(self, inner: pb_grpc.ExternalProcessorServicer, rt: Runtime) -> None:
        self.inner = inner
        self.rt = rt
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def Process(self, request_iterator, context):
        upstream = UPSTREAM_STAGE in tuple(context.invocation_metadata() or ())
        if self.draining and not upstream:
            async for r in self._refuse(request_iterator, context):
                yield r
            return
        self.in_flight += 1
        self._idle.clear()
        try:
            async for r in self.inner.Process(request_iterator, context):
                yield r
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Refuse new requests from now on; True when the streams in flight finished within GRACE_S."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
            return True
        except TimeoutError:
            return False

    async def _refuse(self, request_iterator, context):
        async for req in request_iterator:
            if req.WhichOneof("request") == "response_headers":
                # Envoy's own reply to a request it refused before the filter chain: as ever.
                async for r in pass_envoy_reply(request_iterator):
                    yield r
                return
            if req.WhichOneof("request") != "request_headers":
                break
            head = _head_of(req, self.rt.clock())
            reason = "the gateway is restarting; retry after the delay in retry-after"
            verdict = reject_unprocessable(head, None, 503, "draining", reason, int(self.rt.clock() * 1000),
                                           None, self.rt.policies.current,
                                           classifier=self.rt.classifier_for(self.rt.policies.current))
            verdict = attributed(verdict, "ledgergate", retry_after_s=RETRY_AFTER_S)
            try:
                await self.rt.audit.commit(verdict.record.to_dict())
            except AuditUnavailable:
                # Envoy answers a failed stream with a provider-shaped 503 (local_reply_config).
                await context.abort(grpc.StatusCode.UNAVAILABLE, "draining; audit store unavailable")
            log.info("request_refused_draining", request_id=head.request_id)
            yield replies.rejection(verdict, head.request_id)
            return
        await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")


def _head_of(req: pb.ProcessingRequest, now: float) -> RequestHead:
    headers = headers_to_dict(req.request_headers.headers)
    attrs = attributes_of(req)
    path = (headers.get(":path") or [attrs.get("request.path", "/")])[0]
    method = (headers.get(":method") or [attrs.get("request.method", "GET")])[0]
    request_id = attrs.get("request.id") or (headers.get("x-request-id") or [""])[0] or \
        hashlib.sha256(repr((now, time.perf_counter_ns())).encode()).hexdigest()[:32]
    return RequestHead(request_id=request_id, method=method, path=path, headers=headers, attributes=attrs,
                       received_ms=int(now * 1000), surface=match_surface(method, path))
