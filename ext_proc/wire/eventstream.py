"""The AWS event stream framing (`application/vnd.amazon.eventstream`) used by Bedrock's
ConverseStream and InvokeModelWithResponseStream: a sans-I/O decoder with bounded buffering and an
encoder, so a stream can be inspected message by message and re-framed.

Frame layout (big-endian): total length u32, headers length u32, CRC32 of those 8 bytes, headers,
payload, CRC32 of everything before it. A header is name length u8, name, type u8, value.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

PRELUDE_BYTES = 12
TRAILER_BYTES = 4
# AWS caps a message at 16 MiB; a deployer can lower it. Bounds what one frame may buffer.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_TYPE_TRUE, _TYPE_FALSE, _TYPE_BYTE, _TYPE_SHORT, _TYPE_INT, _TYPE_LONG = 0, 1, 2, 3, 4, 5
_TYPE_BYTES, _TYPE_STRING, _TYPE_TIMESTAMP, _TYPE_UUID = 6, 7, 8, 9
_FIXED = {_TYPE_BYTE: ">b", _TYPE_SHORT: ">h", _TYPE_INT: ">i", _TYPE_LONG: ">q", _TYPE_TIMESTAMP: ">q"}


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad CRC, bad length, unknown header type)."""


@dataclass
class Message:
    headers: dict[str, object] = field(default_factory=dict)
    payload: bytes = b""

    @property
    def event_type(self) -> str | None:
        value = self.headers.get(":event-type")
        return value if isinstance(value, str) else None

    @property
    def message_type(self) -> str | None:
        value = self.headers.get(":message-type")
        return value if isinstance(value, str) else None


def _decode_headers(raw: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    i, n = 0, len(raw)
    while i < n:
        name_len = raw[i]
        i += 1
        if i + name_len + 1 > n:
            raise EventStreamError("header name runs past the header block")
        name = raw[i:i + name_len].decode("utf-8", "strict")
        i += name_len
        if name in out:
            # botocore refuses it (DuplicateHeader): the client would read no message at all.
            raise EventStreamError(f"header {name!r} appears twice")
        kind = raw[i]
        i += 1
        if kind == _TYPE_TRUE or kind == _TYPE_FALSE:
            value: object = kind == _TYPE_TRUE
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            size = struct.calcsize(fmt)
            if i + size > n:
                raise EventStreamError(f"header {name!r} value runs past the header block")
            (value,) = struct.unpack_from(fmt, raw, i)
            i += size
        elif kind == _TYPE_BYTES or kind == _TYPE_STRING:
            if i + 2 > n:
                raise EventStreamError(f"header {name!r} length runs past the header block")
            (size,) = struct.unpack_from(">H", raw, i)
            i += 2
            if i + size > n:
                raise EventStreamError(f"header {name!r} value runs past the header block")
            data = raw[i:i + size]
            i += size
            value = data.decode("utf-8", "strict") if kind == _TYPE_STRING else bytes(data)
        elif kind == _TYPE_UUID:
            if i + 16 > n:
                raise EventStreamError(f"header {name!r} value runs past the header block")
            value = bytes(raw[i:i + 16])
            i += 16
        else:
            raise EventStreamError(f"header {name!r} has unknown type {kind}")
        out[name] = value
    return out


def _encode_headers(headers: dict[str, object]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers.items():
        key = name.encode()
        if len(key) > 255:
            raise EventStreamError("header name longer than 255 bytes")
        parts.append(bytes([len(key)]) + key)
        if isinstance(value, bool):
            parts.append(bytes([_TYPE_TRUE if value else _TYPE_FALSE]))
        elif isinstance(value, int):
            parts.append(bytes([_TYPE_INT]) + struct.pack(">i", value))
        elif isinstance(value, str):
            data = value.encode()
            parts.append(bytes([_TYPE_STRING]) + struct.pack(">H", len(data)) + data)
        elif isinstance(value, (bytes, bytearray)):
            parts.append(bytes([_TYPE_BYTES]) + struct.pack(">H", len(value)) + bytes(value))
        else:
            raise EventStreamError(f"header {name!r}: cannot encode {type(value).__name__}")
    return b"".join(parts)


def encode_message(headers: dict[str, object], payload: bytes) -> bytes:
    head = _encode_headers(headers)
    total = PRELUDE_BYTES + len(head) + len(payload) + TRAILER_BYTES
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(event_type: str, payload: bytes, content_type: str = "application/json") -> bytes:
    """A Bedrock-style event message (what the SDKs expect for a normal event)."""
    return encode_message({":event-type": event_type, ":content-type": content_type,
                           ":message-type": "event"}, payload)


def exception(exception_type: str, payload: bytes) -> bytes:
    """A modeled error inside the stream; botocore raises it as an EventStreamError."""
    return encode_message({":exception-type": exception_type, ":content-type": "application/json",
                           ":message-type": "exception"}, payload)


class EventStreamDecoder:
    """Feed bytes as they arrive; get back whole messages, each with the exact bytes it came in
    (so an untouched message can be released byte for byte). Buffers at most one message."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[Message, bytes]]:
        self._buf += data
        out: list[tuple[Message, bytes]] = []
        while len(self._buf) >= PRELUDE_BYTES:
            total, head_len, prelude_crc = struct.unpack_from(">III", self._buf, 0)
            if zlib.crc32(self._buf[:8]) != prelude_crc:
                raise EventStreamError("prelude CRC mismatch")
            if total < PRELUDE_BYTES + TRAILER_BYTES + head_len:
                raise EventStreamError("message length shorter than its headers")
            if total > self.max_message_bytes:
                raise EventStreamError(f"message of {total} bytes exceeds the {self.max_message_bytes}-byte bound")
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            (message_crc,) = struct.unpack_from(">I", frame, total - TRAILER_BYTES)
            if zlib.crc32(frame[:total - TRAILER_BYTES]) != message_crc:
                raise EventStreamError("message CRC mismatch")
            headers = _decode_headers(frame[PRELUDE_BYTES:PRELUDE_BYTES + head_len])
            payload = frame[PRELUDE_BYTES + head_len:total - TRAILER_BYTES]
            out.append((Message(headers, payload), frame))
        return out
