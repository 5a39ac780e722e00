"""Precision and recall per label on the generated labelled corpus.

A finding counts when its confidence is at least REPORT_CONFIDENCE (findings below it exist, e.g.
a bare 10-digit number as a possible phone, and policies may use them, but they are hints).
A finding is a true positive when it overlaps an expected span of the same label; an expected
span is recalled when some finding of its label overlaps it. Overlapping findings of different
labels all stand (a token in a URL's user part is also an e-mail address; a key in a
`password=` assignment whose value runs to the end of the text is also a generic secret): a
finding on another label's expected span is a co-label, not a false positive, since the characters
it covers are sensitive; co-labels are counted and bounded separately. A false positive is a
finding on no expected span at all. (A generic reading of a key that the key's specific finding
covers, value end included, is dropped by the classifier: classify/engine._drop_covered_generics.)
"""

from __future__ import annotations

import collections

import pytest

from ext_proc.classify import Classifier
from ext_proc.classify.taxonomy import LABELS
from tests.classify_corpus.generate import build_corpus

REPORT_CONFIDENCE = 50
MIN_RECALL = 0.98
MIN_PRECISION = 0.95
# 148 co-labels over 1508 true positives (0.098) since generic readings covered by a specific key
# are dropped (292, 0.194, before); the bound leaves about 10 co-labels of margin.
MAX_CO_LABEL_SHARE = 0.105


@pytest.fixture(scope="module")
def scores():
    c = Classifier()
    tp: collections.Counter = collections.Counter()
    fp: collections.Counter = collections.Counter()
    fn: collections.Counter = collections.Counter()
    expected: collections.Counter = collections.Counter()
    covered = collections.Counter()
    co_labels: collections.Counter = collections.Counter()
    for s in build_corpus():
        found = [f for f in c.scan(s.text) if f.confidence >= REPORT_CONFIDENCE]
        for f in found:
            if any(lab == f.label and f.start < e and st < f.end for lab, st, e in s.spans):
                tp[f.label] += 1
            elif any(f.start < e and st < f.end for _l, st, e in s.spans):
                co_labels[f.label] += 1
            else:
                fp[f.label] += 1
        for lab, st, e in s.spans:
            expected[lab] += 1
            hits = [f for f in found if f.label == lab and f.start < e and st < f.end]
            if not hits:
                fn[lab] += 1
            elif any(f.start <= st and e <= f.end for f in hits):
                covered[lab] += 1
    return tp, fp, fn, expected, covered, co_labels


@pytest.mark.parametrize("label", sorted(LABELS))
def test_precision_and_recall(scores, label):
    tp, fp, fn, expected, covered, _co = scores
    assert expected[label] >= 20, f"corpus has too few {label} samples"
    recall = (expected[label] - fn[label]) / expected[label]
    precision = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
    print(f"{label}: precision={precision:.3f} recall={recall:.3f} n={expected[label]}")
    assert recall >= MIN_RECALL, f"{label} recall {recall:.3f}"
    assert precision >= MIN_PRECISION, f"{label} precision {precision:.3f}"
    # redaction needs the whole value: found spans must cover the expected span
    assert covered[label] >= MIN_RECALL * expected[label]


def test_negatives_mostly_clean(scores):
    tp, fp, *_ = scores
    assert sum(fp.values()) <= 0.02 * (sum(tp.values()) + sum(fp.values()))


def test_co_labels_are_a_minority(scores):
    tp, _fp, _fn, _expected, _covered, co = scores
    print("co-labels:", dict(co))
    assert sum(co.values()) <= MAX_CO_LABEL_SHARE * sum(tp.values())
