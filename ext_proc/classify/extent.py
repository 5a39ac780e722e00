"""Where a secret's value ends when the classifier's own match stops short of it.

A rule's match is bounded (a JWT at 4,096 characters, a key block at 4,096): a longer value (an
identity provider's token with many group claims, an RSA-8192 key) goes on past the match. The
streaming gate follows such a value to its end before it releases anything (streaming/gate.py);
a request's document is whole, so its findings are extended here (pipeline/inspect.py). Linear:
one possessive match per finding, and bounded by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ext_proc.classify.engine import Finding

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
_PEM_BEGIN = "-----BEGIN"
_PEM_END = "-----END"
# What a PEM block's body holds (base64, its headers, line breaks).
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=:,\- \t\r\n]*")


# A secret.generic value ("password=...", "api_key: ..."): what the rule's value class admits
# (rules.GENERIC: no space, quote, comma, semicolon or bracket), which goes on past the token
# characters ("%2F", ":", "!" in a long password). Possessive, read once.
GENERIC_LABEL = "secret.generic"
GENERIC_VALUE_CHAR = re.compile(r"""[^\s"'`,;<>(){}\[\]]""")
_GENERIC_RUN = re.compile(r"""[^\s"'`,;<>(){}\[\]]*+""")


def generic_run_end(text: str, pos: int, stop: int) -> int | None:
    """End of a generic secret's value going on from text[pos] before `stop`; None if it reaches
    `stop` (it may still go on)."""
    e = _match_end(_GENERIC_RUN, text, pos, stop)
    return None if e >= stop else e


def run_end(text: str, pos: int, stop: int) -> int | None:
    """End of the token run going on from text[pos] before `stop`; None if it may still go on
    (it reaches `stop`, or all that stops it is a last run of "." and "-")."""
    e = _match_end(_TOKEN_RUN, text, pos, stop)
    if _match_end(_JOINERS, text, e, stop) == stop:
        return None
    return e


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

    Linear in the text however many findings share one value: they are taken in order of their
    end, and each run (of token or key-block characters) is read once, its end remembered."""
    out = findings
    tokens, bodies = _Runs(_TOKEN_RUN, text), _Runs(_PEM_BODY, text)
    ends = _EndLines(text)
    for i in sorted(range(len(findings)), key=lambda k: findings[k].end):
        f = findings[i]
        if not f.label.startswith("secret.") or f.end >= len(text) or f.end <= f.start:
            continue
        stop = min(len(text), f.start + limit, value_end(f.end - 1) if value_end is not None else len(text))
        if stop <= f.end:
            continue
        if text.startswith(_PEM_BEGIN, f.start):
            at = ends.next_at(f.start)
            if at != -1 and at < f.end:
                continue                  # the match holds the END line already: the whole block
            end = _block_end(text, f.end, stop, at, bodies)
        elif TOKEN_LAST.match(text, f.end - 1):
            # (the run never ends on "." or "-": they belong to it only before a token character)
            end = tokens.end(f.end - 1, stop)
        else:
            continue
        if end > f.end:
            if out is findings:
                out = list(findings)
            out[i] = Finding(f.label, f.start, end, f.confidence, f.validator)
    return out


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
            self.searched_from, self.found = pos, self.text.find(_PEM_END, pos)
        return self.found


def _block_end(text: str, pos: int, stop: int, end_line: int, bodies: _Runs) -> int:
    """End of a key block whose header the finding holds: after its END line's closing dashes
    (END_LINE: the first END line after the header, or -1), or, with no END line in reach,
    where its body's characters end, less the line breaks and spaces that close the body."""
    if pos <= end_line < stop:
        close = text.find("-----", end_line + len(_PEM_END), min(stop, end_line + len(_PEM_END) + 60))
        if close != -1:
            return close + 5
    end = bodies.end(pos, stop)
    # the body's trailing blanks are few unless the text is hostile: stop looking after a line's worth
    floor = max(pos, end - 256)
    while end > floor and text[end - 1] in " \t\r\n":
        end -= 1
    return end
