"""Request-side leak families, each as a generator over every provider surface: a value written so
that a model still reads it as the value (Unicode look-alikes, combining marks, invisible
characters, separators between every digit), spelled out over the elements of a JSON array
(strings of a character or a few, numbers of any length), or put in structured tool input the
model reads as JSON. Every surface of the registry, with tool calls and tool results where the
API has them. The property is the one of test_request_leaks.py: the value never reaches the
provider intact (a deny, or a redaction of every piece), nor the record.
"""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ext_proc.classify.normalize import fold_plain
from ext_proc.providers import match_surface, registry
from tests.unit.test_request_leaks import BODIES, TEXT, _get, _look_alikes, _places, assert_no_leak

CARD = "4111111111111111"
AWS = "AKIAIOSFODNN7QWERTYZ"

# Every surface of the registry that reads a prompt: the leak tests' bodies, the routes they do
# not name (Azure, Mistral, Anthropic on Bedrock invoke), and tool calls and tool results, whose
# structured input (an object, not a string) the model reads as JSON.
SURFACES = {
    **BODIES,
    "/openai/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "text", "text": TEXT}]}]},
    "/openai/deployments/gpt4o/chat/completions": {"messages": [{"role": "user", "content": TEXT},
                                                                {"role": "user", "content": TEXT}]},
    "/openai/deployments/emb/embeddings": {"input": [TEXT, TEXT]},
    "/openai/v1/responses": {"model": "gpt-4o-mini", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": TEXT}]},
        {"type": "function_call_output", "call_id": "c1", "output": TEXT}]},
    "/mistral/v1/chat/completions": {"model": "mistral-small-latest", "messages": [
        {"role": "user", "content": TEXT}, {"role": "user", "content": TEXT}]},
    "/model/anthropic.claude-3-haiku-20240307-v1:0/invoke": {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": TEXT}, {"type": "text", "text": TEXT}]}]},
    "/v1/chat/completions#tools": {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": TEXT},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": TEXT}]},
    "/v1/messages#tools": {"model": "claude-3-5-haiku-latest", "max_tokens": 64, "messages": [
        {"role": "user", "content": TEXT},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": TEXT}]}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]},
    "/v1beta/models/gemini-1.5-flash:generateContent#tools": {"contents": [
        {"role": "user", "parts": [{"text": TEXT}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "x"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"result": TEXT}}}]}],
        "tools": [{"functionDeclarations": [{"name": "lookup", "parameters": {"type": "object",
                                                                             "properties": {"q": {"type": "string"}}}}]}]},
    "/model/anthropic.claude-3-haiku-20240307-v1:0/converse#tools": {"messages": [
        {"role": "user", "content": [{"text": TEXT}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": "x"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"r": TEXT}}, {"text": TEXT}]}}]}],
        "toolConfig": {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {
            "type": "object", "properties": {"q": {"type": "string"}}}}}}]}},
}


def _route(name: str) -> str:
    return name.split("#", 1)[0]


# Surfaces whose bodies are the same API as one here: the stream variant of a route (the same
# body, "stream" in the path) and Azure's deployment completions (OpenAI's completions body).
_SAME_BODY_AS = {"bedrock.invoke_stream": "bedrock.invoke", "azure.completions": "openai.completions"}


def test_every_surface_of_the_registry_is_here_and_forwards_its_clean_body():
    from ext_proc.providers import registry
    from tests.unit.test_pipeline import decide, head

    names = {match_surface("POST", _route(p)).name for p in SURFACES}
    missing = {n for n in registry._SURFACES if n not in names and _SAME_BODY_AS.get(n) not in names}
    assert not missing, sorted(missing)
    for p, body in SURFACES.items():
        v = decide(json.dumps(body).encode(), head(_route(p)))
        assert v.forward, (p, v.status, v.code)


# (written, what must not survive in sequence)
VALUES = {
    "card": ("4111 1111 1111 1111", CARD),
    "card_bare": (CARD, CARD),
    "amex": ("3782 822463 10005", "378282246310005"),
    "aws": (AWS, AWS),
    "github": ("ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7", "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tV9wX1yZ3cD7"),
    "password": ("password=Xk9#mQ2$vL7pR4", "Xk9#mQ2$vL7pR4"),
    "ssn": ("SSN 536-22-8726", "536228726"),
    "email": ("jane.doe@example.com", "jane.doe@example.com"),
}
# Combining marks (Unicode Mn, Me) of every block below U+3000: accents, underlines, keycaps,
# enclosing circles, the marks of Indic and other scripts.
_MARKS = [cp for cp in range(0x300, 0x3000) if unicodedata.category(chr(cp)) in ("Mn", "Me")]


# Control characters without a glyph (NUL, backspace, ESC, DEL, C1 controls).
_CONTROLS = ["\x00", "\x08", "\x1b", "\x7f", "\x9b"]


