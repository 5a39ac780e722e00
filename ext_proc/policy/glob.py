"""Globs for policy patterns: '*' (any run of characters, '/' included), '?' (one character),
everything else literal. No character classes and no regex, so a pattern cannot be a ReDoS.

Most patterns are exact, prefix (``gpt-4o*``), suffix or prefix+suffix: those are plain string
code. The rest compile to an RE2 (linear time) with a memory cap.
"""

from __future__ import annotations

from collections.abc import Iterable

import re2

MAX_GLOB_CHARS = 256
MAX_GLOB_WILDCARDS = 16

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = 1 << 20
_RE2_OPTIONS.dot_nl = True


class GlobError(ValueError):
    pass


def check_glob(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise GlobError("a pattern must be a non-empty string")
    if len(pattern) > MAX_GLOB_CHARS:
        raise GlobError(f"pattern longer than {MAX_GLOB_CHARS} characters")
    for ch in "[]\\{}":
        if ch in pattern:
            raise GlobError(f"{ch!r} is not supported in patterns (only '*' and '?' are wildcards)")
    if sum(pattern.count(c) for c in "*?") > MAX_GLOB_WILDCARDS:
        raise GlobError(f"more than {MAX_GLOB_WILDCARDS} wildcards in one pattern")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
        raise GlobError("control characters are not allowed in patterns")


class Glob:
    """One compiled pattern; ``match`` is a full match."""

    __slots__ = ("pattern", "_kind", "_a", "_b", "_re")

    def __init__(self, pattern: str) -> None:
        check_glob(pattern)
        self.pattern = pattern
        self._a = self._b = ""
        self._re = None
        stars = pattern.count("*")
        if pattern == "*":
            self._kind = "any"
        elif "?" not in pattern and stars == 0:
            self._kind, self._a = "exact", pattern
        elif "?" not in pattern and stars == 1:
            self._kind = "affix"
            self._a, self._b = pattern.split("*")
        else:
            self._kind = "re2"
            body = "".join(".*" if c == "*" else "." if c == "?" else re2.escape(c) for c in pattern)
            self._re = re2.compile(body, _RE2_OPTIONS)

    def match(self, text: str) -> bool:
        k = self._kind
        if k == "exact":
            return text == self._a
        if k == "affix":
            return (len(text) >= len(self._a) + len(self._b) and text.startswith(self._a)
                    and text.endswith(self._b))
        if k == "any":
            return True
        rx = self._re
        if rx is None:  # the "re2" kind always compiled one; anything else is a bug, not a miss
            raise RuntimeError(f"glob {self.pattern!r} has no compiled pattern")
        return rx.fullmatch(text) is not None


class GlobSet:
    """Several patterns; ``first_match`` returns the (sorted-first) pattern that matched."""

    __slots__ = ("exact", "globs", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(sorted(set(patterns)))
        globs = [Glob(p) for p in self.patterns]
        self.exact = frozenset(g.pattern for g in globs if g._kind == "exact")
        self.globs = tuple(g for g in globs if g._kind != "exact")

    def first_match(self, text: str) -> str | None:
        if text in self.exact:
            return text
        for g in self.globs:
            if g.match(text):
                return g.pattern
        return None

    def match(self, text: str) -> bool:
        return self.first_match(text) is not None
