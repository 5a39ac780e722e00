"""No leak on the way in, as a property: a secret hidden anywhere in a valid body of any surface
(any string value, any object key, split at any point across neighbouring text parts or turns,
inside a text attachment, written with evasions) never leaves the pure request decision intact.

"Intact" is judged as a reader would: every string and key of the forwarded body, attachments
decoded, joined with nothing in document order and normalized the way the classifier normalizes,
must not contain the secret's characters in sequence (separators and invisible characters
ignored). A deny is fine; so is a redaction that masks every piece.
"""

from __future__ import annotations

import base64
import json
import random
import string
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.classify import Classifier
from ext_proc.classify.normalize import fold_plain
from tests.unit.test_pipeline import chat, decide, head

CARD = "4111111111111111"
_REDACTING_CLASSIFIER = Classifier()
SECRETS = {
    # name: (written form in the body, the characters that must not survive in sequence)
    "card": ("4111 1111 1111 1111", CARD),
    "aws": ("AKIAIOSFODNN7QWERTYZ", "AKIAIOSFODNN7QWERTYZ"),
    "github": ("ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7", "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7"),
    "password": ("password=Xk9#mQ2$vL7pR4", "Xk9#mQ2$vL7pR4"),
    "ssn": ("SSN 536-22-8726", "536228726"),
    "email": ("jane.doe@example.com", "jane.doe@example.com"),
}

TEXT = "Please summarise the quarterly report for the board meeting."

