"""Differential check for performance work: the pure request decision over a deterministic corpus,
one SHA-256 per decision (the whole decision record as canonical JSON, the forwarded body, the
status and code, the findings per segment), printed with a digest over all of them.

    python tests/bench/diff_decisions.py OUT.txt        # in each checkout, then: cmp A.txt B.txt

With `--json OUT.jsonl` it also writes each decision whole (status, code, the body in and out, the
record, the budget, the envelope edits) for tests/bench/explain_decisions.py, which sorts the
changed records into classes and checks that no forwarded body is less redacted; `--policy FILE`
(repeatable) decides under those policies instead of the two below (the digests then differ).

Runs against whatever `ext_proc` sits two folders up. The corpus: every secret of the leak tests
(tests/unit/test_request_leaks.py) in every string, key and object of every surface's body, split
at several points across every pair of neighbouring texts; every sample of the classifier's
labelled corpus (tests/classify_corpus) as one message, split over two and three turns, and as a
tool's field; the leak tests' hostile shapes; the bench bodies. Under the default policy and the
bank example (different redaction strategies: hash, partial). Decision ids are made deterministic.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ext_proc.audit.canonical import canonical_json  # noqa: E402
from ext_proc.classify import Classifier  # noqa: E402
from ext_proc.identity import Identity  # noqa: E402
from ext_proc.pipeline.budget import BudgetedClassifier  # noqa: E402
from ext_proc.pipeline.request import RequestHead, decide_request  # noqa: E402
from ext_proc.policy import load_policy  # noqa: E402
from ext_proc.providers import match_surface  # noqa: E402
from tests.classify_corpus.generate import build_corpus  # noqa: E402
from tests.unit.test_request_leaks import BODIES, SECRETS, _adjacent_text_pairs, _get, _places  # noqa: E402


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def cases():
    """(path, body bytes) in a fixed order."""
    for path in sorted(BODIES):
        base = BODIES[path]
        places = list(_places(base))
        for name in sorted(SECRETS):
            written, _ = SECRETS[name]
            for kind, where in places:
                body = json.loads(json.dumps(base))
                if kind == "string":
                    _set(body, where, _get(body, where) + " " + written) if where else None
                else:
                    _get(body, where)[written] = "x"            # as a key
                    _get(body, where)["note"] = "see " + written  # and as a value next to it
                yield path, json.dumps(body, ensure_ascii=False).encode()
            for a, b in _adjacent_text_pairs(base):
                for cut in (1, len(written) // 2, len(written) - 1):
                    body = json.loads(json.dumps(base))
                    _set(body, a, _get(body, a) + " " + written[:cut])
                    _set(body, b, written[cut:] + " " + _get(body, b))
                    yield path, json.dumps(body, ensure_ascii=False).encode()
    corpus = build_corpus()
    for s in corpus:
        t = s.text
        yield "/v1/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": t}]}, ensure_ascii=False).encode()
        cut = len(t) // 2
        yield "/v1/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": t[:cut]}, {"role": "assistant", "content": t[cut:]}]},
            ensure_ascii=False).encode()
        yield "/v1/messages", json.dumps({"model": "claude-3-5-haiku-latest", "max_tokens": 9, "messages": [
            {"role": "user", "content": [{"type": "text", "text": t[:cut // 2]}, {"type": "text", "text": t[cut // 2:cut]},
                                         {"type": "text", "text": t[cut:]}]}]}, ensure_ascii=False).encode()
        yield "/v1/chat/completions", json.dumps({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {
                "name": "f", "description": "d", "parameters": {"type": "object", "properties": {
                    "q": {"type": "string", "description": t}}}}}]}, ensure_ascii=False).encode()
    for a, b in itertools.islice(zip(corpus, corpus[1:]), 0, None, 7):
        yield "/v1/responses", json.dumps({"model": "gpt-4o-mini", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": a.text}, {"type": "input_text", "text": b.text}]}]},
            ensure_ascii=False).encode()
    from tests.bench.bench_e2e import chat_body
    from tests.bench.bench_inspect import bodies
    yield "/v1/chat/completions", chat_body(False)
    yield "/v1/chat/completions", chat_body(True)
    for body in bodies().values():
        yield "/v1/chat/completions", body
    import tests.unit.test_request_leaks as leaks
    for mark in getattr(leaks.test_hostile_document_shapes_are_bounded_and_never_skip_inspection, "pytestmark", []):
        if mark.name == "parametrize":
            for _name, body, _status in mark.args[1]:
                yield "/v1/chat/completions", json.dumps(body).encode()


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--policy", action="append", default=[])
    args = ap.parse_args()
    counter = itertools.count()
    policies = ([load_policy(Path(p)) for p in args.policy] if args.policy else
                [load_policy(ROOT / "policies" / "default.yaml"), load_policy(ROOT / "policies" / "examples" / "bank.yaml")])
    dump = open(args.json_out, "w") if args.json_out else None  # noqa: SIM115 - closed below
    classifiers = [Classifier(p.dictionaries) for p in policies]
    ident = Identity(subject="alice", issuer="dev", auth_method="jwt", roles=("developer",), groups=("eng",),
                     tenant="acme", scopes=(), actor=(), credential_id="c", expires_at=None)
    lines = []
    total = hashlib.sha256()
    for n, (path, body) in enumerate(cases()):
        head = RequestHead(request_id=f"r{n}", method="POST", path=path, headers={}, attributes={},
                           received_ms=1000, surface=match_surface("POST", path))
        for policy, classifier in zip(policies, classifiers, strict=True):
            budget = BudgetedClassifier(classifier)
            try:
                v = decide_request(head, ident, body, policy=policy, classifier=budget, hash_key=b"k" * 32,
                                   now_ms=2000, max_body_bytes=4 << 20)
                rec_dict = v.record.to_dict()
                rec_dict["decision_id"] = f"{next(counter):032x}"   # ids are random: numbered instead
                rec = canonical_json(rec_dict)
                out = b"|".join([rec, v.new_body or b"-", str(v.status).encode(), str(v.code).encode(),
                                 json.dumps(budget.to_record(), sort_keys=True).encode(),
                                 json.dumps(sorted(v.envelope_redacted.items())).encode()])
                row = {"status": v.status, "code": v.code, "record": json.loads(rec),
                       "body_out": None if v.new_body is None else v.new_body.decode("utf-8", "replace"),
                       "budget": budget.to_record(), "envelope": sorted(v.envelope_redacted.items())}
            except Exception as exc:  # noqa: BLE001 - an exception is an outcome to compare too
                out = f"exception {type(exc).__name__}: {exc}".encode()
                row = {"exception": f"{type(exc).__name__}: {exc}"}
            if dump is not None:
                row.update(n=n, path=path, policy=policy.id, body_in=body.decode("utf-8", "replace"))
                dump.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            digest = hashlib.sha256(out).hexdigest()
            total.update(digest.encode())
            lines.append(f"{n} {path} {policy.id} {digest}")
    lines.append(f"records {len(lines)} digest {total.hexdigest()}")
    text = "\n".join(lines) + "\n"
    if dump is not None:
        dump.close()
    if args.out:
        Path(args.out).write_text(text)
    print(lines[-1])


if __name__ == "__main__":
    main()