def _evade(written: str, rng: random.Random) -> str:
    """WRITTEN with some characters replaced by forms the classifier folds to them, and combining
    marks, invisible or control characters after some of them (what a model still reads as the
    value)."""
    out = []
    for ch in written:
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice(_look_alikes(ch)))
        elif r < 0.5 and ch.isalnum():
            out.append(ch + "".join(chr(rng.choice(_MARKS)) for _ in range(rng.randint(1, 2))))
        elif r < 0.6 and ch.isalnum():
            out.append(ch + rng.choice(_CONTROLS))
        else:
            out.append(ch)
    text = "".join(out)
    assert fold_plain(text) == written
    return text


def _string_places(body):
    return [w for kind, w in _places(body) if kind == "string" and w]


def _objects(body):
    return [w for kind, w in _places(body) if kind == "object"]


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_value_written_in_look_alikes_and_marks_never_reaches_the_provider(path, data):
    """Full-width and other-script digits, confusable letters, combining marks (an accent, an
    underline, a keycap after each character), zero-width and control characters, non-breaking
    spaces as separators: the classifier folds them, so a model's reading of the value is what is
    matched."""
    body = json.loads(json.dumps(SURFACES[path]))
    name = data.draw(st.sampled_from(sorted(VALUES)))
    written, needle = VALUES[name]
    text = _evade(written, random.Random(data.draw(st.integers(0, 10**6))))
    where = data.draw(st.sampled_from(_string_places(body)))
    parent = _get(body, where[:-1])
    parent[where[-1]] = parent[where[-1]] + " " + text + " "
    assert_no_leak(_route(path), body, needle)


_DIGIT_SEPARATORS = ["\n", "\r\n", "\t", ",", ", ", "/", "-", " ", ". ", "\u00a0", "\u2011", "\x0c", "\x0b",
                     "\x1f", "\x85", "\x00", "\x1b"]


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_card_with_a_separator_between_every_digit_never_reaches_the_provider(path, data):
    """One digit per line, "4,1,1,1,...", "4, 1, 1, ...", "4/1/1/1": each digit its own token,
    the number still the number a model reads."""
    body = json.loads(json.dumps(SURFACES[path]))
    sep = data.draw(st.sampled_from(_DIGIT_SEPARATORS))
    where = data.draw(st.sampled_from(_string_places(body)))
    parent = _get(body, where[:-1])
    parent[where[-1]] = parent[where[-1]] + " card:\n" + sep.join(CARD) + "\n"
    assert_no_leak(_route(path), body, CARD)


def _pieces(value: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(value)), rng.randint(1, min(len(value) - 1, 24))))
    return [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_value_spelled_over_the_strings_of_an_array_never_reaches_the_provider(path, data):
    """["4", "1", "1", ...], ["AKIAIOS", "FODNN7", ...]: an array of strings anywhere (a stop list,
    metadata, a tool's input or result, a field nobody listed) is read as its elements in order."""
    body = json.loads(json.dumps(SURFACES[path]))
    name = data.draw(st.sampled_from(sorted(VALUES)))
    written, needle = VALUES[name]
    pieces = _pieces(written, random.Random(data.draw(st.integers(0, 10**6))))
    if data.draw(st.booleans()):
        pieces = _nest(pieces, random.Random(data.draw(st.integers(0, 10**6))))
    obj = _get(body, data.draw(st.sampled_from(_objects(body))))
    obj[data.draw(st.sampled_from(["stop", "values", "chars", "q", "result"]))] = pieces
    assert_no_leak(_route(path), body, needle)


def _digit_groups(digits: str, rng: random.Random) -> list[int]:
    """DIGITS cut into numbers (no group may start with 0: a JSON number would drop it)."""
    groups: list[str] = []
    i = 0
    while i < len(digits):
        n = rng.choice([1, 1, 2, 3, 4, 4, 4, 5, 6])
        j = min(len(digits), i + n)
        while j < len(digits) and digits[j] == "0":
            j += 1
        groups.append(digits[i:j])
        i = j
    return [int(g) for g in groups]


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_digits_written_as_the_numbers_of_an_array_never_reach_the_provider(path, data):
    """[4111, 1111, 1111, 1111], [4, 1, 1, ...], [536, 22, 8726]: numbers shorter than a finding
    are not inspected one by one, but a model reads the array's JSON, and the value in it."""
    body = json.loads(json.dumps(SURFACES[path]))
    digits = data.draw(st.sampled_from([CARD, "378282246310005", "5555555555554444", "536228726"]))
    numbers = _digit_groups(digits, random.Random(data.draw(st.integers(0, 10**6))))
    if digits == "536228726":
        numbers = [536, 22, 8726]
    if data.draw(st.booleans()):
        numbers = _nest(numbers, random.Random(data.draw(st.integers(0, 10**6))))
    obj = _get(body, data.draw(st.sampled_from(_objects(body))))
    obj[data.draw(st.sampled_from(["card", "values", "q", "result", "ssn"]))] = numbers
    assert_no_leak(_route(path), body, digits)


def _nest(items: list, rng: random.Random) -> list:
    """ITEMS in order, some of them wrapped in arrays, some runs of them in arrays of arrays
    ([[4111], [1111, [1111]], 1111]): a model reads the JSON, the order is the same."""
    out: list = []
    i = 0
    while i < len(items):
        n = rng.randint(1, 3)
        chunk = items[i:i + n]
        i += n
        r = rng.random()
        out.append(chunk if r < 0.4 else [chunk] if r < 0.6 else chunk[0] if len(chunk) == 1 else chunk)
    return out


@pytest.mark.parametrize("literal", ["4111111111111111", "4.111111111111111e15", "4111111111111111.0",
                                     "41111111111111110e-1", "4111111111111111E0"])
def test_a_card_written_as_one_json_number_in_any_notation_never_reaches_the_provider(literal):
    for path in ("/v1/chat/completions", "/v1/messages", "/v1beta/models/gemini-1.5-flash:generateContent"):
        raw = json.dumps(SURFACES[path])[:-1] + ', "extra": {"n": ' + literal + "}}"
        assert_no_leak(path, json.loads(raw), CARD)


def test_an_array_nested_in_arrays_is_read_once_and_whole():
    """[[4111], [1111, [1111]], 1111]: one segment for the outer array; the arrays inside it are
    not read for numbers again (linear however deep)."""
    from ext_proc.providers import parse_request
    from ext_proc.providers.document import read_document

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"x": [[4111], [1111, [1111]], 1111], "y": [[7], "a", [[8]]]}}
    parsed = parse_request(match_surface("POST", "/v1/chat/completions"), json.dumps(body).encode())
    numbers = [(s.path, s.text) for s in read_document(parsed).segments if s.kind == "numbers"]
    assert numbers == [(("metadata", "x"), "4111 1111 1111 1111"), (("metadata", "y"), "7 8")]