# One valid body per surface, with two text parts (or turns) next to each other for splits.
BODIES = {
    "/v1/chat/completions": {
        "model": "gpt-4o-mini", "stop": ["END"], "metadata": {"team": "finance"}, "user": "u1",
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "text", "text": TEXT}]},
                     {"role": "user", "content": TEXT}],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "find a record",
                                                     "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}}},
    "/v1/responses": {
        "model": "gpt-4o-mini", "instructions": "Be brief.", "previous_response_id": "resp_1",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": TEXT}, {"type": "input_text", "text": TEXT}]}],
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k1"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": [TEXT, TEXT]},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": [TEXT, TEXT], "suffix": "end"},
    "/v1/moderations": {"model": "omni-moderation-latest", "input": [TEXT, TEXT]},
    "/v1/messages": {
        "model": "claude-3-5-haiku-latest", "max_tokens": 64, "system": "Be brief.",
        "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "text", "text": TEXT}]},
                     {"role": "assistant", "content": TEXT}, {"role": "user", "content": TEXT}]},
    "/v1/messages/count_tokens": {
        "model": "claude-3-5-haiku-latest",
        "messages": [{"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "text", "text": TEXT}]}]},
    "/v1beta/models/gemini-1.5-flash:generateContent": {
        "contents": [{"role": "user", "parts": [{"text": TEXT}, {"text": TEXT}]}, {"role": "model", "parts": [{"text": TEXT}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]}, "cachedContent": "cachedContents/abc",
        "generationConfig": {"stopSequences": ["END"], "maxOutputTokens": 64}},
    "/v1beta/models/gemini-1.5-flash:streamGenerateContent": {
        "contents": [{"role": "user", "parts": [{"text": TEXT}, {"text": TEXT}]}]},
    "/v1beta/models/gemini-1.5-flash:countTokens": {
        "contents": [{"role": "user", "parts": [{"text": TEXT}, {"text": TEXT}]}]},
    "/v1beta/models/text-embedding-004:embedContent": {"content": {"parts": [{"text": TEXT}, {"text": TEXT}]}},
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse": {
        "messages": [{"role": "user", "content": [{"text": TEXT}, {"text": TEXT}]}],
        "system": [{"text": "Be brief."}], "additionalModelRequestFields": {"top_k": 5, "note": "x"},
        "inferenceConfig": {"maxTokens": 64, "stopSequences": ["END"]}},
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse-stream": {
        "messages": [{"role": "user", "content": [{"text": TEXT}, {"text": TEXT}]}]},
    "/model/amazon.titan-text-express-v1/invoke": {"inputText": TEXT, "prompt": TEXT},
}

# How each surface carries a text attachment (the secret is put inside TEXT_ATTACHMENT).
ATTACHMENTS = {
    "/v1/chat/completions": lambda b64: ("messages", 1, "content",
                                         {"type": "file", "file": {"filename": "notes.txt",
                                                                   "file_data": "data:text/plain;base64," + b64}}),
    "/v1/messages": lambda b64: ("messages", 0, "content",
                                 {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": b64}}),
    "/v1beta/models/gemini-1.5-flash:generateContent": lambda b64: (
        "contents", 0, "parts", {"inlineData": {"mimeType": "text/csv", "data": b64}}),
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse": lambda b64: (
        "messages", 0, "content", {"document": {"format": "txt", "name": "notes", "source": {"bytes": b64}}}),
}


def _strings(obj, out):
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(k)
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)
    elif isinstance(obj, str):
        out.append(obj)
        payload = obj.split(",", 1)[1] if obj.startswith("data:") and "," in obj else obj
        try:
            decoded = base64.b64decode(payload, validate=True).decode("utf-8")
            out.append(decoded)
        except Exception:
            if obj.startswith("data:"):
                out.append(urllib.parse.unquote(payload))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append(repr(obj))


def _intact(forwarded: bytes, needle: str) -> bool:
    strings: list[str] = []
    _strings(json.loads(forwarded), strings)
    hay = "".join(c for c in fold_plain("".join(strings)) if c.isalnum() or c in "@.#$_")
    clean = "".join(c for c in fold_plain(needle) if c.isalnum() or c in "@.#$_")
    return clean in hay


def assert_no_leak(path: str, body: dict, needle: str) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode()
    v = decide(raw, head(path))
    if not v.forward:
        assert needle not in json.dumps(v.record.to_dict(), ensure_ascii=False)
        return
    forwarded = v.new_body if v.new_body is not None else raw
    assert not _intact(forwarded, needle), (path, json.dumps(body)[:400])
    assert needle not in json.dumps(v.record.to_dict(), ensure_ascii=False)


def _places(obj, path=()):
    """Every string value and every object in the body (places for a secret)."""
    if isinstance(obj, dict):
        yield ("object", path)
        for k, v in obj.items():
            yield from _places(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _places(v, path + (i,))
    elif isinstance(obj, str):
        yield ("string", path)


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _adjacent_text_pairs(obj, path=()):
    """Paths of neighbouring text strings a model reads together: parts of one message, and the
    text of consecutive messages."""
    texts = [p for kind, p in _places(obj) if kind == "string" and p and p[-1] in ("text", "content", "inputText", "prompt")
             or (kind == "string" and len(p) >= 2 and p[-2] in ("input", "prompt") and isinstance(p[-1], int))]
    # In reading order: system text comes before the turns, wherever the body puts it.
    texts.sort(key=lambda p: p[0] not in ("system", "systemInstruction", "instructions"))
    return list(zip(texts, texts[1:]))


@pytest.mark.parametrize("path", sorted(BODIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_secret_anywhere_in_any_string_or_key_never_reaches_the_provider(path, data):
    body = json.loads(json.dumps(BODIES[path]))
    name = data.draw(st.sampled_from(sorted(SECRETS)))
    written, needle = SECRETS[name]
    places = list(_places(body))
    kind, where = data.draw(st.sampled_from(places))
    if kind == "string":
        parent, key = _get(body, where[:-1]), where[-1]
        s = parent[key]
        at = data.draw(st.integers(0, len(s)))
        parent[key] = s[:at] + " " + written + " " + s[at:]
    else:
        _get(body, where)[data.draw(st.sampled_from([written, "x_" + written, written + " note"]))] = "v"
    assert_no_leak(path, body, needle)


@pytest.mark.parametrize("path", sorted(p for p in BODIES if _adjacent_text_pairs(BODIES[p])))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_secret_split_across_neighbouring_text_is_never_forwarded_whole(path, data):
    body = json.loads(json.dumps(BODIES[path]))
    name = data.draw(st.sampled_from(sorted(SECRETS)))
    written, needle = SECRETS[name]
    a, b = data.draw(st.sampled_from(_adjacent_text_pairs(body)))
    cut = data.draw(st.integers(1, len(written) - 1))
    pa, pb = _get(body, a[:-1]), _get(body, b[:-1])
    before = data.draw(st.sampled_from(["", " ", "see ", "x"]))
    after = data.draw(st.sampled_from(["", " ", " thanks", "y"]))
    pa[a[-1]] = pa[a[-1]] + " " + before + written[:cut]
    pb[b[-1]] = written[cut:] + after + " " + pb[b[-1]]
    # The model reads the two joined; so does the check below.
    assert_no_leak(path, body, needle)


@pytest.mark.parametrize("path", sorted(ATTACHMENTS))
@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_secret_inside_a_text_attachment_never_reaches_the_provider(path, name):
    body = json.loads(json.dumps(BODIES[path]))
    written, needle = SECRETS[name]
    text = "id,note\n1,hello\n2," + written + "\n"
    *where, part = ATTACHMENTS[path](base64.b64encode(text.encode()).decode())
    container = _get(body, tuple(where))
    if isinstance(container, str):
        parent = _get(body, tuple(where[:-1]))
        parent[where[-1]] = [{"type": "text", "text": container}]
        container = parent[where[-1]]
    container.append(part)
    assert_no_leak(path, body, needle)


@pytest.mark.parametrize("written,needle", [
    ("4111.1111.1111.1111", CARD), ("4111/1111/1111/1111", CARD), ("4111,1111,1111,1111", CARD),
    ("4111\t1111\t1111\t1111", CARD), ("4111\n1111\n1111\n1111", CARD), ("4111  1111  1111  1111", CARD),
    ("4111 - 1111 - 1111 - 1111", CARD),
    ("\u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661", CARD),
    ("\u096a\u0967\u0967\u0967 \u0967\u0967\u0967\u0967 \u0967\u0967\u0967\u0967 \u0967\u0967\u0967\u0967", CARD),
    ("AKIA\u200b\u200b\u200bIOSFODNN7QWERTYZ", "AKIAIOSFODNN7QWERTYZ"),
    ("aws_key_AKIAIOSFODNN7QWERTYZ", "AKIAIOSFODNN7QWERTYZ"),
    ("\u0410KIAIOSFODNN7QWERTYZ", "AKIAIOSFODNN7QWERTYZ"),
    ("SSN 536.22.8726", "536228726"),
    ("4111111111111111@example.com", CARD),
    ("iban BE84 4111 1111 1111 1111", CARD),
    ("password=Winter!2024@home.net", "Winter!2024"),
])
def test_evasions_never_reach_the_provider(written, needle):
    for path in ("/v1/chat/completions", "/v1/messages", "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"):
        body = json.loads(json.dumps(BODIES[path]))
        msgs = body["messages"]
        msgs.append({"role": "user", "content": [{"text": "note: " + written} if "converse" in path
                                                 else {"type": "text", "text": "note: " + written}]})
        assert_no_leak(path, body, needle)


def test_binary_attachments_and_remote_content_are_labelled_not_skipped():
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,"
                                  + base64.b64encode(b"%PDF-1.7 ...").decode()}}]}]}
    v = decide(json.dumps(body).encode())
    summary = v.record.to_dict()["classification"]["summary"]
    assert {"content.unscanned.image", "content.unscanned.remote", "content.unscanned.file_ref",
            "content.unscanned.pdf"} <= set(summary)
    assert v.record.to_dict()["input"]["classification"] == summary      # the policy saw them
    assert v.forward                                              # the default policy permits and records


