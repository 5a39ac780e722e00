"""Property test (seeded random): a secret hidden at a random place of a model's answer, split over
random events and cut into random 1-12 byte chunks, in every response framing and surface the
inspector reads, never reaches the client intact - read the way the SDK reads it (strings joined
across events, tool arguments with their JSON escapes decoded).

Framings: SSE (and SSE served as text/plain, application/octet-stream, application/json, ndjson
or with no content type), AWS event stream, whole JSON, and JSON arrays sent in pieces (Gemini's
streamGenerateContent without alt=sse). Surfaces: OpenAI chat content, refusal, reasoning, tool
arguments (escaped), role and ids; Responses API output text and function-call arguments;
Anthropic text started in content_block_start and continued in deltas, thinking, input_json_delta
(escaped); Gemini parts; Bedrock ConverseStream text and toolUse input (escaped); and long PEM
blocks (an 8,192-bit RSA key, a 4,096-bit key indented 40 spaces).
"""

from __future__ import annotations

import base64
import json
import random
import re

import pytest

from ext_proc.classify import Classifier
from ext_proc.streaming import ResponseInspector, ResponseRules
from ext_proc.wire import eventstream
from ext_proc.wire.eventstream import EventStreamDecoder

CLF = Classifier()
MASK_ALL = ResponseRules(redact={"*": "mask"})
CASES = 12          # random cases per (framing, surface, secret); seeded, so every run is the same

SECRETS = {
    "card": "4111 1111 1111 1111",
    "aws": "AKIAIOSFODNN7QWERTYZ",
    "github": "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A",
    "email": "jane.doe@example.com",
}


