"""Measure the object views' findings on the classifier's corpus (docs/classification.md, "Objects"):
each sample's words as the fields of a tool result object ({"w0": word, ...}) and as one field
across an array's objects ([{"t": word}, ...]); the labels found only with the object views,
split into those the sample holds (a value the words split) and those it does not.

    python tests/bench/object_views_fp.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import collections
import json

from ext_proc.pipeline.inspect import classify_document
from ext_proc.providers import match_surface, parse_request
from ext_proc.providers.document import read_document
from tests.classify_corpus.generate import build_corpus
from tests.unit.test_pipeline import CLASSIFIER

surface = match_surface("POST", "/v1/chat/completions")
new_by: collections.Counter = collections.Counter()
n: collections.Counter = collections.Counter()
split_found: collections.Counter = collections.Counter()
for s in build_corpus():
    words = s.text.split()
    if len(words) < 2:
        continue
    for shape in ("object", "siblings"):
        result = {f"w{i}": w for i, w in enumerate(words)} if shape == "object" else [{"t": w} for w in words]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"result": result})}]}
        parsed = parse_request(surface, json.dumps(body).encode())
        recs = []
        for joined in (True, False):
            doc = read_document(parsed)
            if not joined:
                doc.object_groups = []
            recs.append({(r["label"]) for r in classify_document(CLASSIFIER, doc, parsed.body).records()})
        n[(s.kind, shape)] += 1
        extra = recs[0] - recs[1]
        expected = {lab for lab, *_ in s.spans}
        for lab in extra:
            if lab in expected:
                split_found[(s.kind, shape)] += 1
            else:
                new_by[(s.kind, shape, lab)] += 1
print("samples", dict(n))
print("labels found only with object views, expected in the sample (a value split by the words):", dict(split_found))
print("labels found only with object views, NOT expected in the sample:", dict(new_by))
