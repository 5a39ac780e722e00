"""The response half of one exchange: the answer's headers (translated back when another
provider served it, marked, held for a whole JSON body), its body inspected slice by slice and
released, the legal-hold capture, and what the outcome record is built from.

No unaudited end of response: the last bytes of a body go out only after the exchange committed
the outcome (`Exchange.commit_outcome`); held headers go first, so they travel while it commits.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD
from ext_proc.pipeline.multiplex import ModelListAliases, Translated
from ext_proc.pipeline.outcome import ResponseSeen
from ext_proc.providers.translate import ResponseTranslator, TranslationError
from ext_proc.server import replies, response_cache
from ext_proc.server.envoy_flags import UPSTREAM_FLAGS_HEADER, UPSTREAM_HOST_HEADER, upstream_error
from ext_proc.server.messages import headers_to_dict
from ext_proc.server.replies import HeaderEdit
from ext_proc.streaming import Release, ResponseInspector, ResponseRules
from ext_proc.streaming.inspector import BLOCKED_STATUS
from ext_proc.streaming.transparency import DISCLOSURE_HEADER, transparency_marker

if TYPE_CHECKING:
    from ext_proc.server.exchange_view import ExchangeView


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    return next(iter(headers.get(name) or ()), None)


class ResponseSide:
    """Built from the response headers message of a released request."""

    # A chunk is inspected in slices, and each slice's releases are sent before the next is
    # scanned: Envoy coalesces a fast upstream's events into one large chunk, and scanning all of
    # it before releasing anything would put its whole cost in front of the first token. Slices
    # double in size so a large chunk still goes out in a handful of messages.
    FIRST_RESPONSE_SLICE_BYTES = 2048
    MAX_UNSENT_SLICE_BYTES = 16384

    def __init__(self, ex: ExchangeView, msg: pb.HttpHeaders) -> None:
        assert ex.head is not None and ex.verdict is not None
        self.ex = ex
        rt, head, verdict = ex.rt, ex.head, ex.verdict
        headers = headers_to_dict(msg.headers)
        self.status = int(_first(headers, ":status") or 0)
        self.upstream_host = _first(headers, UPSTREAM_HOST_HEADER)
        self.upstream_error = upstream_error(_first(headers, UPSTREAM_FLAGS_HEADER))
        self.held: HeaderEdit | None = None        # headers held for a whole body
        self.block_status_sent = False            # the held headers went out as the block's error status
        self.captured: bytearray | None = bytearray() if rt.capture_key is not None else None
        self.capture_truncated = False
        self.translator: ResponseTranslator | ModelListAliases | None = None
        content_type = _first(headers, "content-type")
        edit = HeaderEdit().put("x-request-id", head.request_id)
        for k, v in ex.ratelimit_headers.items():
            edit.put(k, v)
        routed = ex.multiplex if isinstance(ex.multiplex, Translated) else None
        if routed is not None:
            self.translator = ResponseTranslator(
                routed.route.target, stream=routed.request.stream, client_model=verdict.model or routed.route.target.model,
                response_id="chatcmpl-" + hashlib.sha256(head.request_id.encode()).hexdigest()[:24],
                created=int(rt.clock()), include_usage=True)
            self.translator.start(self.status, content_type)
            content_type = self.translator.content_type
            edit.put("content-type", content_type)
        elif (rt.config.multiplex_models and self.status == 200 and head.surface is not None
              and head.surface.name == "openai.models" and not head.surface.model_from_path and not msg.end_of_stream):
            self.translator = ModelListAliases(rt.config.multiplex_models, rt.config.max_response_buffer_bytes)
        decision = verdict.decision
        target = routed.route.target if routed is not None else None
        # Article 50 transparency marker (ext_proc/streaming/transparency.py).
        self.transparency = transparency_marker(
            (decision.response or {}).get("marker_header") if decision is not None else None,
            provider=target.provider if target else head.provider, model=target.model if target else verdict.model,
            policy_id=decision.policy_id if decision is not None else "",
            policy_version=decision.policy_version if decision is not None else "")
        self.inspector = ResponseInspector(
            head.surface.name if head.surface else "unknown", status=self.status, content_type=content_type,
            # Every content-encoding header: the client's HTTP library undoes them all (httpx joins
            # repeated ones), so "identity" then "gzip" is a gzip body, not a plain one.
            content_encoding=", ".join(headers.get("content-encoding") or ()) or None,
            classifier=rt.classifier_for(rt.policies.current),
            rules=ResponseRules.from_policy(decision.response if decision is not None else {}),
            hash_key=rt.hash_key, tenant=ex.identity.tenant if ex.identity else None,
            max_buffer_bytes=rt.config.max_response_buffer_bytes, drop_usage_chunk=verdict.usage_injected,
            max_block_chars=rt.config.max_finding_chars,
            marker_field=(self.transparency.json_field, self.transparency.json_value())
            if self.transparency is not None and self.transparency.json_field else None)
        for name in ["content-length", UPSTREAM_HOST_HEADER, UPSTREAM_FLAGS_HEADER,
                     *(getattr(self.inspector, "release_headers_mutation", None) or {}).get("remove", [])]:
            edit.drop(name)
        if self.transparency is not None:
            edit.put(self.transparency.header_name, self.transparency.header_value)
            edit.put(DISCLOSURE_HEADER, self.transparency.disclosure)
        cache_headers = response_cache.response_headers(ex, content_type)
        for k, v in cache_headers.items():
            edit.put(k, v)
        if not cache_headers:
            edit.drop(response_cache.CACHE_HEADER)   # only ledgergate says hit or miss
        self.edit = edit

    async def headers_replies(self, end_of_stream: bool) -> list[pb.ProcessingResponse]:
        if self.inspector.whole_body and not end_of_stream:
            # Envoy keeps the headers until we answer them while the body keeps coming (full-duplex
            # streaming), so a whole JSON body is judged before its status is: a blocked answer
            # goes out as an error status, not as an error body under the upstream's 200.
            self.held = self.edit
            return []
        if end_of_stream:
            # No body: the outcome is known now and must be durable before the headers go out.
            await self.ex.commit_outcome()
        return [replies.response_headers(self.edit)]

    def release_held_headers(self) -> list[pb.ProcessingResponse]:
        if self.held is None:
            return []
        edit, self.held = self.held, None
        if self.inspector.blocked:
            self.block_status_sent = True
            edit.put(":status", str(BLOCKED_STATUS)).put("content-type", "application/json").keep("content-type")
        return [replies.response_headers(edit)]

    async def body_replies(self, chunk: pb.HttpBody) -> AsyncIterator[pb.ProcessingResponse]:
        data, end = bytes(chunk.body), chunk.end_of_stream
        if self.translator is not None:
            try:
                data = self.translator.feed(data, end)
            except TranslationError as exc:
                for rel in self.inspector.stop("translation_error", str(exc)):
                    async for r in self._release(rel.body, True):
                        yield r
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
            async for r in self._release(body, eos):
                yield r
            if last or eos:
                return

    async def _release(self, body: bytes, eos: bool) -> AsyncIterator[pb.ProcessingResponse]:
        self.capture(body)
        # Held headers go out first: they travel to Envoy while the outcome is made durable.
        # Only the end of the body waits for the commit (no unaudited end of response); if the
        # commit fails the stream is aborted and the body never follows.
        for r in self.release_held_headers():
            yield r
        if eos:
            await self.ex.commit_outcome()
        yield replies.body_chunk(body, eos)

    async def trailers_replies(self) -> list[pb.ProcessingResponse]:
        out: list[pb.ProcessingResponse] = []
        if not self.inspector.finished:
            for rel in self.inspector.feed(b"", True):
                self.capture(rel.body)
                if rel.end_of_stream:
                    await self.ex.commit_outcome()
                out.extend(self.release_held_headers())
                # The trailers end the stream; the held tail goes out as the last body data.
                out.append(replies.body_chunk(rel.body, False))
        out.append(replies.response_trailers())
        return out

    def capture(self, data: bytes) -> None:
        if self.ex.cache_turn is not None:
            self.ex.cache_turn.collect(data)
        if self.captured is None or self.capture_truncated or not data:
            return
        room = self.ex.rt.config.capture_max_response_bytes - len(self.captured)
        if len(data) > room:
            data, self.capture_truncated = data[:max(room, 0)], True
        self.captured += data

    def seen(self, request_id: str, completed_ms: int, error: str | None) -> ResponseSeen:
        capture = None
        if self.captured is not None:
            key = self.ex.rt.capture_key
            if key is None:  # a buffer exists only when the runtime has a capture key (__init__)
                raise RuntimeError("a response was captured without a capture key")
            # Bound to this request's response, so it cannot be passed off as its request body.
            capture = dict(key.seal(bytes(self.captured), request_id.encode() + RESPONSE_CAPTURE_AAD),
                           truncated=self.capture_truncated)
        return ResponseSeen(request_id=request_id, completed_ms=completed_ms, status=self.status,
                            summary=self.inspector.outcome(), error=error or self.upstream_error,
                            upstream_host=self.upstream_host, status_held=self.held is not None,
                            block_status_sent=self.block_status_sent, capture=capture,
                            transparency=self.transparency)
