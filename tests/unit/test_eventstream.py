"""The AWS event-stream codec against botocore's own parser (the Bedrock SDK's), as an oracle."""

import json
import struct

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.wire import eventstream
from ext_proc.wire.eventstream import EventStreamDecoder, EventStreamError, encode_message

header_values = st.one_of(st.text(max_size=40), st.booleans(), st.integers(-2**31, 2**31 - 1),
                          st.binary(max_size=40))
headers = st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255),
                          header_values, max_size=5)


@settings(max_examples=200, deadline=None)
@given(headers, st.binary(max_size=2000), st.integers(1, 50))
def test_encoded_messages_parse_in_botocore_and_back_at_any_split(hdrs, payload, step):
    frame = encode_message(hdrs, payload)
    buf = EventStreamBuffer()
    buf.add_data(frame)
    (msg,) = list(buf)
    assert msg.payload == payload
    assert msg.headers == hdrs
    dec = EventStreamDecoder()
    got = []
    for i in range(0, len(frame), step):
        got += dec.feed(frame[i:i + step])
    assert [(m.headers, m.payload, raw) for m, raw in got] == [(hdrs, payload, frame)]
    assert dec.pending == 0


def test_mock_bedrock_events_are_what_botocore_reads():
    frame = eventstream.event("contentBlockDelta", json.dumps({"delta": {"text": "hi"}}).encode())
    buf = EventStreamBuffer()
    buf.add_data(frame)
    (msg,) = list(buf)
    assert msg.headers[":event-type"] == "contentBlockDelta"
    assert msg.headers[":message-type"] == "event"


@pytest.mark.parametrize("offset", [0, 5, 9, 20, -1])
def test_a_flipped_byte_is_rejected(offset):
    frame = bytearray(eventstream.event("chunk", b'{"bytes":"eyJhIjoxfQ=="}'))
    frame[offset] ^= 0x40
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(bytes(frame))


def test_a_frame_larger_than_the_bound_is_refused_before_it_is_buffered():
    dec = EventStreamDecoder(max_message_bytes=1024)
    big = eventstream.event("chunk", b"x" * 2000)
    with pytest.raises(EventStreamError, match="exceeds"):
        dec.feed(big[:16])


def test_a_length_shorter_than_its_headers_is_rejected():
    prelude = struct.pack(">II", 16, 100)
    import zlib
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\0" * 8)


def test_a_repeated_header_is_refused_like_botocore_does():
    from botocore.eventstream import DuplicateHeader

    one = eventstream.event("chunk", b"{}")
    head = b"".join(bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
                    for n, v in ((b":event-type", b"chunk"), (b":event-type", b"metadata")))
    import zlib
    total = 12 + len(head) + 2 + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    frame = prelude + head + b"{}"
    frame += struct.pack(">I", zlib.crc32(frame))
    buf = EventStreamBuffer()
    buf.add_data(frame)
    with pytest.raises(DuplicateHeader):
        list(buf)
    with pytest.raises(EventStreamError, match="twice"):
        EventStreamDecoder().feed(frame)
    assert len(EventStreamDecoder().feed(one)) == 1
