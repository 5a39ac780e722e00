"""Bounded, incremental Server-Sent Events framing (WHATWG HTML "event stream" rules).

Lines end in CRLF, LF or CR; a blank line ends an event. Chunks may split anything, including a
CRLF pair, so a CR at the very end of the buffer is not interpreted until the next byte (or the
end of the stream) arrives. Events are returned as their raw bytes so an untouched event can be
released byte for byte. The line search is linear: the next CR and LF positions are cached.
"""

from __future__ import annotations

from dataclasses import dataclass


class EventTooLarge(ValueError):
    """An event (or a body with no event boundary) grew past the bound; sizes only."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an SSE event of more than {limit} bytes (at least {size}) cannot be inspected")
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class SSEEvent:
    raw: bytes               # the event's bytes, terminating blank line included
    offset: int              # where the event starts in the (decoded) body
    data: bytes | None       # the data lines joined by "\n" (None: the event had no data field)
    other_lines: tuple[bytes, ...]   # non-data lines (event:, id:, retry:, comments), in order
    line_end: bytes          # the event's first line terminator, reused when re-framing


class SSEFramer:
    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._line_start = 0     # start of the current (unfinished) line in _buf
        self._clean_upto = 0     # _buf[_line_start:_clean_upto] is known to hold no CR or LF
        self._consumed = 0       # bytes of the body already framed and dropped from _buf

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        events = self._split(final=False)
        if len(self._buf) > self.max_event_bytes:
            raise EventTooLarge(len(self._buf), self.max_event_bytes)
        return events

    def finish(self) -> list[SSEEvent]:
        """End of body: a last event without its blank line still counts (as browsers do)."""
        events = self._split(final=True)
        if self._buf:
            raw = bytes(self._buf)
            offset = self._consumed
            self._consumed += len(raw)
            self._buf.clear()
            self._line_start = self._clean_upto = 0
            if raw.strip():
                events.append(_parse(raw, offset))
        return events

    def _split(self, *, final: bool) -> list[SSEEvent]:
        buf = self._buf
        n = len(buf)
        events: list[SSEEvent] = []
        event_start = 0
        pos = self._line_start
        search = max(pos, self._clean_upto)
        cr = buf.find(13, search)
        lf = buf.find(10, search)
        clean_upto = n
        while cr != -1 or lf != -1:
            i = lf if cr == -1 or (lf != -1 and lf < cr) else cr
            if buf[i] == 13:
                if i + 1 == n and not final:
                    clean_upto = i             # CR at the end: wait for a possible LF
                    break
                term = 2 if i + 1 < n and buf[i + 1] == 10 else 1
            else:
                term = 1
            line_empty = i == pos
            pos = i + term
            if line_empty:
                if pos - event_start > term:   # a blank line after at least one line ends an event
                    events.append(_parse(bytes(buf[event_start:pos]), self._consumed + event_start))
                event_start = pos
            if cr != -1 and cr < pos:
                cr = buf.find(13, pos)
            if lf != -1 and lf < pos:
                lf = buf.find(10, pos)
        if clean_upto < pos:
            clean_upto = pos
        if event_start:
            del buf[:event_start]
            self._consumed += event_start
        self._line_start = pos - event_start
        self._clean_upto = clean_upto - event_start
        return events


def _lines(raw: bytes) -> tuple[list[bytes], bytes]:
    out: list[bytes] = []
    first_end = b""
    i, n = 0, len(raw)
    while i < n:
        cr, lf = raw.find(b"\r", i), raw.find(b"\n", i)
        j = lf if cr == -1 or (lf != -1 and lf < cr) else cr
        if j == -1:
            out.append(raw[i:])
            break
        term = b"\r\n" if raw[j] == 13 and raw[j + 1:j + 2] == b"\n" else raw[j:j + 1]
        if not first_end:
            first_end = term
        out.append(raw[i:j])
        i = j + len(term)
    return out, first_end or b"\n"


BOM = b"\xef\xbb\xbf"


def _parse(raw: bytes, offset: int) -> SSEEvent:
    # A UTF-8 BOM before the stream's first line is dropped by the WHATWG parser (EventSource, the
    # JS parsers): its first event is read as one (the Python SDKs' field name then has the BOM,
    # and they read less).
    lines, line_end = _lines(raw[len(BOM):] if offset == 0 and raw.startswith(BOM) else raw)
    data: list[bytes] = []
    other: list[bytes] = []
    for line in lines:
        if not line:
            continue
        if line.startswith(b"data"):
            rest = line[4:]
            if not rest:
                data.append(b"")
                continue
            if rest[:1] == b":":
                value = rest[1:]
                data.append(value[1:] if value[:1] == b" " else value)
                continue
        other.append(line)
    return SSEEvent(raw=raw, offset=offset, data=b"\n".join(data) if data else None,
                    other_lines=tuple(other), line_end=line_end)


def event_bytes(data: str, event: str | None = None) -> bytes:
    """One event written from scratch: an optional event line and one data line."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def frame(other_lines: tuple[bytes, ...], data: bytes, line_end: bytes = b"\n") -> bytes:
    """An event from its non-data lines and a data payload (one data line per payload line)."""
    parts = [line + line_end for line in other_lines]
    for line in data.split(b"\n"):
        parts.append(b"data: " + line + line_end)
    parts.append(line_end)
    return b"".join(parts)
