"""The classifier: normalize, ask one ``re2.Set`` which rules can hit, extract with those rules
only, validate, map offsets back to the original text, resolve overlaps.

Everything that touches the (untrusted) text is RE2 (linear time) or bounded plain string code.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import re2

from ext_proc.classify.normalize import ORIGINAL_SPAN_FACTOR, NormalizedText, fold_plain, normalize
from ext_proc.classify.prefix import PrefixHold
from ext_proc.classify.rules import CONTEXT_AFTER, ContextCheck, Hit, Rule, builtin_rules
from ext_proc.classify.taxonomy import CUSTOM_PREFIX

MAX_CUSTOM_TERMS = 10_000
MAX_TERM_CHARS = 200
_CUSTOM_GAP = r"\s{1,4}"          # whitespace between words of a term (normalized text)
_CUSTOM_GAP_MAX = 4
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# Findings below this confidence are hints only context would confirm (a bare 10-digit NPI or
# phone at 40; docs/classification.md). A JSON number has no context of its own: a finding that
# lies only in numbers and is below this floor is not a finding of them, on the request side
# (pipeline/inspect.py) and the response side (streaming/inspector.py) alike.
NUMBER_MIN_CONFIDENCE = 50

GENERIC_LABEL = "secret.generic"
SECRET_PREFIX = "secret."
# The characters that end a generic secret's value: what rules.GENERIC's value class leaves out,
# and what classify/extent.py's GENERIC_VALUE_CHAR, which follows a value past its match, leaves
# out too (a test holds the three together). ASCII only: normalization leaves these as they are, so
# the value the extent reads (normalized) ends at or before one of them.
GENERIC_VALUE_STOPS = " \t\n\r\"'`,;<>(){}[]"


@dataclass(frozen=True, slots=True)
class Finding:
    label: str
    start: int
    end: int
    confidence: int
    validator: str | None

    def to_record(self) -> dict[str, Any]:
        """What may go into an audit record: where and what kind, never the value."""
        return {"label": self.label, "start": self.start, "end": self.end,
                "confidence": self.confidence, "validator": self.validator}


class InputTooLarge(ValueError):
    """The text is longer than the classifier accepts; the message has sizes only."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"input of {size} characters exceeds the classifier limit of {limit} characters")
        self.size = size
        self.limit = limit


class InspectionBudgetExceeded(InputTooLarge):
    """The request's inspection budget (text bytes or candidates validated) is spent; the message
    has counts only. A subclass of InputTooLarge: the pipeline answers both with a 413."""

    def __init__(self, what: str, limit: int) -> None:
        ValueError.__init__(self, f"the request needs more than {limit} {what} of inspection "
                                  "(the per-request inspection budget)")
        self.size = limit + 1
        self.limit = limit