def test_openai_token_arrays_are_token_ids_not_digits():
    """An embeddings input of token ids is read by the model as tokens: a run of ids is not a
    card (what `_token_array` leaves out), so a legitimate token array is not refused."""
    from tests.unit.test_pipeline import decide, head

    for path, body in (("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[4111, 1111, 1111, 1111]]}),
                       ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [4111, 1111, 1111, 1111]}),
                       ("/v1/embeddings", {"model": "text-embedding-3-small", "input": [[4111, 1111], [1111, 1111]]}),
                       ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": [4111, 1111, 1111, 1111]})):
        v = decide(json.dumps(body).encode(), head(path))
        assert v.forward and v.new_body is None, (path, v.code)


def test_a_redacted_array_of_numbers_is_replaced_by_its_redacted_text():
    from tests.unit.test_pipeline import decide, head

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"ssn": [536, 22, 8726, "and", {"k": 1}], "n": [1, 2]}}
    v = decide(json.dumps(body).encode(), head())
    assert v.forward and v.new_body is not None
    out = json.loads(v.new_body)
    assert out["metadata"] == {"ssn": "[PII.US_SSN]", "n": [1, 2]}


@pytest.mark.parametrize("name,needle", [
    ("x-mock-4111111111111111", CARD), ("x-mock-card-4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("x-mock-akiaiosfodnn7qwertyz", "akiaiosfodnn7qwertyz"), ("x-envoy-4111111111111111", CARD)])
def test_a_header_name_let_through_by_a_prefix_is_classified_and_never_forwarded(name, needle):
    """A deployer's `x-mock-*` (or Envoy's own `x-envoy-` prefix) lets the client choose the rest
    of the name, which goes upstream as written: it is read like a value, and since a name cannot
    be rewritten, what the policy would redact or deny there refuses the request."""
    from ext_proc.pipeline.envelope import EnvelopeRules, inspect_envelope, refuse_unrewritable
    from ext_proc.pipeline.request import decide_request
    from tests.unit.test_pipeline import CLASSIFIER, KEY, NOW, POLICY, chat, head, ident

    rules = EnvelopeRules.from_config({"headers": {"*": ["x-mock-*"]}, "query": {"*": ["dbg_*"]}})
    h = head(headers={name: ["1"]})
    def has_findings(text: str) -> bool:
        return bool(CLASSIFIER.scan(text))

    env = inspect_envelope("POST", h.path, h.headers, h.surface, rules, has_findings=has_findings)
    v = decide_request(h, ident(), chat("hello"), policy=POLICY, classifier=CLASSIFIER, hash_key=KEY, now_ms=NOW,
                       max_body_bytes=1 << 20, envelope_segments=env.segments)
    v = refuse_unrewritable(v, env, "openai")
    assert not v.forward, (v.status, v.code)
    assert needle not in json.dumps(v.record.to_dict())
    # and a query parameter's name let through by a prefix (written as the client wrote it: a
    # header name arrives lower-cased, a query name does not)
    path = "/v1/chat/completions?dbg_" + (name.upper() if "akia" in name else name) + "=1"
    h = head(path)
    env = inspect_envelope("POST", path, {}, h.surface, rules, has_findings=has_findings)
    v = refuse_unrewritable(decide_request(h, ident(), chat("hello"), policy=POLICY, classifier=CLASSIFIER, hash_key=KEY,
                                           now_ms=NOW, max_body_bytes=1 << 20, envelope_segments=env.segments), env, "openai")
    assert not v.forward, (v.status, v.code)
    assert needle not in json.dumps(v.record.to_dict())


def test_names_named_exactly_are_not_segments():
    from ext_proc.pipeline.envelope import EnvelopeRules, inspect_envelope

    rules = EnvelopeRules.from_config({"headers": {"*": ["x-mock-*", "x-trace-id"]}})
    env = inspect_envelope("POST", "/v1/chat/completions", {"x-trace-id": ["t"], "openai-beta": ["b"], "x-mock-a": ["1"]},
                           match_surface("POST", "/v1/chat/completions"), rules)
    assert sorted(s.where for s in env.segments) == ["header-name:x-mock-a", "header:openai-beta", "header:x-mock-a",
                                                     "header:x-trace-id"]


# ---- numbers: a hint does not turn a typed field into a string; a confident reading still masks ----

_NUMBER_KEYS = ["seed", "max_tokens", "created", "timestamp", "user_id", "count", "n", "order", "ts"]
_ARRAY_KEYS = ["ids", "timestamps", "values", "order", "seeds"]
# Strings a provider accepts holding JSON (tool-call arguments, tool results, text): a number
# written in a tool's input or result as the model reads it.
_JSON_TEXT_KEYS = ("arguments", "output", "content", "result", "r", "text")


def _luhn_digit(payload: str) -> str:
    total = 0
    for i, c in enumerate(reversed(payload)):
        d = int(c)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def _npi_hint(rng: random.Random) -> int:
    """A random Luhn-valid NPI (10 digits, 1 or 2 first, Luhn over 80840 + the number), the way a
    seed, a timestamp or an id often is: a reading the classifier gives only as a hint. Often
    also a bare NANP phone (2, then a 4th digit 2-9), another hint: beside `tool_call_id` or
    `parallel_tool_calls` it was a phone at 70 until context words were read in a value's own
    field only (test_a_neighbouring_keys_name_is_no_context_for_a_value)."""
    body = rng.choice("12") + "".join(rng.choice("0123456789") for _ in range(8))
    return int(body + _luhn_digit("80840" + body))


def _card(rng: random.Random) -> int:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)])
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return int(body + _luhn_digit(body))


