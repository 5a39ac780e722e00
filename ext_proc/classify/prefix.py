"""How much of a text's end could still grow into a finding (sans-I/O).

A streamed response is released except for a held tail. The tail has to cover every finding still
arriving: a suffix of the text that is the beginning of some match of some rule. Holding a fixed
number of characters (the longest finding) is safe but keeps the first words of an answer waiting
for dozens of tokens; this computes the tail that is actually needed.

For each rule pattern P we build, from its syntax tree, a regular expression for the *reversed
prefixes* of P (every string that, read backwards, is the beginning of a match of P), and join
them into one RE2 pattern. Matched with leftmost-longest semantics at the start of the reversed
text, it gives the longest suffix that could still become a finding: linear time, no
backtracking. The construction over-approximates where it must (anchors and word boundaries
count as always satisfied), so the tail is never shorter than needed; syntax it does not know
makes it give up, and the caller keeps the fixed hold-back.

    prefix(a)     = "" | a                     (a: one character or class)
    prefix(x1..xn) = prefix(x1) | x1 prefix(x2) | ... | x1..x(n-1) prefix(xn)
    prefix(A{m,n}) = A{0,n-1} prefix(A)        ("" when n = 0)
    prefix(A|B)   = prefix(A) | prefix(B)
"""

from __future__ import annotations

import re._constants as sre_c
import re._parser as sre_parse
from collections.abc import Sequence
from typing import Any

import re2

from ext_proc.classify.normalize import normalize


class Unsupported(ValueError):
    """The pattern uses syntax the construction does not cover."""


_CATEGORIES = {
    sre_c.CATEGORY_DIGIT: r"\d", sre_c.CATEGORY_NOT_DIGIT: r"\D",
    sre_c.CATEGORY_SPACE: r"\s", sre_c.CATEGORY_NOT_SPACE: r"\S",
    sre_c.CATEGORY_WORD: r"\w", sre_c.CATEGORY_NOT_WORD: r"\W",
}
_EMPTY = "(?:)"


def _char(code: int) -> str:
    escaped: str = re2.escape(chr(code))
    return escaped


def _class_item(op: Any, av: Any) -> str:
    if op is sre_c.LITERAL:
        return _char(av)
    if op is sre_c.RANGE:
        return f"{_char(av[0])}-{_char(av[1])}"
    if op is sre_c.CATEGORY and av in _CATEGORIES:
        return _CATEGORIES[av]
    raise Unsupported(f"class item {op}")


def _atom(op: Any, av: Any) -> str | None:
    """A single-character item as RE2 syntax, or None when the item is not one."""
    if op is sre_c.LITERAL:
        return _char(av)
    if op is sre_c.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is sre_c.ANY:
        return "(?s:.)"
    if op is sre_c.IN:
        items = list(av)
        negate = bool(items) and items[0][0] is sre_c.NEGATE
        body = "".join(_class_item(o, a) for o, a in (items[1:] if negate else items))
        return f"[{'^' if negate else ''}{body}]"
    if op is sre_c.CATEGORY and av in _CATEGORIES:
        return _CATEGORIES[av]
    return None


def _flags(add: int, delete: int) -> tuple[str, str]:
    on = "i" if add & sre_c.SRE_FLAG_IGNORECASE else ""
    off = "i" if delete & sre_c.SRE_FLAG_IGNORECASE else ""
    if add & ~(sre_c.SRE_FLAG_IGNORECASE | sre_c.SRE_FLAG_UNICODE) or delete & ~sre_c.SRE_FLAG_IGNORECASE:
        raise Unsupported("inline flags other than i")
    if not (on or off):
        return "(?:", ")"
    return f"(?{on}{'-' + off if off else ''}:", ")"


def _repeat(body: str, lo: int, hi: int) -> str:
    if hi == sre_c.MAXREPEAT:
        return f"(?:{body}){{{lo},}}"
    return f"(?:{body}){{{lo},{hi}}}"


def _reverse(seq: Sequence[Any]) -> str:
    """The reversal of the language of `seq`."""
    return "".join(_reverse_item(op, av) for op, av in reversed(list(seq)))


def _reverse_item(op: Any, av: Any) -> str:
    atom = _atom(op, av)
    if atom is not None:
        return atom
    if op is sre_c.AT:
        return _EMPTY
    if op is sre_c.BRANCH:
        return "(?:" + "|".join(_reverse(alt) for alt in av[1]) + ")"
    if op is sre_c.SUBPATTERN:
        _group, add, delete, seq = av
        head, tail = _flags(add, delete)
        return head + _reverse(seq) + tail
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
        lo, hi, seq = av
        return _repeat(_reverse(seq), lo, hi)
    raise Unsupported(f"{op}")


