"""Values a model reads through at sight, decoded so the classifier reads them too (the request
inspection, pipeline/inspect.py, classifies a view's decoded text beside its raw text).

Unambiguous encodings are decoded wherever they occur: percent-encoding (`%40`; escapes in a row
are UTF-8 bytes), HTML character references (`&#64;`, `&#x40;`, `&commat;`) and escapes written
literally in text (`\\u0040`, `\\u{40}`, `\\U00000040`, `\\x40`; `\\u` pairs of surrogates are one
character, `\\x` bytes in a row UTF-8 when they are, else Latin-1). Their run, what a finding
touching one of them masks whole, is the maximal stretch of non-whitespace characters holding them.

Ambiguous encodings are decoded only where they give text: base64 and base64url (a run of 16 or
more of their characters, with its padding) and hex (a run of hex digits only, of even length 20 or
more), when the bytes are printable UTF-8. The run is the encoded run itself; the caller counts
only confident findings touching one.

One layer: decoded text is not decoded again, and a run with an unambiguous escape is not read as
base64 too. Bounded and linear: one RE2 pass (no backtracking) finds the runs, each run's
decoding is kept per request by its characters (a run read in several views is decoded once),
and decoded text is never longer than the raw text it stands for.
"""

from __future__ import annotations

import base64
import binascii
import html.entities
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import re2

from ext_proc.classify.normalize import _SURROGATE_HANDLER

# Ambiguous runs: shorter ones are words and identifiers more often than values.
MIN_BASE64_CHARS = 16
MIN_HEX_CHARS = 20

_ESCAPE = (r"%[0-9A-Fa-f]{2}"
           r"|&#[0-9]{1,7};?|&#[xX][0-9A-Fa-f]{1,6};?|&[A-Za-z][A-Za-z0-9]{1,31};"
           r"|\\u[0-9A-Fa-f]{4}|\\u\{[0-9A-Fa-f]{1,6}\}|\\U[0-9A-Fa-f]{8}|\\x[0-9A-Fa-f]{2}")
# A stretch of non-whitespace holding an escape (group 1: leftmost, so from the stretch's start),
# else a base64/hex run (group 2).
_RUNS = re2.compile(rf"(\S*?(?:{_ESCAPE})\S*)|([A-Za-z0-9+/_\-]{{{MIN_BASE64_CHARS},}}={{0,2}})")
_ESCAPES = re2.compile(_ESCAPE)
_LONGEST_ESCAPE = 34                  # "&" + a 32-character name + ";"
_BASE64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_LINE_CHARS = {9: None, 10: None, 13: None}
# An escape's kind: escapes of one kind in a row are decoded together (bytes, surrogate pairs).
_PERCENT, _XBYTE, _UNIT, _CHAR = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Piece:
    """Decoded text at [start, end) stands for the raw text at [raw_start, raw_end); a finding
    touching it covers [run_start, run_end) of the raw text."""

    start: int
    end: int
    raw_start: int
    raw_end: int
    run_start: int
    run_end: int
    ambiguous: bool


class DecodedText:
    """A text with its encoded pieces decoded (the rest as it was), and the way back."""

    def __init__(self, text: str, pieces: list[Piece]) -> None:
        self.text = text
        self.pieces = pieces
        self._starts = [p.start for p in pieces]
        self._ends = [p.end for p in pieces]
        self._raw_starts = [p.raw_start for p in pieces]

    def touched(self, start: int, end: int) -> list[Piece]:
        """The pieces [start, end) of the decoded text overlaps."""
        return self.pieces[bisect_right(self._ends, start):bisect_left(self._starts, end)]

    def raw_start(self, pos: int) -> int:
        k = bisect_right(self._starts, pos) - 1
        if k < 0:
            return pos
        p = self.pieces[k]
        return p.raw_start if pos < p.end else pos + p.raw_end - p.end

    def raw_end(self, pos: int) -> int:
        k = bisect_left(self._starts, pos) - 1
        if k < 0:
            return pos
        p = self.pieces[k]
        return p.raw_end if pos < p.end else pos + p.raw_end - p.end

    def decoded_at(self, raw: int) -> int:
        """A raw position in the decoded text (one inside a piece: after the piece; at its start: its start)."""
        k = bisect_right(self._raw_starts, raw) - 1
        if k < 0:
            return raw
        p = self.pieces[k]
        if raw == p.raw_start:
            return p.start
        return p.end if raw < p.raw_end else raw - p.raw_end + p.end


# allow(raw_start, raw_end, ambiguous): whether that raw text may be decoded.
Allow = Callable[[int, int, bool], bool]