def _number_places(body, path=()):
    """("number", path) of every JSON number already in the body (max_tokens, maxOutputTokens,
    top_k...), ("object", path) of every object, ("json", path) of every string a provider accepts
    holding JSON (a tool's arguments or result, a text)."""
    if isinstance(body, dict):
        yield ("object", path)
        for k, v in body.items():
            if isinstance(v, str) and k in _JSON_TEXT_KEYS:
                yield ("json", path + (k,))
            yield from _number_places(v, path + (k,))
    elif isinstance(body, list):
        for i, v in enumerate(body):
            yield from _number_places(v, path + (i,))
    elif isinstance(body, (int, float)) and not isinstance(body, bool):
        yield ("number", path)


_CAPS = ("max_tokens", "maxTokens", "maxOutputTokens")


def _place_number(body, data, value, caps: bool = True):
    """VALUE (a number, or an array of numbers holding it) put at a random numeric place of BODY
    (not a token cap unless CAPS); returns a reader of that place in a forwarded body."""
    array = isinstance(value, list)      # typed fields (max_tokens, seed) take one number
    places = sorted((p for p in _number_places(body) if not (array and p[0] == "number")
                     and (caps or p[0] != "number" or p[1][-1] not in _CAPS)), key=repr)
    kind, where = data.draw(st.sampled_from(places))
    key = data.draw(st.sampled_from(_ARRAY_KEYS if array else [k for k in _NUMBER_KEYS if caps or k not in _CAPS]))
    if kind == "number":
        parent = _get(body, where[:-1])
        parent[where[-1]] = value
        return lambda out: _get(out, where)
    if kind == "object":
        _get(body, where)[key] = value
        return lambda out: _get(out, where)[key]
    parent = _get(body, where[:-1])
    parent[where[-1]] = json.dumps({"q": "x", key: value})
    return lambda out: json.loads(_get(out, where))[key]


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_number_read_only_as_a_hint_is_forwarded_as_the_number(path, data):
    """`"seed": 1764480004`: a random Luhn-valid NPI in a seed, max_tokens, metadata, a tool's
    input or result (alone, or in an array of numbers) is a reading at confidence 40 that only
    provider words would confirm. Under the default policy it used to be redacted to the string
    "[PHI.US_NPI]" and the provider answered 400; a number has no context, so below the shared
    floor (NUMBER_MIN_CONFIDENCE, the response side's too) it is not a finding of the number."""
    from ext_proc.classify import NUMBER_MIN_CONFIDENCE
    from ext_proc.providers import parse_request
    from ext_proc.streaming import inspector
    from tests.unit.test_pipeline import CLASSIFIER, decide, head

    assert inspector.NUMBER_MIN_CONFIDENCE is NUMBER_MIN_CONFIDENCE    # one floor for both sides
    rng = random.Random(data.draw(st.integers(0, 10**9)))
    n = _npi_hint(rng)
    assert CLASSIFIER.scan(str(n)) and all(f.confidence < NUMBER_MIN_CONFIDENCE for f in CLASSIFIER.scan(str(n)))
    value = data.draw(st.sampled_from([n, [n, rng.randint(0, 99)], [[n], [_npi_hint(rng)]]]))
    body = json.loads(json.dumps(SURFACES[path]))
    read = _place_number(body, data, value)
    raw = json.dumps(body).encode()
    v = decide(raw, head(_route(path)))
    assert v.forward, (path, v.status, v.code)
    forwarded = v.new_body if v.new_body is not None else raw
    out = json.loads(forwarded)
    assert read(out) == value and type(read(out)) is type(value), (path, read(out))
    parse_request(match_surface("POST", _route(path)), forwarded)     # still the provider's shape
    summary = v.record.to_dict()["classification"]["summary"]
    assert "phi.us_npi" not in summary and "pii.phone" not in summary, summary


