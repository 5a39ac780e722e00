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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.classify.normalize import fold_plain
from ext_proc.providers import match_surface
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