def test_a_finding_in_the_model_segment_of_the_path_is_denied_not_forwarded():
    path = "/v1beta/models/jane.doe@example.com:generateContent"
    v = decide(json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode(), head(path))
    assert not v.forward and v.code == "unredactable_location"


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999", b"1E400"])
def test_non_finite_numbers_are_refused_like_nan(literal):
    v = decide(b'{"model":"gpt-4o-mini","temperature":' + literal + b',"messages":[{"role":"user","content":"hi"}]}')
    assert not v.forward and v.status == 400


def test_redaction_across_parts_masks_every_piece_and_keeps_the_shape():
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "mail jane.d"}, {"type": "text", "text": "oe@example.com now"}]}],
        "metadata": {"jane.doe@example.com": "owner"}}
    v = decide(json.dumps(body).encode())
    assert v.forward and v.new_body is not None
    out = json.loads(v.new_body)
    parts = out["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "text"]
    assert "jane" not in parts[0]["text"] and "example.com" not in parts[1]["text"]
    assert list(out["metadata"]) == ["[PII.EMAIL]"]
    finding = next(f for f in v.record.to_dict()["classification"]["findings"] if "parts" in f)
    assert [p["segment"] for p in finding["parts"]] == [0, 1]


def test_random_bodies_with_many_turns_find_split_cards():
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(3, 8)
        msgs = [{"role": "user", "content": rng.choice(["hello", "ok then", "x", "see below:", "1234"])} for _ in range(n)]
        i = rng.randrange(n - 1)
        cut = rng.randint(1, len("4111 1111 1111 1111") - 1)
        msgs[i]["content"] += "4111 1111 1111 1111"[:cut]
        msgs[i + 1]["content"] = "4111 1111 1111 1111"[cut:] + msgs[i + 1]["content"]
        assert_no_leak("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": msgs}, CARD)


