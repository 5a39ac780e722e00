"""Hold-back scanning of one content stream (one choice's text, one tool call's arguments, one
Anthropic content block...).

Text arrives in pieces. Only the end of the pending text can still be growing into a finding:
the longest suffix that is the beginning of some match of some rule (the classifier's
``prefix_hold``, an RE2 match over reversed prefixes, see classify/prefix.py), never more than
``hold`` characters. Everything before it can be decided: no finding still arriving reaches back
that far. A finding that straddles the cut keeps the cut before it. The decided part is scanned
together with a little of the text released before it (context words such as "call" for phone
numbers), findings in it are blocked or redacted, and it is released. So "Hello, how can I" goes
out at once but for its last word, while a card number or a key still arriving is held whole.
When the classifier cannot compute that suffix, ``hold`` characters are held, and a run of
non-space characters crossing the cut (a token still arriving) up to ``long_hold``.

Before the first release every delta is considered (time to first token); after it, the text is
scanned once per ``step`` new characters, not once per delta, so the CPU cost stays linear in
the text length, plus once per upstream chunk (``settle``): a chunk that ends leaves nothing
decidable waiting for the next token.
"""

from __future__ import annotations

import bisect
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ext_proc.classify import Classifier, Finding, redact, summarize
from ext_proc.classify.extent import GENERIC_LABEL, Reading, follow_run
from ext_proc.classify.normalize import ORIGINAL_SPAN_FACTOR, normalize
from ext_proc.classify.prefix import PrefixHold

CONTEXT_CHARS = 256           # released text kept as left context for the next scan
FAST_PATH_CHARS = 4096       # a whole string this short is one window of the gate
MAX_REDACTION_RECORDS = 1000  # per response; further ones are counted, not listed


class Blocked(Exception):
    """A block rule fired, or the response cannot be inspected. The message never holds content."""

    def __init__(self, label: str, reason: str) -> None:
        super().__init__(reason)
        self.label = label
        self.reason = reason


@dataclass
class Ledger:
    """What one response's inspection found: counts per label, redaction records (offsets only)."""
    classification: dict[str, dict] = field(default_factory=dict)
    redactions: list[dict] = field(default_factory=list)
    redactions_not_listed: int = 0

    def count(self, findings: list[Finding]) -> None:
        for label, s in summarize(findings).items():
            have = self.classification.get(label)
            if have is None:
                self.classification[label] = dict(s)
            else:
                have["count"] += s["count"]
                have["max_confidence"] = max(have["max_confidence"], s["max_confidence"])

    def add_redaction(self, record: dict) -> None:
        if len(self.redactions) < MAX_REDACTION_RECORDS:
            self.redactions.append(record)
        else:
            self.redactions_not_listed += 1

    def summary(self) -> dict[str, dict]:
        return {k: dict(self.classification[k]) for k in sorted(self.classification)}


@dataclass(frozen=True)
class ScanPolicy:
    classifier: Classifier
    redact: Mapping[str, str]
    block: frozenset[str]
    hash_key: bytes
    tenant: str | None
    hold: int
    step: int
    long_hold: int = 0   # when > hold: a token or PEM block still arriving is held up to this many chars
    prefix: PrefixHold | None = None   # the classifier's suffix analysis; None: always hold `hold`
    # A PEM block still arriving is held whole, however long, up to this many characters; past it
    # the response is blocked (a key is never released in part).
    max_block_chars: int = 60_000


