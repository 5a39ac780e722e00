"""ledgergate as the upstream (per-attempt) filter of a cross-provider failover chain's cluster.

The router-level exchange has already decided the request (identity, classification, policy,
redaction) and committed its decision record; it sent the OpenAI body to the chain's cluster
(`x-ledgergate-mux`). Envoy runs this stage once per attempt, after it picked the endpoint:
the endpoint's metadata names the provider and model, so the body is translated for it, an
`attempt` record is committed before the translated body is released, and the answer is
translated back to OpenAI's format for the router-level inspection. A retry after a 5xx goes to
the next priority, i.e. the next provider, and is translated for that one.

Fail closed like the router-level servicer: anything unexpected aborts the stream with a gRPC
error (a handler that returned would let Envoy send the untranslated request).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import AsyncIterator

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import text_format

from ext_proc.audit.log import AuditUnavailable
from ext_proc.audit.record import attempt_record
from ext_proc.pipeline.multiplex import CHAIN_HEADER
from ext_proc.pipeline.request import CLIENT_CREDENTIAL_HEADERS, sha256_hex
from ext_proc.providers import Provider, error_body
from ext_proc.providers.translate import ResponseTranslator, Target, TranslationError, translate_request
from ext_proc.server.messages import attributes_of, headers_to_dict, set_header
from ext_proc.server.runtime import Runtime

log = structlog.get_logger("ledgergate.upstream")


# Headers a translation sets for one provider only (see providers/translate.py).
PROVIDER_HEADERS = ("anthropic-version",)


class AttemptRefused(Exception):
    """This attempt cannot be made safely (no endpoint metadata, no router-level decision)."""


def endpoint_target(metadata_text: str) -> tuple[Target, str | None]:
    """Provider, model and host from the endpoint's `ledgergate` metadata (Envoy sends the
    `xds.upstream_host_metadata` attribute as protobuf text)."""
    md = text_format.Parse(metadata_text or "", base_pb2.Metadata())
    st = md.filter_metadata.get("ledgergate")
    fields = st.fields if st is not None else {}
    provider = fields["provider"].string_value if "provider" in fields else ""
    model = fields["model"].string_value if "model" in fields else ""
    if not provider or not model:
        raise AttemptRefused("the chosen endpoint carries no ledgergate provider/model metadata")
    host = fields["host"].string_value if "host" in fields else None
    return Target(provider, model), host


class UpstreamAttempt:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.request_id = ""
        self.target: Target | None = None
        self.host: str | None = None
        self.address: str | None = None
        self.client_model = ""
        self.stream = False
        self.translator: ResponseTranslator | None = None
        self.released = False         # the translated body went upstream
        self.failure_recorded = False

    async def record_failure(self, error: str) -> None:
        """A released attempt that failed (an error status, a per-try timeout, a reset) gets a
        second attempt record carrying the error: the first was committed before the body went out."""
        if self.released and not self.failure_recorded:
            self.failure_recorded = True
            await self._commit(None, error=error)

    def on_request_headers(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        headers = headers_to_dict(req.request_headers.headers)
        if CHAIN_HEADER not in headers:
            # Only the router-level exchange sets it (clients' x-ledgergate-* headers are stripped):
            # without it this attempt has no committed decision behind it.
            raise AttemptRefused("no router-level decision for this attempt")
        attrs = attributes_of(req)
        self.target, self.host = endpoint_target(attrs.get("xds.upstream_host_metadata", ""))
        self.address = attrs.get("upstream.address")
        self.request_id = (headers.get("x-request-id") or [""])[0]
        return pb.ProcessingResponse(request_headers=pb.HeadersResponse())

    async def on_request_body(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        assert self.target is not None
        body = bytes(req.request_body.body)
        try:
            parsed = json.loads(body)
            translated = translate_request(parsed, self.target)
        except (TranslationError, ValueError) as exc:
            message = str(exc) if isinstance(exc, TranslationError) else "the body is not JSON"
            headers, err = error_body(Provider.OPENAI, 400, "translation_error", message)
            await self._commit(None, error="translation_error")
            return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=400), body=err, details="translation_error",
                headers=pb.HeaderMutation(set_headers=[set_header(k, v) for k, v in headers.items()])))
        self.client_model = str(parsed.get("model") or self.target.model)
        self.stream = translated.stream
        await self._commit(translated.body)
        self.released = True
        set_headers = [set_header(":path", translated.path), set_header("content-length", str(len(translated.body))),
                       set_header("x-ledgergate-upstream", self.target.provider)]
        set_headers += [set_header(k, v) for k, v in translated.headers.items()]
        if self.host:
            set_headers.append(set_header(":authority", self.host))
        # Envoy retries with the headers the previous attempt left (the body is the router's
        # original): whatever credential or provider header is there is not this provider's.
        remove = sorted(CLIENT_CREDENTIAL_HEADERS) + [h for h in PROVIDER_HEADERS if h not in translated.headers]
        cred = self.rt.config.upstream_credentials.get(self.target.provider)
        if cred:
            set_headers.append(set_header(cred["header"], self.rt.upstream_secret(self.target.provider)))
            remove = [h for h in remove if h != cred["header"].lower()]
        common = pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=set_headers, remove_headers=remove),
                                   body_mutation=pb.BodyMutation(body=translated.body))
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))

    async def _commit(self, translated: bytes | None, error: str | None = None) -> None:
        assert self.target is not None
        await self.rt.audit.commit(attempt_record(
            request_id=self.request_id, attempted_ms=int(self.rt.clock() * 1000), provider=self.target.provider,
            model=self.target.model, upstream_address=self.address, forwarded_sha256=sha256_hex(translated),
            error=error))

    def on_response_headers(self, req: pb.ProcessingRequest) -> pb.ProcessingResponse:
        assert self.target is not None
        headers = headers_to_dict(req.response_headers.headers)
        status = int((headers.get(":status") or ["0"])[0] or 0)
        self.translator = ResponseTranslator(
            self.target, stream=self.stream, client_model=self.client_model,
            response_id="chatcmpl-" + hashlib.sha256(self.request_id.encode()).hexdigest()[:24],
            created=int(self.rt.clock()), include_usage=True)
        self.translator.start(status, (headers.get("content-type") or [None])[0])
        common = pb.CommonResponse(header_mutation=pb.HeaderMutation(
            set_headers=[set_header("content-type", self.translator.content_type)],
            remove_headers=["content-length", "content-encoding"]))
        return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))

    def on_response_body(self, data: bytes, end: bool) -> pb.ProcessingResponse:
        if self.translator is None:
            raise AttemptRefused("response body before response headers")
        out = self.translator.feed(data, end)
        return pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
            body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(body=out, end_of_stream=end)))))


async def process_upstream(rt: Runtime, request_iterator: AsyncIterator[pb.ProcessingRequest],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
    attempt = UpstreamAttempt(rt)
    answered = False
    try:
        async for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                yield attempt.on_request_headers(req)
            elif kind == "request_body":
                reply = await attempt.on_request_body(req)
                yield reply
                if reply.WhichOneof("response") == "immediate_response":
                    return
            elif kind == "response_headers":
                answered = True
                status = headers_to_dict(req.response_headers.headers).get(":status") or ["0"]
                if status[0].isdigit() and int(status[0]) >= 500:
                    await attempt.record_failure(f"upstream_status_{int(status[0])}")
                yield attempt.on_response_headers(req)
            elif kind == "response_body":
                yield attempt.on_response_body(bytes(req.response_body.body), req.response_body.end_of_stream)
            elif kind == "response_trailers":
                if attempt.translator is not None and not attempt.translator._done:
                    tail = attempt.translator.feed(b"", True)
                    if tail:
                        yield pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(
                            body_mutation=pb.BodyMutation(streamed_response=pb.StreamedBodyResponse(
                                body=tail, end_of_stream=False)))))
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            else:
                raise AttemptRefused(f"unexpected message {kind!r}")
    except AuditUnavailable:
        log.error("audit_unavailable", request_id=attempt.request_id, stage="upstream")
        await context.abort(grpc.StatusCode.UNAVAILABLE, "audit store unavailable")
    except (AttemptRefused, TranslationError) as exc:
        log.error("attempt_refused", request_id=attempt.request_id, reason=str(exc))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "ledgergate refused this upstream attempt")
    except Exception as exc:  # noqa: BLE001 - fail closed
        log.error("attempt_error", request_id=attempt.request_id, error_type=type(exc).__name__)
        await context.abort(grpc.StatusCode.INTERNAL, "ledgergate processing error")
    finally:
        if not answered and attempt.released:
            # Envoy ended the attempt before any answer: its per-try timeout, or a reset.
            try:
                await asyncio.shield(attempt.record_failure("attempt_ended_without_response"))
            except Exception as exc:  # noqa: BLE001 - the stream is gone; log, never leak content
                log.error("attempt_failure_record_failed", request_id=attempt.request_id,
                          error_type=type(exc).__name__)