def _decide_masking(raw: bytes, path: str):
    """The pure decision under a policy that masks every label (the default one refuses a card,
    so what a redaction forwards is read under this one)."""
    from ext_proc.pipeline.request import decide_request
    from ext_proc.policy import load_policy_text
    from tests.unit.test_pipeline import CLASSIFIER, KEY, NOW, head, ident

    policy = load_policy_text("id: mask-all\nroutes: [{id: inference, apis: [chat, responses, embeddings, moderations, "
                              "completions, messages, count_tokens, generate, converse, invoke]}]\nrules:\n"
                              "  - {id: mask, effect: redact, when: {labels: {any: ['*']}}, redact: {'*': mask}}\n"
                              "  - {id: permit, effect: permit}\n")
    return decide_request(head(path), ident(), raw, policy=policy, classifier=CLASSIFIER, hash_key=KEY,
                          now_ms=NOW, max_body_bytes=4 << 20)


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_card_written_as_a_json_number_in_tool_input_or_results_is_still_masked(path, data):
    """The floor is for hints only: a random Luhn-valid card as a JSON number (a tool's input or
    result, metadata, an existing numeric field; alone or beside other numbers) is a confident
    reading (85). The default policy refuses it; a masking policy replaces the number by the
    masked text, a string (today's behaviour: a card is not forwarded for a field's type's sake)."""
    rng = random.Random(data.draw(st.integers(0, 10**9)))
    card = _card(rng)
    value = data.draw(st.sampled_from([card, [card, _npi_hint(rng)], [[card]]]))
    body = json.loads(json.dumps(SURFACES[path]))
    # Not a token cap: the record keeps the request's max_tokens as a number (see
    # test_a_card_as_the_token_cap_is_not_kept_in_the_record).
    read = _place_number(body, data, value, caps=False)
    assert_no_leak(_route(path), body, str(card))
    raw = json.dumps(body).encode()
    v = _decide_masking(raw, _route(path))
    assert v.forward and v.new_body is not None, (path, v.status, v.code)
    assert str(card) not in v.new_body.decode()
    masked = read(json.loads(v.new_body))
    # The number (alone, or the array whose numbers were read together) is now the masked text.
    assert "[PCI.CARD_NUMBER]" in json.dumps(masked) and str(card) not in json.dumps(masked), (path, masked)
    from ext_proc.providers import parse_request
    parse_request(match_surface("POST", _route(path)), v.new_body)


class _Stub:
    """A classifier that reads one fixed finding wherever the text holds NEEDLE."""

    max_input_chars = 1 << 20
    max_match_chars = 64

    def __init__(self, needle: str, confidence: int) -> None:
        self.needle, self.confidence = needle, confidence

    def scan(self, text: str, **_kwargs):
        from ext_proc.classify import Finding

        i = text.find(self.needle)
        return [] if i < 0 else [Finding("phi.us_npi", i, i + len(self.needle), self.confidence, None)]


@pytest.mark.parametrize("confidence", [49, 50])
def test_the_floor_applies_to_findings_in_numbers_only(confidence):
    """At the floor a finding in a number stands, below it not; a finding that reaches from a
    string into a number (read together in the field view) stands at any confidence: the model
    reads the two as one value, and the string is context."""
    from ext_proc.classify import NUMBER_MIN_CONFIDENCE
    from ext_proc.pipeline.inspect import classify_document
    from ext_proc.providers import parse_request
    from ext_proc.providers.document import read_document

    assert NUMBER_MIN_CONFIDENCE == 50
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"a": [1234567, 7654321], "b": 2345678, "c": ["x9", 8765432]}}
    parsed = parse_request(match_surface("POST", "/v1/chat/completions"), json.dumps(body).encode())
    doc = read_document(parsed)
    kinds = {seg.path: seg.kind for seg in doc.segments}
    assert kinds[("metadata", "a")] == "numbers" and kinds[("metadata", "b")] == "number"
    for needle, paths in (("1234567 7654321", {("metadata", "a")}), ("2345678", {("metadata", "b")}),
                          ('x9", 8765432', {("metadata", "c", 0), ("metadata", "c", 1)})):
        found = classify_document(_Stub(needle, confidence), doc, parsed.body)
        got = {doc.segments[i].path for i in found.per_segment}
        expect = paths if confidence >= 50 or len(paths) > 1 else set()
        assert got == expect, (needle, got)
        assert len(found.logical) == (1 if expect else 0)


