"""Added CPU of response inspection for a 200-event SSE stream, one upstream chunk per event.

    .venv/bin/python tests/bench/bench_streaming.py [--repeat 30]

Per case: the median CPU per feed() call (one event), the final feed (end of stream: flush and
last scan of everything still held), and the total per stream, as the median over the repeats.
CPU time of this process (time.process_time_ns is too coarse on some kernels, so
perf_counter_ns on an otherwise idle interpreter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ext_proc.classify import Classifier  # noqa: E402
from ext_proc.streaming import ResponseInspector, ResponseRules  # noqa: E402

RULES = ResponseRules(redact={"pii.email": "mask"}, block=frozenset({"pci.card_number"}))
WORDS = ("the model streams a fairly ordinary answer with some numbers 42 and words, "
         "nothing that looks like a secret at all. ")


def openai_events(n: int, sensitive: bool) -> list[bytes]:
    text = (WORDS * 40)[:n * 4]
    if sensitive:
        text = text[:300] + " mail jane.doe@example.com " + text[300:]
    deltas = [text[i:i + 4] for i in range(0, len(text), 4)][:n - 2]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    evs = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    evs += [{**base, "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]} for d in deltas]
    evs += [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in evs] + [b"data: [DONE]\n\n"]


def anthropic_events(n: int, sensitive: bool) -> list[bytes]:
    text = (WORDS * 40)[:n * 4]
    if sensitive:
        text = text[:300] + " mail jane.doe@example.com " + text[300:]
    deltas = [text[i:i + 4] for i in range(0, len(text), 4)][:n - 4]
    evs = [("message_start", {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
            "content": [], "model": "c", "usage": {"input_tokens": 5, "output_tokens": 1}}}),
           ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    evs += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": d}}) for d in deltas]
    evs += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_stop", {"type": "message_stop"})]
    return [f"event: {n_}\ndata: {json.dumps(d)}\n\n".encode() for n_, d in evs]


def measure(clf: Classifier, surface: str, events: list[bytes], hold: int | None, repeat: int) -> dict:
    per_event, finals, totals = [], [], []
    for _ in range(repeat):
        ins = ResponseInspector(surface, status=200, content_type="text/event-stream", content_encoding=None,
                                classifier=clf, rules=RULES, hash_key=b"k" * 32, tenant="t", hold_chars=hold)
        total = 0
        for i, ev in enumerate(events):
            last = i == len(events) - 1
            t0 = time.perf_counter_ns()
            ins.feed(ev, last)
            dt = time.perf_counter_ns() - t0
            total += dt
            (finals if last else per_event).append(dt)
        ins.outcome()
        totals.append(total)
    return {"events": len(events), "median_us_per_event": statistics.median(per_event) / 1000,
            "p99_us_per_event": sorted(per_event)[int(len(per_event) * 0.99)] / 1000,
            "final_feed_us": statistics.median(finals) / 1000, "total_ms_per_stream": statistics.median(totals) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    clf = Classifier()
    print(f"classifier max_match_chars (default hold-back per stream) = {clf.max_match_chars}")
    print(f"{'case':58} {'events':>6} {'med us/ev':>9} {'p99 us/ev':>9} {'final us':>9} {'total ms':>9}")
    for surface, make in (("openai.chat_completions", openai_events), ("anthropic.messages", anthropic_events)):
        for sensitive in (False, True):
            for hold in (None, 64):
                r = measure(clf, surface, make(200, sensitive), hold, args.repeat)
                name = f"{surface} {'email' if sensitive else 'clean'} hold={hold or clf.max_match_chars}"
                print(f"{name:58} {r['events']:>6} {r['median_us_per_event']:>9.1f} {r['p99_us_per_event']:>9.1f} "
                      f"{r['final_feed_us']:>9.1f} {r['total_ms_per_stream']:>9.2f}")


if __name__ == "__main__":
    main()