def test_a_model_in_the_path_of_a_request_without_a_body_is_inspected():
    v = decide(b"", head(f"/v1/models/x{CARD}", method="GET"))
    assert not v.forward
    assert CARD not in json.dumps(v.record.to_dict())


def test_gemini_and_bedrock_system_text_is_read_before_the_turns():
    # A key split between the end of the system text and the first turn: the model reads them
    # one after the other, so the reading view does too.
    g = {"systemInstruction": {"parts": [{"text": "ref AKIAIOSF"}]},
         "contents": [{"role": "user", "parts": [{"text": "ODNN7QWERTYZ go"}]}]}
    assert not decide(json.dumps(g).encode(), head("/v1beta/models/gemini-1.5-flash:generateContent")).forward
    b = {"system": [{"text": "ref AKIAIOSF"}], "messages": [{"role": "user", "content": [{"text": "ODNN7QWERTYZ go"}]}]}
    assert not decide(json.dumps(b).encode(), head("/model/anthropic.claude-3-haiku-20240307-v1:0/converse")).forward


def test_strings_that_are_json_are_read_decoded_and_redacted_inside():
    # Tool-call arguments are JSON in a string: the model and the SDKs read them decoded, so a
    # card or an e-mail written with \u escapes there is what they see.
    args = '{"card": "\\u0034111 1111 1111 1111", "note": {"to": "jane.\\u0064oe@example.com"}}'
    body = {"model": "gpt-4o-mini", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "pay", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"result": "sent to jane.\\u0064oe@example.com"}'}]}
    v = decide(json.dumps(body).encode())
    assert not v.forward and v.code == "pci_detected"
    args_pii = '{"note": {"to": "jane.\\u0064oe@example.com"}, "n": 1}'
    body["messages"][0]["tool_calls"][0]["function"]["arguments"] = args_pii
    v = decide(json.dumps(body).encode())
    assert v.forward and v.new_body is not None
    out = json.loads(v.new_body)
    sent_args = json.loads(out["messages"][0]["tool_calls"][0]["function"]["arguments"])
    assert sent_args == {"note": {"to": "[PII.EMAIL]"}, "n": 1}
    assert json.loads(out["messages"][1]["content"]) == {"result": "sent to [PII.EMAIL]"}


_JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=12))
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)), max_leaves=12)


