"""Text normalization before matching, with a map from normalized offsets back to the original.

What is folded, per code point (so offsets stay mappable):
- NFKC compatibility mapping (full-width digits and letters, ligatures, circled digits, NBSP...).
  Composition across code points (``e`` + U+0301) is not applied: the mark is dropped below.
- decimal digits of every script (Unicode Nd: Arabic-Indic, Devanagari, Thai...) become ASCII
  digits, letters that look like Latin ones (Cyrillic, Greek and Latin look-alikes from the
  Unicode TR39 confusables data) become those Latin letters, and every code point that is one
  Latin letter to a reader becomes that letter (precomposed accents: Á, ö, ñ; stroke and hook
  letters: ø, ł; small capitals; math, circled and modifier letters): one code point for one,
  applied with ``str.translate`` before anything else, so offsets do not move. Rules and context
  words never see an accented Latin letter.
- invisible characters (zero-width spaces and joiners, soft hyphen, BOM, bidi controls, variation
  selectors, word joiner...) and combining marks (accents, underlines, keycaps, the marks of
  every script) are dropped, in runs of any length: a run is never turned into a
  separator (a key with three zero-width spaces inside is still one key). ``ORIGINAL_SPAN_FACTOR``
  bounds the other expansions (a hidden character after each visible one); a finding padded with
  longer runs is longer in the original text than that, which whole-text scans do not mind and
  the streaming gate handles with its long hold.
- Unicode tag characters (U+E0020..U+E007E, used to smuggle hidden ASCII) become that ASCII.
- dash look-alikes become ``-``; line/paragraph separators become ``\\n``; the ideographic full
  stops IDNA reads as a domain's dots become ``.``.
- lone surrogates (a Python ``str`` may hold them) become U+FFFD, one for one.
- control characters without a glyph (NUL, ESC, DEL, C1...) are dropped; vertical tab, form feed,
  the information separators and NEL become ``\\n``.

Pure-ASCII text without control characters (the common case; one RE2 search) is returned as is
with no per-character work.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

import re2

MAX_DROPPED_RUN = 2
# Hold sizes assume a finding is at most this many times longer in the original text than in the
# normalized one (two hidden characters after each visible one).
ORIGINAL_SPAN_FACTOR = MAX_DROPPED_RUN + 1

INVISIBLE: frozenset[int] = frozenset(
    [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E,
     0x180F, 0x3164, 0xFEFF, 0xFFA0, 0xE0001, 0xE007F]
    + list(range(0x200B, 0x2010))      # ZWSP, ZWNJ, ZWJ, LRM, RLM
    + list(range(0x202A, 0x202F))      # bidi embeddings and overrides
    + list(range(0x2060, 0x2065))      # word joiner, invisible operators
    + list(range(0x2066, 0x2070))      # bidi isolates, deprecated format chars
    + list(range(0xFE00, 0xFE10))      # variation selectors
    + list(range(0xE0100, 0xE01F0))    # variation selectors supplement
)
# Combining marks (Unicode Mn, Me: accents, underlines, the keycap and enclosing circles, the
# marks of every script) are dropped like invisible characters: a mark after each digit of a card
# ("4\u0301 1\u0301...") or letter of a key leaves the value a model reads, so it must not cut the
# match. No rule matches a mark; dictionary terms are folded the same way (fold_plain).
COMBINING: frozenset[int] = frozenset(
    cp for cp in range(0x300, 0x30000) if unicodedata.category(chr(cp)) in ("Mn", "Me"))
# Control characters have no glyph: those that are not line breaks are dropped like invisible
# characters (a NUL, ESC or DEL between the characters of a key or card leaves what a model reads
# of it); vertical tab, form feed, the information separators and NEL, which Python reads as
# whitespace, become line breaks. Tab, LF and CR stay.
CONTROLS: frozenset[int] = frozenset([*range(0x00, 0x09), *range(0x0E, 0x1C), 0x7F, *range(0x80, 0x85),
                                      *range(0x86, 0xA0)])
_CONTROL_BREAKS = frozenset([0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F, 0x85])
_DASHES = frozenset([0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2015, 0x2212, 0xFE58, 0xFE63,
                     0xFF0D])
_LINE_SEPARATORS = frozenset([0x2028, 0x2029])
# Full stops that IDNA reads as the dot between a domain's labels (UTS #46: U+3002 ideographic,
# U+FF61 half-width ideographic; U+FF0E full-width is NFKC's already): "jane@example\u3002com"
# is an address to a mail client and to a model.
_DOTS = frozenset([0x3002, 0xFF61])
_TAG_ASCII = range(0xE0020, 0xE007F)

_SURROGATE_HANDLER = "ledgergate.classify.surrogate_to_fffd"


def _surrogate_to_fffd(exc: UnicodeError) -> tuple[bytes, int]:
    # The UTF-8 encoder takes non-ASCII replacements only as bytes: U+FFFD, once per surrogate.
    if isinstance(exc, UnicodeEncodeError):
        return b"\xef\xbf\xbd" * (exc.end - exc.start), exc.end
    raise exc


try:
    codecs.lookup_error(_SURROGATE_HANDLER)
except LookupError:
    codecs.register_error(_SURROGATE_HANDLER, _surrogate_to_fffd)


# Names of letters that are one Latin letter with something drawn on it (a stroke, hook, bar,
# tail, belt...: no decomposition says so) or a dot taken off (ı, ȷ), of small capitals, and of
# negative circled or squared letters. One letter only: "LATIN CAPITAL LETTER D WITH SMALL LETTER Z" is two.
_LETTER_NAME = re.compile(
    r"(?:LATIN (?P<case>CAPITAL|SMALL) LETTER|MODIFIER LETTER (?P<mcase>CAPITAL|SMALL)"
    r"|LATIN LETTER (?P<smallcap>SMALL CAPITAL)|NEGATIVE (?:CIRCLED|SQUARED) LATIN (?P<ncase>CAPITAL) LETTER)"
    r" (?:DOTLESS )?(?P<letter>[A-Z])(?: WITH (?!.*LETTER).*)?")
# Small capitals whose glyph is the lower-case letter's (TR39 reads them so): the others read as
# capitals (ᴀᴋɪᴀ is AKIA to a reader).
_SMALL_CAPITALS_AS_LOWER = frozenset("COSUVWXZ")


def _base_letter(ch: str, table: dict[int, str]) -> str | None:
    """The one ASCII letter a reader sees in `ch`, or None: its compatibility decomposition with
    the combining marks dropped (precomposed accents: Á, í, ö, ñ, ç, ǫ, Ǻ; the accented Greek
    and Cyrillic forms of look-alikes: ά, ё, ї; mathematical, full-width, circled letters), else
    its name (ø, ł, đ, ħ, ɨ, ƀ; small capitals; modifier letters; negative circled letters)."""
    cat = unicodedata.category(ch)
    if not (cat.startswith("L") or cat == "So"):
        return None
    m = _LETTER_NAME.fullmatch(unicodedata.name(ch, ""))
    if m is not None and m["smallcap"]:
        letter = m["letter"]
        return letter.lower() if letter in _SMALL_CAPITALS_AS_LOWER else letter
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if ord(c) not in COMBINING)
    base = base.translate(table)
    if len(base) == 1 and base.isascii() and base.isalpha():
        return base
    if m is None:
        return None
    letter = m["letter"]
    return letter if (m["case"] or m["mcase"] or m["ncase"]) == "CAPITAL" else letter.lower()


def _one_to_one_table() -> dict[int, str]:
    """Code point -> code point foldings: Nd digits to ASCII digits, Latin look-alikes (TR39),
    letters with diacritics and other compatibility forms of one Latin letter to that letter."""
    from confusable_homoglyphs import categories, confusables

    table: dict[int, str] = {}
    for tgt in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        for entry in confusables.confusables_data.get(tgt, ()):
            c = entry["c"]
            if len(c) != 1 or c.isascii() or not unicodedata.category(c).startswith("L"):
                continue
            if categories.alias(c) not in ("CYRILLIC", "GREEK", "LATIN"):
                continue
            # TR39 skeletons map I and l alike to "l"; a capital stays a capital here so that key
            # prefixes (AKIA with a Cyrillic I) read as written.
            table.setdefault(ord(c), "I" if tgt == "l" and c.isupper() else tgt)
    for cp in range(0x80, 0x30000):
        ch = chr(cp)
        if unicodedata.category(ch) == "Nd":
            table[cp] = str(unicodedata.decimal(ch))
    confusable = dict(table)
    for cp in range(0x80, 0x30000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        base = _base_letter(ch, confusable)
        if base is None:
            continue
        if cp not in table or (unicodedata.name(ch, "").startswith("LATIN LETTER SMALL CAPITAL")
                               and table[cp] != base):
            table[cp] = base     # small capitals: the capital (ɪ, ʏ) where TR39 says lower case
    return table


_ONE_TO_ONE: dict[int, str] = _one_to_one_table()


def fold_char(ch: str) -> str:
    """The normalized form of one code point (may be empty or several characters)."""
    cp = ord(ch)
    if cp in INVISIBLE or cp in COMBINING or cp in CONTROLS:
        return ""
    if cp in _CONTROL_BREAKS:
        return "\n"
    if cp in _DASHES:
        return "-"
    if cp in _LINE_SEPARATORS:
        return "\n"
    if cp in _DOTS:
        return "."
    if cp in _TAG_ASCII:
        return chr(cp - 0xE0000)
    out = unicodedata.normalize("NFKC", ch)
    if len(out) == 1 and ord(out) in _DASHES:
        return "-"
    if not out.isascii():
        # a compatibility form of several letters, one accented ("ǅ" is "Dž"): read like the rest
        out = "".join(c for c in out.translate(_ONE_TO_ONE) if ord(c) not in COMBINING)
    return out


def fold_plain(text: str) -> str:
    """Normalize text without keeping offsets (dictionary terms, tests)."""
    text = text.encode("utf-8", _SURROGATE_HANDLER).decode("utf-8").translate(_ONE_TO_ONE)
    return "".join(fold_char(c) for c in text)


@functools.cache
def _special_class() -> re2._Regexp:
    """One RE2 character class of every code point that fold_char changes (compiled once)."""
    cps = set(INVISIBLE) | COMBINING | CONTROLS | _CONTROL_BREAKS | _DASHES | _LINE_SEPARATORS | _DOTS \
        | set(_TAG_ASCII)
    for cp in range(0x80, 0x30000):
        if 0xD800 <= cp <= 0xDFFF or cp in cps or cp in _ONE_TO_ONE:
            continue
        if not unicodedata.is_normalized("NFKC", chr(cp)):
            cps.add(cp)
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)
    opts = re2.Options()
    opts.max_mem = 64 << 20
    return re2.compile(f"[{body}]+", opts)


@dataclass(frozen=True, slots=True)
class NormalizedText:
    """``text`` is what the rules see; ``data`` is its UTF-8. Offsets map back with ``original_span``.

    Segments: normalized chars from ``_norm_starts[i]`` come from the original at
    ``_orig_starts[i]``; ``_orig_lens[i]`` is 0 for a 1:1 copied run, else the length of the
    original run that was replaced by this segment as a whole.
    """

    text: str
    data: bytes
    identity: bool
    _norm_starts: tuple[int, ...] = ()
    _orig_starts: tuple[int, ...] = ()
    _orig_lens: tuple[int, ...] = ()

    @property
    def ascii(self) -> bool:
        return len(self.data) == len(self.text)

    def _orig_char(self, pos: int) -> tuple[int, int]:
        i = bisect_right(self._norm_starts, pos) - 1
        ostart, olen = self._orig_starts[i], self._orig_lens[i]
        if olen == 0:
            o = ostart + (pos - self._norm_starts[i])
            return o, o + 1
        return ostart, ostart + olen

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """Normalized char span [start, end) (end > start) -> original char span."""
        if self.identity:
            return start, end
        return self._orig_char(start)[0], self._orig_char(end - 1)[1]

    def normalized_at(self, pos: int) -> int:
        """How many normalized characters the original text before `pos` gives (the inverse of
        ``original_span``: an original offset -> a normalized one; a position inside or right
        after dropped characters maps to where the next visible one goes)."""
        if self.identity:
            return pos
        i = bisect_right(self._orig_starts, pos - 1) - 1     # the last segment starting before pos
        if i < 0:
            return 0
        nstart = self._norm_starts[i]
        nlen = (self._norm_starts[i + 1] if i + 1 < len(self._norm_starts) else len(self.text)) - nstart
        if self._orig_lens[i] == 0:                          # copied one for one
            return nstart + min(pos - self._orig_starts[i], nlen)
        return nstart + nlen                                 # a folded character, whole

    def char_offsets(self, byte_offsets: list[int]) -> dict[int, int]:
        """Byte offsets into ``data`` (on character boundaries) -> char offsets into ``text``."""
        if self.ascii:
            return {b: b for b in byte_offsets}
        out: dict[int, int] = {}
        prev_b = prev_c = 0
        for b in sorted(set(byte_offsets)):
            prev_c += len(self.data[prev_b:b].decode("utf-8"))
            prev_b = b
            out[b] = prev_c
        return out


@functools.cache
def _ascii_controls() -> re2._Regexp:
    """The ASCII characters fold_char changes (control characters), as one RE2 class."""
    cps = sorted(cp for cp in CONTROLS | _CONTROL_BREAKS if cp < 0x80)
    return re2.compile("[" + "".join(f"\\x{{{cp:x}}}" for cp in cps) + "]")


def normalize(text: str) -> NormalizedText:
    if text.isascii():
        data = text.encode("ascii")
        if _ascii_controls().search(data) is None:
            return NormalizedText(text=text, data=data, identity=True)
    try:
        text.encode("utf-8")
        clean = text
    except UnicodeEncodeError:
        clean = text.encode("utf-8", _SURROGATE_HANDLER).decode("utf-8")
    clean = clean.translate(_ONE_TO_ONE)       # one code point for one: offsets unchanged
    data = clean.encode("utf-8")
    pieces: list[str] = []
    norm_starts: list[int] = []
    orig_starts: list[int] = []
    orig_lens: list[int] = []
    npos = 0          # normalized chars emitted so far
    ocur = 0          # original char position reached
    bcur = 0          # byte position in data matching ocur
    changed = False
    for m in _special_class().finditer(data):
        bstart, bend = m.span()
        ostart = ocur + len(data[bcur:bstart].decode("utf-8"))
        run = data[bstart:bend].decode("utf-8")
        if ostart > ocur:                      # untouched run copied 1:1
            norm_starts.append(npos)
            orig_starts.append(ocur)
            orig_lens.append(0)
            pieces.append(clean[ocur:ostart])
            npos += ostart - ocur
        o = ostart
        for ch in run:
            # An invisible character folds to "" and vanishes, in a run of any length: never a
            # separator, so it cannot split a value in two.
            folded = fold_char(ch)
            if folded:
                norm_starts.append(npos)
                orig_starts.append(o)
                orig_lens.append(1)
                pieces.append(folded)
                npos += len(folded)
            o += 1
        changed = True
        ocur, bcur = o, bend
    if not changed:
        return NormalizedText(text=clean, data=data, identity=True)
    if ocur < len(clean):
        norm_starts.append(npos)
        orig_starts.append(ocur)
        orig_lens.append(0)
        pieces.append(clean[ocur:])
    norm = "".join(pieces)
    if not norm_starts:                        # everything was dropped
        norm_starts, orig_starts, orig_lens = [0], [0], [len(text)]
    return NormalizedText(text=norm, data=norm.encode("utf-8"), identity=False,
                          _norm_starts=tuple(norm_starts), _orig_starts=tuple(orig_starts),
                          _orig_lens=tuple(orig_lens))

