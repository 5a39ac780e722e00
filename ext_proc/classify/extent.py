"""Where a secret's value ends when the classifier's own match stops short of it.

A rule's match is bounded (a JWT at 4,096 characters, a key block at 4,096): a longer value (an
identity provider's token with many group claims, an RSA-8192 key) goes on past the match. The
streaming gate follows such a value to its end before it releases anything (streaming/gate.py);
a request's document is whole, so its findings are extended here (pipeline/inspect.py), in the
body and in the envelope (header and query values) alike.

The value is followed as the classifier reads it: in the normalized text (classify/normalize.py),
so whatever form the rules accept (a key block's header or END line in full-width or other
look-alike dashes, confusable letters, invisible characters inside a token) the extent accepts
too, and ends are mapped back to the original text. Linear: one normalization of the text, and
each run read once however many findings share it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ext_proc.classify.engine import Finding
from ext_proc.classify.normalize import normalize
from ext_proc.classify.rules import PEM_BEGIN, PEM_BODY_CHARS, PEM_CLOSE, PEM_CLOSE_WITHIN, PEM_END

# Characters that go on a token (keys, JWTs, base64 and hex values; invisible characters, which
# the classifier drops, too); "." and "-" only between two of them, alone or several in a row
# (base64url has "-": "--" and "-." at a segment's end are in real JWTs). Possessive: a run of
# them not followed by a token character is read once, never backtracked over.
_TOKEN_CHAR = r"[\w+/=~\u00ad\u200b-\u200f\u2060-\u2064\ufeff]"
_TOKEN_RUN = re.compile(rf"(?:{_TOKEN_CHAR}|[.\-]++(?={_TOKEN_CHAR}))*")
# The last character of a finding whose token may go on: a token character, or a "." or "-"
# (a classifier's longest match can stop on one inside a long JWT or base64url value).
TOKEN_LAST = re.compile(r"[\w+/=~.\-]")
_JOINERS = re.compile(r"[.\-]*")
# What a key block's body holds: the rule's own definition (classify/rules.py).
_PEM_BODY = re.compile("[" + re.escape(PEM_BODY_CHARS) + "]*")


# A secret.generic value ("password=...", "api_key: ..."): what the rule's value class admits
# (rules.GENERIC: no space, quote, comma, semicolon or bracket), which goes on past the token
# characters ("%2F", ":", "!" in a long password). Possessive, read once.
GENERIC_LABEL = "secret.generic"
GENERIC_VALUE_CHAR = re.compile(r"""[^\s"'`,;<>(){}\[\]]""")
_GENERIC_RUN = re.compile(r"""[^\s"'`,;<>(){}\[\]]*+""")


def _match_end(pattern: re.Pattern[str], text: str, pos: int, stop: int) -> int:
    # Every pattern here matches the empty string, so there is always a match (at least up to pos).
    m = pattern.match(text, pos, stop)
    return m.end() if m is not None else pos


def whole_secrets(text: str, findings: list[Finding], *, limit: int,
                  value_end: Callable[[int], int] | None = None) -> list[Finding]:
    """`findings` over the whole `text`, each secret (a `secret.*` label) covering its whole value:
    a key block to the end of its END line, a token to the end of its run, at most `limit`
    characters from the finding's start and never past `value_end(last character)` (where the
    text that holds it ends, in a view that joins several). Other findings are returned as they are.

    The value is read in the normalized text (as the classifier read it) and its end mapped back.
    Linear in the text however many findings share one value: they are taken in order of their
    end, and each run (of token or key-block characters) is read once, its end remembered."""
    may_go_on: list[tuple[int, int]] = []          # (finding, stop) of the secrets that may go on
    for i in sorted(range(len(findings)), key=lambda k: findings[k].end):
        f = findings[i]
        if not f.label.startswith("secret.") or f.end >= len(text) or f.end <= f.start:
            continue
        stop = min(len(text), f.start + limit, value_end(f.end - 1) if value_end is not None else len(text))
        if stop > f.end:
            may_go_on.append((i, stop))
    if not may_go_on:
        return findings
    # One normalization, of the stretch of text those values can reach (not the whole view).
    reading = Reading(text, min(findings[i].start for i, _ in may_go_on), max(stop for _, stop in may_go_on))
    out = findings
    for i, stop in may_go_on:
        f = findings[i]
        end = reading.value_end(f.start, f.end, stop, generic=f.label == GENERIC_LABEL)
        if end > f.end:
            if out is findings:
                out = list(findings)
            out[i] = Finding(f.label, f.start, end, f.confidence, f.validator)
    return out