@pytest.mark.parametrize("path", sorted(BODIES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_secret_anywhere_in_random_extra_json_never_reaches_the_provider(path, data):
    # Fields nobody listed, of any shape, at any depth: the walk is generic.
    body = json.loads(json.dumps(BODIES[path]))
    extra = data.draw(_JSON)
    objects = [where for kind, where in _places(body) if kind == "object"]
    _get(body, data.draw(st.sampled_from(objects)))[data.draw(st.text(min_size=1, max_size=6)) + "_x"] = extra
    places = [p for p in _places(body)]
    name = data.draw(st.sampled_from(sorted(SECRETS)))
    written, needle = SECRETS[name]
    kind, where = data.draw(st.sampled_from(places))
    if kind == "string":
        parent, key = _get(body, where[:-1]), where[-1]
        parent[key] = parent[key] + " " + written
    else:
        _get(body, where)[written] = json.loads(json.dumps(extra))
    assert_no_leak(path, body, needle)


def test_long_texts_split_at_their_ends_are_found_with_bounded_views():
    from ext_proc.providers import match_surface, parse_request
    from ext_proc.providers.document import read_document
    filler = "lorem ipsum dolor sit amet " * 2000          # 54 K characters per turn
    body = {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": filler + " key AKIAIOSF"},
        {"role": "user", "content": "ODNN7QWERTYZ then " + filler},
        {"role": "user", "content": filler}]}
    v = decide(json.dumps(body).encode())
    assert not v.forward and v.code == "secret_detected"
    parsed = parse_request(match_surface("POST", "/v1/chat/completions"), json.dumps(body).encode())
    views = read_document(parsed).reading_views(edge=12_288)
    assert len(views[0].text) > 3 * 54_000 and all(len(w.text) < 6 * 12_300 for w in views[1:])


@pytest.mark.parametrize("name,body,expect_status", [
    ("more strings than the walk takes",
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
      "metadata": {f"k{i}": "v" for i in range(60_000)}}, 400),
    ("a string of JSON nested past the depth limit is read as a plain string",
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[" * 200 + "]" * 200}]}, 200),
    ("a data URL whose base64 is broken is read as a plain string",
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:text/plain;base64,@@@not base64@@@ 4111 1111 1111 1111"}}]}]},
     403),
    ("a data URL with no comma is read as a plain string",
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:text/plain;base64 AKIAIOSFODNN7QWERTYZ"}}]}]}, 403),
    ("a charset that is not a codec falls back to UTF-8",
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:text/plain;charset=x-unknown;base64,"
                                             + base64.b64encode(b"card 4111 1111 1111 1111").decode()}}]}]}, 403),
])
def test_hostile_document_shapes_are_bounded_and_never_skip_inspection(name, body, expect_status):
    v = decide(json.dumps(body).encode())
    assert v.status == expect_status or (expect_status == 200 and v.forward), (name, v.status, v.code)


def _decide_redacting_secrets(body: bytes, path: str = "/v1/chat/completions", headers=None):
    """The pure decision under a policy that masks secrets (so what is forwarded can be read),
    with the envelope (forwarded header and query values) the request's head gives."""
    from ext_proc.pipeline.envelope import EnvelopeRules, inspect_envelope
    from ext_proc.pipeline.request import decide_request
    from ext_proc.policy import load_policy_text
    from tests.unit.test_pipeline import KEY, NOW, ident

    policy = load_policy_text("id: redact-secrets\nroutes: [{id: inference, apis: [chat, responses, embeddings, "
                              "completions, messages, count_tokens, generate, converse, invoke]}]\nrules:\n"
                              "  - {id: mask-secrets, effect: redact, when: {labels: {any: ['secret.*']}}, "
                              "redact: {'secret.*': mask}}\n  - {id: permit, effect: permit}\n")
    h = head(path, headers=headers)
    env = inspect_envelope("POST", path, h.headers, h.surface, EnvelopeRules())
    return decide_request(h, ident(), body, policy=policy, classifier=_REDACTING_CLASSIFIER, hash_key=KEY,
                          now_ms=NOW, max_body_bytes=4 << 20, envelope_segments=env.segments)


def _long_jwt(n: int, seed: int) -> str:
    payload = "eyJzdWIiOiJhbGljZSIsImdyb3VwcyI6WyI" + base64.urlsafe_b64encode(random.Random(seed).randbytes(n)).decode()
    return "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + payload.rstrip("=") + ".c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"


def _long_key(lines: int, seed: int) -> str:
    rnd = random.Random(seed)
    body = "\n".join(base64.b64encode(rnd.randbytes(48)).decode() for _ in range(lines))
    return "-----BEGIN RSA PRIVATE KEY-----\n" + body + "\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(("secret", "n"), [("jwt", 3000), ("jwt", 6000), ("jwt", 30000), ("key", 50), ("key", 100),
                                           ("key", 400)])
