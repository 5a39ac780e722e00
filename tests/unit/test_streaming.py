"""Response inspection with the real classifier: chunk-boundary safety of redaction and blocking
for every stream format, whole JSON bodies, raw bodies, bounds, encodings and the outcome."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ext_proc.streaming import ResponseInspector, ResponseRules, formats
from tests.unit.test_streaming_support import (
    CARD,
    CLF,
    EMAIL,
    RULES,
    anthropic,
    assembled,
    feed_all,
    gemini,
    inspector,
    openai_chat,
    parse_sse_strict,
    pieces,
    random_cuts,
    responses,
    run,
    sse,
)

CLEAN = "The quick brown fox jumps over the lazy dog, twice, and then sleeps. Ünïcödé ✓ 日本語 🙂 done."
WITH_EMAIL = f"Write to {EMAIL} for the report, thanks."
WITH_CARD = f"Sure, the card is {CARD} and it expires soon."

FORMATS = {
    "openai.chat_completions": openai_chat,
    "anthropic.messages": anthropic,
    "openai.responses": responses,
    "gemini.stream_generate_content": gemini,
}
STREAM_OF = {"anthropic.messages": "block0"}


def _text(surface: str, released: bytes) -> str:
    return assembled(released).get(STREAM_OF.get(surface, "content"), "")


@pytest.mark.parametrize("surface", FORMATS)
@pytest.mark.parametrize("hold", [None, 8])
def test_clean_text_arrives_unchanged_at_every_byte_boundary(surface, hold):
    body = FORMATS[surface](pieces(CLEAN))
    for cut in range(1, len(body), 3 if hold else 11):
        released, ins = run(body, [cut], surface, hold_chars=hold)
        assert _text(surface, released) == CLEAN
        assert ins.blocked is None and ins.outcome()["classification"] == {}
    for cuts in random_cuts(len(body), seed=len(surface)):
        released, _ = run(body, cuts, surface, hold_chars=hold)
        assert _text(surface, released) == CLEAN


@pytest.mark.parametrize("surface", FORMATS)
def test_non_text_events_pass_unchanged_and_in_order(surface):
    body = FORMATS[surface](pieces(CLEAN))
    released, _ = run(body, [17, 400], surface, hold_chars=8)
    assert _skeleton(released) == _skeleton(body)
    # the last text arrives before whatever ends the stream
    events = parse_sse_strict(released)
    last_text = max(i for i, (_n, d) in enumerate(events) if d != "[DONE]" and formats.slots(json.loads(d)))
    enders = [i for i, (_n, d) in enumerate(events) if d == "[DONE]" or formats.terminated(json.loads(d))]
    assert enders and last_text <= min(enders)


def _skeleton(body: bytes) -> list:
    """The events without their delta texts (events are never merged, split or dropped)."""
    out = []
    for name, data in parse_sse_strict(body):
        if data == "[DONE]":
            out.append((name, data))
            continue
        ev = json.loads(data)
        for s in formats.slots(ev):
            formats.set_path(ev, s.path, "")
        out.append((name, ev))
    return out


def test_nothing_clean_is_rewritten_when_nothing_is_held():
    body = openai_chat(pieces(CLEAN, 50))
    released, _ = run(body, [33], hold_chars=1)      # hold of one char: still re-framed, never lost
    assert assembled(released)["content"] == CLEAN
    released, _ = run(b": keep-alive\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n", [5], "anthropic.messages")
    assert released == b": keep-alive\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n"


@pytest.mark.parametrize("surface", FORMATS)
def test_email_split_three_chars_per_event_is_redacted(surface):
    body = FORMATS[surface](pieces(WITH_EMAIL))
    for cuts in [[5, 50, 51, 200]] + random_cuts(len(body), seed=3, count=8):
        released, ins = run(body, cuts, surface)
        assert EMAIL.encode() not in released and b"jane.doe" not in released
        assert _text(surface, released) == WITH_EMAIL.replace(EMAIL, "[PII.EMAIL]")
        out = ins.outcome()
        assert out["classification"]["pii.email"]["count"] == 1, "restated texts are not counted twice"
        assert out["redactions"] and out["redactions"][0]["label"] == "pii.email"
        assert EMAIL not in json.dumps(out)


@pytest.mark.parametrize("surface", FORMATS)
@pytest.mark.parametrize("hold", [None, 40])
def test_card_split_across_events_blocks_with_a_provider_error_and_no_digits_leak(surface, hold):
    body = FORMATS[surface](pieces(WITH_CARD))
    for cuts in [list(range(0, len(body), 11))] + random_cuts(len(body), seed=9, count=6):
        released, ins = run(body, cuts, surface, hold_chars=hold)
        digits = "".join(ch for ch in _text(surface, released) if ch.isdigit())
        assert "1111" not in digits and b"1111 1111" not in released
        assert ins.blocked and ins.blocked["label"] == "pci.card_number"
        assert ins.blocked["at_event"] >= 1 and ins.blocked["at_byte"] > 0
        events = parse_sse_strict(released)
        name, data = events[-1]
        err = json.loads(data)
        if surface == "anthropic.messages":
            assert name == "error" and err["type"] == "error" and err["error"]["type"] == "api_error"
        else:
            assert err["error"]["message"] and CARD not in data
        assert ins.outcome()["classification"]["pci.card_number"]["count"] == 1


def test_tool_call_arguments_are_inspected_per_stream():
    args = json.dumps({"to": EMAIL, "note": "hello"})
    body = openai_chat(pieces("Calling the tool."), tool_args=pieces(args))
    for cuts in random_cuts(len(body), seed=5, count=10):
        released, ins = run(body, cuts, hold_chars=24)
        got = assembled(released)
        assert got["content"] == "Calling the tool."
        assert json.loads(got["tool0"]) == {"to": "[PII.EMAIL]", "note": "hello"}
    blocked, ins = run(openai_chat(["x"], tool_args=pieces(json.dumps({"card": CARD}))), [9, 99])
    assert ins.blocked["label"] == "pci.card_number" and b"1111 1111" not in blocked
    # Anthropic input_json_delta
    released, _ = run(anthropic(pieces("ok"), json_parts=pieces(args)), [40], "anthropic.messages", hold_chars=24)
    assert json.loads(assembled(released)["block1"]) == {"to": "[PII.EMAIL]", "note": "hello"}


def test_long_streams_release_text_before_the_end_and_hold_a_bounded_tail():
    text = ("All clear here, nothing to see. " * 2000)[:60_000]
    body = openai_chat(pieces(text, 5))
    ins = inspector()
    before_end = b""
    for i in range(0, len(body), 4096):
        rels = ins.feed(body[i:i + 4096], i + 4096 >= len(body))
        if not (rels and rels[-1].end_of_stream):
            before_end += b"".join(r.body for r in rels)
        held = sum(g.held_chars for g in ins._gates.values())
        assert held <= CLF.max_match_chars + CLF.max_match_chars // 4 + 5
    text_before_end = assembled(before_end)["content"]
    assert len(text_before_end) >= len(text) - CLF.max_match_chars - CLF.max_match_chars // 4
    assert text.startswith(text_before_end)


def test_the_first_text_goes_out_as_soon_as_more_than_the_hold_is_pending():
    # Time to first token: the first release does not wait for a whole scan step on top of the
    # hold; later releases do (one scan per step keeps the cost linear).
    text = "Sure. The figures for the third quarter are in the attached table, row by row. " * 4
    ins = inspector(hold_chars=64)
    step = ins._policy.step
    released, fed = "", 0
    body = openai_chat(pieces(text, 4))
    first_release_at = None
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    for ev in events[:-1]:
        got = assembled(b"".join(r.body for r in ins.feed(ev, False))).get("content", "")
        data = json.loads(ev[len(b"data: "):]) if ev.startswith(b"data: {") else {}
        fed += sum(len(c["delta"].get("content") or "") for c in data.get("choices", []))
        if got and first_release_at is None:
            first_release_at = fed
        released += got
    # (the cut also stays out of a word still arriving, so a few characters more than the hold)
    assert first_release_at is not None and first_release_at <= 64 + 16 < 64 + step
    assert text.startswith(released) and len(text) - len(released) <= 64 + step


def test_a_model_paced_stream_keeps_back_only_the_word_still_arriving():
    # One event per upstream chunk, as a model sends them: each chunk is settled, so the client
    # is never more than a word (or a finding still arriving) behind the model.
    text = "Sure, the figures are steady and the team expects the same next quarter, thanks. " * 3
    body = openai_chat(pieces(text, 4))
    ins = inspector()
    out, fed, behind = b"", 0, []
    for ev in [e + b"\n\n" for e in body.split(b"\n\n") if e][:-3]:
        out += b"".join(r.body for r in ins.feed(ev, False))
        data = json.loads(ev[len(b"data: "):])
        fed += len(data["choices"][0]["delta"].get("content") or "")
        behind.append(fed - len(assembled(out).get("content", "")))
    assert max(behind) <= 4 + len("expects") + 1       # an event of 4 characters plus a word
    assert behind[1] <= 4                               # "Sure" is out once ", th" arrives


def test_private_key_longer_than_any_short_hold_is_redacted_whole():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()).decode()
    text = "filler words here. " * 900 + "Here is the key:\n" + key + "\nKeep it safe."
    body = openai_chat(pieces(text))
    released, ins = run(body, random_cuts(len(body), seed=1, count=1)[0])
    out = assembled(released)["content"]
    body_lines = [ln for ln in key.splitlines() if "-----" not in ln]
    assert not any(ln[:20] in out for ln in body_lines)
    assert "[SECRET.PRIVATE_KEY]" in out and out.endswith("Keep it safe.")
    assert ins.outcome()["classification"]["secret.private_key"]["count"] == 1


def test_usage_from_final_events():
    assert run(openai_chat(["hi"]))[1].usage == {"input_tokens": 3, "output_tokens": 7}
    assert run(anthropic(["hi"]), [], "anthropic.messages")[1].usage == {"input_tokens": 5, "output_tokens": 9}
    assert run(responses(["hi"]), [], "openai.responses")[1].usage == {"input_tokens": 4, "output_tokens": 6}
    assert run(gemini(["hi"]), [], "gemini.stream_generate_content")[1].usage == {"input_tokens": 4, "output_tokens": 9}


def test_a_surrogate_pair_split_over_two_events_passes_as_the_upstream_sent_it():
    body = sse([(None, b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a\\ud83d"}}]}'),
                (None, b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"\\ude00b"}}]}'),
                (None, b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')])
    released, ins = run(body, [30], hold_chars=1)
    assert ins.blocked is None
    assert released == body  # each event as it came: the client joins the halves as it would have


def test_a_redacted_surrogate_split_event_is_still_valid_json():
    body = sse([(None, b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"mail a@example.com \\ud83d"}}]}'),
                (None, b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"\\ude00b"}}]}'),
                (None, b'{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')])
    released, ins = run(body, [7], hold_chars=1)
    assert ins.blocked is None and "a@example.com" not in assembled(released)["content"]
    assert assembled(released)["content"].endswith("\ud83d\ude00b")


def test_duplicate_keys_are_never_passed_through_unscanned():
    # A client that takes the first of two duplicate keys must not see the unscanned value.
    ev = b'{"choices":[{"index":0,"delta":{"content":"' + EMAIL.encode() + b'","content":"x"}}]}'
    released, ins = run(sse([(None, ev)]) + b"data: [DONE]\n\n", [])
    assert EMAIL.encode() not in released
    body = b'{"choices":[{"message":{"content":"' + EMAIL.encode() + b'","content":"hi"}}]}'
    released, _ = run(body, [], ctype="application/json")
    assert EMAIL.encode() not in released and json.loads(released)["choices"][0]["message"]["content"] == "hi"


def test_hostile_sse_payloads_are_scanned():
    # not JSON: scanned as raw text
    released, ins = run(b"data: card " + CARD.encode() + b"\n\n", [7])
    assert ins.blocked and b"1111 1111" not in released
    released, ins = run(b": comment " + EMAIL.encode() + b"\n\ndata: [DONE]\n\n", [3])
    assert EMAIL.encode() not in released and b"[PII.EMAIL]" in released
    # deeply nested JSON: no crash, scanned as text
    deep = b"data: " + b"[" * 5000 + json.dumps(EMAIL).encode() + b"]" * 5000 + b"\n\n"
    released, ins = run(deep, [100])
    assert EMAIL.encode() not in released
    # unknown JSON event shape with a string deep inside
    released, ins = run(sse([(None, {"weird": {"nested": [f"mail {EMAIL}"]}})]), [4])
    assert json.loads(parse_sse_strict(released)[0][1]) == {"weird": {"nested": ["mail [PII.EMAIL]"]}}
    # CR-only and mixed line endings, split between CR and LF
    body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi \"}}]}\r\r" \
           b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"there\"}}]}\r\n\r\ndata: [DONE]\n\n"
    for cut in range(1, len(body)):
        released, _ = run(body, [cut])
        assert assembled(released)["content"] == "hi there"


def test_bounds_block_with_a_clear_error_and_bounded_memory():
    released, ins = run(b"data: " + b"y" * 5000, list(range(0, 5000, 100)), max_event_bytes=1000)
    assert ins.blocked["label"] == "event_too_large" and b"yyyy" not in released
    assert ins._framer.pending_bytes <= 1100
    released, ins = run(b'{"a":"' + b"x" * 5000 + b'"}', list(range(0, 5000, 100)), ctype="application/json",
                        max_buffer_bytes=1000)
    assert ins.blocked["label"] == "response_too_large" and len(released) < 1000
    assert b"response_blocked" in released


def test_gzip_and_deflate_are_inspected_and_bombs_stop():
    body = openai_chat(pieces(WITH_EMAIL))
    for enc, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                      ("deflate", zlib.compress(body, wbits=-15) if False else _raw_deflate(body)),
                      ("gzip", gzip.compress(body[:100]) + gzip.compress(body[100:]))):
        ins = inspector(enc=enc)
        out = feed_all(ins, data, range(0, len(data), 13))
        released = b"".join(r.body for r in out)
        assert ins.release_headers_mutation == {"remove": ["content-encoding", "content-length"]}
        assert ins.blocked is None and assembled(released)["content"] == WITH_EMAIL.replace(EMAIL, "[PII.EMAIL]")
    bomb = gzip.compress(b"\n" * (20 << 20))
    released, ins = run(bomb, [], enc="gzip", max_decoded_bytes=1 << 20)
    assert ins.blocked["label"] == "response_too_large"
    released, ins = run(gzip.compress(body)[:-12], [], enc="gzip")
    assert ins.blocked["label"] == "bad_encoding"
    released, ins = run(b"\x00garbage", [], enc="gzip")
    assert ins.blocked


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def test_unsupported_encodings_and_binary_event_streams_are_refused():
    for enc in ("br", "zstd", "compress"):
        released, ins = run(b"\x00\x01", [], enc=enc)
        assert ins.blocked["label"] == "unsupported_encoding" and enc in ins.blocked["reason"]
    released, ins = run(b"\x00\x00\x00\x10payload", [], "bedrock.converse_stream",
                        ctype="application/vnd.amazon.eventstream")
    assert ins.blocked["label"] == "bad_encoding" and b"payload" not in released


NON_STREAMED = {
    "openai.chat_completions": {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "TEXT", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "f", "arguments": "{\"q\": \"TEXT\"}"}}]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    "anthropic.messages": {"id": "msg", "type": "message", "role": "assistant", "content": [
        {"type": "text", "text": "TEXT"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "TEXT"}}],
        "usage": {"input_tokens": 1, "output_tokens": 2}},
    "openai.responses": {"id": "r", "object": "response", "output": [{"type": "message", "id": "m", "role": "assistant",
        "content": [{"type": "output_text", "text": "TEXT", "annotations": []}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"q\": \"TEXT\"}"}],
        "usage": {"input_tokens": 1, "output_tokens": 2}},
    "gemini.generate_content": {"candidates": [{"content": {"parts": [{"text": "TEXT"}, {"functionCall": {
        "name": "f", "args": {"q": "TEXT"}}}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2}},
    "bedrock.converse": {"output": {"message": {"role": "assistant", "content": [{"text": "TEXT"}, {"toolUse": {
        "toolUseId": "t", "name": "f", "input": {"q": "TEXT"}}}]}}, "stopReason": "end_turn",
        "usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}},
}


@pytest.mark.parametrize("surface", NON_STREAMED)
def test_non_streamed_json_is_scanned_redacted_and_blocked(surface):
    clean = json.dumps(NON_STREAMED[surface], indent=1).encode().replace(b"TEXT", b"all fine")
    released, ins = run(clean, [10, 20], surface, ctype="application/json; charset=utf-8")
    assert released == clean, "unchanged bodies are released byte for byte"
    assert ins.usage == {"input_tokens": 1, "output_tokens": 2} and not ins.streamed
    mail = clean.replace(b"all fine", f"mail {EMAIL}".encode())
    released, ins = run(mail, [7], surface, ctype="application/json")
    assert EMAIL.encode() not in released and released.count(b"mail [PII.EMAIL]") == 2
    assert json.loads(released).keys() == NON_STREAMED[surface].keys()
    assert ins.outcome()["classification"]["pii.email"]["count"] == 2
    card = clean.replace(b"all fine", CARD.encode())
    released, ins = run(card, [], surface, ctype="application/json")
    assert CARD.encode() not in released and ins.blocked["label"] == "pci.card_number"


def test_error_responses_and_unknown_bodies_are_scanned_and_pass_through():
    err = json.dumps({"error": {"message": f"bad input near {EMAIL}", "type": "invalid_request_error"}}).encode()
    released, ins = run(err, [3], status=400, ctype="application/json")
    assert EMAIL.encode() not in released and ins.blocked is None
    plain = ("plain text ✓ " * 3000).encode() + b"\xff\xfe invalid utf-8 kept"
    released, ins = run(plain, range(0, len(plain), 7), ctype="text/plain")
    assert released == plain and ins.blocked is None
    released, ins = run(plain + b" " + EMAIL.encode(), range(1, len(plain), 999), ctype=None)
    assert released == plain + b" [PII.EMAIL]"
    released, ins = run(b"<html>" + CARD.encode() + b"</html>", [8], status=502, ctype="text/html")
    assert ins.blocked and CARD.encode() not in released


def test_end_of_stream_is_idempotent_and_late_feeds_are_ignored():
    body = openai_chat(pieces(WITH_EMAIL))
    ins = inspector()
    first = ins.feed(body, True)
    assert len(first) == 1 and first[-1].end_of_stream
    digest = ins.outcome()["response_sha256"]
    assert ins.feed(body[-30:], True) == [] and ins.feed(b"more", False) == []
    assert ins.outcome()["response_sha256"] == digest
    # no end_of_stream in the data: the trailers path calls feed(b"", True)
    ins = inspector()
    mid = ins.feed(body, False)
    last = ins.feed(b"", True)
    released = b"".join(r.body for r in mid + last)
    assert last[-1].end_of_stream and assembled(released)["content"] == WITH_EMAIL.replace(EMAIL, "[PII.EMAIL]")


def test_outcome_holds_no_raw_text_and_counts_events():
    body = anthropic(pieces(WITH_EMAIL + " " + f"again {EMAIL}"))
    released, ins = run(body, [50], "anthropic.messages", rules=ResponseRules(redact={"*": "hash"}))
    out = ins.outcome()
    assert out["streamed"] and out["events"] == len(parse_sse_strict(body))
    assert out["classification"]["pii.email"]["count"] == 2
    assert [r["strategy"] for r in out["redactions"]] == ["hash", "hash"]
    assert EMAIL not in json.dumps(out) and "jane" not in json.dumps(out)
    hashed = assembled(released)["block0"]
    tag = hashed[hashed.index("[PII.EMAIL:"):hashed.index("]") + 1]
    assert len(tag) == len("[PII.EMAIL:]") + 12
    assert hashed == WITH_EMAIL.replace(EMAIL, tag) + f" again {tag}", "the same value hashes the same"


def test_rules_from_policy_and_bad_strategies():
    r = ResponseRules.from_policy({"redact": {"pii.email": "partial"}, "block": ["pci.card_number"],
                                   "marker_header": {"name": "x", "value": "y"}})
    assert r.redact == {"pii.email": "partial"} and r.block == frozenset({"pci.card_number"})
    assert ResponseRules.from_policy(None) == ResponseRules()
    with pytest.raises(ValueError):
        ResponseRules.from_policy({"redact": {"pii.email": "shred"}})


def test_observe_only_rules_release_everything_but_still_classify():
    released, ins = run(openai_chat(pieces(WITH_CARD)), [10], rules=ResponseRules())
    assert assembled(released)["content"] == WITH_CARD and ins.blocked is None
    assert ins.outcome()["classification"]["pci.card_number"]["count"] == 1


def test_unknown_surface_uses_the_event_shape_for_the_error_event():
    released, ins = run(anthropic(pieces(WITH_CARD)), [], "unknown")
    name, data = parse_sse_strict(released)[-1]
    assert name == "error" and json.loads(data)["type"] == "error"


def test_inspector_rejects_a_hold_that_does_not_fit():
    with pytest.raises(ValueError):
        ResponseInspector("openai.chat_completions", status=200, content_type="text/event-stream", content_encoding=None,
                          classifier=CLF, rules=RULES, hash_key=b"k", tenant=None, hold_chars=0)


@pytest.mark.parametrize("surface,marker", [("openai.chat_completions", b"[DONE]"),
                                            ("anthropic.messages", b"message_stop"),
                                            ("openai.responses", b"response.completed")])
def test_the_completion_marker_goes_out_only_with_the_final_release(surface, marker):
    # The client considers the response complete at the marker; the server commits the outcome
    # record before it sends the final release, so the marker must be in that release.
    body = FORMATS[surface](pieces(CLEAN))
    ins = inspector(surface, hold_chars=8)
    early = ins.feed(body, False)
    assert early and all(marker not in r.body for r in early)
    final = ins.feed(b"", True)
    assert len(final) == 1 and final[-1].end_of_stream and marker in final[-1].body
