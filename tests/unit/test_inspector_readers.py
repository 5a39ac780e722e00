"""The response inspector's tables: one row per body kind (streaming/inspector.py READERS) and one
shape row per provider stream format (StreamRules.shapes, asked by streaming/formats.shape)."""

from __future__ import annotations

import itertools

import pytest

from ext_proc.streaming import formats
from ext_proc.streaming.inspector import EVENTSTREAM_TYPE, READERS
from ext_proc.wire import eventstream


def _named_by_hand(ev: dict) -> str | None:
    """The inspector's shape naming before the table (the reference the rows must reproduce)."""
    t = ev.get("type")
    if isinstance(t, str) and t.startswith("response."):
        return "openai.responses"
    if t in ("message_start", "content_block_start", "content_block_delta", "content_block_stop",
             "message_delta", "message_stop", "ping"):
        return "anthropic"
    if "candidates" in ev or "usageMetadata" in ev:
        return "gemini"
    if "choices" in ev:
        return "openai"
    return None


_TYPES = [None, "response.output_text.delta", "message_start", "ping", "error", "content_block_delta",
          ["message_start"], 3]
_KEYS = ["choices", "candidates", "usageMetadata", "delta", "message"]


def _events():
    for t in _TYPES:
        for n in range(len(_KEYS) + 1):
            for keys in itertools.combinations(_KEYS, n):
                ev = {k: [] for k in keys}
                if t is not None:
                    ev["type"] = t
                yield ev


def test_the_shape_rows_name_every_event_as_the_inspector_named_it():
    events = list(_events())
    assert len(events) == len(_TYPES) * 2 ** len(_KEYS)
    for ev in events:
        assert formats.shape(ev) == _named_by_hand(ev), ev
    # The ambiguous ones: the event's own type first, then keys only one provider uses, then the
    # OpenAI-compatible "choices" that several providers stream.
    assert formats.shape({"type": "message_start", "choices": []}) == "anthropic"
    assert formats.shape({"choices": [], "candidates": []}) == "gemini"


@pytest.mark.parametrize("ctype, kind", [
    (EVENTSTREAM_TYPE, "eventstream"), ("text/event-stream", "sse"), ("application/json", "json"),
    ("application/problem+json", "json"), ("text/plain", "raw"), ("", "raw")])
def test_a_content_type_announces_one_kind(ctype, kind):
    assert [k for k, r in READERS.items() if r.declared(ctype)] == ([] if kind == "raw" else [kind])


@pytest.mark.parametrize("head, kind", [
    (eventstream.encode_message({":event-type": "chunk"}, b"{}"), "eventstream"),
    (b"data: {}\n\n", "sse"), (b": ping\n\n", "sse"), (b"[{}", "jsonseq"), (b"{\"a\": 1}", "json"),
    (b"hello", None)])
def test_the_first_bytes_name_at_most_one_kind(head, kind):
    h = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    assert [k for k, r in READERS.items() if r.sniff(head, h)] == ([] if kind is None else [kind])


def test_the_streamed_kinds_are_the_ones_the_sdks_read_as_streams():
    assert {k for k, r in READERS.items() if r.streamed} == {"sse", "eventstream", "jsonseq"}
    assert [k for k, r in READERS.items() if r.framed] == ["sse"]