def test_a_secret_longer_than_its_rules_longest_match_is_removed_whole(secret, n):
    """A token from an identity provider with many group claims (over 4,096 characters), an
    RSA-8192 key block (about 6,400): the rule's match stops at its bound, and the rest of the
    value went to the model. The finding now covers the whole value."""
    value = _long_jwt(n, 1) if secret == "jwt" else _long_key(n, 2)
    v = _decide_redacting_secrets(chat("Why does this fail?\n" + value + "\nThanks."))
    assert v.forward and v.new_body is not None, v.record.to_dict()["decision"]
    sent = json.loads(v.new_body)["messages"][0]["content"]
    core = value.split(".")[1] if secret == "jwt" else value.split("\n")[-2]   # the payload / last key line
    for i in range(0, len(core) - 16, 16):
        assert core[i:i + 16] not in sent, (i, sent[:120])
    assert sent.startswith("Why does this fail?") and sent.endswith("Thanks.")


def _pieces_left(core: str, sent: str, width: int = 16) -> list[int]:
    """Offsets of CORE's WIDTH-character pieces that still stand in SENT."""
    return [i for i in range(0, len(core) - width, width) if core[i:i + width] in sent]


def _long_token(n: int, seed: int) -> str:
    return base64.urlsafe_b64encode(random.Random(seed).randbytes(n)).decode().rstrip("=")


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize(("secret", "n"), [("jwt", 6000), ("jwt", 30000), ("token", 3000), ("key", 100)])
def test_a_long_secret_in_a_forwarded_header_or_query_value_is_removed_whole(where, secret, n):
    """The envelope (a forwarded header's value, a kept query parameter's value) is read whole like
    the body: a JWT over 4,096 characters, an `id_token=` value over 200, a key block over 4,096
    were masked only up to the rule's bound and the rest went upstream."""
    if where == "query" and n > 6000:
        pytest.skip("the query string is bounded at 16 KiB")
    if secret == "jwt":
        value, core = _long_jwt(n, 3), None
        core = value.split(".")[1]
    elif secret == "token":
        core = _long_token(n, 4)
        value = "id_token=" + core
    else:
        value = _long_key(n, 5)
        core = "".join(value.split("\n")[1:-1])
        if where == "header":
            value = value.replace("\n", " ")      # a header value holds no line break
    if where == "header":
        path, headers = "/v1/chat/completions", {"openai-beta": ["assistants=v2 " + value + " ok"]}
    else:
        path, headers = "/v1/chat/completions?include=" + urllib.parse.quote(value + " ok", safe=""), None
    v = _decide_redacting_secrets(chat("hello"), path, headers)
    assert v.forward and list(v.envelope_redacted) == [0], v.record.to_dict()["decision"]
    sent = v.envelope_redacted[0]
    left = _pieces_left(core.replace(" ", ""), sent.replace(" ", ""))
    assert not left, (left[:3], len(core), sent[:200])
    assert sent.endswith(" ok")


def _look_alikes(ch: str) -> list[str]:
    """Characters (or short runs) the classifier reads as CH: itself, its full-width form, a dash
    look-alike, a confusable letter, any of them with an invisible character after it. Checked
    against the classifier's own folding, so the list can only hold forms it accepts."""
    from ext_proc.classify import normalize as nz

    forms = [ch]
    if "!" <= ch <= "~":
        forms.append(chr(ord(ch) + 0xFEE0))
    if ch == " ":
        forms += ["\u00a0", "\u3000", "\u2002"]
    if ch == "-":
        forms += [chr(c) for c in sorted(nz._DASHES)]
    if ch == ".":
        forms += ["\u3002", "\uff61", "\uff0e", "\ufe52"]      # the full stops IDNA reads as dots
    forms += [chr(c) for c, t in sorted(nz._ONE_TO_ONE.items()) if t == ch][:6]
    forms += [f + z for f in forms[:3] for z in ("\u200b", "\u2060", "\u00ad", "\ufeff")]
    return [f for f in forms if fold_plain(f) == ch]


def _disguise(text: str, rng: random.Random, rate: float = 0.5) -> str:
    out = "".join(rng.choice(_look_alikes(c)) if rng.random() < rate else c for c in text)
    assert fold_plain(out) == text
    return out


