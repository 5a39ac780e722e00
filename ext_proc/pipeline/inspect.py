"""Classify a request document the way it will be read: the reading view joined (with and without
the provider's separator), every other string, key and number in one field view, attachments and
route text each on their own. Findings come back per segment, ready for redaction, and as logical
findings (one per value, however many fields it spans) for the policy's counts.

Sans-I/O. Texts longer than the classifier's limit are scanned in overlapping windows, so a long
conversation is never refused for length alone; the request's byte budget is enforced before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ext_proc.classify import Classifier, Finding, summarize
from ext_proc.providers.document import Document, View


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
            rec = f.to_record()
            rec["segment"], rec["start"], rec["end"] = parts[0]
            if len(parts) > 1:
                rec["parts"] = [{"segment": s, "start": a, "end": b} for s, a, b in parts]
            out.append(rec)
        return out


def scan_long(classifier: Classifier, text: str) -> list[Finding]:
    """classifier.scan over any length: windows of the classifier's limit overlapping by the
    longest possible finding, so every finding lies whole in some window."""
    limit = classifier.max_input_chars
    if len(text) <= limit:
        return classifier.scan(text)
    overlap = min(classifier.max_match_chars, limit // 2)
    step = limit - overlap
    seen: set[tuple[str, int, int]] = set()
    out: list[Finding] = []
    for base in range(0, len(text), step):
        for f in classifier.scan(text[base:base + limit]):
            g = Finding(f.label, f.start + base, f.end + base, f.confidence, f.validator)
            if (g.label, g.start, g.end) not in seen:
                seen.add((g.label, g.start, g.end))
                out.append(g)
        if base + limit >= len(text):
            break
    out.sort(key=lambda f: (f.start, f.end, f.label))
    return out


def classify_document(classifier: Classifier, doc: Document, body: object) -> DocumentFindings:
    result = DocumentFindings()
    seen: set[tuple[str, tuple[tuple[int, int, int], ...]]] = set()

    def take(view: View, findings: list[Finding]) -> None:
        for f in findings:
            parts = tuple(view.pieces(f.start, f.end))
            if not parts or (f.label, parts) in seen:
                continue                      # glue only (JSON punctuation), or already found
            seen.add((f.label, parts))
            result.spans.append((f.label, f.confidence, parts))
            seg0, s0, e0 = parts[0]
            result.logical.append(Finding(f.label, s0, e0, f.confidence, f.validator))
            for seg, s, e in parts:
                result.per_segment.setdefault(seg, []).append(
                    Finding(f.label, s, e, f.confidence, f.validator))

    for view in doc.reading_views(edge=classifier.max_match_chars):
        take(view, scan_long(classifier, view.text))
    fields = doc.field_view()
    take(fields, scan_long(classifier, fields.text))
    for i, seg in enumerate(doc.segments):
        if seg.kind in ("attachment", "route"):
            view = View(seg.text, [0], [i], [len(seg.text)])
            take(view, scan_long(classifier, seg.text))
    for findings in result.per_segment.values():
        findings.sort(key=lambda f: (f.start, f.end, f.label))
    return result
