"""Response inspection, streamed or not (sans-I/O, one inspector per response).

Envoy hands the response body over in FULL_DUPLEX_STREAMED mode and whatever ``feed`` returns is
exactly what the client receives, so nothing is returned before it has been scanned:

* ``text/event-stream``: events are framed (bounded), text deltas go through one ``TextGate`` per
  content stream (hold-back), and whole events wait in order until every character they carry has
  been decided. An event none of whose characters changed goes out as the bytes it came in (so a
  response with nothing to redact is passed through byte for byte); an event with a redaction is
  re-serialized with its own part of the redacted text.
* JSON bodies: buffered whole (bounded), every non-identifier string scanned, redacted in place,
  re-serialized only if something changed.
* anything else: scanned as a text stream with the same hold-back, released byte for byte when
  nothing matched.
* a block rule ends the response with a provider-shaped error (an SSE error event mid-stream).

The last ``Release`` (end_of_stream=True) is computed before anything of it is sent; the server
commits the outcome record and only then sends it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ext_proc.classify import NUMBER_MIN_CONFIDENCE, STRATEGIES, Classifier, InputTooLarge
from ext_proc.providers import error_body
from ext_proc.providers.events import index as event_index
from ext_proc.streaming import formats
from ext_proc.streaming.formats import ALL, StreamKey
from ext_proc.streaming.gate import (
    Blocked,
    JsonDataGate,
    JsonTextBody,
    JsonTextGate,
    Ledger,
    ScanPolicy,
    TextGate,
    clean_whole,
    inspect_string,
    inspect_whole,
)
from ext_proc.wire import eventstream
from ext_proc.wire.eventstream import EventStreamDecoder, EventStreamError
from ext_proc.wire.jsonseq import JsonSeqError, JsonSeqReader
from ext_proc.wire.sse import EventTooLarge, SSEEvent, SSEFramer, frame

DECODE_PIECE = 64 << 10


@dataclass(frozen=True)
class ResponseRules:
    redact: Mapping[str, str] = field(default_factory=dict)   # label -> strategy ("*": default)
    block: frozenset[str] = frozenset()                      # labels that stop the response

    def __post_init__(self) -> None:
        for label, strategy in self.redact.items():
            if strategy not in STRATEGIES:
                raise ValueError(f"unknown redaction strategy for {label!r}; expected one of {STRATEGIES}")

    @classmethod
    def from_policy(cls, response: Mapping | None) -> ResponseRules:
        """From a policy decision's ``response`` section: {"redact": {...}, "block": [...], ...}."""
        response = response or {}
        return cls(redact=dict(response.get("redact") or {}), block=frozenset(response.get("block") or ()))


@dataclass(frozen=True)
class Release:
    body: bytes
    end_of_stream: bool


