"""Classify a request document the way it will be read: the reading view joined (with and without
the provider's separator), every other string, key and number in one field view, attachments and
route text each on their own. Findings come back per segment, ready for redaction, and as logical
findings (one per value, however many fields it spans) for the policy's counts.

Every view is read a second time with its encoded runs decoded (percent-encoding, HTML references,
literal escapes; base64 and hex that decode to text: classify/decode.py, scan_decoded).

Sans-I/O. Texts longer than the classifier's limit are scanned in overlapping windows, so a long
conversation is never refused for length alone; the request's byte budget is enforced before.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ext_proc.classify import NUMBER_MIN_CONFIDENCE, Finding, Scanner, summarize
from ext_proc.classify.decode import DecodedText, Decoder, may_join
from ext_proc.classify.extent import whole_secrets
from ext_proc.classify.rules import CONTEXT_AFTER, CONTEXT_BEFORE
from ext_proc.providers.body import JSON_STEP
from ext_proc.providers.document import NUMBER_KINDS, Document, View


@dataclass
class DocumentFindings:
    per_segment: dict[int, list[Finding]] = field(default_factory=dict)
    logical: list[Finding] = field(default_factory=list)     # one per value, for counts
    spans: list[tuple[str, int, tuple[tuple[int, int, int], ...]]] = field(default_factory=list)

    def summary(self, unscanned: dict[str, int], extra: Sequence[Finding] = ()) -> dict[str, dict[str, Any]]:
        """Counts per label: one per value (however many fields it spans), EXTRA findings made
        elsewhere (header and query values), and the content that could not be inspected."""
        out = summarize(self.logical + list(extra))
        for label, count in unscanned.items():
            out[label] = {"count": count, "max_confidence": 100}
        return {k: out[k] for k in sorted(out)}

    def records(self) -> list[dict[str, Any]]:
        """What the decision record keeps: label, confidence and where (segment and offsets);
        a value spanning several fields is one finding with several parts."""
        out = []
        for f, (_label, _conf, parts) in zip(self.logical, self.spans, strict=False):
            seg, start, end = parts[0]
            # Finding.to_record's keys, in its order, then the segment (the logical finding's
            # start and end are its first part's).
            rec = {"label": f.label, "start": start, "end": end, "confidence": f.confidence,
                   "validator": f.validator, "segment": seg}
            if len(parts) > 1:
                rec["parts"] = [{"segment": s, "start": a, "end": b} for s, a, b in parts]
            out.append(rec)
        return out


# How far past its start a secret's value is followed when the classifier's match stops short of
# it (classify/extent.py): the response side's default bound on a finding still growing.
SECRET_EXTENT_CHARS = 60_000


def scan_value(classifier: Scanner, view: View) -> list[Finding]:
    """scan_long over a view, each secret covering its whole value (a JWT or key block longer than
    its rule's longest match): the model reads all of it, so redaction must remove all of it. A
    value goes on within its own text only, never into the next one a joined view glues to it."""
    starts, lengths = view.starts, view.lengths

    def piece_end(pos: int) -> int:
        i = bisect_right(starts, pos) - 1
        return starts[i] + lengths[i] if i >= 0 and pos < starts[i] + lengths[i] else pos

    return whole_secrets(view.text, scan_long(classifier, view.text, view.fences), limit=SECRET_EXTENT_CHARS,
                         value_end=piece_end)


def scan_whole(classifier: Scanner, text: str) -> list[Finding]:
    """classifier.scan over one text read on its own (a forwarded header's or a query
    parameter's value), each secret covering its whole value as in the body (scan_value)."""
    return whole_secrets(text, classifier.scan(text), limit=SECRET_EXTENT_CHARS)


def scan_long(classifier: Scanner, text: str, fences: Sequence[int] | None = None) -> list[Finding]:
    """classifier.scan over any length: windows of the classifier's limit overlapping by the
    longest possible finding, so every finding lies whole in some window. FENCES (View.fences):
    where the text's fields begin, each window given its own."""
    limit = classifier.max_input_chars
    if len(text) <= limit:
        return classifier.scan(text, fences=fences) if fences else classifier.scan(text)
    overlap = min(classifier.max_match_chars, limit // 2)
    step = limit - overlap
    seen: set[tuple[str, int, int]] = set()
    out: list[Finding] = []
    for base in range(0, len(text), step):
        window = text[base:base + limit]
        inside = [f - base for f in fences[bisect_left(fences, base):bisect_left(fences, base + limit)]] \
            if fences else None
        for f in (classifier.scan(window, fences=inside) if inside else classifier.scan(window)):
            g = Finding(f.label, f.start + base, f.end + base, f.confidence, f.validator)
            if (g.label, g.start, g.end) not in seen:
                seen.add((g.label, g.start, g.end))
                out.append(g)
        if base + limit >= len(text):
            break
    out.sort(key=lambda f: (f.start, f.end, f.label))
    return out


# What a reading of an object's fields glued together may find: values that check themselves
# (a Luhn sum, the SSN rules, mod-97, a key's prefix and entropy) or are delimited by their own
# syntax (an address, a JWT, a key block, a deployer's dictionary term), at or above the numbers'
# floor. Not readings that take their context from the text around them or from line structure:
# glued fields make both up (a timestamp's `:40Z` run into the next values reads as a .pgpass
# line; `99` `1300` `2024` as a bare 10-digit phone; `phone_ext` beside a number as a phone word).
JOINED_VALIDATORS = frozenset({"luhn", "ssn_rules", "mod97", "entropy"})
JOINED_LABELS = frozenset({"pii.email", "secret.jwt", "secret.private_key"})


def joined_finding(f: Finding) -> bool:
    return f.confidence >= NUMBER_MIN_CONFIDENCE and (
        f.validator in JOINED_VALIDATORS or f.label in JOINED_LABELS or f.label.startswith("custom."))


def narrow(classifier: Scanner, view: View, f: Finding) -> Finding:
    """F, found in a view that glues unrelated texts (an object's fields), without the texts at
    either end it does not need: an e-mail's local part or a key's run of letters would otherwise
    take in the neighbouring values (``"gpt-4o-mini"`` before ``"jane.doe"``, ``"@example.com"``)
    and mask them too. The first piece is dropped while the rest, read alone, still holds a finding
    of the label reaching into the last piece; then the last while the rest still holds one from
    the new start. Binary searches over the pieces, each read at most the finding's length:
    O(log pieces) short scans, for findings that span pieces only."""
    starts, lengths = view.starts, view.lengths
    first = max(0, bisect_right(starts, f.start) - 1)
    last = bisect_right(starts, f.end - 1) - 1
    if last <= first or f.end - f.start > classifier.max_input_chars:
        return f
    text, label = view.text, f.label

    def found(a: int, b: int, tail: bool) -> Finding | None:
        for g in classifier.scan(text[a:b]):
            if g.label == label and (g.end + a > starts[last] if tail else g.start + a == start):
                return Finding(label, g.start + a, g.end + a, g.confidence, g.validator)
        return None

    lo, hi, best = first + 1, last, None          # the latest piece the finding may start at
    while lo <= hi:
        mid = (lo + hi) // 2
        g = found(starts[mid], f.end, True)
        if g is not None:
            best, lo = g, mid + 1
        else:
            hi = mid - 1
    start = best.start if best is not None else f.start
    # The earliest piece it may end at, read from the start of the piece it starts in (a rule's
    # context, `password=`, stays in front of the value).
    lo, hi, best = first if best is None else lo - 1, last - 1, None
    head = starts[lo]
    while lo <= hi:
        mid = (lo + hi) // 2
        g = found(head, starts[mid] + lengths[mid], False)
        if g is not None:
            best, hi = g, mid - 1
        else:
            lo = mid + 1
    end = best.end if best is not None else f.end
    if (start, end) == (f.start, f.end):
        return f
    return Finding(label, start, end, f.confidence, f.validator)


def scan_decoded(classifier: Scanner, view: View, dec: DecodedText) -> list[tuple[Finding, int, int]]:
    """The findings of VIEW's decoded text (classify/decode.py) that read a decoded piece, in the
    value or in the context words around it, in the raw view's offsets, each covering every
    encoded run it touches whole (a mask of part of a base64 run or of `jane.doe%40example.com`
    would leave a readable rest), with the raw span of the value itself (without the rest of its
    runs). Findings reading base64 or hex count only when confident (NUMBER_MIN_CONFIDENCE):
    decoded noise is read as hints.

    Only the decoded text around the pieces is classified: a finding reading a piece, and the
    context words the rules read around it, lie within max_match_chars + 2 * CONTEXT_BEFORE."""
    text = dec.text
    reach = classifier.max_match_chars + 2 * CONTEXT_BEFORE
    windows: list[list[int]] = []
    for p in dec.pieces:
        a, b = max(0, p.start - reach), min(len(text), p.end + reach)
        if windows and a <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], b)
        else:
            windows.append([a, b])
    found: list[Finding] = []
    for a, b in windows:
        for f in scan_long(classifier, text[a:b]):
            found.append(Finding(f.label, f.start + a, f.end + a, f.confidence, f.validator) if a else f)
    starts, lengths = view.starts, view.lengths

    def piece_end(pos: int) -> int:          # as in scan_value, through the raw view
        raw = dec.raw_start(pos)
        i = bisect_right(starts, raw) - 1
        return dec.decoded_at(starts[i] + lengths[i]) if i >= 0 and raw < starts[i] + lengths[i] else pos

    def piece_at(raw: int) -> tuple[int, int]:
        i = max(0, bisect_right(starts, raw) - 1)
        return (starts[i], starts[i] + lengths[i]) if starts else (raw, raw)

    out = []
    for f in whole_secrets(text, found, limit=SECRET_EXTENT_CHARS, value_end=piece_end):
        # A finding reads decoded text when it holds some, or when its context does (a key name
        # written `p&#97;ssword=`): otherwise it is the raw text's own, which the raw scan has.
        near = dec.touched(f.start - CONTEXT_BEFORE, f.end + CONTEXT_AFTER)
        if not near or f.confidence < NUMBER_MIN_CONFIDENCE and any(p.ambiguous for p in near):
            continue                          # the raw text's own finding, or a decoded hint
        touched = dec.touched(f.start, f.end)
        s, e = dec.raw_start(f.start), dec.raw_end(f.end)
        whole_s, whole_e = s, e
        for p in touched:
            # The run, within the texts its escapes are in: a view that glues texts without a
            # space does not make the next text part of the run.
            lo, hi = piece_at(p.raw_start)[0], piece_at(p.raw_end - 1)[1]
            whole_s, whole_e = min(whole_s, max(p.run_start, lo)), max(whole_e, min(p.run_end, hi))
        out.append((Finding(f.label, whole_s, whole_e, f.confidence, f.validator), s, e))
    return out


def _cover_index(findings: list[Finding]) -> dict[str, tuple[list[int], list[int]]]:
    """Per label, and under "secret." for every secret: starts in order and the furthest end so far."""
    index: dict[str, tuple[list[int], list[int]]] = {}
    for f in sorted(findings, key=lambda f: f.start):
        for key in (f.label, "secret.") if f.label.startswith("secret.") else (f.label,):
            starts, ends = index.setdefault(key, ([], []))
            starts.append(f.start)
            ends.append(max(f.end, ends[-1]) if ends else f.end)
    return index


def _covers(index: dict[str, tuple[list[int], list[int]]], label: str, start: int, end: int) -> bool:
    for key in (label, "secret."):
        if key in index:
            starts, ends = index[key]
            k = bisect_right(starts, start) - 1
            if k >= 0 and ends[k] >= end:
                return True
    return False


def classify_document(classifier: Scanner, doc: Document, body: object) -> DocumentFindings:
    result = DocumentFindings()
    seen: set[tuple[str, tuple[tuple[int, int, int], ...]]] = set()

    spans, logical, per_segment = result.spans, result.logical, result.per_segment
    # A JSON number (or an array's numbers) has no context of its own: a hint below the floor
    # that lies only in numbers (a `seed` or timestamp that is a Luhn-valid NPI at 40) is not a
    # finding of them, so a typed field is not turned into a string the provider refuses. A
    # confident reading (a card at 85, an NPI its key names: `"npi": 1234567893` at 90) is, and
    # so is any finding that reaches into another string: the model reads the two as one value.
    # A string that is itself JSON (tool-call arguments, a tool result) is read whole too, and its
    # strings, keys and numbers each again (providers/document.py): a hint in the whole is left
    # to that second reading, which finds it again in a string and not in a number, and keeps
    # the string JSON (a mask written into the whole would break `"seed": 1764480004`).
    # Worked out at the first hint (most documents have none).
    numbers: frozenset[int] | None = None

    def numbers_only() -> frozenset[int]:
        segs = doc.segments
        holders = {seg.path[:k] for seg in segs if JSON_STEP in seg.path
                   for k, step in enumerate(seg.path) if step is JSON_STEP}
        return frozenset(i for i, seg in enumerate(segs)
                         if seg.kind in NUMBER_KINDS or seg.kind in ("text", "value") and seg.path in holders)

    def covered(label: str, parts: tuple[tuple[int, int, int], ...]) -> bool:
        """Every part already inside a finding of LABEL (a generic secret: of any secret label,
        the key its issuer's rule read, as the classifier keeps one of the two)."""
        generic = label == "secret.generic"
        return all(any((g.label == label or generic and g.label.startswith("secret."))
                       and g.start <= s and e <= g.end for g in per_segment.get(seg, ()))
                   for seg, s, e in parts)

    def take(view: View, findings: list[Finding], joined_only: bool = False) -> None:
        nonlocal numbers
        pieces = view.pieces
        single = len(view.starts) == 1     # one mapped piece (a lone reading string, a route)
        if single:
            ps, pl, seg1 = view.starts[0], view.lengths[0], view.segments[0]
            off = view.offsets[0] - ps if view.offsets is not None else -ps
        parts: tuple[tuple[int, int, int], ...]
        for f in findings:
            label = f.label
            if single:                         # View.pieces for one piece, without the call
                s, e = max(f.start, ps), min(f.end, ps + pl)
                parts = ((seg1, s + off, e + off),) if s < e else ()
            else:
                parts = tuple(pieces(f.start, f.end))
            if not parts or (label, parts) in seen:
                continue                      # glue only (JSON punctuation), or already found
            if joined_only and (not joined_finding(f) or covered(label, parts)):
                continue                      # glue-made, or every piece already found
            if f.confidence < NUMBER_MIN_CONFIDENCE:
                if numbers is None:
                    numbers = numbers_only()
                if all(p[0] in numbers for p in parts):
                    continue                  # a hint in numbers (or JSON read again) only
            seen.add((label, parts))
            spans.append((label, f.confidence, parts))
            # Findings are immutable: one already at a part's offsets is that part's finding.
            seg0, s0, e0 = parts[0]
            first = f if s0 == f.start and e0 == f.end else Finding(label, s0, e0, f.confidence, f.validator)
            logical.append(first)
            if len(parts) == 1:
                per_segment.setdefault(seg0, []).append(first)
                continue
            for seg, s, e in parts:
                per_segment.setdefault(seg, []).append(
                    first if s == s0 and e == e0 else Finding(label, s, e, f.confidence, f.validator))

    reading = doc.reading_views(edge=classifier.max_match_chars)
    views = [*reading, doc.field_view(), *doc.array_views(edge=classifier.max_match_chars)]
    views += [View(seg.text, [0], [i], [len(seg.text)]) for i, seg in enumerate(doc.segments)
              if seg.kind in ("attachment", "route")]
    for view in views:
        take(view, scan_value(classifier, view))
    for view in doc.object_views(edge=classifier.max_match_chars):
        take(view, [narrow(classifier, view, f) for f in scan_value(classifier, view) if joined_finding(f)],
             joined_only=True)

    # Each view again with its encoded runs decoded (classify/decode.py): a value written
    # `jane.doe%40example.com`, `4111&#32;1111...`, `\u0040` or in base64 or hex is read by the
    # model through the encoding. Not decoded: numbers, a string that is itself JSON (its strings
    # are read again on their own, escapes decoded), and, as base64 again, a payload the walk
    # decoded. A decoded finding whose value lies inside a raw finding of its label (a password
    # with `%2F` in it, a SAS signature) or of a secret (a JWT's base64 payload) adds nothing:
    # the raw one masks it already.
    decoder = Decoder()
    skip: tuple[frozenset[int], set[int]] | None = None
    raw_found: dict[int, list[Finding]] | None = None
    cover: dict[int, dict[str, tuple[list[int], list[int]]]] = {}

    def not_decoded() -> tuple[frozenset[int], set[int]]:
        segs = doc.segments
        holders = {seg.path[:k] for seg in segs if JSON_STEP in seg.path
                   for k, step in enumerate(seg.path) if step is JSON_STEP}
        return (frozenset(i for i, seg in enumerate(segs)
                          if seg.kind in NUMBER_KINDS or seg.kind in ("text", "value") and seg.path in holders),
                doc.payload_values)

    def new(label: str, parts: list[tuple[int, int, int]]) -> bool:
        assert raw_found is not None
        for seg, s, e in parts:
            if seg not in cover:
                cover[seg] = _cover_index(raw_found.get(seg, []))
            if not _covers(cover[seg], label, s, e):
                return True
        return False

    def joins(view: View) -> bool:
        """Whether two texts the view glues with nothing between them may hold a run across."""
        text, starts, lengths = view.text, view.starts, view.lengths
        for i in range(len(starts) - 1):
            end = starts[i] + lengths[i]
            if end == starts[i + 1] and may_join(text[max(starts[i], end - 40):end], text[end:end + 20]):
                return True
        return False

    whole_decoded = False    # the reading view (each text whole) held a decoded run
    for n, view in enumerate(views):
        # The reading view glued three ways holds the runs of the view with each text whole,
        # and runs across a join: read again only when either may be there.
        if 0 < n < len(reading) and not whole_decoded and not joins(view):
            continue

        def allow(s: int, e: int, ambiguous: bool, view: View = view) -> bool:
            nonlocal skip
            if skip is None:
                skip = not_decoded()
            no, payloads = skip
            parts = view.pieces(s, e)
            return bool(parts) and all(p[0] not in no and not (ambiguous and p[0] in payloads) for p in parts)

        dec = decoder.decode(view.text, allow)
        if dec is None:
            continue
        whole_decoded = whole_decoded or n == 0
        decoded = scan_decoded(classifier, view, dec)
        if decoded:
            if raw_found is None:
                raw_found = {seg: list(fs) for seg, fs in per_segment.items()}
            take(view, [f for f, s, e in decoded if new(f.label, view.pieces(s, e))])
    for findings in result.per_segment.values():
        findings.sort(key=lambda f: (f.start, f.end, f.label))
    return result