def _reversed_prefix(seq: Sequence[Any]) -> str:
    """Reversed prefixes of `seq` (always including the empty string). For x1..xn, built from
    the right so that each reversed item appears once:
    ((rp(xn) rev(x(n-1)) | rp(x(n-1))) rev(x(n-2)) | rp(x(n-2))) ... rev(x1) | rp(x1)."""
    items = list(seq)
    if not items:
        return _EMPTY
    acc = _reversed_prefix_item(*items[-1])
    for op, av in reversed(items[:-1]):
        acc = f"(?:(?:{acc}){_reverse_item(op, av)}|{_reversed_prefix_item(op, av)})"
    return acc


def _reversed_prefix_item(op: Any, av: Any) -> str:
    atom = _atom(op, av)
    if atom is not None:
        return f"(?:{atom})?"
    if op is sre_c.AT:
        return _EMPTY
    if op is sre_c.BRANCH:
        return "(?:" + "|".join(_reversed_prefix(alt) for alt in av[1]) + ")"
    if op is sre_c.SUBPATTERN:
        _group, add, delete, seq = av
        head, tail = _flags(add, delete)
        return head + _reversed_prefix(seq) + tail
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, sre_c.POSSESSIVE_REPEAT):
        _lo, hi, seq = av
        if hi == 0:
            return _EMPTY
        rest = _repeat(_reverse(seq), 0, sre_c.MAXREPEAT if hi == sre_c.MAXREPEAT else hi - 1)
        return f"(?:{_reversed_prefix(seq)}{rest})"
    raise Unsupported(f"{op}")


def reversed_prefix_pattern(pattern: str, *, after: int = 0) -> str:
    """An RE2 pattern matching exactly the reversals of the prefixes of the strings made of a
    match of `pattern` and up to `after` more characters (anchors and word boundaries taken as
    satisfied). The whole match counts, context before a rule's group 1 included: a value pattern
    alone (a generic secret's) would hold any word. Raises Unsupported."""
    try:
        parsed = sre_parse.parse(pattern)
    except Exception as exc:  # noqa: BLE001 - RE2-only syntax the stdlib parser does not know
        raise Unsupported(str(exc)) from None
    items = list(parsed)
    # One character of context before a rule's group 1 (IPv6's "not a letter or digit" in front
    # of the address) is never part of the finding: it may go out and is read back as the scan's
    # left context. (Longer leads, such as a generic secret's key, stay: the value alone would
    # match any word.)
    for i, (op, av) in enumerate(items):
        if op is sre_c.SUBPATTERN and av[0] == 1:
            if sre_parse.SubPattern(parsed.state, items[:i]).getwidth()[1] <= 1:
                items = items[i:]
            break
    if after:
        items.append((sre_c.MAX_REPEAT, (0, after, [(sre_c.ANY, None)])))
    head, tail = _flags(parsed.state.flags & ~sre_c.SRE_FLAG_UNICODE, 0)
    return head + _reversed_prefix(items) + tail


class PrefixHold:
    """`hold(text)`: how many characters at the end of `text` could still be the beginning of a
    finding of one of `patterns` or lie within `after` characters past a complete match (the
    rules' checks read context words after a candidate), measured on the classifier's normalized
    text and mapped back to `text`'s characters. `available` is False when a pattern could not be
    analysed: the caller then holds its fixed number of characters."""

    def __init__(self, patterns: Sequence[str], *, max_chars: int, after: int = 0) -> None:
        self.max_chars = max_chars + after
        self._rx = None
        try:
            alternatives = [reversed_prefix_pattern(p, after=after) for p in patterns]
        except Unsupported:
            return
        opts = re2.Options()
        opts.longest_match = True
        opts.max_mem = 64 << 20
        opts.log_errors = False
        try:
            self._rx = re2.compile("|".join(f"(?:{a})" for a in alternatives), opts)
        except re2.error:
            self._rx = None

    @property
    def available(self) -> bool:
        return self._rx is not None

    def hold(self, text: str) -> int:
        rx = self._rx
        if rx is None:  # callers check `available` first; fail loudly, never hold nothing
            raise RuntimeError("PrefixHold.hold called while unavailable")
        if not text:
            return 0
        tail = text[-self.max_chars:]
        norm = normalize(tail)
        backwards = norm.text[::-1]
        data = backwards.encode("utf-8", "replace")
        end = self._match_end(rx, data)
        if end <= 0:
            return 0
        n = end if len(data) == len(backwards) else len(data[:end].decode("utf-8", "replace"))
        start = norm.original_span(len(norm.text) - n, len(norm.text))[0]
        return len(tail) - start

    @staticmethod
    def _match_end(rx: Any, data: bytes) -> int:
        """End (in bytes) of the longest match anchored at the start of `data`; 0 for none.
        Through google-re2's pybind object when it is there: the public match() converts
        offsets in Python, most of this function's cost on short texts."""
        inner = getattr(rx, "_regexp", None)
        anchor = getattr(getattr(re2, "_Anchor", None), "ANCHOR_START", None)
        if inner is not None and anchor is not None and hasattr(inner, "Match"):
            found = inner.Match(anchor, data, 0, len(data))
            end: int = max(found[0][1], 0)
            return end
        m = rx.match(data)
        return m.end() if m else 0