class _Decoder:
    """gzip/deflate with a bounded output per step and in total (a zip bomb stops at the bound)."""

    def __init__(self, encoding: str, max_out: int) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self.max_out = max_out
        self.total_out = 0
        self.total_in = 0
        self._d: Any = None
        self._head = b""

    def _new(self, first: bytes) -> Any:
        if self.gzip:
            return zlib.decompressobj(wbits=31)
        # HTTP "deflate" should be zlib-wrapped; some servers send raw deflate.
        zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
        return zlib.decompressobj(wbits=15 if zlib_header else -15)

    def decode(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        self.total_in += len(data)
        if self._d is None:
            # deflate's wrapping is told by its first two bytes: a body sent a byte at a time (or
            # a stage of stacked codings handed one byte) waits for the second.
            data = self._head + data
            if not self.gzip and len(data) < 2:
                self._head = data
                return out
            self._head = b""
            self._d = self._new(data)
        while True:
            piece = self._d.decompress(data, DECODE_PIECE)
            self.total_out += len(piece)
            if self.total_out > self.max_out:
                raise Blocked("response_too_large", f"the decompressed response exceeds {self.max_out} bytes")
            if piece:
                out.append(piece)
            if self._d.eof:
                data = self._d.unused_data
                if not data:
                    break
                if not self.gzip:
                    raise Blocked("bad_encoding", "data after the end of the deflate stream")
                self._d = self._new(data)   # concatenated gzip members
                continue
            data = self._d.unconsumed_tail
            if not data and len(piece) < DECODE_PIECE:
                break
        return out

    def finish(self) -> None:
        if self.total_in and (self._d is None or not self._d.eof):
            raise Blocked("bad_encoding", "the compressed response ended before its end marker")


class _Decoders:
    """The codings of a content-encoding list (RFC 9110: in the order they were applied), undone
    last first, as the client's HTTP library does (httpx, urllib3: "gzip, gzip", "deflate, gzip";
    "identity" does nothing). Each stage has the same output bound."""

    def __init__(self, codings: list[str], max_out: int) -> None:
        self.stages = [_Decoder(c, max_out) for c in reversed(codings)]

    def decode(self, data: bytes) -> list[bytes]:
        pieces = [data]
        for stage in self.stages:
            pieces = [out for p in pieces for out in stage.decode(p)]
        return pieces

    def finish(self) -> None:
        for stage in self.stages:
            stage.finish()


DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
NAMED_CODINGS = DECODABLE | {"br", "zstd", "compress", "x-compress", "dcb", "dcz", "aes128gcm"}
MAX_CODINGS = 4      # stacked codings decoded; more are refused (each stage is a full decompression)


def codings(content_encoding: str | None) -> list[str]:
    """The codings applied, in order, from a content-encoding value (repeated headers joined by
    commas): "identity" and empty members dropped."""
    return [c for c in (m.strip().lower() for m in (content_encoding or "").split(",")) if c and c != "identity"]


@dataclass(frozen=True, slots=True)
class _Bytes:
    """A logprob entry's `bytes` while its event waits: the text they decode to in their stream
    (what the gate scans) and the list as it came (what goes out when nothing was redacted)."""
    text: str
    original: list


@dataclass
class _Queued:
    """An event (SSE event, array element, event-stream message) waiting until every character it
    carries has been decided."""
    raw: bytes                      # what goes out when nothing in it changed
    wrap: Callable[[bytes], bytes] | None   # frames a re-serialized event (SSE lines, array separators)
    ev: Any                         # the parsed event, when it carries text to rebuild; else None
    spans: list                     # (stream key, JSON path, start, end) of its texts in their streams
    changed: bool                   # a string outside the streams was redacted: re-serialize
    closing: bool = False           # the stream's final marker
    headers: dict | None = None     # an AWS event-stream message's headers (None: an SSE event)
    outer: dict | None = None       # an invoke-stream chunk's payload around the model's own event
    text_data: bool = False         # an SSE event whose data is text, not JSON (ev: {"data": text})


DEFAULT_HOLD_CHARS = 64
TEXT_DATA: StreamKey = ("sse-text-data",)     # the stream of SSE events whose data is not a JSON object
EVENTSTREAM_TYPE = "application/vnd.amazon.eventstream"
# The status a blocked whole (non-streamed) response goes out with, when its headers have not left
# yet: 403 like a denied request (the SDKs raise PermissionDeniedError and do not retry it, where a
# 5xx would be retried and the model asked again).
BLOCKED_STATUS = 403
# Bytes of a body looked at before deciding how to read it (an event-stream prelude is 12).
SNIFF_BYTES = 12
SSE_STARTS = (b"data:", b"data\n", b"data\r", b"event:", b"id:", b"retry:", b":")
CLEAN_CACHE = 4096              # short strings (ids, model names, keys) known to hold no finding
CLEAN_CACHE_CHARS = 256
# Per classifier (they live as long as their policy version): keys and short space-free strings
# found clean, shared by its responses.
SHARED_CLEAN_CHARS = 64
_SHARED_CLEAN: weakref.WeakKeyDictionary[Classifier, dict[str, None]] = weakref.WeakKeyDictionary()


UTF8_NAMES = frozenset({"utf-8", "utf_8", "utf8", "u8"})


def declared_charset(content_type: str | None) -> str | None:
    """The text encoding a content type's charset parameter names, when it is not UTF-8 and
    Python knows it as a text encoding (httpx decodes with it then; an unknown name falls back
    to UTF-8 there too). None: UTF-8."""
    for param in (content_type or "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset":
            continue
        value = value.strip().strip('"').strip("'").lower()
        try:
            info = codecs.lookup(value)
        except (LookupError, ValueError):
            return None
        if not getattr(info, "_is_text_encoding", True) or info.name in UTF8_NAMES:
            return None
        return info.name
    return None


def _eventstream_prelude(head: bytes) -> bool:
    """The first 12 bytes are an AWS event-stream prelude (lengths and their CRC32)."""
    if len(head) < 12:
        return False
    total, headers = int.from_bytes(head[0:4], "big"), int.from_bytes(head[4:8], "big")
    return zlib.crc32(head[:8]) == int.from_bytes(head[8:12], "big") and total >= 16 and headers <= total - 16


class ResponseInspector:
    def __init__(self, surface_name: str, *, status: int, content_type: str | None, content_encoding: str | None,
                 classifier: Classifier, rules: ResponseRules, hash_key: bytes, tenant: str | None,
                 max_event_bytes: int = 1 << 20, max_buffer_bytes: int = 8 << 20,
                 max_decoded_bytes: int = 256 << 20, hold_chars: int | None = None,
                 drop_usage_chunk: bool = False, max_block_chars: int = 60_000,
                 marker_field: tuple[str, dict] | None = None) -> None:
        self.surface_name = surface_name
        self.status = status
        # ledgergate asked an OpenAI chat stream for usage the client did not ask for: the usage-only
        # chunk (no choices) is read and then not delivered, so the client sees the stream it asked for.
        self.drop_usage_chunk = drop_usage_chunk
        # The transparency marker's field, added to a whole JSON answer (name, value); see transparency.py.
        self.marker_field = marker_field
        self.marker_field_sent = False
        self.rules = rules
        self.max_buffer_bytes = max_buffer_bytes
        self.max_event_bytes = max_event_bytes
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        # What the content type says; the body is read by what it is (_sniff): SSE served as
        # text/plain or JSON is read as SSE, as the SDKs read it.
        self._declared = next((kind for kind, r in READERS.items() if r.declared(ctype)), "raw")
        # Only what could still become a finding is held (the classifier's prefix_hold), at most
        # `hold` characters; PEM blocks still arriving are held up to the classifier's longest
        # finding (gate._extend_hold), and so are tokens when the prefix analysis is unavailable.
        hold = min(DEFAULT_HOLD_CHARS, classifier.max_match_chars) if hold_chars is None else hold_chars
        if hold <= 0:
            raise ValueError("hold_chars must be positive")
        self._policy = ScanPolicy(classifier=classifier, redact=dict(rules.redact), block=rules.block,
                                  hash_key=hash_key, tenant=tenant, hold=hold, step=max(64, hold // 4),
                                  long_hold=classifier.max_match_chars, prefix=classifier.prefix_hold,
                                  max_block_chars=max_block_chars)
        self._ledger = Ledger()
        self.finished = False
        self.blocked: dict | None = None
        self.usage: dict | None = None
        self.events = 0
        # SSE events carrying text released so far: a caller may hold text-less events (the role
        # chunk) back to send them together with the first text.
        self.text_events_released = 0
        self._digest = hashlib.sha256()
        self._body_bytes = 0                # decoded body bytes taken in so far
        self._at_byte = 0                   # where the current event (or the body so far) starts/ends
        self._refuse: tuple[str, str] | None = None
        self.release_headers_mutation: dict[str, list[str]] = {"remove": ["content-length"]}
        self._decoder: _Decoders | None = None
        applied = codings(content_encoding)
        if applied and all(c in DECODABLE for c in applied) and len(applied) <= MAX_CODINGS:
            self._decoder = _Decoders(applied, max_decoded_bytes)
            self.release_headers_mutation = {"remove": ["content-encoding", "content-length"]}
        elif applied:
            # Named only when it is a coding's name: a header's value is not written to records.
            shown = ", ".join(c if c in NAMED_CODINGS else "other" for c in applied[:MAX_CODINGS + 1])
            self._refuse = ("unsupported_encoding", f"a response with content-encoding {shown!r} cannot be inspected")
            self.release_headers_mutation = {"remove": ["content-encoding", "content-length"]}
        self._mode: str | None = None        # how the body is read: decided by its first bytes
        self._sniffed = bytearray()
        self._es: EventStreamDecoder | None = None
        self._seq: JsonSeqReader | None = None
        # Unless the content type announces a stream, the headers wait for the first release (a
        # whole JSON body is released at its end): a block before anything was released carries
        # its own status, with a JSON error body and content type (so does a refused encoding).
        self.whole_body = not READERS[self._declared].streamed or self._refuse is not None
        self._released_any = False
        self._clean: dict[str, None] = {}
        self._shared_clean = _SHARED_CLEAN.setdefault(classifier, {})
        # SSE state
        self._framer = SSEFramer(max_event_bytes)
        self._gates: dict[StreamKey, TextGate | JsonTextGate] = {}
        self._queue: deque[_Queued] = deque()   # events not yet released, in order
        self._queued_bytes = 0
        self._shape: str | None = None
        self._closing = False               # the stream's final marker was released: hold what follows
        self._tail = bytearray()
        self._last_sequence = 0
        # whole-body / raw state
        self._buffer = bytearray()
        self._raw_gate: JsonTextBody | None = None
        # A text body is read in the charset its content type declares, as the client's HTTP
        # library decodes it (httpx's .text, which the SDKs use for error bodies): UTF-16 or
        # EBCDIC read as UTF-8 hides every character. UTF-8 (the default) keeps invalid bytes.
        self._charset = declared_charset(content_type)
        self._text_decoder = codecs.getincrementaldecoder(self._charset or "utf-8")(
            errors="replace" if self._charset else "surrogateescape")
        self._text_encoder = codecs.getincrementalencoder(self._charset)(errors="replace") if self._charset else None
        self._byte_decoders: dict[StreamKey, Any] = {}     # logprob bytes streams

    @property
    def streamed(self) -> bool:
        return READERS[self._mode or self._declared].streamed

    @property
    def streamed_sse(self) -> bool:
        return (self._mode or self._declared) == "sse"

    # --- public -------------------------------------------------------------------------
    def feed(self, chunk: bytes, end_of_stream: bool) -> list[Release]:
        """Take the next body chunk; return what may be sent to the client now, in order. When
        ``end_of_stream`` is set the last Release carries end_of_stream=True (send it only after the
        outcome is committed). After the end (or a block), further calls return []."""
        if self.finished:
            return []      # Envoy may re-deliver the end of the body (envoyproxy/envoy#46237)
        try:
            if self._refuse:
                raise Blocked(*self._refuse)
            pieces = self._decoder.decode(chunk) if self._decoder is not None else [chunk]
            if end_of_stream and self._decoder is not None:
                self._decoder.finish()
            out = [self._take(p, final=False) for p in pieces if p]
            if end_of_stream:
                out.append(self._take(b"", final=True))
            body = b"".join(out)
        except Blocked as b:
            return self._block(b.label, b.reason)
        except EventTooLarge as exc:
            return self._block("event_too_large", str(exc))
        except EventStreamError as exc:
            return self._block("bad_encoding", f"the event stream is malformed ({exc})")
        except InputTooLarge:
            return self._block("response_too_large", "a text of the response is too large to be inspected")
        except RecursionError:
            # Deeper than the json module reads, not deeper than JSON.parse does: a JavaScript
            # client would read what raw text scanning does not join nor decode.
            return self._block("bad_body", "a JSON value of the response is nested too deeply to be inspected")
        except Exception as exc:  # noqa: BLE001 - fail closed: what was not inspected is not released
            return self._block("inspection_error", f"the response could not be inspected ({type(exc).__name__})")
        if end_of_stream:
            self.finished = True
            return [self._release(body, True)]
        return [self._release(body, False)] if body else []

    def stop(self, label: str, reason: str) -> list[Release]:
        """End the response now with a provider-shaped error (something outside the inspector,
        such as the translation of the upstream's answer, failed)."""
        if self.finished:
            return []
        return self._block(label, reason)

    def outcome(self) -> dict:
        out = {"classification": self._ledger.summary(), "redactions": list(self._ledger.redactions),
               "usage": self.usage, "blocked": self.blocked, "response_sha256": self._digest.hexdigest(),
               "streamed": self.streamed, "events": self.events}
        if self.marker_field_sent:
            out["marker_field"] = self.marker_field[0] if self.marker_field else None
        if self._ledger.redactions_not_listed:
            out["redactions_not_listed"] = self._ledger.redactions_not_listed
        return out

    # --- plumbing -----------------------------------------------------------------------
    def _release(self, body: bytes, end: bool) -> Release:
        self._digest.update(body)
        if body:
            self._released_any = True
        return Release(body=body, end_of_stream=end)

    def _block(self, label: str, reason: str) -> list[Release]:
        self.finished = True
        self.blocked = {"label": label, "at_event": self.events, "at_byte": self._at_byte, "reason": reason}
        fam = formats.family(self.surface_name)
        # The error goes out in the form the client is reading: a JSON error under the 403 the
        # server sets when the headers are still held; otherwise in the body's own framing (what
        # was released so far), or the one the content type announced.
        form = "json" if self.whole_body and not self._released_any else \
            (self._mode or self._declared) if self._released_any else self._declared
        body = READERS[form].blocked(self, reason)
        if body is None:
            _headers, body = error_body(fam, BLOCKED_STATUS, "response_blocked", reason)
        return [self._release(body, True)]

    def _blocked_eventstream(self, reason: str) -> bytes:
        # A modeled stream exception: botocore raises it as an EventStreamError.
        return eventstream.exception("modelStreamErrorException",
                                     json.dumps({"message": reason}, separators=(",", ":")).encode())

    def _blocked_sse(self, reason: str) -> bytes:
        # A shape names the error form itself (the Responses API's "openai.responses" its own event).
        return formats.error_event(self.surface_name if self._shape is None else self._shape, reason,
                                   sequence_number=self._last_sequence + 1)

    def _blocked_jsonseq(self, reason: str) -> bytes | None:
        if self._seq is None:
            return None
        # The array goes on with an error element and ends: a JSON reader gets a whole array.
        _headers, err = error_body(formats.family(self.surface_name), 500, "response_blocked", reason)
        return (b"," + err + b"]") if self._seq.array else (b"\n" + err + b"\n")

    def _blocked_whole(self, reason: str) -> bytes | None:
        return None        # a JSON error body in the provider's format

    def _sniff(self, head: bytes) -> str:
        """How to read the body, by what it is: the SDKs parse SSE or an event stream whatever
        the content type says."""
        if self._declared == "eventstream":
            return "eventstream"
        h = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
        return next((kind for kind, r in READERS.items() if r.sniff(head, h)), self._declared)

    def _take(self, data: bytes, *, final: bool) -> bytes:
        self._body_bytes += len(data)
        if self._mode is None:
            self._sniffed += data
            if not final and (len(self._sniffed) < SNIFF_BYTES or not self._sniffed.strip()) \
                    and len(self._sniffed) <= self.max_event_bytes:
                return b""
            data = bytes(self._sniffed)
            self._sniffed.clear()
            self._mode = self._sniff(data)
            if self._mode == "eventstream":
                self._es = EventStreamDecoder(self.max_event_bytes)
        reader = READERS[self._mode]
        if not reader.framed or final:
            self._at_byte = self._body_bytes
        return reader.read(self, data, final)

    # --- SSE ----------------------------------------------------------------------------
    def _sse(self, data: bytes, final: bool) -> bytes:
        events = self._framer.feed(data) if data else []
        if final:
            events += self._framer.finish()
        return self._events(events, self._event, final)

    def _events(self, items: list, handle: Callable[[Any], None], final: bool, end: bytes = b"") -> bytes:
        """Events in order (SSE events, event-stream messages, array elements): each handled and
        what it lets go released; then the chunk settled. At the end of the body every stream is
        decided (streams no event ended: a Gemini stream just stops) and the held tail and `end`
        (an array's "]") go out."""
        out: list[bytes] = []
        for item in items:
            handle(item)
            out.append(self._drain())
        if not final and items:
            out.append(self._settle())
        if final:
            self._at_byte = self._body_bytes
            self._decide(ALL)
            out.append(self._drain())
            out.append(bytes(self._tail))
            self._tail.clear()
            out.append(end)
        return b"".join(out)

    def _gate(self, key: StreamKey, *, json_text: bool = False) -> TextGate | JsonTextGate:
        gate = self._gates.get(key)
        if gate is None:
            kind = JsonDataGate if key == TEXT_DATA else JsonTextGate if json_text else TextGate
            gate = self._gates[key] = kind(self._policy, self._ledger, "/".join(map(str, key)))
        return gate

    def _inspect(self, text: str, path: formats.Path, *, count: bool = True) -> str:
        """One whole string of an event or body; short strings known clean (an id or a model name
        repeated in every chunk) are not scanned again."""
        if clean_whole(self._policy, text):
            if len(text) <= CLEAN_CACHE_CHARS:
                if len(self._clean) >= CLEAN_CACHE:
                    self._clean.clear()
                self._clean[text] = None
            return text
        return inspect_string(self._policy, self._ledger, text, "event/" + "/".join(map(str, path)), count=count)

    def _scan_strings(self, ev: Any, skip: set, *, count: bool = True, padding: bool = False) -> bool:
        """Every string of the event but the stream texts in `skip`, keys included, scanned whole
        and redacted in place; True if something changed. Keys are renamed last, deepest first (the
        paths below a key name it as it was)."""
        changed = False
        renames: list[tuple[formats.Path, str]] = []
        clean = self._clean
        for path, text in formats.strings(ev, numbers=True):
            if isinstance(text, formats.NumberForms):
                # A number: the first of its readings with a finding replaces it, as a string. A
                # number has no context, so a reading only the context would confirm (a 10-digit
                # NPI or phone at low confidence: every tenth `created` timestamp is a Luhn-valid
                # NPI) does not turn a typed field into a string the SDK cannot parse.
                for form in text:
                    if form not in clean and form not in self._shared_clean:
                        if all(f.confidence < NUMBER_MIN_CONFIDENCE for f in self._policy.classifier.scan(form)):
                            continue
                        red = self._inspect(form, path, count=count)
                        if red != form:
                            formats.set_path(ev, path, red)
                            changed = True
                            break
                continue
            # "p" is Bedrock's random padding (it hides the lengths of the texts), not content.
            if text in clean or not text or path in skip or (padding and path == ("p",)):
                continue
            # Keys and short strings without spaces (schema words, enums, model names) known clean
            # are shared by the classifier's responses; answer text is not kept past its response.
            shared = len(text) <= SHARED_CLEAN_CHARS and " " not in text
            if shared and text in self._shared_clean:
                continue
            red = self._inspect(text, path, count=count)
            if shared and red == text and text in clean:
                if len(self._shared_clean) >= CLEAN_CACHE:
                    self._shared_clean.clear()
                self._shared_clean[text] = None
            if red != text:
                if isinstance(path[-1], formats.KeyOf):
                    renames.append((path, red))
                else:
                    formats.set_path(ev, path, red)
                changed = True
        for path, red in reversed(renames):
            formats.set_path(ev, path, red)
        return changed

    def _settle(self) -> bytes:
        """The upstream's data so far is in: release what can be decided now rather than at the
        next scan step (a model's next token may be a while away)."""
        for gate in self._gates.values():
            if gate.held_chars:
                gate.settle()
        return self._drain()

    def _decide(self, prefix: StreamKey) -> None:
        """Everything pending in the streams under `prefix` is decided (the streams ended)."""
        for key, gate in self._gates.items():
            if key[:len(prefix)] == prefix and gate.held_chars:
                gate.flush()

    def _enqueue(self, item: _Queued) -> None:
        self._queue.append(item)
        self._queued_bytes += len(item.raw)
        if self._queued_bytes > self.max_buffer_bytes:
            raise Blocked("response_too_large", "too much of the stream is waiting for its text to be decided")

    def _drain(self) -> bytes:
        """Release, in order, the events whose characters are all decided."""
        out: list[bytes] = []
        while self._queue:
            item = self._queue[0]
            if any(end > self._gates[key].released_chars for key, _path, _start, end in item.spans):
                break
            self._queue.popleft()
            self._queued_bytes -= len(item.raw)
            released = self._render(item)
            if any(end > start for _key, _path, start, end in item.spans):
                self.text_events_released += 1
            if item.closing:
                # The client treats [DONE] / message_stop / response.completed as "complete": it
                # goes out with the final Release, after the outcome record is committed.
                self._closing = True
            if self._closing:
                self._tail += released
                if len(self._tail) > self.max_buffer_bytes:
                    raise Blocked("response_too_large", "too much data after the end of the stream")
            else:
                out.append(released)
        if any(g.edits for g in self._gates.values()):
            waiting: dict[StreamKey, int] = {}
            for item in self._queue:
                for key, _path, start, _end in item.spans:
                    waiting.setdefault(key, start)
            for key, gate in self._gates.items():
                gate.forget_edits_before(waiting.get(key, gate.released_chars))
        return b"".join(out)

    def _render(self, item: _Queued) -> bytes:
        if item.ev is None:
            return item.raw
        if item.text_data:
            (key, _path, start, end), = item.spans
            text = item.ev["data"]
            edited = self._gates[key].edited(start, end, text)
            if edited == text:
                return item.raw
            assert item.wrap is not None
            return item.wrap(edited.encode("utf-8", "surrogateescape"))
        changed = item.changed
        for key, path, start, end in item.spans:
            text = formats.get_path(item.ev, path)
            if isinstance(text, _Bytes):        # a logprob's bytes, scanned as the text they spell
                edited = self._gates[key].edited(start, end, text.text)
                if edited != text.text:
                    changed = True
                    formats.set_path(item.ev, path, list(edited.encode("utf-8", "surrogateescape")))
                else:
                    formats.set_path(item.ev, path, text.original)
                continue
            edited = self._gates[key].edited(start, end, text)
            if edited != text:
                formats.set_path(item.ev, path, edited)
                changed = True
                if path[-1] == "token":     # a logprob token's bytes spell it out again
                    parent = formats.get_path(item.ev, path[:-1])
                    if isinstance(parent, dict) and isinstance(parent.get("bytes"), list):
                        parent["bytes"] = list(edited.encode("utf-8", "surrogatepass"))
        if not changed:
            return item.raw
        if item.headers is None:
            assert item.wrap is not None
            return item.wrap(formats.dumps(item.ev))
        if item.outer is not None:      # invoke stream: the model's own event, base64 inside "bytes"
            item.outer["bytes"] = base64.b64encode(formats.dumps(item.ev)).decode()
            return eventstream.encode_message(item.headers, formats.dumps(item.outer))
        return eventstream.encode_message(item.headers, formats.dumps(item.ev))

    # --- Bedrock event streams (application/vnd.amazon.eventstream) ----------------------
    def _eventstream(self, data: bytes, final: bool) -> bytes:
        assert self._es is not None
        messages = self._es.feed(data) if data else []
        if final and self._es.pending:
            raise Blocked("bad_encoding", "the event stream ended inside a message")
        return self._events(messages, lambda m: self._es_message(*m), final)

    def _es_message(self, msg: eventstream.Message, raw: bytes) -> None:
        self.events += 1
        self._at_byte = self._body_bytes
        try:
            payload, reserialize = formats.parse(msg.payload)
        except ValueError:
            payload, reserialize = None, False
        if not isinstance(payload, dict):
            # Not a JSON object: scanned whole, re-framed only if something was redacted.
            self._decide(ALL)
            text = msg.payload.decode("utf-8", "surrogateescape")
            red = inspect_string(self._policy, self._ledger, text, "event")
            frame_bytes = raw if red == text else eventstream.encode_message(
                msg.headers, red.encode("utf-8", "surrogateescape"))
            return self._enqueue(_Queued(frame_bytes, None, None, [], False))
        if msg.message_type != "event":
            self._decide(ALL)            # an exception from the provider ends every stream
        outer = None
        ev = payload
        if msg.event_type == "chunk" and isinstance(payload.get("bytes"), str):
            try:
                inner, inner_reserialize = formats.parse(base64.b64decode(payload["bytes"], validate=True))
            except (ValueError, binascii.Error):
                raise Blocked("bad_encoding", "an invoke stream chunk is not base64 JSON") from None
            if isinstance(inner, dict):
                outer, ev = payload, inner
                reserialize = reserialize or inner_reserialize
        self.usage = formats.merge_usage(self.usage, formats.usage(ev), ev)
        if outer is not None:
            self._note_shape(ev)
            found, ends = formats.slots(ev), formats.terminated(ev)
            closing = ev.get("type") in formats.FINAL_TYPES or bool(ev.get("completionReason"))
        else:
            found = formats.bedrock_slots(msg.event_type, ev)
            ends = formats.bedrock_terminated(msg.event_type, ev)
            closing = msg.event_type == "messageStop"
        spans = self._feed_slots(found)
        for prefix in ends:
            self._decide(prefix)
        changed = self._scan_strings(ev, {sp[1] for sp in spans}, padding=outer is None)
        if outer is not None:      # the invoke chunk's own strings around the model's event
            changed = self._scan_strings(outer, {("bytes",)}, padding=True) or changed
        changed = changed or reserialize
        self._enqueue(_Queued(raw, None, ev if spans or changed else None, spans, changed, closing=closing,
                              headers=dict(msg.headers), outer=outer))

    def _note_shape(self, ev: dict) -> None:
        """The first event of a known shape names the stream's shape (providers' StreamRules.shapes)."""
        if self._shape is None:
            self._shape = formats.shape(ev)

    def _event(self, e: SSEEvent) -> None:
        self.events += 1
        self._at_byte = e.offset
        if e.data is None:               # comments, bare event lines: nothing an SDK reads, still scanned
            return self._raw_event(e, decide=False)
        data = e.data
        if e.other_lines:
            e = self._event_lines(e, data)
        if data.strip() == b"[DONE]":
            self._decide(ALL)
            return self._enqueue(_Queued(e.raw, None, None, [], False, closing=True))
        try:
            ev, duplicate = formats.parse(data)
        except ValueError:
            return self._text_data_event(e, data)
        if not isinstance(ev, dict):
            if duplicate:
                # Read with the last of duplicate keys / U+FFFD for invalid UTF-8 (as a client
                # parses it): it goes out so, and is read so in the stream.
                data = formats.dumps(ev)
                e = replace(e, raw=frame(e.other_lines, data, e.line_end))
            # A string, number or array: text of the data stream, read decoded ("1111" is four
            # digits of a card, not an int; "\\u0031" is a digit); a float as JavaScript prints
            # it ("4.111e3" is "4111"); a string's quotes and an array's brackets, commas and
            # spaces between its strings are no text (a number's spaces are: ` 1111 ` may be a
            # piece of one string cut over events, which a client joins before parsing).
            return self._text_data_event(e, data, value=isinstance(ev, (str, list)), reading=js_number(ev))
        self._object_event(ev, e.raw, partial(frame, e.other_lines, line_end=e.line_end), duplicate)

    def _event_lines(self, e: SSEEvent, data: bytes) -> SSEEvent:
        """The lines of a data event other than its data (`event:`, `id:`, `retry:`, comments),
        each scanned whole: the SDKs hand the event name and id to the application (openai's
        Assistants `thread.*` events, `synthesize_event_and_data`; EventSource's lastEventId).
        A redacted line re-frames the event (its data as it came)."""
        lines = list(e.other_lines)
        changed = False
        for i, line in enumerate(lines):
            text = line.decode("utf-8", "surrogateescape")
            if text in self._clean:
                continue
            red = self._inspect(text, ("sse-line", i))
            if red != text:
                lines[i], changed = red.encode("utf-8", "surrogateescape"), True
        if not changed:
            return e
        other = tuple(lines)
        return replace(e, raw=frame(other, data, e.line_end), other_lines=other)

    def _feed_slots(self, found: list[formats.Slot]) -> list[tuple[StreamKey, formats.Path, int, int]]:
        spans: list[tuple[StreamKey, formats.Path, int, int]] = []
        for sl in found:
            gate = self._gate(sl.key, json_text=sl.json_text)
            start = gate.fed_chars
            # A constant decided at once only when nothing of its stream is held: a piece held
            # before it may still be growing into a finding with what follows.
            eager = sl.eager and not gate.held_chars
            gate.feed(sl.text)
            if eager:
                gate.flush()
            spans.append((sl.key, sl.path, start, start + len(sl.text)))
        return spans

    def _logprob_slots(self, ev: dict) -> list[formats.Slot]:
        """Logprobs as an application can read them, beyond the chosen tokens (formats.slots):
        the chosen tokens' `bytes` joined (they decode to the text again, a character split over
        two tokens included), and the alternatives of each rank joined across positions (the
        second-best reading, and so on), tokens and bytes. Each alternative alone is a string of
        the event, scanned whole like every other. A reading mixing ranks is not joined."""
        out: list[formats.Slot] = []
        lists: list[tuple[StreamKey, formats.Path, Any]] = []
        choices = ev.get("choices")
        if isinstance(choices, list):
            for i, ch in enumerate(choices):
                if not isinstance(ch, dict) or not isinstance(ch.get("logprobs"), dict):
                    continue
                kind = "chat" if isinstance(ch.get("delta"), dict) or isinstance(ch.get("message"), dict) else "cmpl"
                idx = event_index(ch.get("index"), i)
                for part in ("content", "refusal"):
                    lists.append(((kind, idx, "logprobs", part), ("choices", i, "logprobs", part),
                                  ch["logprobs"].get(part)))
        t = ev.get("type")
        if isinstance(t, str) and t.startswith("response.") and isinstance(ev.get("logprobs"), list):
            content_index = event_index(ev.get("content_index", 0), 0)
            lists.append((("resp", event_index(ev.get("output_index"), 0), "logprobs", content_index), ("logprobs",),
                          ev["logprobs"]))
        for key, path, items in lists:
            if not isinstance(items, list):
                continue
            for k, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                if "logprobs" == path[0] and isinstance(item.get("token"), str):   # Responses: chosen tokens
                    out.append(formats.Slot(key + ("token",), path + (k, "token"), item["token"]))
                self._bytes_slot(item, key + ("bytes",), path + (k, "bytes"), out)
                top = item.get("top_logprobs")
                if not isinstance(top, list):
                    continue
                for r, alt in enumerate(top):
                    if not isinstance(alt, dict):
                        continue
                    if isinstance(alt.get("token"), str):
                        out.append(formats.Slot(key + ("top", r), path + (k, "top_logprobs", r, "token"), alt["token"]))
                    self._bytes_slot(alt, key + ("top-bytes", r), path + (k, "top_logprobs", r, "bytes"), out)
        return out

    def _bytes_slot(self, item: dict, key: StreamKey, path: formats.Path, out: list[formats.Slot]) -> None:
        raw = item.get("bytes")
        if not isinstance(raw, list) or not raw:
            return
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in raw):
            raise Blocked("bad_body", "a logprob's bytes are not a list of bytes")
        dec = self._byte_decoders.get(key)
        if dec is None:
            dec = self._byte_decoders[key] = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        text = dec.decode(bytes(raw))
        item["bytes"] = _Bytes(text, raw)
        out.append(formats.Slot(key, path, text))

    def _object_event(self, ev: dict, raw: bytes, wrap: Callable[[bytes], bytes], duplicate: bool) -> None:
        """A JSON object event (an SSE event's data, an array element, a whole body): its stream
        texts go through their gates, every other string is scanned whole, and it waits in order
        until every character it carries is decided."""
        self._note_shape(ev)
        if isinstance(ev.get("sequence_number"), int):
            self._last_sequence = ev["sequence_number"]
        self.usage = formats.merge_usage(self.usage, formats.usage(ev), ev)
        if self.drop_usage_chunk and ev.get("choices") == [] and isinstance(ev.get("usage"), dict) \
                and ev.get("object") == "chat.completion.chunk":
            return None
        spans = self._feed_slots(formats.slots(ev) + self._logprob_slots(ev))
        for prefix in formats.terminated(ev):
            self._decide(prefix)
        changed = self._scan_strings(ev, {sp[1] for sp in spans}, count=not formats.restates(ev)) or duplicate
        self._enqueue(_Queued(raw, wrap, ev if spans or changed else None, spans, changed,
                              closing=ev.get("type") in formats.FINAL_TYPES))

    def _text_data_event(self, e: SSEEvent, data: bytes, *, value: bool = False, reading: str | None = None) -> None:
        """An event whose data is not a JSON object: a JSON string, number or array, or text (no
        LLM SDK reads one; an application parsing each event and joining the strings does, or one
        joining the data and parsing it, a page's EventSource showing it). All such data is one
        content stream (TEXT_DATA, a JsonDataGate): escapes decoded wherever they are, also split
        between events, string quotes dropped, held back and decided like a model's deltas (it
        was scanned event by event, and a JSON string with escapes whole: a card split over events
        went out, `\\u0031` for its digits)."""
        self._data_stream(e.raw, partial(frame, e.other_lines, line_end=e.line_end), data, value=value,
                          reading=reading)

    def _data_stream(self, raw: bytes, wrap: Callable[[bytes], bytes], data: bytes, *, value: bool = False,
                     reading: str | None = None) -> None:
        """`data` (an SSE event's, an array element or ndjson value that is not an object) goes
        to the TEXT_DATA stream; the event waits in order until it is decided."""
        text = data.decode("utf-8", "surrogateescape")
        gate = self._gate(TEXT_DATA)
        assert isinstance(gate, JsonDataGate)
        start = gate.fed_chars
        if reading is not None and reading != text and not gate.held_escape:
            gate.feed_value(text, reading)
        else:
            gate.feed(text, value=value)
        self._enqueue(_Queued(raw, wrap, {"data": text}, [(TEXT_DATA, ("data",), start, start + len(text))], False,
                              text_data=True))

    def _raw_event(self, e: SSEEvent, *, decide: bool) -> None:
        if decide:
            self._decide(ALL)
        text = e.raw.decode("utf-8", "surrogateescape")
        red = inspect_whole(self._policy, self._ledger, text, "event")
        if "\\" in red:
            # Also as a client that unescapes what it reads of a line (`: 4\\u0031...`).
            red = inspect_string(self._policy, self._ledger, red, "event")
        self._enqueue(_Queued(e.raw if red == text else red.encode("utf-8", "surrogateescape"), None, None, [], False))

    # --- whole JSON bodies --------------------------------------------------------------
    def _json(self, data: bytes, final: bool) -> bytes:
        self._buffer += data
        if len(self._buffer) > self.max_buffer_bytes:
            raise Blocked("response_too_large", f"the response body exceeds {self.max_buffer_bytes} bytes")
        if not final:
            return b""
        body = bytes(self._buffer)
        self._buffer.clear()
        try:
            obj, duplicate = formats.parse(body)
        except ValueError:
            # JSON values one after another (ndjson) are read as a sequence; anything else as text.
            # Read as values only if every one of them is JSON ("Bad request: 4111 1111 ..." is
            # no sequence of values: read word by word, the card was never seen whole).
            self._seq = JsonSeqReader(self.max_buffer_bytes)
            try:
                values = self._seq.feed(body)
                more, rest = self._seq.finish()
                values += more
                for _lead, value in values:
                    formats.parse(value)
            except (JsonSeqError, EventTooLarge, ValueError):
                self._seq = None
                return self._whole_text(body)
            # Values one after another are read one by one by a client that parses them, and as
            # one text by one that shows the body (an error message): both readings are scanned.
            return self._whole_text(self._seq_values(values, rest, final=True), values=True)
        if isinstance(obj, dict):
            if self.marker_field is not None and 200 <= self.status < 300:
                obj[self.marker_field[0]] = self.marker_field[1]
                duplicate = self.marker_field_sent = True      # re-serialized with the field
            # One event: the same walk as a streamed event's, its streams decided at once.
            self._object_event(obj, body, lambda data: data, duplicate)
            self._decide(ALL)
            return self._drain() + bytes(self._tail)
        for item in obj if isinstance(obj, list) else [obj]:
            self.usage = formats.merge_usage(self.usage, formats.usage(item), item)
        holder = [obj]
        changed = self._scan_strings(holder, set()) or duplicate
        return formats.dumps(holder[0]) if changed else body

    def _whole_text(self, body: bytes, *, values: bool = False) -> bytes:
        """A whole body scanned as one text, in its declared charset."""
        if self._charset is not None:
            self._raw_gate = None
            return self._raw(body, True)
        text = body.decode("utf-8", "surrogateescape")
        red = inspect_whole(self._policy, self._ledger, text, "body")
        if "\\" in red or '"' in red:
            # Also as the SDKs read an error body they hand to json.loads, and as a client joining
            # JSON strings one after another reads them: escapes decoded, quotes no text.
            red = JsonTextBody(self._policy, self._ledger, "body", values=values).feed(red, True)
        return body if red == text else red.encode("utf-8", "surrogateescape")

    # --- JSON arrays (or values) sent in pieces -----------------------------------------
    def _jsonseq(self, data: bytes, final: bool) -> bytes:
        if self._seq is None:
            self._seq = JsonSeqReader(self.max_event_bytes)
        try:
            values = self._seq.feed(data) if data else []
        except JsonSeqError as exc:
            raise Blocked("bad_body", f"the response is not a JSON array ({exc})") from None
        rest = b""
        if final:
            try:
                more, rest = self._seq.finish()
            except JsonSeqError as exc:
                raise Blocked("bad_body", f"the response is not a complete JSON array ({exc})") from None
            values += more
        return self._seq_values(values, rest, final=final)

    def _seq_values(self, values: list[tuple[bytes, bytes]], rest: bytes, *, final: bool) -> bytes:
        # The array's "]" goes with the end of the response.
        return self._events(values, lambda v: self._seq_value(*v), final, rest)

    def _seq_value(self, lead: bytes, value: bytes) -> None:
        self.events += 1
        try:
            ev, duplicate = formats.parse(value)
        except ValueError:
            ev = None
            duplicate = True
            self._decide(ALL)
            text = value.decode("utf-8", "surrogateescape")
            red = inspect_whole(self._policy, self._ledger, text, "event")
            return self._enqueue(_Queued(lead + (value if red == text else red.encode("utf-8", "surrogateescape")),
                                         None, None, [], False))
        if isinstance(ev, dict):
            return self._object_event(ev, lead + value, lambda data: lead + data, duplicate)
        # A string, number or array: one stream with the others, read decoded (an application
        # joining the strings of the array reads `"4\\u0031"`, `"11 1..."` as a card).
        if duplicate:
            value = formats.dumps(ev)
        self._data_stream(lead + value, lambda data: lead + data, value, value=isinstance(ev, (str, list)),
                          reading=js_number(ev))

    # --- anything else: a text stream ---------------------------------------------------
    def _raw(self, data: bytes, final: bool) -> bytes:
        if self._raw_gate is None:
            # Read as text and as the SDKs read an error body (json.loads of its text, whatever
            # the content type): escapes decoded, a string's quotes no text.
            self._raw_gate = JsonTextBody(self._policy, self._ledger, "body")
        text = self._text_decoder.decode(data, final)
        released = self._raw_gate.feed(text, final)
        if self._text_encoder is not None:
            # Written back in its charset (characters it cannot hold as its replacement).
            return self._text_encoder.encode(released, final)
        return released.encode("utf-8", "surrogateescape")


def js_number(value: Any) -> str | None:
    """A float as JavaScript's String() prints it when it is a whole number below 1e21 (`4111.0`,
    `4.111e3`: "4111"), else Python's repr; None for anything but a float (an int's digits are
    its text already)."""
    if not isinstance(value, float):
        return None
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True, slots=True)
class Reader:
    """One kind of body, one row of READERS (h11's READERS in spirit): how it is recognized, how
    its bytes are read, and how a block ends what went out of it."""
    read: Callable[[ResponseInspector, bytes, bool], bytes]
    # None: a JSON error body in the provider's format (and the 403 while the headers are held).
    blocked: Callable[[ResponseInspector, str], bytes | None]
    streamed: bool                  # the SDKs read it as a stream
    declared: Callable[[str], bool] = lambda ctype: False          # the content type announces it
    sniff: Callable[[bytes, bytes], bool] = lambda head, h: False  # its first bytes (raw, BOM/space stripped)
    framed: bool = False            # its events carry their own offsets (SSE): no per-chunk byte count


def _json_type(ctype: str) -> bool:
    return ctype.endswith("json") or ctype.endswith("+json")


# Asked in this order (the event-stream prelude first: its bytes are binary); "raw" is what is
# neither announced nor recognized.
READERS: Mapping[str, Reader] = {
    "eventstream": Reader(ResponseInspector._eventstream, ResponseInspector._blocked_eventstream, streamed=True,
                          declared=lambda ctype: ctype == EVENTSTREAM_TYPE,
                          sniff=lambda head, h: _eventstream_prelude(head)),
    "sse": Reader(ResponseInspector._sse, ResponseInspector._blocked_sse, streamed=True,
                  declared=lambda ctype: ctype == "text/event-stream", sniff=lambda head, h: h.startswith(SSE_STARTS),
                  framed=True),
    "jsonseq": Reader(ResponseInspector._jsonseq, ResponseInspector._blocked_jsonseq, streamed=True,
                      sniff=lambda head, h: h[:1] == b"["),
    "json": Reader(ResponseInspector._json, ResponseInspector._blocked_whole, streamed=False, declared=_json_type,
                   sniff=lambda head, h: h[:1] == b"{"),
    "raw": Reader(ResponseInspector._raw, ResponseInspector._blocked_whole, streamed=False),
}