def fake_pem(key_bits: int, indent: int = 0, seed: int = 0) -> str:
    """A PEM block of the size of an RSA private key of `key_bits` (random base64 body)."""
    rnd = random.Random(seed)
    body = base64.b64encode(rnd.randbytes(key_bits * 5 // 8 + 100)).decode()
    pad = " " * indent
    lines = [pad + "-----BEGIN RSA PRIVATE KEY-----"]
    lines += [pad + body[i:i + 64] for i in range(0, len(body), 64)]
    lines.append(pad + "-----END RSA PRIVATE KEY-----")
    return "\n".join(lines)


def escaped(text: str, rnd: random.Random) -> str:
    """`text` as JSON string content, some characters written as \\uXXXX escapes."""
    out = []
    for ch in text:
        if ch in '"\\' or ord(ch) < 0x20 or rnd.random() < 0.5:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def split(text: str, rnd: random.Random, most: int = 12) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rnd.randint(1, most)
        out.append(text[i:i + n])
        i += n
    return out


def sse(events: list[dict], names: list[str | None] | None = None, done: bool = False) -> bytes:
    out = b""
    for i, ev in enumerate(events):
        name = names[i] if names else None
        out += (f"event: {name}\n".encode() if name else b"") + b"data: " + json.dumps(ev).encode() + b"\n\n"
    return out + (b"data: [DONE]\n\n" if done else b"")


# --- framings: (surface, content type, body) from the text pieces ----------------------------

FILLER = ["The", " sky", " is", " blue", " and", " the", " sea", " is", " calm"]


def openai_chat(pieces: list[str], field: str) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "system_fingerprint": "fp_1"}
    evs = []
    for i, p in enumerate(pieces):
        lp = None
        if field in ("top_logprobs", "logprob_bytes"):
            # the text is spelled by the second-best alternatives, or by the chosen tokens' bytes,
            # while the chosen tokens say something else
            word = FILLER[i % len(FILLER)]
            alt = {"token": p, "logprob": -2.0, "bytes": list(p.encode())}
            entry = {"token": word, "logprob": -0.1, "bytes": list((p if field == "logprob_bytes" else word).encode()),
                     "top_logprobs": [{"token": word, "logprob": -0.1, "bytes": list(word.encode())}]
                     + ([alt] if field == "top_logprobs" else [])}
            delta, lp = {"content": word}, {"content": [entry], "refusal": None}
        elif field in ("tool_id", "tool_name"):
            # strings the SDK joins though an upstream sends them once
            call: dict = {"index": 0, "id": p, "function": {"arguments": ""}} if field == "tool_id" else \
                {"index": 0, "function": {"name": p}}
            if i == 0:
                call["type"] = "function"
            delta = {"tool_calls": [call]}
        elif field == "arguments":
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
            if i == 0:
                delta["tool_calls"][0].update(id="call_1", type="function")
                delta["tool_calls"][0]["function"]["name"] = "f"
        else:
            delta = {field: p}
        # the choice index as "0" in some events and 0 in others: the SDK reads both as choice 0
        choice = {"index": "0" if i % 2 else 0, "delta": delta, "finish_reason": None}
        if lp is not None:
            choice["logprobs"] = lp
        evs.append({**base, "choices": [choice]})
    evs.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return sse(evs, done=True)


def openai_responses(pieces: list[str], kind: str) -> bytes:
    evs = [{"type": f"response.{kind}.delta", "output_index": 0, "content_index": 0, "item_id": "i",
            "delta": p, "sequence_number": i + 1} for i, p in enumerate(pieces)]
    evs.append({"type": "response.completed", "sequence_number": len(pieces) + 1,
                "response": {"id": "r", "status": "completed", "output": []}})
    return sse(evs, [e["type"] for e in evs])


def anthropic(pieces: list[str], field: str) -> bytes:
    kind = {"text": "text_delta", "thinking": "thinking_delta", "partial_json": "input_json_delta"}[field]
    block = {"text": {"type": "text", "text": pieces[0]}, "thinking": {"type": "thinking", "thinking": pieces[0]},
             "partial_json": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}[field]
    rest = pieces[1:] if field != "partial_json" else pieces
    evs = [{"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "c",
                                                 "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}},
           {"type": "content_block_start", "index": 0, "content_block": block}]
    evs += [{"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: p}} for p in rest]
    evs += [{"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
            {"type": "message_stop"}]
    return sse(evs, [e["type"] for e in evs])


def gemini_events(pieces: list[str]) -> list[dict]:
    evs = [{"candidates": [{"content": {"parts": [{"text": p}], "role": "model"}, "index": 0}]} for p in pieces]
    evs[-1]["candidates"][0]["finishReason"] = "STOP"
    return evs


def gemini_array(pieces: list[str]) -> bytes:
    evs = gemini_events(pieces)
    return ("[" + ",\r\n".join(json.dumps(e) for e in evs) + "]").encode()


def converse(pieces: list[str], field: str) -> bytes:
    def msg(name, payload):
        return eventstream.encode_message({":event-type": name, ":content-type": "application/json",
                                           ":message-type": "event"}, json.dumps(payload).encode())
    out = msg("messageStart", {"role": "assistant"})
    for p in pieces:
        delta = {"text": p} if field == "text" else {"toolUse": {"input": p}}
        out += msg("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta})
    out += msg("contentBlockStop", {"contentBlockIndex": 0}) + msg("messageStop", {"stopReason": "end_turn"})
    return out


def whole_chat(text: str, field: str) -> bytes:
    msg = {"role": "assistant", "content": None}
    if field == "arguments":
        msg["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": text}}]
    else:
        msg["content"] = text
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": msg, "finish_reason": "stop"}]}).encode()


def whole_responses(text: str, field: str) -> bytes:
    if field == "arguments":
        item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": text,
                "status": "completed"}
    else:
        item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
    return json.dumps({"id": "resp_1", "object": "response", "status": "completed", "model": "m",
                       "output": [item]}).encode()


def build(framing: str, secret: str, rnd: random.Random) -> tuple[str, str | None, bytes]:
    json_text = framing.endswith(("arguments", "partial_json", "tool"))
    before = "Sure, here it is: " if not json_text else '{"value": "'
    after = " and that is all." if not json_text else '", "n": 1}'
    hidden = escaped(secret, rnd) if json_text else secret
    text = before + hidden + after
    pieces = split(text, rnd)
    if framing.startswith("chat."):
        return "openai.chat_completions", "text/event-stream", openai_chat(pieces, framing[5:])
    if framing.startswith("sse-as-"):
        ctype = {"none": None}.get(framing[7:], framing[7:].replace("_", "/"))
        return "openai.chat_completions", ctype, openai_chat(pieces, "content")
    if framing.startswith("responses."):
        return "openai.responses", "text/event-stream", openai_responses(pieces, framing[10:])
    if framing.startswith("anthropic."):
        return "anthropic.messages", "text/event-stream", anthropic(pieces, framing[10:])
    if framing == "gemini.sse":
        return "gemini.generate", "text/event-stream", b"".join(
            b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in gemini_events(pieces))
    if framing == "gemini.array":
        return "gemini.generate", "application/json", gemini_array(pieces)
    if framing.startswith("converse."):
        return "bedrock.converse", "application/vnd.amazon.eventstream", converse(pieces, framing[9:])
    if framing.startswith("whole."):
        return "openai.chat_completions", "application/json", whole_chat(text, framing[6:])
    if framing.startswith("whole_responses."):
        return "openai.responses", "application/json", whole_responses(text, framing[16:])
    raise AssertionError(framing)


FRAMINGS = ["chat.content", "chat.refusal", "chat.reasoning_content", "chat.arguments", "chat.role",
            "chat.tool_id", "chat.tool_name", "chat.top_logprobs", "chat.logprob_bytes",
            "sse-as-text_plain", "sse-as-application_octet-stream", "sse-as-application_json",
            "sse-as-application_x-ndjson", "sse-as-none",
            "responses.output_text", "responses.function_call_arguments",
            "anthropic.text", "anthropic.thinking", "anthropic.partial_json",
            "gemini.sse", "gemini.array", "converse.text", "converse.tool", "whole.content", "whole.arguments",
            "whole_responses.output_text", "whole_responses.arguments"]


# --- what the client's SDK reads ---------------------------------------------------------------

def events_of(body: bytes) -> list:
    """Every JSON value the client can parse out of the released body, in order."""
    if body[:4] != b"data" and body[:5] != b"event" and len(body) >= 12 and body[:1] not in (b"[", b"{"):
        dec = EventStreamDecoder(1 << 24)
        return [json.loads(m.payload) for m, _raw in dec.feed(body) if m.payload[:1] == b"{"]
    if body[:1] == b"[":
        try:
            return json.loads(body)
        except ValueError:
            return []
    if body[:1] == b"{":
        try:
            return [json.loads(body)]
        except ValueError:
            pass
    out = []
    for line in re.split(rb"\r\n|\r|\n", body):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data and data != b"[DONE]":
                try:
                    out.append(json.loads(data))
                except ValueError:
                    pass
    return out


def _walk(obj, name=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield "key", k
            yield from _walk(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, name)
    elif isinstance(obj, str):
        yield name, obj


def _unescape(text: str) -> str:
    """JSON string escapes decoded leniently (what json.loads makes of tool arguments)."""
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return re.sub(r'\\(["\\/bfnrt])', lambda m: {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}.get(
        m.group(1), m.group(1)), text)


def logprob_ranks(ev: dict, ranks: dict) -> None:
    """Logprobs joined per rank across positions (tokens and decoded bytes): the chosen tokens,
    the best alternatives, the second-best..."""
    for ch in ev.get("choices") or []:
        for e in ((ch.get("logprobs") or {}).get("content") or []) if isinstance(ch, dict) else []:
            for r, item in [("chosen", e)] + list(enumerate(e.get("top_logprobs") or [])):
                tokens, raw = ranks.setdefault(r, ([], bytearray()))
                tokens.append(item.get("token") or "")
                raw.extend(item.get("bytes") or [])


def sdk_view(body: bytes) -> list[str]:
    """Strings joined per field name across events (as the SDKs join a stream), decoded too;
    logprobs joined per rank."""
    joined: dict[str, str] = {}
    ranks: dict = {}
    for ev in events_of(body):
        for name, s in _walk(ev):
            joined[name] = joined.get(name, "") + s
        if isinstance(ev, dict):
            logprob_ranks(ev, ranks)
    texts = list(joined.values())
    for tokens, raw in ranks.values():
        texts += ["".join(tokens), raw.decode("utf-8", "replace")]
    return texts + [_unescape(t) for t in texts] + [body.decode("utf-8", "replace")]


def released(surface: str, ctype: str | None, body: bytes, rnd: random.Random, rules=MASK_ALL) -> tuple[bytes, ResponseInspector]:
    ins = ResponseInspector(surface, status=200, content_type=ctype, content_encoding=None, classifier=CLF,
                            rules=rules, hash_key=b"k" * 32, tenant="t")
    out, i = [], 0
    while i < len(body):
        n = rnd.randint(1, 12)
        out += ins.feed(body[i:i + n], i + n >= len(body))
        i += n
    assert out and out[-1].end_of_stream
    return b"".join(r.body for r in out), ins


def longest_part(secret: str, views: list[str]) -> int:
    """The longest substring of `secret` that can be read in one of `views`."""
    best = 0
    for v in views:
        for i in range(len(secret) - best):
            j = i + best + 1
            while j <= len(secret) and secret[i:j] in v:
                best, j = j - i, j + 1
    return best


def assert_not_intact(secret: str, views: list[str]) -> None:
    for v in views:
        assert secret not in v
    # nor in part: what goes out of a secret before it is decided is a leak too (up to 5
    # characters may be shared by chance with the framing: "e.com" in "response.completed")
    assert longest_part(secret, views) < 6, "part of the secret reached the client"


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_a_hidden_split_secret_never_reaches_the_sdk_intact(framing, kind):
    rnd = random.Random(f"{framing}/{kind}")
    for _ in range(CASES):
        surface, ctype, body = build(framing, SECRETS[kind], rnd)
        out, ins = released(surface, ctype, body, rnd)
        assert_not_intact(SECRETS[kind], sdk_view(out))
        assert ins.outcome()["classification"] or ins.blocked, "the secret was neither found nor blocked"


@pytest.mark.parametrize("framing", ["chat.content", "anthropic.text", "gemini.array", "gemini.sse",
                                     "converse.text", "whole.content", "chat.arguments"])
@pytest.mark.parametrize("key", ["rsa8192", "rsa4096-indented", "rsa8192-disguised"])
def test_a_long_pem_block_is_never_released_in_part(framing, key):
    rnd = random.Random(f"{framing}/{key}")
    pem = fake_pem(8192, seed=1) if key != "rsa4096-indented" else fake_pem(4096, indent=40, seed=2)
    if key == "rsa8192-disguised":      # a header the classifier reads through its normalization
        pem = pem.replace("-----BEGIN", "-\u200b---\uff0d\uff22EGIN", 1)
    assert len(pem) > 4096 + 1000
    body_lines = [ln.strip() for ln in pem.splitlines()[1:-1]]
    for _ in range(2):
        surface, ctype, body = build(framing, pem, rnd)
        out, ins = released(surface, ctype, body, rnd)
        views = sdk_view(out)
        for line in body_lines:
            assert all(line not in v for v in views), "a line of the key reached the client"
        assert ins.outcome()["classification"].get("secret.private_key")


def test_a_pem_block_longer_than_the_bound_blocks_the_answer_cleanly():
    rnd = random.Random(3)
    pem = fake_pem(8192, seed=4)
    surface, ctype, body = build("chat.content", pem, rnd)
    ins = ResponseInspector(surface, status=200, content_type=ctype, content_encoding=None, classifier=CLF,
                            rules=MASK_ALL, hash_key=b"k" * 32, tenant="t", max_block_chars=2000)
    out = b"".join(r.body for r in ins.feed(body, True))
    assert ins.blocked and ins.blocked["label"] == "finding_too_long"
    assert all(ln.strip() not in out.decode() for ln in pem.splitlines()[1:-1])
    assert b'"code":"response_blocked"' in out


def test_a_tool_argument_redaction_is_written_back_escaped_and_parses():
    rnd = random.Random(5)
    surface, ctype, body = build("chat.arguments", SECRETS["card"], rnd)
    out, ins = released(surface, ctype, body, rnd)
    args = "".join(tc["function"].get("arguments", "") for ev in events_of(out) for ch in ev.get("choices", [])
                   for tc in ch["delta"].get("tool_calls", []))
    assert json.loads(args) == {"value": "[PCI.CARD_NUMBER]", "n": 1}


def test_a_blocked_refused_encoding_is_a_json_error_whatever_the_content_type():
    # br cannot be decoded here: refused before anything went out, with the JSON error the
    # server's 403 (content type application/json) announces, not an SSE event.
    ins = ResponseInspector("openai.chat_completions", status=200, content_type="text/event-stream",
                            content_encoding="br", classifier=CLF, rules=MASK_ALL, hash_key=b"k" * 32, tenant="t")
    out = ins.feed(b"\x0b\x02\x80data: x", True)
    assert ins.whole_body and ins.blocked["label"] == "unsupported_encoding"
    assert json.loads(out[0].body)["error"]["code"] == "response_blocked"


def test_sse_served_as_json_is_read_and_released_as_sse():
    rnd = random.Random(6)
    surface, ctype, body = build("sse-as-application_json", "nothing secret", rnd)
    out, ins = released(surface, ctype, body, rnd)
    assert out == body and ins.streamed_sse and ins.outcome()["blocked"] is None


def test_a_clean_gemini_array_passes_byte_for_byte_and_is_released_element_by_element():
    body = gemini_array(["Hello there, ", "how are you ", "today?"])
    ins = ResponseInspector("gemini.generate", status=200, content_type="application/json", content_encoding=None,
                            classifier=CLF, rules=MASK_ALL, hash_key=b"k" * 32, tenant="t")
    first = ins.feed(body[:len(body) // 2], False)
    rest = ins.feed(body[len(body) // 2:], True)
    assert first and first[0].body.startswith(b"[")          # released before the end
    assert b"".join(r.body for r in first + rest) == body
    assert rest[-1].body.endswith(b"]")


def test_ids_fingerprints_and_keys_are_scanned():
    ev = {"id": "AKIAIOSFODNN7QWERTYZ", "object": "chat.completion.chunk", "system_fingerprint": "jane.doe@example.com",
          "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    out, ins = released("openai.chat_completions", "text/event-stream", sse([ev], done=True), random.Random(1))
    assert b"AKIAIOSFODNN7QWERTYZ" not in out and b"jane.doe@example.com" not in out
    whole = json.dumps({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {
        "4111 1111 1111 1111": 1}}}]}}]}).encode()
    out, _ = released("gemini.generate", "application/json", whole, random.Random(2))
    assert b"4111 1111 1111 1111" not in out


def test_an_unterminated_pem_block_at_the_end_is_masked_to_the_end_or_refused_past_the_bound():
    key = fake_pem(4096, seed=7).rsplit("\n", 1)[0]          # no footer: the answer is cut off
    lines = [ln for ln in key.splitlines()[1:]]
    body = whole_chat("Here: " + key, "content")
    out, ins = released("openai.chat_completions", "application/json", body, random.Random(8))
    assert not any(ln in out.decode() for ln in lines) and not ins.blocked
    small = ResponseInspector("openai.chat_completions", status=200, content_type="application/json",
                              content_encoding=None, classifier=CLF, rules=MASK_ALL, hash_key=b"k" * 32, tenant="t",
                              max_block_chars=1000)
    out = b"".join(r.body for r in small.feed(body, True))
    assert small.blocked["label"] == "finding_too_long" and not any(ln in out.decode() for ln in lines)