@pytest.mark.parametrize("path", ["/v1/chat/completions#tools", "/v1/messages#tools", "/openai/v1/responses"])
def test_a_hint_in_a_string_inside_json_text_is_still_masked_and_the_json_kept(path):
    """A string that is JSON (tool-call arguments, a tool result) is read whole and its values
    again: a hint in a number there stays a number, a hint in a string is masked inside, and the
    string stays JSON either way."""
    from tests.unit.test_pipeline import decide, head

    body = json.loads(json.dumps(SURFACES[path]))
    where = next(w for kind, w in _number_places(body) if kind == "json" and w[-1] in ("arguments", "content", "output"))
    _get(body, where[:-1])[where[-1]] = json.dumps({"seed": 1764480004, "note": "ref 1764480004"})
    v = decide(json.dumps(body).encode(), head(_route(path)))
    assert v.forward and v.new_body is not None, (v.status, v.code)
    inner = json.loads(_get(json.loads(v.new_body), where))
    assert inner == {"seed": 1764480004, "note": "ref [PHI.US_NPI]"}, inner


def test_a_phone_shaped_number_beside_a_call_key_is_read_with_context():
    """A neighbouring key (`"seed": 2736819303, "parallel_tool_calls": true`) used to give the
    phone rule its context word `call` (70, above the floor): the field view now fences each
    field, and a value's context comes from its own key and text only."""
    from tests.unit.test_pipeline import decide

    body = {"model": "gpt-4o-mini", "seed": 2736819303, "parallel_tool_calls": True,
            "messages": [{"role": "user", "content": "hi"}]}
    v = decide(json.dumps(body).encode())
    assert v.forward and v.new_body is None, v.new_body