def summarize(findings: Sequence[Finding]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in findings:
        s = out.get(f.label)
        if s is None:
            out[f.label] = {"count": 1, "max_confidence": f.confidence}
        else:
            s["count"] += 1
            if f.confidence > s["max_confidence"]:
                s["max_confidence"] = f.confidence
    return {k: out[k] for k in sorted(out)}


def _spaced_word_char(ch: str) -> bool:
    # Letters and digits of scripts written with spaces between words. CJK, kana and the like
    # (from U+2E80) have no word boundaries to require.
    return ch.isalnum() and ord(ch) < 0x2E80


def _char_before(data: bytes, i: int) -> str:
    j = i - 1
    while j > 0 and 0x80 <= data[j] <= 0xBF and i - j < 4:
        j -= 1
    return data[j:i].decode("utf-8", "replace") if i > 0 else ""


def _char_at(data: bytes, i: int) -> str:
    j = i + 1
    while j < len(data) and 0x80 <= data[j] <= 0xBF and j - i < 4:
        j += 1
    return data[i:j].decode("utf-8", "replace") if i < len(data) else ""


def _check_custom(data: bytes, s: int, e: int) -> list[Hit]:
    first, last = _char_at(data, s), _char_before(data, e)
    if _spaced_word_char(first) and _spaced_word_char(_char_before(data, s)):
        return []
    if _spaced_word_char(last) and _spaced_word_char(_char_at(data, e)):
        return []
    return [(s, e, 90, None)]


def _custom_rule(name: str, terms: Sequence[str]) -> Rule:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise ValueError("custom dictionary names are 1-64 characters of a-z, 0-9, '_' or '-'")
    if isinstance(terms, (str, bytes)):
        raise ValueError(f"custom dictionary {name!r} must be a list of terms")
    cleaned: set[str] = set()
    for term in terms:
        if not isinstance(term, str):
            raise ValueError(f"custom dictionary {name!r} holds a term that is not a string")
        words = fold_plain(term).split()
        if not words:
            continue
        if len(term) > MAX_TERM_CHARS:
            raise ValueError(f"custom dictionary {name!r} holds a term longer than {MAX_TERM_CHARS} characters")
        cleaned.add(" ".join(words))
    if not cleaned:
        raise ValueError(f"custom dictionary {name!r} has no terms")
    ordered = sorted(cleaned, key=lambda t: (-len(t), t))   # longest first: leftmost-first picks it
    alts = [_CUSTOM_GAP.join(re2.escape(w) for w in t.split(" ")) for t in ordered]
    pattern = "(?i:" + "|".join(alts) + ")"
    longest = max(len(t) + t.count(" ") * (_CUSTOM_GAP_MAX - 1) for t in ordered)
    # Case folding can change lengths (e.g. "ß" vs "SS"): leave room for it.
    return Rule(CUSTOM_PREFIX + name, pattern, pattern, 2 * longest, _check_custom)


class Scanner(Protocol):
    """What the request pipeline reads of a classifier: a Classifier, or a BudgetedClassifier
    (pipeline/budget.py) that counts each scan against one request's inspection budget."""

    @property
    def max_input_chars(self) -> int: ...

    @property
    def max_match_chars(self) -> int: ...

    def scan(self, text: str, *, use_prefilter: bool = True, budget: Any = None,
             fences: Sequence[int] | None = None) -> list[Finding]: ...


class Classifier:
    """Compiled once (warm at start-up), then ``scan`` is pure and thread-safe."""

    def __init__(self, custom_terms: Mapping[str, Sequence[str]] | None = None, *,
                 max_input_chars: int = 1_048_576) -> None:
        if not isinstance(max_input_chars, int) or max_input_chars <= 0:
            raise ValueError("max_input_chars must be a positive integer")
        rules = list(builtin_rules())
        total_terms = 0
        for name, terms in sorted((custom_terms or {}).items()):
            total_terms += len(terms)
            if total_terms > MAX_CUSTOM_TERMS:
                raise ValueError(f"more than {MAX_CUSTOM_TERMS} custom dictionary terms")
            rules.append(_custom_rule(name, terms))
        self._rules: tuple[Rule, ...] = tuple(rules)
        self.max_input_chars = max_input_chars
        self.labels: frozenset[str] = frozenset(r.label for r in rules)
        self.max_match_chars: int = ORIGINAL_SPAN_FACTOR * max(r.max_chars for r in rules)

        opts = re2.Options()
        opts.max_mem = 256 << 20
        opts.log_errors = False
        self._compiled = tuple(re2.compile(r.pattern, opts) for r in rules)
        self._groups = tuple(1 if rx.groups else 0 for rx in self._compiled)
        # The checks that read context words, called with the bounds of a fenced region.
        self._context_checks: tuple[ContextCheck | None, ...] = tuple(
            cast(ContextCheck, r.check) if r.reads_context else None for r in rules)
        self._spans = tuple(_fast_spans(rx, g) for rx, g in zip(self._compiled, self._groups, strict=True))
        prefilter = re2.Set.SearchSet(opts)
        for r in rules:
            prefilter.Add(r.prefilter)
        # Always matches at the end of the text. If it is missing from a Set answer, the Set's DFA
        # gave up (out of memory) and said nothing: then every rule runs instead (fail closed).
        self._sentinel = prefilter.Add(r"\z")
        prefilter.Compile()
        self._prefilter = prefilter
        self._all = tuple(range(len(rules)))
        # For streamed text: how much of an end could still become a finding (see prefix.py).
        self.prefix_hold = PrefixHold([r.pattern for r in rules], max_chars=self.max_match_chars,
                                      after=CONTEXT_AFTER)
        self.scan("warm up: 4111 1111 1111 1111 a@b.co 10.0.0.1 AKIA eyJ sk- -----BEGIN")

    def rules_hit(self, data: bytes) -> tuple[int, ...]:
        """Indices of the rules the prefilter says may match (all of them if it failed)."""
        hits = self._prefilter.Match(data)
        if not hits or self._sentinel not in hits:
            return self._all
        return tuple(i for i in hits if i != self._sentinel)

    def scan(self, text: str, *, use_prefilter: bool = True, budget: Any = None,
             fences: Sequence[int] | None = None) -> list[Finding]:
        """`budget`, when given, has an int `candidates_left`: the candidates (pattern matches
        handed to a rule's check) this scan may still validate, shared by all scans of one
        request; it is decremented, and InspectionBudgetExceeded raised when it runs out. The
        checks are Python, so this bounds a request's CPU time on text made of near-misses.

        `fences`, when given: increasing offsets into `text` where a region of its own begins
        (a field of a document view, providers/document.py). Context words for a candidate are
        read within the regions it lies in, never across a fence: what a value means is said in
        its own field, not in the neighbouring field's name. Matching itself is not fenced (a
        value split across fields is still found)."""
        if not isinstance(text, str):
            raise TypeError("scan() takes a str")
        if len(text) > self.max_input_chars:
            raise InputTooLarge(len(text), self.max_input_chars)
        if not text:
            return []
        norm = normalize(text)
        data = norm.data
        indices = self.rules_hit(data) if use_prefilter else self._all
        raw: list[tuple[int, int, int, str | None, int]] = []
        left = budget.candidates_left if budget is not None else -1
        walls = _byte_fences(norm, fences) if fences else None
        for i in indices:
            check = self._rules[i].check
            in_region = self._context_checks[i] if walls is not None else None
            covered = 0       # a check may widen a hit (a PEM block): skip matches inside it
            for bs, be in self._spans[i](data):
                if bs < be and bs >= covered:
                    if budget is not None:
                        left -= 1
                        if left < 0:
                            raise InspectionBudgetExceeded(
                                "candidate matches", getattr(budget, "candidates_limit", budget.candidates_left))
                    if in_region is not None and walls is not None:
                        k = bisect_right(walls, bs) - 1            # the region bs lies in
                        j = bisect_left(walls, be)                 # the first fence at or after be
                        hits = in_region(data, bs, be, walls[k] if k >= 0 else 0,
                                         walls[j] if j < len(walls) else len(data))
                    else:
                        hits = check(data, bs, be)
                    for s, e, conf, validator in hits:
                        raw.append((s, e, conf, validator, i))
                        covered = max(covered, e)
        if budget is not None:
            budget.candidates_left = left
        if not raw:
            return []
        rules = self._rules
        candidates: list[tuple[int, int, int, str | None, str]] = []
        if norm.identity and norm.ascii:      # the common case: offsets are the original's
            for bs, be, conf, validator, i in raw:
                rule = rules[i]
                candidates.append((bs, min(be, bs + rule.max_chars), conf, validator, rule.label))
        else:
            to_char = norm.char_offsets([o for h in raw for o in (h[0], h[1])])
            for bs, be, conf, validator, i in raw:
                cs, ce = to_char[bs], to_char[be]
                rule = rules[i]
                if ce - cs > rule.max_chars:  # cannot happen for the rules as tested; keep the bound
                    ce = cs + rule.max_chars
                os_, oe = norm.original_span(cs, ce)
                candidates.append((os_, oe, conf, validator, rule.label))
        return _drop_covered_generics(_resolve_overlaps(candidates, len(text)), text)


def _byte_fences(norm: NormalizedText, fences: Sequence[int]) -> list[int]:
    """Fences (offsets into the original text, increasing) as offsets into the normalized bytes
    the checks read. Linear: one pass over the text for all of them."""
    if norm.identity and norm.ascii:
        return list(fences)
    text = norm.text
    out: list[int] = []
    chars = bytes_at = 0
    for f in fences:
        c = norm.normalized_at(f)
        if c < chars:                # a fence inside dropped characters maps where the last did
            c = chars
        bytes_at += len(text[chars:c].encode("utf-8", "surrogatepass"))
        chars = c
        out.append(bytes_at)
    return out


def _fast_spans(rx: Any, group: int) -> Callable[[bytes], Iterator[tuple[int, int]]]:
    """Spans of successive non-overlapping matches in bytes, through google-re2's pybind object
    (the public finditer builds a match object per hit, a third of scan time on dense text).
    Falls back to the public API if the binding's internals are not what this expects."""
    inner = getattr(rx, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    if inner is None or anchor is None or not hasattr(inner, "Match"):
        return lambda data: (m.span(group) for m in rx.finditer(data))

    def spans(data: bytes) -> Iterator[tuple[int, int]]:
        pos, end = 0, len(data)
        while pos <= end:
            found = inner.Match(anchor, data, pos, end)
            whole = found[0]
            if whole[0] < 0:
                return
            yield found[group]
            pos = whole[1] if whole[1] > pos else pos + 1
    return spans


def _resolve_overlaps(candidates: list[tuple[int, int, int, str | None, str]],
                      text_len: int) -> list[Finding]:
    """Every label's findings stand, even where they overlap another label's (a card inside an
    e-mail address, a key inside an IBAN, an e-mail inside a password assignment): the policy sees
    all labels and redaction masks the union of their spans (but for a generic reading of a key
    that its specific finding stands for: _drop_covered_generics, after this). Within one label,
    a position belongs to one finding, chosen greedily by (confidence, length)."""
    if len(candidates) == 1:
        s, e, conf, validator, label = candidates[0]
        return [Finding(label, s, e, conf, validator)]
    by_label: dict[str, list[tuple[int, int, int, str | None, str]]] = {}
    for c in candidates:
        by_label.setdefault(c[4], []).append(c)
    kept: list[Finding] = []
    for label, group in by_label.items():
        if len(group) == 1:
            s, e, conf, validator, _ = group[0]
            kept.append(Finding(label, s, e, conf, validator))
            continue
        group.sort(key=lambda c: (-c[2], c[0] - c[1], c[0]))
        taken = bytearray(text_len)
        for s, e, conf, validator, _ in group:
            if taken.find(1, s, e) != -1:
                continue
            taken[s:e] = b"\x01" * (e - s)
            kept.append(Finding(label, s, e, conf, validator))
    kept.sort(key=lambda f: (f.start, f.end, f.label))
    return kept


class _FirstStop:
    """The first character of GENERIC_VALUE_STOPS in text[lo:hi], for `lo` asked in increasing
    order. Linear however many findings ask: what was searched is remembered (a `lo` before the
    stop last found gets that stop), and a search reads in doubling steps, so it reads at most
    about twice as far as the stop it finds, which a later search starts after."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lo = self.hi = self.at = -1     # text[lo:hi] searched; its first stop at `at` (or -1)

    def find(self, lo: int, hi: int) -> int:
        if self.at != -1 and self.lo <= lo <= self.at:
            return self.at if self.at < hi else -1
        if self.at == -1 and self.lo <= lo <= self.hi:
            if hi <= self.hi:
                return -1
            start = self.hi
        else:
            self.lo = start = lo
        found, step = -1, 64
        while found == -1 and start < hi:
            end = min(hi, start + step)
            for ch in GENERIC_VALUE_STOPS:
                i = self.text.find(ch, start, end)
                if i != -1 and (found == -1 or i < found):
                    found = i
            start, step = end, 2 * step
        self.hi, self.at = hi, found
        return found


def _drop_covered_generics(findings: list[Finding], text: str) -> list[Finding]:
    """A generic secret (a `password=`/`token:` assignment, a Bearer or Basic credential, a .netrc
    or .pgpass entry) whose value a specific secret finding (a GitHub token, an AWS key, a URL's
    password, an issuer's key...) already names is one secret, reported once, under the specific
    label. The generic finding is dropped only when the specific one stands for it in everything
    downstream reads:
    - it covers the generic finding (starts at or before it, ends at or after it);
    - the generic value, followed past its match as classify/extent.py follows it (over the
      generic value class, wider than a token's characters: "%2F", ":" or "!"), ends inside the
      specific finding: a character of GENERIC_VALUE_STOPS follows at or before the specific
      finding's end. A generic value that runs on to the end of the text is kept (more of it may
      come in a stream), as is one cut at its rule's length inside a longer token.
    - its confidence is at least the generic one's (a policy threshold the generic finding met, the
      specific one meets).
    So redaction masks no less, and a policy on `secret.*` decides as before. A generic finding
    longer than every specific one under it is kept."""
    generics = [f for f in findings if f.label == GENERIC_LABEL]
    if not generics:
        return findings
    specific: dict[str, list[Finding]] = {}
    for f in findings:                   # sorted by start; disjoint within a label
        if f.label.startswith(SECRET_PREFIX) and f.label != GENERIC_LABEL:
            specific.setdefault(f.label, []).append(f)
    if not specific:
        return findings
    starts = {label: [f.start for f in group] for label, group in specific.items()}
    stops = _FirstStop(text)
    drop: set[int] = set()
    for g in sorted(generics, key=lambda f: f.end):
        cover_end = -1
        for label, group in specific.items():
            k = bisect_right(starts[label], g.start) - 1   # the one finding of the label that may hold g
            if k >= 0:
                s = group[k]
                if g.end <= s.end and s.confidence >= g.confidence and s.end > cover_end:
                    cover_end = s.end
        if cover_end != -1 and stops.find(g.end, cover_end + 1) != -1:
            drop.add(id(g))
    if not drop:
        return findings
    return [f for f in findings if id(f) not in drop]