class TextGate:
    """Scans one content stream's text with a bounded hold-back; see the module docstring."""

    def __init__(self, policy: ScanPolicy, ledger: Ledger, where: str, *, count: bool = True) -> None:
        self.policy = policy
        self.ledger = ledger
        self.where = where            # names the stream in redaction records, e.g. "chat/0/content"
        self.count = count            # False for texts that restate a stream already counted
        self._context = ""
        self._pending: list[str] = []
        self._pending_len = 0
        self._attempt_at = 1          # pending length at which the next release is tried
        self._settle_at = 1           # pending length at which the next settle scans
        self.released_chars = 0       # original characters released so far (offset of the held text)
        # Redactions in the decided text, in stream offsets: (start, end, replacement), in order.
        # Lets a caller that releases whole events rebuild each event's own part of the text.
        self.edits: list[tuple[int, int, str]] = []
        self._pem = PemMarks()
        # A finding inside a run of token characters still arriving (a JWT or key longer than the
        # classifier's longest match): held from this stream offset until the run ends.
        self._token_at: int | None = None
        self._token_seen = 0           # stream offset up to which that run is known to go on
        self._token_generic = False    # the run is a generic secret's value (rules.GENERIC's class)
        limit = policy.classifier.max_input_chars
        if limit < CONTEXT_CHARS + 2 * policy.hold + policy.step:
            raise ValueError("the classifier's max_input_chars is too small for the hold-back")
        self._window = min(limit - CONTEXT_CHARS, max(4 * (policy.hold + policy.step), 1 << 16,
                                                      policy.max_block_chars + policy.hold + policy.step))

    @property
    def held_chars(self) -> int:
        return self._pending_len

    @property
    def fed_chars(self) -> int:
        return self.released_chars + self._pending_len

    def edited(self, start: int, end: int, text: str) -> str:
        """`text`, the original stream characters [start, end), with the decided redactions that
        touch it applied; a replacement goes where its finding begins, so a finding split over
        several pieces is replaced once, in the piece that holds its start."""
        return apply_edits(self.edits, start, end, text)

    def forget_edits_before(self, offset: int) -> None:
        if self.edits and self.edits[0][1] <= offset:
            self.edits = [ed for ed in self.edits if ed[1] > offset]

    def add(self, text: str) -> None:
        """Pending text, not yet considered for release (a whole text goes out with flush)."""
        if text:
            self._pending.append(text)
            self._pending_len += len(text)

    def feed(self, text: str) -> str:
        self.add(text)
        if self._pending_len < self._attempt_at:
            return ""
        out = self._release(final=False)
        # Until something is released, try again a little later (a token still arriving is held
        # up to long_hold: tries grow geometrically, so their cost stays bounded); then once
        # per step of new text.
        grow = self.policy.step if self.released_chars else max(1, self._pending_len // 4)
        self._attempt_at = self._pending_len + grow
        return out

    def settle(self) -> str:
        """Release what can be decided now, between scan steps: the caller has no more text at
        hand (the upstream's next piece may be a while away). What stays held after a settle
        must grow by a quarter before the next one: a long token arriving a character per chunk
        is not rescanned whole for every character."""
        if self._pending_len < self._settle_at:
            return ""
        before = self.released_chars
        out = self._release(final=False)
        if self.released_chars == before:
            self._settle_at = self._pending_len + max(1, self._pending_len // 4)
        return out

    def _hold(self, held: str, start: int, take: int) -> tuple[int, bool]:
        """Characters to keep back at the end of held[start:start + take], and whether that is
        the fixed hold (then runs of non-space characters crossing the cut are kept too)."""
        p = self.policy
        if p.prefix is None or not p.prefix.available:
            return p.hold, True
        end = start + take
        needed = p.prefix.hold(held[max(start, end - p.prefix.max_chars):end])
        return (needed, False) if needed < p.hold else (p.hold, True)

    def _before(self, held: str, start: int, stop: int) -> tuple[int, int, bool]:
        """The window from `start` cut short at `stop`, where a PEM block or a token still growing
        begins (nothing from there on is scanned or released until it ends), and its hold as _hold
        gives it. The caller releases nothing when take - hold <= 0 (always so when stop == start)."""
        take = stop - start
        hold, fixed = self._hold(held, start, take)
        return take, hold, fixed

    def _open_token(self, held: str, base: int, start: int, take: int) -> int | None:
        """Where (in `held`) the token run of a held finding begins, if it has not ended before
        held[start + take]; past max_block_chars it is refused. None once it has ended (then the
        window is scanned and the finding covers the whole run)."""
        if self._token_at is None:
            return None
        t = self._token_at - base
        stop = start + take
        if not start <= t < stop:
            return None
        pos = max(t, self._token_seen - base - 1)
        if follow_run(held, pos, stop, generic=self._token_generic) is not None:
            self._token_at = None
            return None
        self._token_seen = base + stop
        if stop - t > self.policy.max_block_chars:
            raise Blocked("finding_too_long", "a secret in the response grew past "
                          f"{self.policy.max_block_chars} characters before it ended")
        return t

    def flush(self) -> str:
        """End of the stream: everything pending is decided and released."""
        if not self._pending_len:
            return ""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        p = self.policy
        held = "".join(self._pending)
        out: list[str] = []
        start = 0
        base = self.released_chars
        self._pem.extend(held, base)
        if final:
            # At the end, a block that never got its footer is masked to the end of the text by
            # its finding, which must fit one window: longer, it is refused like a growing one.
            block = self._pem.open_block(base, base + len(held))
            block = None if block is None else block - base
            if block is not None and len(held) - block > p.max_block_chars:
                raise Blocked("finding_too_long", "a key block in the response ran past "
                              f"{p.max_block_chars} characters without its end")
            if self._token_at is not None and base + len(held) - self._token_at > p.max_block_chars:
                raise Blocked("finding_too_long", "a secret in the response ran past "
                              f"{p.max_block_chars} characters")
        while start < len(held):
            rest = len(held) - start
            take = min(rest, self._window)
            whole = final and take == rest
            hold, fixed = (0, False) if whole else self._hold(held, start, take)
            if take - hold <= 0:
                break
            if not whole:
                # A PEM block whose footer has not arrived is held whole, however long it grows:
                # nothing of it (nor after it) is scanned or released until it ends.
                block = self._pem.open_block(base + start, base + start + take)
                if block is not None:
                    block -= base
                    if start + take - block > p.max_block_chars:
                        raise Blocked("finding_too_long", "a key block in the response grew past "
                                      f"{p.max_block_chars} characters before it ended")
                    take, hold, fixed = self._before(held, start, block)
                    if take - hold <= 0:
                        break
                # So is a secret whose token is still growing: until the run ends, it is not
                # scanned again (the run is followed with one linear match per step).
                tok = self._open_token(held, base, start, take)
                if tok is not None:
                    take, hold, fixed = self._before(held, start, tok)
                    if take - hold <= 0:
                        break
            window = self._context + held[start:start + take]
            ctx = len(self._context)
            findings = _whole_blocks(window, p.classifier.scan(window), end_known=whole)
            findings, open_at, open_generic = _whole_tokens(window, findings, end_known=whole)
            cut = take - hold
            if not whole and p.long_hold > p.hold:
                cut = _extend_hold(held, start, take, cut, p.long_hold, runs=fixed)
            if open_at is not None:
                tok = max(open_at - ctx, 0)
                if take - tok > p.max_block_chars:
                    raise Blocked("finding_too_long", "a secret in the response grew past "
                                  f"{p.max_block_chars} characters before it ended")
                self._token_at, self._token_seen = base + start + tok, base + start + take
                self._token_generic = open_generic
                cut = min(cut, tok)
            if not whole and cut <= 0:
                break
            if not whole:
                # Findings may overlap (every label stands): the cut moves back before each one
                # straddling it until none does.
                moved = True
                while moved and cut > 0:
                    moved = False
                    for f in findings:
                        if f.start < ctx + cut < f.end and f.start - ctx > 0:
                            cut, moved = f.start - ctx, True
                        elif f.start < ctx + cut < f.end and p.long_hold > p.hold and (take < p.long_hold or fixed):
                            # A finding from the very start still arriving, or (under the fixed
                            # hold, which cannot tell) one the hold cuts inside: hold it all; the
                            # cut passes its end once more text has come (it is shorter than a
                            # window: max_block_chars bounds a run, max_match_chars the rest).
                            cut = 0
                            break
                if cut <= 0:
                    break
                if 0xD800 <= ord(window[ctx + cut - 1]) <= 0xDBFF:
                    if cut == 1:
                        break                     # the high half alone: wait for what follows it
                    cut -= 1                      # never split a surrogate pair
            decided = [f for f in findings if f.end > ctx and f.start < ctx + cut]
            for f in decided:
                if f.label in p.block:
                    if self.count:
                        self.ledger.count([f])
                    raise Blocked(f.label, f"the response was stopped by policy: it contained {f.label}")
            if self.count:
                self.ledger.count(decided)
            piece = held[start:start + cut]
            if decided and p.redact:
                local = [Finding(f.label, max(f.start - ctx, 0), min(f.end - ctx, cut), f.confidence, f.validator)
                         for f in decided]
                piece, reds = redact(piece, local, p.redact, hash_key=p.hash_key, tenant=p.tenant)
                for r in reds:
                    self.edits.append((r.start + self.released_chars, r.end + self.released_chars, r.replacement))
                    rec = r.to_record()
                    rec["start"] += self.released_chars
                    rec["end"] += self.released_chars
                    rec["where"] = self.where
                    self.ledger.add_redaction(rec)
            out.append(piece)
            self._context = (self._context + held[start:start + cut])[-CONTEXT_CHARS:]
            self.released_chars += cut
            start += cut
        rest_text = held[start:]
        self._pending = [rest_text] if rest_text else []
        self._pending_len = len(rest_text)
        if start:
            self._settle_at = self._pending_len + 1    # progress: the next chunk is settled again
        return "".join(out)


def inspect_whole(policy: ScanPolicy, ledger: Ledger, text: str, where: str, *, count: bool = True) -> str:
    """A complete text (a JSON string field, a whole body): scanned in bounded windows, redacted."""
    gate = TextGate(policy, ledger, where, count=count)
    gate.add(text)
    return gate.flush()


def apply_edits(edits: list[tuple[int, int, str]], start: int, end: int, text: str) -> str:
    """`text` (stream characters [start, end)) with the redactions (start, end, replacement) that
    touch it; a replacement goes where its finding begins."""
    out: list[str] = []
    pos = start
    for s, e, rep in edits:
        if e <= start or s >= end:
            continue
        if s >= pos:
            out.append(text[pos - start:s - start])
        if s >= start:
            out.append(rep)
        pos = max(pos, min(e, end))
    out.append(text[pos - start:])
    return "".join(out)


PEM_BEGIN = "-----BEGIN"
PEM_END = "-----END"
PEM_CLOSE_WITHIN = 80          # characters after "-----END" in which the footer's "-----" must come
# The most raw characters a footer ("-----END ...-----") can take: the classifier reads up to
# ORIGINAL_SPAN_FACTOR raw characters per normalized one (invisible characters in between).
PEM_FOOTER_RAW = ORIGINAL_SPAN_FACTOR * (len(PEM_END) + PEM_CLOSE_WITHIN + 5)


def pem_markers(text: str, base: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
    """PEM headers ("-----BEGIN" starts) and complete footers ((start, end) of "-----END ...-----")
    in `text`, as the classifier reads them: found in its normalized form (look-alike dashes,
    full-width letters and confusables folded, invisible characters dropped) and mapped back to
    raw offsets (plus `base`). One pass of normalization and two of str.find: linear."""
    norm = normalize(text)
    n = norm.text

    def raw_start(i: int) -> int:
        return base + (i if norm.identity else norm.original_span(i, i + 1)[0])

    def raw_end(i: int) -> int:
        return base + (i if norm.identity else norm.original_span(i - 1, i)[1])

    begins: list[int] = []
    i = n.find(PEM_BEGIN)
    while i >= 0:
        begins.append(raw_start(i))
        i = n.find(PEM_BEGIN, i + len(PEM_BEGIN))
    footers: list[tuple[int, int]] = []
    j = n.find(PEM_END)
    while j >= 0:
        close = n.find("-----", j + len(PEM_END), j + len(PEM_END) + PEM_CLOSE_WITHIN)
        if close >= 0:
            footers.append((raw_start(j), raw_end(close + 5)))
        j = n.find(PEM_END, j + len(PEM_END))
    return begins, footers


class PemMarks:
    """The PEM headers and complete footers of a stream's pending text, in stream offsets, kept as
    the text grows: each call normalizes only what arrived since the last one plus a tail in which
    a footer may still have been arriving (PEM_FOOTER_RAW), so a block held while it grows to
    max_block_chars costs linear time, not a rescan per step."""

    def __init__(self) -> None:
        self.begins: list[int] = []
        self.footers: list[tuple[int, int]] = []
        self.upto = 0              # stream offset up to which the markers are known

    def extend(self, held: str, base: int) -> None:
        """`held` is the pending text, starting at stream offset `base`."""
        end = base + len(held)
        if end <= self.upto:
            return
        lo = max(base, self.upto - PEM_FOOTER_RAW)
        begins, footers = pem_markers(held[lo - base:], lo)
        # What starts before lo was found before (a footer that started there and had not ended
        # by then is longer than PEM_FOOTER_RAW: its block stays open, and is refused at the bound).
        self.begins = [b for b in self.begins if base <= b < lo] + begins
        self.footers = [f for f in self.footers if base <= f[0] < lo] + footers
        self.upto = end

    def open_block(self, start: int, stop: int) -> int | None:
        """Where in [start, stop) a PEM block begins whose footer has not arrived before `stop`."""
        k = bisect.bisect_left(self.begins, start)
        while k < len(self.begins) and self.begins[k] < stop:
            b = self.begins[k]
            f = bisect.bisect_right(self.footers, (b, -1))
            while f < len(self.footers) and self.footers[f][0] <= b:
                f += 1
            if f == len(self.footers) or self.footers[f][1] > stop:
                return b
            # Headers nested in this block (before its footer) close with it; one inside the
            # footer itself ("-----END X-----BEGIN ...": the footer's closing dashes begin the
            # next header) opens a block of its own and is looked at.
            k = bisect.bisect_left(self.begins, self.footers[f][0], k + 1)
        return None


def _whole_blocks(window: str, findings: list[Finding], *, end_known: bool) -> list[Finding]:
    """A finding on a PEM header covers its block to the footer, however long the block is (the
    classifier's own finding stops at its longest match); with no footer at the end of the text,
    to the end. Headers and footers are read as the classifier reads them (normalized)."""
    if not findings:
        return findings
    begins, footers = pem_markers(window)
    if not begins:
        return findings
    heads = set(begins)
    out = findings
    for i, f in enumerate(findings):
        if f.start not in heads:
            continue
        k = bisect.bisect_right(footers, (f.start, len(window) + 1))
        end = footers[k][1] if k < len(footers) else -1
        if end < 0 and end_known:
            end = len(window)
        if end > f.end:
            if out is findings:
                out = list(findings)
            out[i] = Finding(f.label, f.start, end, f.confidence, f.validator)
    return out


_ENDS_EVERY_RUN = re.compile(r"""[ \t\r\n"'`,;<>(){}\[\]]""")
_KEY_LABEL = "secret.private_key"


def _whole_tokens(window: str, findings: list[Finding], *,
                  end_known: bool) -> tuple[list[Finding], int | None, bool]:
    """A finding that ends inside a run of token characters covers the run (a 20,000-character JWT
    or key: the classifier's own finding stops at its longest match); a generic secret's value
    (secret.generic) covers the run of its rule's value class ("password=" and 600 characters
    with "%2F" in them: the rule stops at 200). The run is read as the classifier reads it
    (classify/extent.Reading: normalized, so zero-width characters, combining marks, full-width
    or look-alike dots and dashes inside do not end it), once however many findings share it.
    Returns the findings and, unless the end of the text is known, where the earliest finding
    whose run is still going on at the end of the window begins (None if none is), and whether
    a generic value's run is among those open (it is followed with that class, wider than the
    token's)."""
    n = len(window)
    # A finding followed by an ASCII space, quote or bracket (the normalization keeps them; they end
    # a token and a generic value alike) does not go on: no need to read it (a key block's finding
    # is read anyway, it runs over line breaks).
    may_go_on = sorted((i for i, f in enumerate(findings) if f.start < f.end < n
                        and (f.label == _KEY_LABEL or not _ENDS_EVERY_RUN.match(window, f.end))),
                       key=lambda i: findings[i].end)
    if not may_go_on:
        return findings, None, False
    reading = Reading(window, min(findings[i].start for i in may_go_on), n)
    out = findings
    open_at: int | None = None
    open_generic = False
    for i in may_go_on:
        f = findings[i]
        generic = f.label == GENERIC_LABEL
        e = reading.follow(f.start, f.end, n, generic=generic)
        if e is None:
            if not end_known:
                open_at = f.start if open_at is None else min(open_at, f.start)
                open_generic = open_generic or generic
                continue
            e = n
        if e > f.end:
            if out is findings:
                out = list(findings)
            out[i] = Finding(f.label, f.start, e, f.confidence, f.validator)
    return out, open_at, open_generic


def _extend_hold(held: str, start: int, take: int, cut: int, long_hold: int, *, runs: bool = True) -> int:
    """Move the cut back so that an unbroken run of non-space characters crossing it (a key or
    token still arriving under a fixed hold) stays held, within long_hold of the end. (A PEM block
    still open never reaches here: the caller cuts before it, see PemMarks.open_block.)"""
    floor = start + max(0, take - long_hold)
    j = start + cut
    if runs:
        while j > floor and not held[j - 1].isspace():
            j -= 1
        if j == floor and floor > start:
            j = start + cut  # a run longer than any finding: nothing to protect
    return j - start


# --- JSON text (tool-call arguments): scanned as the application reads it --------------------

_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")


def _hex4(raw: str, i: int) -> int | None:
    h = raw[i:i + 4]
    return int(h, 16) if len(h) == 4 and all(c in _HEX for c in h) else None


def _escape_at(raw: str, j: int, final: bool) -> tuple[str, int]:
    """The character the escape at raw[j] ("\\") decodes to and its raw length; ("", 0) when it
    may still be completed by text not arrived yet. What is not a JSON escape stays literal."""
    n = len(raw)
    if j + 1 >= n:
        return ("\\", 1) if final else ("", 0)
    c = raw[j + 1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], 2
    if c != "u":
        return "\\", 1
    if j + 6 > n and not final:
        return "", 0
    cp = _hex4(raw, j + 2)
    if cp is None:
        return "\\", 1
    if 0xD800 <= cp < 0xDC00:                 # a high surrogate: a low one may follow
        if j + 12 > n and not final and raw.startswith("\\u"[:n - j - 6], j + 6):
            return "", 0
        low = _hex4(raw, j + 8) if raw.startswith("\\u", j + 6) else None
        if low is not None and 0xDC00 <= low < 0xE000:
            return chr(0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)), 12
    return chr(cp), 6


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1]


class JsonTextGate:
    """One content stream of JSON text (OpenAI function.arguments, Anthropic input_json_delta,
    Bedrock toolUse.input deltas) scanned as the application reads it: the SDK hands the text to
    json.loads, which turns "\\u0034" into "4", so the gate sees the escapes decoded. Offsets outside
    (fed_chars, released_chars, edits) are in the raw text the events carry; a redaction replaces
    the escaped characters of its finding, written escaped."""

    def __init__(self, policy: ScanPolicy, ledger: Ledger, where: str, *, count: bool = True) -> None:
        self.inner = TextGate(policy, ledger, where, count=count)
        self.edits: list[tuple[int, int, str]] = []
        self._raw_fed = 0
        self._tail = ""                 # an escape that may still be completed by the next piece
        self._decoded = 0               # decoded characters given to the inner gate
        # Offset marks: from decoded offset marks_d[i] on, decoded and raw advance together from
        # raw offset marks_r[i] (until the next mark); every escape starts a mark and ends one.
        self._marks_d: list[int] = [0]
        self._marks_r: list[int] = [0]

    @property
    def fed_chars(self) -> int:
        return self._raw_fed

    @property
    def held_chars(self) -> int:
        return self.inner.held_chars + len(self._tail)

    @property
    def released_chars(self) -> int:
        return self._to_raw(self.inner.released_chars)

    def _to_raw(self, d: int) -> int:
        if d >= self._decoded:
            return self._raw_fed - len(self._tail)
        i = bisect.bisect_right(self._marks_d, d) - 1
        return self._marks_r[i] + d - self._marks_d[i]

    def _mark(self, d: int, r: int) -> None:
        if self._marks_d[-1] == d:
            self._marks_r[-1] = r
        else:
            self._marks_d.append(d)
            self._marks_r.append(r)

    def _decode(self, text: str, final: bool) -> str:
        raw = self._tail + text
        base = self._raw_fed - len(raw)
        parts: list[str] = []
        d, i, n = self._decoded, 0, len(raw)
        while i < n:
            j = raw.find("\\", i)
            if j < 0:
                parts.append(raw[i:])
                d += n - i
                i = n
                break
            parts.append(raw[i:j])
            d += j - i
            ch, k = _escape_at(raw, j, final)
            if not k:
                i = j
                break
            if k > 1:
                self._mark(d, base + j)
                self._mark(d + 1, base + j + k)
            parts.append(ch)
            d += 1
            i = j + k
        self._tail = raw[i:]
        self._decoded = d
        return "".join(parts)

    def _sync(self) -> None:
        for s, e, rep in self.inner.edits:
            self.edits.append((self._to_raw(s), self._to_raw(e), _json_escaped(rep)))
        self.inner.edits.clear()
        keep = bisect.bisect_right(self._marks_d, self.inner.released_chars) - 1
        if keep > 0:
            del self._marks_d[:keep], self._marks_r[:keep]

    def add(self, text: str) -> None:
        self._raw_fed += len(text)
        self.inner.add(self._decode(text, False))

    def feed(self, text: str) -> str:
        self._raw_fed += len(text)
        out = self.inner.feed(self._decode(text, False))
        self._sync()
        return out

    def settle(self) -> str:
        out = self.inner.settle()
        self._sync()
        return out

    def flush(self) -> str:
        self.inner.add(self._decode("", True))
        out = self.inner.flush()
        self._sync()
        return out

    def edited(self, start: int, end: int, text: str) -> str:
        return apply_edits(self.edits, start, end, text)

    def forget_edits_before(self, offset: int) -> None:
        if self.edits and self.edits[0][1] <= offset:
            self.edits = [ed for ed in self.edits if ed[1] > offset]


def inspect_json_text(policy: ScanPolicy, ledger: Ledger, text: str, where: str, *, count: bool = True) -> str:
    """A complete string that may be JSON text (it holds escapes an application's json.loads
    decodes): scanned decoded, redacted in its escaped form."""
    gate = JsonTextGate(policy, ledger, where, count=count)
    gate.add(text)
    gate.flush()
    return gate.edited(0, len(text), text) if gate.edits else text


def inspect_string(policy: ScanPolicy, ledger: Ledger, text: str, where: str, *, count: bool = True) -> str:
    """A whole string of a JSON body or event: with a backslash in it, as JSON text (decoded);
    otherwise as it is."""
    if clean_whole(policy, text):
        return text
    if "\\" in text:
        return inspect_json_text(policy, ledger, text, where, count=count)
    return inspect_whole(policy, ledger, text, where, count=count)


def clean_whole(policy: ScanPolicy, text: str) -> bool:
    """A short whole string without escapes in which the classifier finds nothing: what the gate
    would decide (one window), without the gate."""
    return len(text) <= FAST_PATH_CHARS and "\\" not in text and not policy.classifier.scan(text)


# --- SSE data that is not a JSON object: read decoded and as one stream ----------------------

JSON_PUNCT = frozenset("[]{},:")     # outside a string: the structure of a JSON value, kept in a rebuild
_STRUCTURE = re.compile(r"[\[\]{},: \t\n\r]+")     # a JSON value's structure between its strings


def data_segments(raw: str, final: bool, inside: bool,
                  value: bool = False) -> tuple[list[tuple[str, int, int, str, bool]], bool]:
    """`raw` (SSE data joined across events) cut as a client that parses it reads it: ("lit", a, b,
    text, inside) characters read as they are, ("esc", ...) a JSON escape read as one character,
    ("quote", ...) a bare `"` (a string's delimiter: no character of its text), ("quote", ...) too
    for a JSON value's brackets, commas, colons and white space between its strings (`value`: the
    data is one JSON value; a client joining its strings reads none of them), and last
    ("pending", a, n, "", inside) an escape that text not arrived yet may still complete; `inside`:
    within a JSON string (bare quotes toggle it; `inside` is the state where raw begins). Escapes
    are decoded wherever they are (a client parsing each event and joining the strings, joining the
    data and parsing it, or unescaping the text it shows): the widest reading. One pass, linear (the
    next backslash and quote positions are cached). Returns the segments and the state at the end."""
    out: list[tuple[str, int, int, str, bool]] = []
    n, i = len(raw), 0
    nb, nq = raw.find("\\"), raw.find('"')
    while i < n:
        if 0 <= nb < i:
            nb = raw.find("\\", i)
        if 0 <= nq < i:
            nq = raw.find('"', i)
        j = min(nb if nb >= 0 else n, nq if nq >= 0 else n)
        if j > i:
            if value and not inside:
                for m in _STRUCTURE.finditer(raw, i, j):
                    if m.start() > i:
                        out.append(("lit", i, m.start(), raw[i:m.start()], inside))
                    out.append(("quote", m.start(), m.end(), "", inside))
                    i = m.end()
                if j > i:
                    out.append(("lit", i, j, raw[i:j], inside))
                i = j
                continue
            out.append(("lit", i, j, raw[i:j], inside))
            i = j
            continue
        if raw[j] == '"':
            out.append(("quote", j, j + 1, "", inside))
            inside = not inside
            i = j + 1
            continue
        ch, k = _escape_at(raw, j, final)
        if not k:
            out.append(("pending", j, n, "", inside))
            break
        out.append(("esc" if k > 1 else "lit", j, j + k, ch, inside))
        i = j + k
    return out, inside


LOOKAHEAD = 12       # raw characters that decide an escape (a surrogate pair: "\\ud83d\\ude00")


@dataclass(slots=True)
class _Piece:
    """One event's data fed to a JsonDataGate, kept until the event is rebuilt."""
    raw_start: int
    dec_start: int              # decoded offset where `before` begins
    before: str                 # the pending escape the piece continues
    inside: bool                # within a JSON string where `before` begins
    after: str = ""             # raw text after it, while an escape of it may be pending
    final: bool = False         # the stream was decided right after it (a pending escape read as text)
    reading: str | None = None  # a whole value read otherwise than its characters (a number)
    value: bool = False         # the data is one JSON value (its structure is no text)


class JsonDataGate(JsonTextGate):
    """The data of SSE events that are not JSON objects (a JSON string, number or array, or text),
    one stream across events, read as the clients read it: a client that parses each event and
    joins the strings (`"4\\u0031"`, `"11 1"`: "4111 1"), one that joins the data and parses it (one
    string cut anywhere, an escape split between two events), one that shows the text. The inner
    gate scans the text with escapes decoded (an escape split over events waits for its end) and
    string quotes dropped (they are no character of what is joined). Offsets outside (fed_chars,
    released_chars, the spans of events) are raw; `edited` rebuilds one event's data: quotes and,
    outside strings, JSON's brackets, commas and colons kept, the other characters of a finding
    removed, its replacement (JSON-escaped) where it begins, so an event that was a JSON string
    (or array) is one still."""

    def __init__(self, policy: ScanPolicy, ledger: Ledger, where: str, *, count: bool = True,
                 pieces: bool = True) -> None:
        super().__init__(policy, ledger, where, count=count)
        self._keep_pieces = pieces         # False: nothing is rebuilt per piece (JsonTextBody)
        self._flat: list[bool] = [False]    # per mark: the decoded characters from it map to its raw start
        self._inside = False
        self._pieces: deque[_Piece] = deque()
        self._need_after: list[_Piece] = []

    @property
    def held_escape(self) -> bool:
        """An escape is pending at the end of what was fed (the next data may complete it)."""
        return bool(self._tail)

    def _mark(self, d: int, r: int, flat: bool = False) -> None:
        if self._marks_d[-1] == d:
            self._marks_r[-1], self._flat[-1] = r, flat
        else:
            self._marks_d.append(d)
            self._marks_r.append(r)
            self._flat.append(flat)

    def _to_raw(self, d: int) -> int:
        if d >= self._decoded:
            return self._raw_fed - len(self._tail)
        i = bisect.bisect_right(self._marks_d, d) - 1
        return self._marks_r[i] if self._flat[i] else self._marks_r[i] + d - self._marks_d[i]

    def _decode(self, text: str, final: bool, value: bool = False) -> str:
        raw = self._tail + text
        base = self._raw_fed - len(raw)
        parts: list[str] = []
        d = self._decoded
        tail_at = len(raw)
        segments, self._inside = data_segments(raw, final, self._inside, value)
        for kind, a, b, ch, _inside in segments:
            if kind == "pending":
                tail_at = a
                break
            if kind == "quote":
                self._mark(d, base + b)
                continue
            if kind == "esc":
                self._mark(d, base + a)
                self._mark(d + 1, base + b)
            parts.append(ch)
            d += len(ch) if kind == "lit" else 1
        self._tail = raw[tail_at:]
        self._decoded = d
        return "".join(parts)

    def _take(self, text: str) -> _Piece:
        for p in self._need_after:
            p.after += text[:LOOKAHEAD - len(p.after)]
        self._need_after = [p for p in self._need_after if len(p.after) < LOOKAHEAD]
        piece = _Piece(self._raw_fed, self._decoded, self._tail, self._inside)
        if self._keep_pieces:
            self._pieces.append(piece)
        self._raw_fed += len(text)
        return piece

    def _after(self, piece: _Piece | None, final: bool) -> None:
        if not self._tail or not self._keep_pieces:
            self._need_after = []
        elif piece is not None and piece.raw_start < self._raw_fed:
            self._need_after.append(piece)
        if final:
            for p in self._need_after:
                p.final = True
            self._need_after = []

    def add(self, text: str) -> None:
        piece = self._take(text)
        self.inner.add(self._decode(text, False))
        self._after(piece, False)

    def feed(self, text: str, *, value: bool = False) -> str:
        """`value`: the text is one JSON value on its own (an event a client parses): read from
        outside a string, its structure between strings no text."""
        if value:
            self._inside = False
        piece = self._take(text)
        piece.value = value
        out = self.inner.feed(self._decode(text, False, value))
        self._after(piece, False)
        self._sync()
        return out

    def feed_value(self, text: str, reading: str) -> str:
        """A whole value read otherwise than its characters (`4.111e3` is "4111" to JavaScript):
        `reading` is scanned in the stream; none of its characters is released before all are.
        Only where no escape is pending (then the value is text continuing it: use feed)."""
        if self._tail:
            raise ValueError("a value cannot start inside a pending escape")
        piece = self._take(text)
        piece.reading = reading
        base = piece.raw_start
        self._mark(self._decoded, base, flat=True)
        self._decoded += len(reading)
        self._mark(self._decoded, base + len(text))
        out = self.inner.feed(reading)
        self._sync()
        return out

    def flush(self) -> str:
        self._after(None, True)
        self.inner.add(self._decode("", True))
        out = self.inner.flush()
        self._sync()
        return out

    def _sync(self) -> None:
        # Edits stay in decoded offsets (edited() rebuilds events from them).
        self.edits = self.inner.edits
        keep = bisect.bisect_right(self._marks_d, self.inner.released_chars) - 1
        if keep > 0:
            del self._marks_d[:keep], self._marks_r[:keep], self._flat[:keep]

    def forget_edits_before(self, offset: int) -> None:
        if not self.inner.edits:
            return
        dec: int | None = self.inner.released_chars
        if offset < self.released_chars:
            # The first event still waiting (those before it were rebuilt and dropped).
            dec = next((p.dec_start for p in self._pieces if p.raw_start >= offset), None)
        if dec is None:
            return
        self.inner.forget_edits_before(dec)
        self.edits = self.inner.edits

    def edited(self, start: int, end: int, text: str) -> str:
        """One event's data (raw stream characters [start, end)), rebuilt with the decided
        redactions that touch it. Events are rebuilt once each, in order."""
        while self._pieces and self._pieces[0].raw_start < start:
            self._pieces.popleft()
        if not self._pieces or self._pieces[0].raw_start != start:
            raise ValueError("an event of the data stream is rebuilt out of order")
        p = self._pieces.popleft()
        if p.reading is not None:
            n = len(p.reading)
            if not any(e > p.dec_start and s < p.dec_start + n for s, e, _rep in self.inner.edits):
                return text
            return apply_edits(self.inner.edits, p.dec_start, p.dec_start + n, p.reading)
        bound = p.dec_start + len(p.before) + len(text) + 1
        if not text or not any(ed[1] > p.dec_start and ed[0] <= bound for ed in self.inner.edits):
            return text
        out, _d, _inside = self._rebuild(p.before + text + p.after, len(p.before), len(p.before) + len(text),
                                         p.dec_start, p.inside, p.final, p.value)
        return out

    def _rebuild(self, raw: str, skip: int, stop: int, d: int, inside: bool, final: bool,
                 value: bool) -> tuple[str, int, bool]:
        """raw[skip:stop] with the decided redactions applied (raw begins at decoded offset `d`,
        in string state `inside`): quotes and, outside strings, a JSON value's structure kept, the
        other characters of a finding removed, its replacement (JSON-escaped) where it begins.
        Returns the text, the decoded offset and the string state at `stop` (when it is the end of
        a segment)."""
        rel = [ed for ed in self.inner.edits if ed[1] > d]
        out: list[str] = []
        k, cover = 0, -1
        segments, state = data_segments(raw, final, inside, value)
        for kind, a, b, ch, inside in segments:
            if a >= stop:
                break
            if kind == "quote":
                out.append(raw[a:b])
                continue
            lit = kind == "lit"
            x0 = x = d
            y = d + (len(ch) if lit else 1)
            while x < y:
                while k < len(rel) and rel[k][0] <= x:
                    s, e, rep = rel[k]
                    at = a + (s - x0) if lit else a
                    if s == x and skip <= at < stop:
                        out.append(_json_escaped(rep))
                    cover = max(cover, e)
                    k += 1
                nxt = min(y, cover) if x < cover else min(y, rel[k][0]) if k < len(rel) else y
                ra, rb = (a + x - x0, a + nxt - x0) if lit else (a, b)
                ra, rb = max(ra, skip), min(rb, stop)
                if ra < rb:
                    kept = raw[ra:rb]
                    if x < cover:      # removed, but for the structure of a JSON value around strings
                        kept = "" if inside else "".join(c for c in kept if c in JSON_PUNCT)
                    out.append(kept)
                x = nxt
            d = y
            if kind == "pending":
                break
        return "".join(out), d, state


class JsonTextBody:
    """A body of no known framing (plain text, an error page, a JSON string served as text/plain)
    read as a JsonDataGate reads data: the SDKs hand an error body's text to json.loads whatever
    its content type (`"Bad request: 4\\u0031..."` is a card to them), a person reads the text.
    Released as the gate decides it, the raw text rebuilt with the redactions (byte for byte when
    nothing matched). Holds the raw text not yet released (bounded like the gate's hold)."""

    def __init__(self, policy: ScanPolicy, ledger: Ledger, where: str, *, values: bool = False) -> None:
        self.gate = JsonDataGate(policy, ledger, where, pieces=False)
        self.values = values       # JSON values one after another: their structure is no text
        self._buf: list[str] = []  # raw text from the last release point on (joined when released)
        self._out_raw = 0          # raw offset of the last release point
        self._out_dec = 0          # decoded offset there
        self._inside = False       # string state there

    def feed(self, text: str, final: bool) -> str:
        if text:
            self._buf.append(text)
        self.gate.feed(text, value=self.values)
        if final:
            self.gate.flush()
        upto = self.gate.released_chars
        if upto <= self._out_raw:
            return ""
        n = upto - self._out_raw
        buf = "".join(self._buf)
        # The release point is where a decoded character begins (never inside an escape): the
        # slice is read whole, as the gate read it.
        out, self._out_dec, self._inside = self.gate._rebuild(buf[:n], 0, n, self._out_dec,
                                                              self._inside, True, self.values)
        self._buf = [buf[n:]] if len(buf) > n else []
        self._out_raw = upto
        self.gate.inner.forget_edits_before(self._out_dec)
        self.gate.edits = self.gate.inner.edits
        return out
