"""The vocabulary of streamed answers that every provider module speaks: the text deltas of an
event (slots), the content streams they belong to (keys) and indexes read the way the SDKs read
them. The rules for each provider's events live in its own module; streaming/formats.py asks
every registered provider in turn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Path = tuple
StreamKey = tuple[Any, ...]   # (choice or block index, kind, ...): see each provider's stream rules

ALL: StreamKey = ()   # a key prefix matching every stream
REPLAY_PIECE_CHARS = 64   # text per delta of a replayed stream; the SDKs concatenate them


class NotReplayable(Exception):
    """A cached answer has a shape its provider does not re-frame as a stream (tool calls, several
    choices, non-text blocks): the request is forwarded instead of approximated."""


def replay_pieces(text: str) -> list[str]:
    return [text[i:i + REPLAY_PIECE_CHARS] for i in range(0, len(text), REPLAY_PIECE_CHARS)] or [""]


@dataclass(frozen=True, slots=True)
class Slot:
    key: StreamKey   # the content stream the text belongs to
    path: Path       # where the text sits in the event
    text: str
    json_text: bool = False   # the stream is JSON text (tool arguments): scanned with escapes decoded
    # Decided at once: a value from a fixed public set (a chat role) discloses nothing, so the
    # event carrying it need not wait; a later piece continuing it is held and masked as usual.
    eager: bool = False


# How sure a shape test is, the order in which shapes are asked (first match wins).
BY_TYPE = 0       # the event's own "type" names it
BY_KEYS = 1       # keys only this shape's events carry
COMMON = 2        # a shape other providers stream too (OpenAI-compatible "choices")


@dataclass(frozen=True, slots=True)
class Shape:
    """One provider stream shape, as the inspector recognizes it in an event. Its name picks the
    provider-shaped error event that ends a blocked stream (registry.family resolves it)."""
    name: str
    test: Callable[[dict], bool]
    rank: int = BY_KEYS


def index(value: Any, default: int) -> Any:
    """An index as the SDKs read it: their (pydantic) models coerce "0", 0.0 and True to 0 and 1,
    so "0" in one event and 0 in the next are the same choice or block."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        v = value.strip()
        if v[1:].isdigit() and v[:1] in "+-" and v.isascii() or v.isdigit() and v.isascii():
            return int(v)
        return value
    return default
