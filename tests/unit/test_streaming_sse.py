"""The SSE framer against a reference parser: any line endings, any chunking, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.wire.sse import EventTooLarge, SSEFramer, frame

LINE = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
EVENT = st.lists(st.tuples(st.sampled_from(["data", "event", "id", ""]), LINE), min_size=1, max_size=4)


def _reference(events, ends):
    """What a parser must see: per event, the joined data (or None) and the other lines."""
    out = []
    for ev in events:
        data = [v for f, v in ev if f == "data"]
        out.append(("\n".join(data) if data else None, [f"{f}: {v}" if f else f": {v}" for f, v in ev if f != "data"]))
    return out


@settings(max_examples=150, deadline=None)
@given(events=st.lists(EVENT, min_size=1, max_size=5), ends=st.lists(st.sampled_from(["\n", "\r\n", "\r"]),
       min_size=1, max_size=3), cuts=st.lists(st.integers(1, 400), max_size=8), terminated=st.booleans())
def test_framer_matches_the_reference_at_any_chunking(events, ends, cuts, terminated):
    raw = ""
    for i, ev in enumerate(events):
        nl = ends[i % len(ends)]
        raw += "".join((f"{f}: {v}" if f else f": {v}") + nl for f, v in ev) + nl
    body = raw.encode()
    if not terminated:
        body = body.rstrip(b"\r\n") + b"\n"   # last event without its blank line
    framer = SSEFramer(1 << 20)
    got, prev = [], 0
    for c in sorted(set(c for c in cuts if c < len(body))) + [len(body)]:
        got += framer.feed(body[prev:c])
        prev = c
    got += framer.finish()
    assert [(e.data.decode() if e.data is not None else None, [ln.decode() for ln in e.other_lines]) for e in got] \
        == _reference(events, ends)
    assert b"".join(e.raw for e in got) == body
    assert all(body[e.offset:e.offset + len(e.raw)] == e.raw for e in got)


def test_a_cr_at_a_chunk_end_waits_for_the_next_byte():
    f = SSEFramer(100)
    assert f.feed(b"data: a\r\n\r") == []
    [ev] = f.feed(b"\ndata: b\r\n\r\n")[:1]
    assert ev.data == b"a" and ev.raw == b"data: a\r\n\r\n"


def test_data_field_variants():
    f = SSEFramer(100)
    [a, b] = f.feed(b"data\ndata:x\ndata:  y\n\ndataX: no\nretry: 5\n\n")
    assert a.data == b"\nx\n y"
    assert b.data is None and b.other_lines == (b"dataX: no", b"retry: 5")
    assert frame((b"event: e",), b"1\n2", b"\r\n") == b"event: e\r\ndata: 1\r\ndata: 2\r\n\r\n"


def test_the_framer_is_bounded_and_linear():
    f = SSEFramer(1000)
    with pytest.raises(EventTooLarge) as exc:
        for _ in range(20):
            f.feed(b"data: " + b"z" * 100)
    assert "1000" in str(exc.value) and "zzz" not in str(exc.value)
    # one long line fed in small pieces is searched once, not once per piece
    f = SSEFramer(10 << 20)
    chunk = b"x" * 4096
    import time
    t = time.perf_counter()
    for _ in range(1500):
        f.feed(chunk)
    assert time.perf_counter() - t < 1.0
    assert len(f.feed(b"\n\n")) == 1