class Decoder:
    """Decodes texts for one request; each run (by its characters) is decoded once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bytes], str | None] = {}

    def decode(self, text: str, allow: Allow | None = None) -> DecodedText | None:
        """TEXT with its encoded runs decoded, or None when it has none that decode. ALLOW says
        which raw text may be decoded (asked before anything there is decoded)."""
        if not ("%" in text or "&" in text or "\\" in text or len(text) >= MIN_BASE64_CHARS):
            return None
        ascii_ = text.isascii()
        data = text.encode("ascii") if ascii_ else text.encode("utf-8", _SURROGATE_HANDLER)
        # (byte start, byte end, run byte start, run byte end, kind (-1: ambiguous), raw tokens)
        found: list[tuple[int, int, int, int, int, list[bytes]]] = []
        for rs, re_, stretch in _runs(data):
            if stretch:
                _escapes(data, rs, re_, found)
            else:
                found.append((rs, re_, rs, re_, -1, [data[rs:re_]]))
        if not found:
            return None
        if ascii_:
            to_char: Callable[[int], int] = int
        else:
            to_char = _char_offsets(data, [o for f in found for o in f[:4]]).__getitem__
        cache = self._cache
        pieces: list[Piece] = []
        out: list[str] = []
        copied = pos = 0               # raw characters copied; decoded characters written
        for bs, be, rbs, rbe, kind, tokens in found:
            s, e = to_char(bs), to_char(be)
            key = (kind, tokens[0] if len(tokens) == 1 else b"".join(tokens))
            value = cache.get(key, "")
            if value is None:
                continue                  # decoded before (in another view): nothing readable
            if allow is not None and not allow(s, e, kind == -1):
                continue
            if not value:
                value = cache[key] = _ambiguous(tokens[0]) if kind == -1 else _unescape(kind, tokens)
                if not value:
                    continue
            if s > copied:
                out.append(text[copied:s])
                pos += s - copied
            out.append(value)
            pieces.append(Piece(pos, pos + len(value), s, e, to_char(rbs), to_char(rbe), kind == -1))
            pos += len(value)
            copied = e
        if not pieces:
            return None
        out.append(text[copied:])
        return DecodedText("".join(out), pieces)


def _runs(data: bytes) -> Iterator[tuple[int, int, bool]]:
    """(start, end, whether it is a stretch of escapes) of the runs in DATA, through google-re2's
    pybind object as classify/engine.py does (the public finditer builds a match object per run),
    or the public API if the binding's internals are not what this expects."""
    inner = getattr(_RUNS, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    if inner is None or anchor is None or not hasattr(inner, "Match"):
        for m in _RUNS.finditer(data):
            yield m.start(), m.end(), m.group(2) is None
        return
    pos, end = 0, len(data)
    while pos <= end:
        found = inner.Match(anchor, data, pos, end)
        whole = found[0]
        if whole[0] < 0:
            return
        yield whole[0], whole[1], found[1][0] >= 0
        pos = whole[1] if whole[1] > pos else pos + 1


def _escapes(data: bytes, start: int, end: int, found: list[tuple[int, int, int, int, int, list[bytes]]]) -> None:
    """The escapes of the stretch data[start:end], those of one kind in a row together."""
    gkind, ge = -1, -1
    for m in _ESCAPES.finditer(data, start, end):
        s, e = m.span()
        token = data[s:e]
        kind = _kind(token)
        if kind == gkind and s == ge and kind != _CHAR:
            first, _, _, _, _, tokens = found[-1]
            tokens.append(token)
            found[-1] = (first, e, start, end, kind, tokens)
        else:
            found.append((s, e, start, end, kind, [token]))
        gkind, ge = kind, e


def may_join(left: str, right: str) -> bool:
    """Whether LEFT and RIGHT read with nothing between them (the parts of one message) can hold
    an encoded run neither holds alone: an escape cut by the join (LEFT ends within an escape's
    length of a `%`, `&` or backslash), or a base64 or hex run of the minimum length across it."""
    if not left or not right:
        return False
    tail = left[-_LONGEST_ESCAPE:]
    if "%" in tail or "&" in tail or "\\" in tail:
        return True
    n = MIN_BASE64_CHARS - len(left[-MIN_BASE64_CHARS:].rstrip(_BASE64_CHARS))
    m = MIN_BASE64_CHARS - len(right[:MIN_BASE64_CHARS].lstrip(_BASE64_CHARS))
    return n > 0 and m > 0 and n + m >= MIN_BASE64_CHARS


def _kind(token: bytes) -> int:
    if token[0] == 0x25:                  # %
        return _PERCENT
    if token[:2] == b"\\x":
        return _XBYTE
    if token[:2] == b"\\u" and token[2:3] != b"{":
        return _UNIT
    return _CHAR


def _unescape(kind: int, tokens: list[bytes]) -> str | None:
    """The text escapes of one kind in a row stand for (None: they stand for nothing readable)."""
    if kind == _PERCENT or kind == _XBYTE:
        raw = bytes(int(t[-2:], 16) for t in tokens)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "replace") if kind == _PERCENT else raw.decode("latin-1")
    if kind == _UNIT:                     # UTF-16 code units: a surrogate pair is one character
        units = "".join(chr(int(t[2:], 16)) for t in tokens)
        return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    token = tokens[0]
    if token[:1] == b"&":
        if token[1:2] != b"#":
            return html.entities.html5.get(token[1:].decode("ascii"))
        digits = token[2:].rstrip(b";")
        cp = int(digits[1:], 16) if digits[:1] in (b"x", b"X") else int(digits)
    else:                                 # \u{...} or \U........
        cp = int(token[3:-1] if token[2:3] == b"{" else token[2:], 16)
    if not 0 < cp <= 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return None
    return chr(cp)


def _ambiguous(run: bytes) -> str | None:
    """The printable UTF-8 text a base64, base64url or hex run encodes, or None."""
    body = run.rstrip(b"=")
    if body == run and not body.translate(None, _HEX_DIGITS):
        if len(body) < MIN_HEX_CHARS or len(body) % 2:
            return None
        raw = bytes.fromhex(body.decode("ascii"))
    else:
        url = b"-" in body or b"_" in body
        if url and (b"+" in body or b"/" in body) or len(body) % 4 == 1:
            return None
        if url:
            body = body.replace(b"-", b"+").replace(b"_", b"/")
        try:
            raw = base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text or not (text.isprintable() or text.translate(_LINE_CHARS).isprintable()):
        return None
    return text


def _char_offsets(data: bytes, byte_offsets: list[int]) -> dict[int, int]:
    """Byte offsets into DATA (on character boundaries) -> character offsets; one pass."""
    out: dict[int, int] = {}
    prev_b = prev_c = 0
    for b in sorted(set(byte_offsets)):
        prev_c += len(data[prev_b:b].decode("utf-8"))
        prev_b = b
        out[b] = prev_c
    return out