class Reading:
    """text[lo:hi] as the classifier reads it (normalized), with the runs and END lines read so
    far; offsets in and out are the whole text's."""

    def __init__(self, text: str, lo: int, hi: int) -> None:
        self.norm = normalize(text[lo:hi])
        self.lo = lo
        n = self.norm.text
        self.text = n
        self.tokens, self.bodies = _Runs(_TOKEN_RUN, n), _Runs(_PEM_BODY, n)
        self.generic_values = _Runs(_GENERIC_RUN, n)
        self.ends = _EndLines(n)

    def value_end(self, start: int, end: int, stop: int, *, generic: bool = False) -> int:
        """Where the value of a finding [start, end) ends, before `stop` (`end` when it does not
        go on); a generic secret's value (`generic`) runs over its rule's value class, wider than
        the token characters ("%2F", ":" or "!" in a long password)."""
        got = self._normalized_end(start, end, stop, generic=generic)
        if got is None:
            return end
        ne, e, _open = got
        return self.lo + self.norm.original_span(e - 1, e)[1] if e > ne else end

    def follow(self, start: int, end: int, stop: int, *, generic: bool = False) -> int | None:
        """Like value_end, for a text still arriving (the streaming gate): None when the value
        may go on past `stop` (its run, as the classifier reads it, reaches `stop`, or all that
        stops it is a last run of "." and "-")."""
        got = self._normalized_end(start, end, stop, generic=generic)
        if got is None:
            return end
        ne, e, open_ = got
        if open_:
            return None
        return self.lo + self.norm.original_span(e - 1, e)[1] if e > ne else end

    def _normalized_end(self, start: int, end: int, stop: int, *,
                        generic: bool) -> tuple[int, int, bool] | None:
        """(the finding's normalized end, its value's normalized end, whether the value may go on
        past `stop`), or None when the finding is not one whose value goes on."""
        norm, n, lo = self.norm, self.text, self.lo
        ns, ne, nstop = norm.normalized_at(start - lo), norm.normalized_at(end - lo), norm.normalized_at(stop - lo)
        if ne <= ns:
            return None
        if n.startswith(PEM_BEGIN, ns):
            if nstop <= ne:
                return None
            at = self.ends.next_at(ns)
            if at != -1 and at < ne:
                return None              # the match holds the END line already: the whole block
            return ne, _block_end(n, ne, nstop, at, self.bodies), False
        if generic and GENERIC_VALUE_CHAR.match(n, ne - 1):
            e = self.generic_values.end(ne - 1, nstop) if nstop > ne else nstop
            return ne, e, e >= nstop
        if TOKEN_LAST.match(n, ne - 1):
            # (the run never ends on "." or "-": they belong to it only before a token character)
            e = self.tokens.end(ne - 1, nstop) if nstop > ne else nstop
            return ne, e, _match_end(_JOINERS, n, e, nstop) == nstop
        return None


def follow_run(text: str, pos: int, stop: int, *, generic: bool = False) -> int | None:
    """End of the run of token characters (of a generic value's characters with `generic`) going
    on from text[pos] before `stop`, read as the classifier reads it (normalized: zero-width
    characters, combining marks, full-width or look-alike dots and dashes inside do not end it);
    None if it may go on. Reads text[pos:stop] once."""
    norm = normalize(text[pos:stop])
    n = norm.text
    e = _match_end(_GENERIC_RUN if generic else _TOKEN_RUN, n, 0, len(n))
    if e >= len(n) or (not generic and _match_end(_JOINERS, n, e, len(n)) == len(n)):
        return None
    return pos + norm.original_span(e - 1, e)[1] if e > 0 else pos


class _Runs:
    """Where a run of PATTERN's characters going on from a position ends, for positions asked in
    increasing order: a position inside the run last read reuses its end (a run read from any of
    its characters ends at the same place), and a run cut at an earlier stop is read on from
    where it was cut. Every character is read at most once."""

    def __init__(self, pattern: re.Pattern[str], text: str) -> None:
        self.pattern, self.text = pattern, text
        self.lo = self.hi = -1
        self.whole = False          # [lo, hi) is the whole run (it ended before its stop)

    def end(self, pos: int, stop: int) -> int:
        if self.lo <= pos <= self.hi:
            if self.whole or self.hi >= stop:
                return min(self.hi, stop)
            e = _match_end(self.pattern, self.text, self.hi, stop)
        else:
            self.lo = pos
            e = _match_end(self.pattern, self.text, pos, stop)
        self.hi, self.whole = e, e < stop
        return e


class _EndLines:
    """The first END line at or after a position, for positions asked in increasing order (one
    search per END line, not one per finding)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.searched_from, self.found = -1, -1

    def next_at(self, pos: int) -> int:
        if self.searched_from == -1 or pos < self.searched_from or (self.found != -1 and pos > self.found):
            self.searched_from, self.found = pos, self.text.find(PEM_END, pos)
        return self.found


def _block_end(text: str, pos: int, stop: int, end_line: int, bodies: _Runs) -> int:
    """End of a key block whose header the finding holds: after its END line's closing dashes
    (END_LINE: the first END line after the header, or -1), or, with no END line in reach,
    where its body's characters end, less the line breaks and spaces that close the body."""
    if pos <= end_line < stop:
        after = end_line + len(PEM_END)
        close = text.find(PEM_CLOSE, after, min(stop, after + PEM_CLOSE_WITHIN))
        if close != -1:
            return close + len(PEM_CLOSE)
    end = bodies.end(pos, stop)
    # the body's trailing blanks are few unless the text is hostile: stop looking after a line's worth
    floor = max(pos, end - 256)
    while end > floor and text[end - 1] in " \t\r\n":
        end -= 1
    return end
