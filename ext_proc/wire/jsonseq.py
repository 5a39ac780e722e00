"""Bounded, incremental reading of JSON values sent in pieces: the elements of a top-level array
(Gemini's streamGenerateContent without ``alt=sse`` answers ``[{...},\\r\\n{...}]`` element by
element) or values one after another (ndjson). Each value is returned with the bytes before it
(``[``, commas, whitespace) once it is complete, so it can be inspected as a whole event and
released as the bytes it came in. The scan is linear: inside a value only quotes, backslashes and
brackets are looked at (a regular expression finds the next one).
"""

from __future__ import annotations

import re

from ext_proc.wire.sse import EventTooLarge

_IN_VALUE = re.compile(rb'[\[\]{}"]')
_IN_STRING = re.compile(rb'["\\]')
_PRIMITIVE_END = re.compile(rb'[,\]\s]')
_SPACE = b" \t\r\n"


class JsonSeqError(ValueError):
    """The body is not a JSON array or sequence of values (sizes and positions only)."""


class JsonSeqReader:
    def __init__(self, max_value_bytes: int) -> None:
        self.max_value_bytes = max_value_bytes
        self.array: bool | None = None     # a top-level array (True) or bare values (False)
        self.closed = False                # the array's "]" was read
        self._buf = bytearray()
        self._i = 0                        # scan position in _buf
        self._lead = 0                     # start of the bytes before the next value
        self._start: int | None = None     # start of the value being read
        self._depth = 0
        self._in_string = False
        self._primitive = False
        self._after_value = False          # in an array: a value was read, a "," or "]" must follow

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[bytes, bytes]] = []
        i, n = self._i, len(buf)
        while i < n:
            if self._in_string:
                m = _IN_STRING.search(buf, i)
                if m is None:
                    i = n
                    break
                j = m.start()
                if buf[j] == 0x5C:                 # an escape: skip the escaped byte
                    if j + 1 >= n:
                        i = j
                        break
                    i = j + 2
                    continue
                self._in_string = False
                i = j + 1
                if self._depth == 0:
                    out.append(self._emit(i))
                continue
            if self._primitive:
                m = _PRIMITIVE_END.search(buf, i)
                if m is None:
                    i = n
                    break
                i = m.start()
                if i == self._start:
                    # A "," or "]" where a value begins (outside an array), or a space JSON does
                    # not allow (\f, \v): not a value. (An empty one emitted here was read again
                    # as the next value: a loop without end, each turn a little more memory.)
                    raise JsonSeqError(f"unexpected byte where a JSON value begins at byte {i}")
                out.append(self._emit(i))
                continue
            if self._start is None:
                c = buf[i]
                if c in _SPACE:
                    i += 1
                    continue
                if self.closed:
                    raise JsonSeqError(f"data after the end of the JSON array at byte {i}")
                if self.array is None:
                    self.array = c == 0x5B
                    if self.array:
                        i += 1
                        continue
                if self.array and c == 0x2C:       # ","
                    if not self._after_value:
                        raise JsonSeqError(f"a comma without a value before it at byte {i}")
                    self._after_value = False
                    i += 1
                    continue
                if self.array and self._after_value and c != 0x5D:
                    # Elements are separated by commas: "[4111 1111]" is no array a client parses,
                    # and its values read one by one are not the text it shows.
                    raise JsonSeqError(f"array elements without a comma between them at byte {i}")
                if self.array and c == 0x5D:       # "]"
                    self.closed = True
                    i += 1
                    continue
                self._start, self._depth = i, 0
                if c in b"{[":
                    self._depth = 1
                elif c == 0x22:
                    self._in_string = True
                else:
                    self._primitive = True
                    continue
                i += 1
                continue
            m = _IN_VALUE.search(buf, i)
            if m is None:
                i = n
                break
            j = m.start()
            c = buf[j]
            i = j + 1
            if c == 0x22:
                self._in_string = True
            elif c in b"{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    out.append(self._emit(i))
        self._i = i
        if self._lead:
            del buf[:self._lead]
            self._i -= self._lead
            if self._start is not None:
                self._start -= self._lead
            self._lead = 0
        if len(buf) > self.max_value_bytes:
            raise EventTooLarge(len(buf), self.max_value_bytes)
        return out

    def _emit(self, end: int) -> tuple[bytes, bytes]:
        assert self._start is not None
        lead, value = bytes(self._buf[self._lead:self._start]), bytes(self._buf[self._start:end])
        self._lead, self._start, self._primitive = end, None, False
        self._after_value = True
        return lead, value

    def finish(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """End of body: the last values and the bytes after them (the closing "]")."""
        out: list[tuple[bytes, bytes]] = []
        if self._primitive:
            out.append(self._emit(len(self._buf)))
        if self._start is not None or self._in_string:
            raise JsonSeqError("the body ended inside a JSON value")
        if self.array and not self.closed:
            raise JsonSeqError("the body ended inside the JSON array")
        rest = bytes(self._buf[self._lead:])
        self._buf.clear()
        self._i = self._lead = 0
        return out, rest