def _luhn_card(rnd: random.Random, length: int) -> int:
    digits = [4] + [rnd.randrange(10) for _ in range(length - 2)]
    total = sum(d if i % 2 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
    return int("".join(map(str, digits)) + str((10 - total % 10) % 10))


@pytest.mark.parametrize("field", registry.ceiling_fields())
def test_a_card_as_a_token_ceiling_is_kept_out_of_the_record(field):
    """Found while writing the card-in-a-number generator: the request was refused (pci), but the
    record's policy input kept `max_tokens` as the client sent it, a card number, and
    `estimated_tokens` as the prompt's estimate plus that number. Every provider's ceiling field
    (`max_tokens`, `max_completion_tokens`, `max_output_tokens`, Gemini's and Bedrock's nested
    ones), Visa numbers of 16 and 19 digits; neither the number nor the estimate that holds it is recorded,
    under the default policy (refused) and one that masks every label (forwarded)."""
    from tests.unit.test_pipeline import CLASSIFIER, decide

    rnd = random.Random(f"ceiling/{field}")
    for case in range(6):
        card = _luhn_card(rnd, rnd.choice([16, 19]))      # Visa lengths the card rule reads
        body: dict = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        obj = body
        for step in field[:-1]:
            obj = obj.setdefault(step, {})
        obj[field[-1]] = card
        raw = json.dumps(body).encode()
        assert any(f.label == "pci.card_number" for f in CLASSIFIER.scan(str(card))), card
        for v in (decide(raw), _decide_masking(raw, "/v1/chat/completions")):
            rec = json.dumps(v.record.to_dict())
            assert str(card) not in rec and str(card + 1) not in rec, (field, case, v.forward)
            request = v.record.to_dict()["input"]["request"]
            assert request["max_tokens"] is None and request["estimated_tokens"] < 100, request
            assert v.estimated_tokens == request["estimated_tokens"]


# ---- context words: a value's own key and text give it context, a neighbouring key's name not ----

# Keys that hold a label's context word as a component of an identifier: provider API parameters
# and ids (`call` in parallel_tool_calls, tool_call_id, call_id, functionCall; `provider` for an
# NPI, as OpenRouter's routing object) and a deployer's metadata flags.
_NEIGHBOURS = {
    "phone": ["parallel_tool_calls", "tool_call_id", "function_call", "call_id", "functionCall", "tool_calls",
              "sms_opt_in", "tel", "tel_verified", "contact_id", "fax_ok", "cellCount", "mobileApp", "reach_out"],
    "npi": ["provider", "provider_id", "providerOptions", "doctor_mode", "prescriber_ok"],
    "ssn": ["ssn_masked", "tin", "ssnRequired", "social_security_check"],
    "dob": ["dob_checked", "born_at", "birthday_reminder", "date_of_birth_required", "dob"],
}
# (no digits in a string: the reading view glues a tool call's strings with nothing, and "c1" +
# "07/02/1989" reads "107/02/1989", an SSN with separators, whatever the keys)
_NEIGHBOUR_VALUES = [True, False, None, 1, "auto", {}, []]
# Keys that say what the value is (its own context), and its own text saying so.
_OWN_KEYS = {
    "phone": ["phone", "mobile", "phone_number", "tel", "fax", "contactPhone", "cell", "whatsapp"],
    "npi": ["npi", "prescriber_npi", "physician", "providerNpi"],
    "ssn": ["ssn", "tin", "patient_ssn", "ssnValue"],
    "dob": ["dob", "patient_dob", "date_of_birth", "birthDate", "born"],
}
_OWN_TEXT = {"phone": "call me at {}", "npi": "prescriber NPI {}", "ssn": "my SSN is {}", "dob": "born {}"}
_NEUTRAL_KEYS = {"number": ["seed", "created", "timestamp", "user_id", "count", "n", "order", "ts"],
                 "date": ["created", "since", "start", "updated_at", "valid_from", "day"]}


def _ctx_value(label: str, rng: random.Random):
    """A value the classifier reads as LABEL only with context: a bare NANP phone (40), a
    Luhn-valid NPI (40), nine digits that pass the SSN rules (none without context), a date
    (none without context)."""
    from ext_proc.classify import validators

    if label == "phone":
        while True:
            s = (rng.choice("23456789") + "".join(rng.choice("0123456789") for _ in range(2)) + rng.choice("23456789")
                 + "".join(rng.choice("0123456789") for _ in range(6)))
            if len(set(s)) >= 3:
                return int(s)
    if label == "npi":
        return _npi_hint(rng)
    if label == "ssn":
        while True:
            s = rng.choice("12345678") + "".join(rng.choice("0123456789") for _ in range(8))
            if validators.ssn_ok(s):
                return int(s)
    y, m, d = rng.randint(1940, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}", f"{d}.{m}.{y}"])


def _with_key(obj: dict, key: str, value, beside: str | None = None, neighbour=None, before: bool = False) -> dict:
    """OBJ with KEY set to VALUE (in place when OBJ has it) and, when BESIDE, the key BESIDE
    holding NEIGHBOUR right before or after it."""
    items = [(k, v) for k, v in obj.items() if k not in (key, beside)]
    at = next((n for n, (k, _) in enumerate(obj.items()) if k == key), len(items))
    at = min(at, len(items))
    pair = [(key, value)]
    if beside is not None:
        pair = [(beside, neighbour), (key, value)] if before else [(key, value), (beside, neighbour)]
    out = dict(items[:at] + pair + items[at:])
    obj.clear()
    obj.update(out)
    return obj


def _place_beside(body, pick, value, key: str | None, beside: str | None, neighbour, before: bool):
    """VALUE at a place of BODY PICK chooses (an existing numeric field, for a number without KEY;
    an object; a string a provider accepts holding JSON), under KEY (or the field's own), with
    the key BESIDE (when not None) next to it; returns a reader of that place in a forwarded
    body."""
    number = not isinstance(value, str)
    places = sorted((p for p in _number_places(body) if number and key is None or p[0] != "number"), key=repr)
    kind, where = pick(places)
    if kind == "number":
        parent = _get(body, where[:-1])
        _with_key(parent, where[-1], value, beside, neighbour, before)
        return lambda out: _get(out, where)
    own = key or pick(_NEUTRAL_KEYS["number" if number else "date"])
    if kind == "object":
        _with_key(_get(body, where), own, value, beside, neighbour, before)
        return lambda out: _get(out, where)[own]
    parent = _get(body, where[:-1])
    parent[where[-1]] = json.dumps(_with_key({"q": "x"}, own, value, beside, neighbour, before))
    return lambda out: json.loads(_get(out, where))[own]


def _accepted(path: str, raw: bytes) -> bool:
    from ext_proc.providers import parse_request
    from ext_proc.providers.body import BadRequestBody

    try:
        parse_request(match_surface("POST", _route(path)), raw)
    except BadRequestBody:
        return False
    return True


_CTX_LABELS = {"phone": "pii.phone", "npi": "phi.us_npi", "ssn": "pii.us_ssn", "dob": "pii.date_of_birth"}


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_neighbouring_keys_name_is_no_context_for_a_number(path, data):
    """`"seed": 2736819303, "parallel_tool_calls": true`, `"n": 1234567893, "provider": {}`: a
    phone-shaped number, a Luhn-valid NPI or nine digits that pass the SSN rules, in a typed
    numeric field (an existing one, any object, a tool's JSON input or result), next to a key
    whose name holds a context word of that label (before or after it). The key names the
    neighbour, not the number: it is forwarded as it was (a number stays a number) and the body
    stays the provider's shape. On the old classifier the neighbour's word made it a finding (a
    phone at 70, an NPI at 90, an SSN at 80) and the default policy masked it into a string."""
    from ext_proc.providers import parse_request
    from tests.unit.test_pipeline import decide, head

    seed = data.draw(st.integers(0, 10**9))
    label = data.draw(st.sampled_from(sorted(set(_NEIGHBOURS) - {"dob"})))   # numbers (a date is a string)
    value = _ctx_value(label, random.Random(seed))
    beside = data.draw(st.sampled_from(_NEIGHBOURS[label]))
    neighbour = data.draw(st.sampled_from(_NEIGHBOUR_VALUES))
    before = data.draw(st.booleans())

    def decided(with_neighbour: bool):
        body = json.loads(json.dumps(SURFACES[path]))
        read = _place_beside(body, random.Random(seed).choice, value, None, beside if with_neighbour else None,
                             neighbour, before)
        raw = json.dumps(body).encode()
        assume(_accepted(path, raw))     # not a field the API types otherwise (a message's function_call)
        v = decide(raw, head(_route(path)))
        assert v.forward, (path, v.status, v.code)
        forwarded = v.new_body if v.new_body is not None else raw
        return v, read(json.loads(forwarded)), forwarded, raw

    # Without the neighbour the value goes as it is (but where the reading view glues it to a
    # reading string ending in digits: "u1" + "07/02/1989" reads an SSN, whatever the keys).
    _, alone, _, _ = decided(False)
    assume(alone == value)
    v, got, forwarded, raw = decided(True)
    assert got == value and type(got) is type(value), (path, got, raw[:600])
    parse_request(match_surface("POST", _route(path)), forwarded)     # still the provider's shape
    summary = v.record.to_dict()["classification"]["summary"]
    assert _CTX_LABELS[label] not in summary, summary


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_values_own_key_or_text_still_gives_it_context(path, data):
    """The same values where their own key says what they are (`"phone": 2736819303`,
    `"patient_dob": "1990-01-02"`, `"tin": 536228726`) or their own text does ("call me at
    2736819303"), with or without a neighbour: still found and masked."""
    from tests.unit.test_pipeline import decide, head

    seed = data.draw(st.integers(0, 10**9))
    label = data.draw(st.sampled_from(sorted(_OWN_KEYS)))
    value = _ctx_value(label, random.Random(seed))
    body = json.loads(json.dumps(SURFACES[path]))
    if data.draw(st.booleans()):
        key = data.draw(st.sampled_from(_OWN_KEYS[label]))
        written = value
    else:
        key = data.draw(st.sampled_from(_NEUTRAL_KEYS["date"]))
        written = _OWN_TEXT[label].format(value)
    beside = data.draw(st.sampled_from([None, *(n for n in _NEIGHBOURS[label] if n != key)]))
    read = _place_beside(body, random.Random(seed).choice, written, key, beside,
                         data.draw(st.sampled_from(_NEIGHBOUR_VALUES)), data.draw(st.booleans()))
    raw = json.dumps(body).encode()
    assume(_accepted(path, raw))
    v = decide(raw, head(_route(path)))
    assert v.forward and v.new_body is not None, (path, v.status, v.code)
    assert _CTX_LABELS[label] in v.record.to_dict()["classification"]["summary"]
    got = json.dumps(read(json.loads(v.new_body)))
    assert str(value) not in got and ("[PII." in got or "[PHI." in got), (path, got)
    assert str(value) not in v.new_body.decode(), path


@pytest.mark.parametrize("path", sorted(SURFACES))
@pytest.mark.parametrize("form", [
    {"field": "SSN", "value": "{v}"},
    {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "{v}"},
    {"label": "Date of birth", "value": "{d}"},
    {"name": "Mobile phone", "value": "{p}"},
])
def test_a_string_keeps_the_context_its_siblings_give(path, form):
    """Key/value lists (a form's fields, FHIR identifiers): a sibling value says what a string
    is. Only numbers are fenced from their neighbours (a masked string is still a string), so the
    SSN, the date of birth and the phone here are still found and masked, in an object of the
    body and in a tool's JSON."""
    from tests.unit.test_pipeline import decide, head

    values = {"v": "536228726", "d": "1984-03-12", "p": "2736819303"}
    filled = {k: v.format(**values) for k, v in form.items()}
    secret = filled["value"]
    for as_json in (False, True):
        body = json.loads(json.dumps(SURFACES[path]))
        places = sorted((p for p in _number_places(body) if p[0] != "number" and (p[0] == "json") == as_json), key=repr)
        if not places:
            continue
        kind, where = random.Random(f"{path}/{as_json}").choice(places)
        if kind == "object":
            _get(body, where).update(filled)
        else:
            parent = _get(body, where[:-1])
            parent[where[-1]] = json.dumps(filled)
        raw = json.dumps(body).encode()
        if not _accepted(path, raw):
            continue
        v = decide(raw, head(_route(path)))
        forwarded = (v.new_body or raw).decode() if v.forward else ""
        assert secret not in forwarded.replace("-", "") and secret not in forwarded, (path, as_json, forwarded[:400])
