"""Request inspection cost: the whole pure request decision (parse, inspect every string, classify,
policy, redact, record) on representative chat bodies, in milliseconds (median of many runs).

    python tests/bench/bench_inspect.py [OUT.json]

Runs against whatever `ext_proc` sits two folders up, so the same file measures two checkouts
side by side (before/after a change) in the same minutes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from faker import Faker  # noqa: E402

from ext_proc.classify import Classifier  # noqa: E402
from ext_proc.identity import Identity  # noqa: E402
from ext_proc.pipeline.request import RequestHead, decide_request  # noqa: E402
from ext_proc.policy import load_policy  # noqa: E402
from ext_proc.providers import match_surface  # noqa: E402


def bodies() -> dict[str, bytes]:
    fake = Faker("en_US")
    fake.seed_instance(7)
    para = lambda n: " ".join(fake.paragraph(nb_sentences=5) for _ in range(n))  # noqa: E731
    one = para(40)[:10_000]
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": para(2)[:500]} for i in range(20)]
    hits = " ".join(f"mail {fake.email()} call {fake.phone_number()} ok" for _ in range(60))[:5_000]
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "description": fake.sentence(),
              "parameters": {"type": "object", "properties": {f"field_{j}": {"type": "string", "description": fake.sentence()}
                                                              for j in range(8)}}}} for i in range(10)]
    return {
        "1 message, 10 KB clean": json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": one}]}).encode(),
        "20 turns x 500 B": json.dumps({"model": "gpt-4o-mini", "messages": turns}).encode(),
        "5 KB with PII (redact)": json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": hits}]}).encode(),
        "10 tools x 8 fields + prompt": json.dumps({"model": "gpt-4o-mini", "tools": tools,
                                                    "messages": [{"role": "user", "content": para(3)}]}).encode(),
    }


def main() -> None:
    policy = load_policy(ROOT / "policies" / "default.yaml")
    classifier = Classifier()
    ident = Identity(subject="alice", issuer="dev", auth_method="jwt", roles=("developer",), groups=(),
                     tenant="acme", scopes=(), actor=(), credential_id="c", expires_at=None)
    head = RequestHead(request_id="r", method="POST", path="/v1/chat/completions", headers={}, attributes={},
                       received_ms=0, surface=match_surface("POST", "/v1/chat/completions"))
    out = {}
    for name, body in bodies().items():
        times = []
        for _ in range(200):
            t = time.perf_counter()
            decide_request(head, ident, body, policy=policy, classifier=classifier, hash_key=b"k" * 32,
                           now_ms=1, max_body_bytes=4 << 20)
            times.append((time.perf_counter() - t) * 1000)
        out[name] = round(statistics.median(times), 3)
        print(f"{name:32s} {out[name]:8.3f} ms   ({len(body)} bytes)")
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