@pytest.mark.parametrize("seed", range(12))
def test_a_long_key_block_with_a_disguised_header_is_removed_whole(seed):
    """A key block whose BEGIN (and END) line is written in look-alike characters the classifier
    folds ('－－－－－BEGIN PRIVATE KEY－－－－－', en dashes, a Cyrillic 'Е', zero-width characters
    inside): the rule found it, but its extent looked for the ASCII header and stopped at the
    rule's bound, so the rest of the key went upstream. Body, header value and query value alike."""
    rng = random.Random(seed)
    kind = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(100)]
    begin, end = f"-----BEGIN {kind}-----", f"-----END {kind}-----"
    dbegin = _disguise(begin, rng)
    dend = _disguise(end, rng) if seed % 2 else end
    core = "".join(lines)
    for where in ("body", "header", "query"):
        sep = " " if where == "header" else "\n"
        block = sep.join([dbegin, *lines, dend])
        if where == "body":
            v = _decide_redacting_secrets(chat("Why does this fail?\n" + block + "\nThanks."))
            assert v.forward and v.new_body is not None, v.record.to_dict()["decision"]
            sent = json.loads(v.new_body)["messages"][0]["content"]
        elif where == "header":
            v = _decide_redacting_secrets(chat("hello"), headers={"openai-beta": [block + " ok"]})
            sent = v.envelope_redacted[0]
        else:
            v = _decide_redacting_secrets(chat("hello"), "/v1/chat/completions?include=" + urllib.parse.quote(block))
            sent = v.envelope_redacted[0]
        left = _pieces_left(core, sent.replace("\n", "").replace(" ", ""))
        assert not left, (where, ascii(dbegin), left[:3])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("secret", ["jwt", "token", "key"])
def test_a_long_secret_written_in_look_alikes_is_removed_whole(secret, seed):
    """The same family with the value itself in forms the classifier folds (full-width letters and
    dots, zero-width characters, look-alike dashes between its characters): the extent reads the
    value as the classifier reads it, not byte for byte, so it goes on to the end of the value."""
    rng = random.Random(100 + seed)
    if secret == "jwt":
        value = _long_jwt(5000, seed)
        core = value.split(".")[1]
    elif secret == "token":
        core = _long_token(2000, seed)
        value = "id_token=" + core
    else:
        value = _long_key(90, seed)
        core = "".join(value.split("\n")[1:-1])
    written = _disguise(value, rng, rate=0.05)
    for where in ("body", "header"):
        if where == "body":
            v = _decide_redacting_secrets(chat("Why does this fail?\n" + written + "\nThanks."))
            assert v.forward and v.new_body is not None, v.record.to_dict()["decision"]
            sent = json.loads(v.new_body)["messages"][0]["content"]
        else:
            v = _decide_redacting_secrets(chat("hello"), headers={"openai-beta": [written.replace("\n", " ") + " ok"]})
            assert v.forward, v.record.to_dict()["decision"]
            sent = v.envelope_redacted[0]
        left = _pieces_left(core, fold_plain(sent).replace("\n", "").replace(" ", ""))
        assert not left, (where, left[:3])


@pytest.mark.parametrize("lead", ["password=", "api_key: ", "client_secret=", "Authorization token: "])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_long_generic_secret_with_characters_outside_the_token_run_is_removed_whole(lead, seed):
    """A `password=` value longer than the generic rule's 200 characters with "%2F", ":", "!" or
    "|" in it: the extension followed only the token characters, and 43 of its 16-character
    pieces went to the model. It now follows the rule's own value class to the value's end (as
    the streaming gate does)."""
    rnd = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "%:!/+=@#$^&*~|.-_"
    value = "".join(rnd.choice(alphabet) for _ in range(900))
    v = _decide_redacting_secrets(chat(f"config: {lead}{value} and more"))
    assert v.forward and v.new_body is not None, v.record.to_dict()["decision"]
    sent = json.loads(v.new_body)["messages"][0]["content"]
    assert "[SECRET.GENERIC]" in sent
    assert _pieces_left(value, sent) == [], sent[:160]
    assert sent.endswith(" and more")
