"""Classifier latency: ledgergate (RE2 Set prefilter) vs the same rules in stdlib `re` vs
presidio's pattern recognizers (if `presidio_analyzer` is importable).

    python tests/bench/bench_classify.py [OUT.json]

Prints a table of medians (ms) and writes JSON to OUT.json, or to stdout when no path is given.
The stdlib `re` run is a reference only, on trusted benchmark text (never do this on traffic).
Targets (issue 4): 50 KB clean <= 0.5 ms, 10 KB with hits <= 2 ms.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faker import Faker  # noqa: E402

from ext_proc.classify import Classifier  # noqa: E402
from ext_proc.classify.normalize import normalize  # noqa: E402
from ext_proc.classify.rules import builtin_rules  # noqa: E402

SIZES = {"1KB": 1_024, "10KB": 10_240, "50KB": 51_200}
TARGETS_MS = {("clean", "50KB"): 0.5, ("hits", "10KB"): 2.0}


def make_text(kind: str, size: int, seed: int = 7) -> str:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    parts: list[str] = []
    n = 0
    while n < size:
        if kind == "clean":
            s = fake.paragraph(nb_sentences=4) + "\n"
        else:  # roughly one finding per 100 characters
            s = rng.choice([
                f"Contact {fake.email()} or call {fake.numerify('(###) 555-####').replace('(0', '(2').replace('(1', '(3')}. ",
                f"Card {fake.credit_card_number('visa16')} SSN {fake.ssn()}. ",
                f"Server {fake.ipv4()} IBAN {fake.iban()}. ",
                f"key AKIA{''.join(rng.choice('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567') for _ in range(16))} ",
                fake.sentence() + " ",
            ])
        parts.append(s)
        n += len(s)
    return "".join(parts)[:size]


def median_ms(fn, text: str, min_runs: int = 30, budget_s: float = 1.0) -> float:
    fn(text)                                   # warm
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or (time.perf_counter() - start < budget_s and len(samples) < 2000):
        t0 = time.perf_counter()
        fn(text)
        samples.append((time.perf_counter() - t0) * 1000)
        if len(samples) >= min_runs and time.perf_counter() - start > budget_s * 5:
            break
    return statistics.median(samples)


def stdlib_reference():
    """The same patterns and checks, every rule run with stdlib `re` and no prefilter."""
    rules = builtin_rules()
    compiled = [(re.compile(r.pattern.encode()), r) for r in rules]

    def scan(text: str) -> int:
        data = normalize(text).data
        n = 0
        for rx, rule in compiled:
            g = 1 if rx.groups else 0
            for m in rx.finditer(data):
                s, e = m.span(g)
                if s < e:
                    n += len(rule.check(data, s, e))
        return n
    return scan


def presidio_reference():
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    try:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    except Exception:                                              # noqa: BLE001
        return None

    class NoOpNlpEngine(NlpEngine):           # pattern recognizers only, no spaCy model
        def load(self): pass
        def is_loaded(self): return True
        def process_text(self, text, language):
            return NlpArtifacts(entities=[], tokens=[], tokens_indices=[], lemmas=[],
                                nlp_engine=self, language=language)
        def process_batch(self, texts, language, **kw):
            for t in texts:
                yield t, self.process_text(t, language)
        def is_stopword(self, word, language): return False
        def is_punct(self, word, language): return False
        def get_supported_entities(self): return []
        def get_supported_languages(self): return ["en"]

    try:
        engine = AnalyzerEngine(nlp_engine=NoOpNlpEngine(), supported_languages=["en"])
    except Exception:                                              # noqa: BLE001
        return None
    return lambda text: len(engine.analyze(text=text, language="en"))


def main(argv: list[str]) -> int:
    clf = Classifier()
    engines = {"ledgergate": lambda t: len(clf.scan(t)), "stdlib_re": stdlib_reference()}
    presidio = presidio_reference()
    if presidio is not None:
        engines["presidio"] = presidio
    rows = []
    for kind in ("clean", "hits"):
        for size_name, size in SIZES.items():
            text = make_text(kind, size)
            findings = len(clf.scan(text))
            row = {"text": kind, "size": size_name, "chars": len(text), "findings": findings}
            for name, fn in engines.items():
                budget = 0.5 if name != "ledgergate" else 1.0
                row[f"{name}_ms"] = round(median_ms(fn, text, min_runs=5 if name != "ledgergate" else 30,
                                                    budget_s=budget), 4)
            target = TARGETS_MS.get((kind, size_name))
            row["target_ms"] = target
            row["meets_target"] = None if target is None else row["ledgergate_ms"] <= target
            rows.append(row)
    result = {"python": platform.python_version(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "engines": list(engines), "rows": rows}
    cols = ["text", "size", "findings"] + [f"{n}_ms" for n in engines] + ["target_ms", "meets_target"]
    print(" | ".join(f"{c:>14}" for c in cols), file=sys.stderr if len(argv) == 0 else sys.stdout)
    for r in rows:
        print(" | ".join(f"{str(r.get(c)):>14}" for c in cols), file=sys.stderr if len(argv) == 0 else sys.stdout)
    if argv:
        Path(argv[0]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
