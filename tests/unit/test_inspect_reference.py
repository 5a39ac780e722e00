"""classify_document against its straightforward form (the one before issue 23's performance work:
a new Finding for every logical finding and every part, records from Finding.to_record), over a
sample of the differential corpus of tests/bench/diff_decisions.py: the findings per segment, the
logical findings, their spans and the record entries must be equal, and in the same order."""

from __future__ import annotations

import itertools

from ext_proc.classify import Classifier, Finding
from ext_proc.pipeline.inspect import DocumentFindings, classify_document, scan_value
from ext_proc.providers import match_surface
from ext_proc.providers.adapters import parse_request
from ext_proc.providers.body import BadRequestBody
from ext_proc.providers.document import Document, View, read_document
from tests.bench.diff_decisions import cases

CLASSIFIER = Classifier()


def reference(classifier: Classifier, doc: Document) -> DocumentFindings:
    result = DocumentFindings()
    seen: set = set()

    def take(view: View, findings: list[Finding]) -> None:
        for f in findings:
            parts = tuple(view.pieces(f.start, f.end))
            if not parts or (f.label, parts) in seen:
                continue
            seen.add((f.label, parts))
            result.spans.append((f.label, f.confidence, parts))
            _seg0, s0, e0 = parts[0]
            result.logical.append(Finding(f.label, s0, e0, f.confidence, f.validator))
            for seg, s, e in parts:
                result.per_segment.setdefault(seg, []).append(Finding(f.label, s, e, f.confidence, f.validator))

    for view in doc.reading_views(edge=classifier.max_match_chars):
        take(view, scan_value(classifier, view))
    fields = doc.field_view()
    take(fields, scan_value(classifier, fields))
    for i, seg in enumerate(doc.segments):
        if seg.kind in ("attachment", "route"):
            piece = View(seg.text, [0], [i], [len(seg.text)])
            take(piece, scan_value(classifier, piece))
    for findings in result.per_segment.values():
        findings.sort(key=lambda f: (f.start, f.end, f.label))
    return result


def reference_records(found: DocumentFindings) -> list[dict]:
    out = []
    for f, (_label, _conf, parts) in zip(found.logical, found.spans, strict=False):
        rec = f.to_record()
        rec["segment"], rec["start"], rec["end"] = parts[0]
        if len(parts) > 1:
            rec["parts"] = [{"segment": s, "start": a, "end": b} for s, a, b in parts]
        out.append(rec)
    return out


def test_classify_document_matches_its_straightforward_form_on_the_differential_corpus():
    compared = with_parts = 0
    for path, body in itertools.islice(cases(), 0, None, 9):
        surface = match_surface("POST", path)
        try:   # a body refused with 400 (too large, too many strings) has no document to compare
            parsed = parse_request(surface, body, max_bytes=4 << 20)
            doc = read_document(parsed, {"model": surface.model_from_path} if surface.model_from_path else {})
        except BadRequestBody:
            continue
        got, want = classify_document(CLASSIFIER, doc, parsed.body), reference(CLASSIFIER, doc)
        assert got.per_segment == want.per_segment, path
        assert got.logical == want.logical and got.spans == want.spans, path
        records = got.records()
        assert records == reference_records(want), path
        assert [list(r) for r in records] == [list(r) for r in reference_records(want)]   # key order too
        compared += 1
        with_parts += any(len(parts) > 1 for _l, _c, parts in got.spans)
    assert compared > 500 and with_parts > 20   # the sample holds findings split across segments
