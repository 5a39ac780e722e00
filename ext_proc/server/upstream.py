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

import hashlib
import json

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import text_format

from ext_proc.audit.log import AuditUnavailable
from ext_proc.audit.record import AttemptRecord
from ext_proc.pipeline.multiplex import CHAIN_HEADER
from ext_proc.pipeline.request import CLIENT_CREDENTIAL_HEADERS, sha256_hex
from ext_proc.providers import Provider, error_body
from ext_proc.providers.translate import ResponseTranslator, Target, TranslationError, translate_request
from ext_proc.server import replies
from ext_proc.server.messages import attributes_of, headers_to_dict
from ext_proc.server.replies import HeaderEdit
from ext_proc.server.runtime import Runtime
from ext_proc.server.stream import Failure

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
    """One attempt's stream (server/stream.py runs it)."""

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
        self.answered = False         # the upstream's response headers arrived
        self.response_ended = False   # the translator was fed the end of the answer
        self.failure_recorded = False

    async def record_failure(self, error: str) -> None:
        """A released attempt that failed (an error status, a per-try timeout, a reset) gets a
        second attempt record carrying the error: the first was committed before the body went out."""
        if self.released and not self.failure_recorded:
            self.failure_recorded = True
            await self._commit(None, error=error)

    def on_request_headers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        headers = headers_to_dict(req.request_headers.headers)
        if CHAIN_HEADER not in headers:
            # Only the router-level exchange sets it (clients' x-ledgergate-* headers are stripped):
            # without it this attempt has no committed decision behind it.
            raise AttemptRefused("no router-level decision for this attempt")
        attrs = attributes_of(req)
        self.target, self.host = endpoint_target(attrs.get("xds.upstream_host_metadata", ""))
        self.address = attrs.get("upstream.address")
        self.request_id = (headers.get("x-request-id") or [""])[0]
        return [replies.request_headers()]

    async def on_request_body(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        assert self.target is not None
        body = bytes(req.request_body.body)
        try:
            parsed = json.loads(body)
            translated = translate_request(parsed, self.target)
        except (TranslationError, ValueError) as exc:
            message = str(exc) if isinstance(exc, TranslationError) else "the body is not JSON"
            headers, err = error_body(Provider.OPENAI, 400, "translation_error", message)
            await self._commit(None, error="translation_error")
            return [replies.immediate(400, headers, err, "translation_error")]
        self.client_model = str(parsed.get("model") or self.target.model)
        self.stream = translated.stream
        await self._commit(translated.body)
        self.released = True
        # Envoy retries with the headers the previous attempt left (the body is the router's
        # original): whatever credential or provider header is there is not this provider's.
        edit = HeaderEdit(remove=sorted(CLIENT_CREDENTIAL_HEADERS) + [h for h in PROVIDER_HEADERS
                                                                       if h not in translated.headers])
        edit.put(":path", translated.path).put("content-length", str(len(translated.body)))
        edit.put("x-ledgergate-upstream", self.target.provider)
        for k, v in translated.headers.items():
            edit.put(k, v)
        if self.host:
            edit.put(":authority", self.host)
        edit.inject_credential(self.rt, self.target.provider)
        return [replies.request_body(edit, translated.body)]

    async def on_request_trailers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        return [replies.request_trailers()]

    async def _commit(self, translated: bytes | None, error: str | None = None) -> None:
        assert self.target is not None
        await self.rt.audit.commit(AttemptRecord(
            request_id=self.request_id, attempted_ms=int(self.rt.clock() * 1000), provider=self.target.provider,
            model=self.target.model, upstream_address=self.address, forwarded_sha256=sha256_hex(translated),
            error=error).to_dict())

    async def on_response_headers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        assert self.target is not None
        self.answered = True
        headers = headers_to_dict(req.response_headers.headers)
        raw_status = (headers.get(":status") or ["0"])[0]
        if raw_status.isdigit() and int(raw_status) >= 500:
            await self.record_failure(f"upstream_status_{int(raw_status)}")
        status = int(raw_status or 0)
        self.translator = ResponseTranslator(
            self.target, stream=self.stream, client_model=self.client_model,
            response_id="chatcmpl-" + hashlib.sha256(self.request_id.encode()).hexdigest()[:24],
            created=int(self.rt.clock()), include_usage=True)
        self.translator.start(status, next(iter(headers.get("content-type") or ()), None))
        edit = HeaderEdit(remove=["content-length", "content-encoding"]).put("content-type", self.translator.content_type)
        return [replies.response_headers(edit)]

    async def on_response_body(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self.translator is None:
            raise AttemptRefused("response body before response headers")
        end = req.response_body.end_of_stream
        out = self.translator.feed(bytes(req.response_body.body), end)
        self.response_ended = self.response_ended or end
        return [replies.body_chunk(out, end)]

    async def on_response_trailers(self, req: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        out = []
        if self.translator is not None and not self.response_ended:
            self.response_ended = True
            # The trailers end the stream; the translated tail goes out as the last body data.
            if tail := self.translator.feed(b"", True):
                out.append(replies.body_chunk(tail, False))
        return out + [replies.response_trailers()]

    def failure(self, exc: Exception) -> Failure:
        if isinstance(exc, AuditUnavailable):
            log.error("audit_unavailable", request_id=self.request_id, stage="upstream")
            return Failure("audit_unavailable", status=grpc.StatusCode.UNAVAILABLE, detail="audit store unavailable")
        if isinstance(exc, (AttemptRefused, TranslationError)):
            log.error("attempt_refused", request_id=self.request_id, reason=str(exc))
            return Failure("attempt_refused", status=grpc.StatusCode.FAILED_PRECONDITION,
                           detail="ledgergate refused this upstream attempt")
        log.error("attempt_error", request_id=self.request_id, error_type=type(exc).__name__)
        return Failure(type(exc).__name__)

    async def finish(self, error: str | None) -> None:
        if not self.answered and self.released:
            # Envoy ended the attempt before any answer: its per-try timeout, or a reset.
            try:
                await self.record_failure("attempt_ended_without_response")
            except Exception as exc:  # noqa: BLE001 - the stream is gone; log, never leak content
                log.error("attempt_failure_record_failed", request_id=self.request_id,
                          error_type=type(exc).__name__)
