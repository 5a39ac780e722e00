"""Shared fixtures for the response-inspection tests: provider wire formats, a strict SSE parser,
a chunked feeder and per-format text extraction (what an SDK would assemble). No tests here."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable

from ext_proc.classify import Classifier
from ext_proc.streaming import Release, ResponseInspector, ResponseRules

CLF = Classifier()
KEY = b"k" * 32
RULES = ResponseRules(redact={"pii.email": "mask", "secret.private_key": "mask"},
                      block=frozenset({"pci.card_number", "secret.aws_access_key"}))
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"


def pieces(text: str, n: int = 3) -> list[str]:
    return [text[i:i + n] for i in range(0, len(text), n)]


def sse(events: Iterable[tuple[str | None, object]], nl: bytes = b"\n") -> bytes:
    out = []
    for name, data in events:
        payload = data if isinstance(data, bytes) else json.dumps(data).encode()
        out.append((b"event: " + name.encode() + nl if name else b"") + b"data: " + payload + nl + nl)
    return b"".join(out)


def openai_chat(parts: list[str], *, tool_args: list[str] | None = None, usage=True, nl=b"\n") -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    evs = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    evs += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in parts]
    if tool_args is not None:
        evs.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": ""}}]}, "finish_reason": None}]})
        evs += [{**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": a}}]},
                 "finish_reason": None}]} for a in tool_args]
    evs.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_args else "stop"}]})
    if usage:
        evs.append({**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}})
    return sse([(None, e) for e in evs], nl) + b"data: [DONE]" + nl + nl


def anthropic(parts: list[str], *, json_parts: list[str] | None = None) -> bytes:
    evs = [("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"})]
    evs += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": p}}) for p in parts]
    evs.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if json_parts is not None:
        evs.append(("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}}))
        evs += [("content_block_delta", {"type": "content_block_delta", "index": 1,
                                         "delta": {"type": "input_json_delta", "partial_json": p}}) for p in json_parts]
        evs.append(("content_block_stop", {"type": "content_block_stop", "index": 1}))
    evs += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 9}}),
            ("message_stop", {"type": "message_stop"})]
    return sse(evs)


def responses(parts: list[str]) -> bytes:
    full = "".join(parts)
    seq = iter(range(10_000))
    resp = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": "m", "output": []}
    item = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": full, "annotations": []}]}
    evs = [("response.created", {"type": "response.created", "sequence_number": next(seq), "response": resp}),
           ("response.output_item.added", {"type": "response.output_item.added", "sequence_number": next(seq),
            "output_index": 0, "item": {**item, "status": "in_progress", "content": []}}),
           ("response.content_part.added", {"type": "response.content_part.added", "sequence_number": next(seq),
            "item_id": "msg_1", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}})]
    evs += [("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": next(seq),
             "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": p, "logprobs": []}) for p in parts]
    evs += [("response.output_text.done", {"type": "response.output_text.done", "sequence_number": next(seq),
             "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": full, "logprobs": []}),
            ("response.content_part.done", {"type": "response.content_part.done", "sequence_number": next(seq),
             "item_id": "msg_1", "output_index": 0, "content_index": 0,
             "part": {"type": "output_text", "text": full, "annotations": []}}),
            ("response.output_item.done", {"type": "response.output_item.done", "sequence_number": next(seq),
             "output_index": 0, "item": item}),
            ("response.completed", {"type": "response.completed", "sequence_number": next(seq), "response": {
                **resp, "status": "completed", "output": [item],
                "usage": {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}}})]
    return sse(evs)


def gemini(parts: list[str], nl=b"\r\n") -> bytes:
    evs = [{"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 4}, "modelVersion": "g"} for p in parts]
    evs[-1]["candidates"][0]["finishReason"] = "STOP"
    evs[-1]["usageMetadata"] = {"promptTokenCount": 4, "candidatesTokenCount": 9}
    return sse([(None, e) for e in evs], nl)


def parse_sse_strict(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per event; raises on anything malformed. Normalizes line endings first."""
    text = body.decode("utf-8")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    assert text.endswith("\n\n") or not text, "the stream must end at an event boundary"
    out = []
    for block in text.split("\n\n")[:-1]:
        name, data = None, []
        for line in block.split("\n"):
            assert line, "empty line inside an event"
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            else:
                assert field == "" or field in ("id", "retry"), f"unknown field {field!r}"
        if data:
            payload = "\n".join(data)
            if payload != "[DONE]":
                json.loads(payload)
            out.append((name, payload))
    return out


def assembled(body: bytes) -> dict[str, str]:
    """Per content stream, the text an SDK would assemble from the released stream."""
    got: dict[str, str] = {}

    def add(k: str, t: str | None) -> None:
        if t:
            got[k] = got.get(k, "") + t
    for _name, data in parse_sse_strict(body):
        if data == "[DONE]":
            continue
        ev = json.loads(data)
        for ch in ev.get("choices") or []:
            d = ch.get("delta") or {}
            add("content", d.get("content"))
            for tc in d.get("tool_calls") or []:
                add(f"tool{tc.get('index')}", (tc.get("function") or {}).get("arguments"))
        t = ev.get("type")
        if t == "content_block_delta":
            d = ev["delta"]
            add(f"block{ev['index']}", d.get("text") or d.get("partial_json"))
        if t == "response.output_text.delta":
            add("content", ev["delta"])
        for c in ev.get("candidates") or []:
            for p in c["content"]["parts"]:
                add("content", p.get("text"))
    return got


def inspector(surface: str = "openai.chat_completions", *, ctype: str | None = "text/event-stream",
              enc: str | None = None, rules: ResponseRules = RULES, status: int = 200, **kw) -> ResponseInspector:
    return ResponseInspector(surface, status=status, content_type=ctype, content_encoding=enc, classifier=CLF,
                             rules=rules, hash_key=KEY, tenant="t", **kw)


def feed_all(ins: ResponseInspector, body: bytes, cuts: Iterable[int]) -> list[Release]:
    bounds = sorted(set(c for c in cuts if 0 < c < len(body))) + [len(body)]
    out, prev = [], 0
    for c in bounds:
        out += ins.feed(body[prev:c], c == len(body))
        prev = c
    assert out and out[-1].end_of_stream, "the last release must end the stream"
    assert not any(r.end_of_stream for r in out[:-1]), "only the last release may end the stream"
    assert ins.finished and ins.feed(b"", True) == [] and ins.feed(body[-5:], True) == []
    released = b"".join(r.body for r in out)
    assert ins.outcome()["response_sha256"] == hashlib.sha256(released).hexdigest()
    return out


def run(body: bytes, cuts: Iterable[int] = (), surface: str = "openai.chat_completions", **kw) -> tuple[bytes, ResponseInspector]:
    ins = inspector(surface, **kw)
    out = feed_all(ins, body, cuts)
    return b"".join(r.body for r in out), ins


def random_cuts(n: int, seed: int, count: int = 25) -> list[list[int]]:
    rnd = random.Random(seed)
    return [[rnd.randrange(1, max(2, n)) for _ in range(rnd.randrange(1, 60))] for _ in range(count)]
