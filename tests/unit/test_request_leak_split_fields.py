"""A value split across the fields of an object, or across the same field of sibling objects
(`{"a": "4111 1111", "b": "1111 1111"}`, `{"p1": "jane.doe", "p2": "@example.com"}`, keys
`{"4111 1111": {"1111 1111": 1}}`, `[{"d": "4111"}, {"d": "1111"}, ...]`): a model reads the JSON
and can join the pieces, so the request side reads each object's keys, and its string values,
joined (providers/document.py `object_views`). A generator over random secrets split at random
points into 2-5 pieces, placed in any object of every surface's body (tool input and results,
JSON-in-string tool arguments included); the property of test_request_leaks.py: never forwarded
intact (a deny, or every piece masked), nor in the record. And the other way: ordinary tool
schemas, tool results with ids, timestamps and prices, metadata objects give no new findings.
"""

from __future__ import annotations

import json
import random
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.unit.test_pipeline import CLASSIFIER
from tests.unit.test_request_leak_families import SURFACES, _luhn_digit, _number_places, _route
from tests.unit.test_request_leaks import _get, assert_no_leak

_B32 = string.ascii_uppercase + "234567"
_ALNUM = string.ascii_letters + string.digits


def _secret(kind: str, rng: random.Random) -> tuple[str, str]:
    """A random secret of KIND: (as written, the characters that must not survive in sequence)."""
    if kind == "card":
        prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                     ("6011", 16)])
        body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
        digits = body + _luhn_digit(body)
        if rng.random() < 0.5:
            return digits, digits
        groups = [digits[i:i + 4] for i in range(0, len(digits), 4)] if length == 16 else \
            [digits[:4], digits[4:10], digits[10:]]
        return rng.choice([" ", "-"]).join(groups), digits
    if kind == "ssn":
        while True:
            area = rng.randint(1, 899)
            if area != 666:
                break
        ssn = f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        return "SSN " + ssn, ssn.replace("-", "")
    if kind == "email":
        local = rng.choice(["jane", "j", "ops", "maria"]) + rng.choice([".", "_", ""]) + \
            "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8)))
        domain = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
        email = f"{local}@{domain}.{rng.choice(['com', 'org', 'net', 'de'])}"
        return email, email
    if kind == "aws":
        key = rng.choice(["AKIA", "ASIA"]) + "".join(rng.choice(_B32) for _ in range(16))
        return key, key
    if kind == "github":
        token = rng.choice(["ghp_", "gho_", "ghs_"]) + "".join(rng.choice(_ALNUM) for _ in range(36))
        return token, token
    assert kind == "password"
    value = "".join(rng.choice(_ALNUM) for _ in range(8)) + rng.choice("#$!%&*") + \
        "".join(rng.choice(_ALNUM) for _ in range(rng.randint(3, 8))) + str(rng.randint(10, 99))
    return rng.choice(["password=", "api_key: ", "secret="]) + value, value


KINDS = ["card", "ssn", "email", "aws", "github", "password"]


def _split(written: str, rng: random.Random) -> list[str]:
    n = rng.randint(2, min(5, len(written)))
    cuts = sorted(rng.sample(range(1, len(written)), n - 1))
    return [written[a:b] for a, b in zip([0, *cuts], [*cuts, len(written)], strict=True)]


def _holder(pieces: list[str], how: str, rng: random.Random) -> tuple[dict | list, bool]:
    """The pieces as one JSON value: (value, True) to add under a new key, (members, False) to
    merge into an existing object."""
    if how == "values":          # {"a": "4111 1111", "b": "1111 1111"}, merged among the object's own
        return {f"{rng.choice(['part', 'v', 'field', 'x'])}{k}": p for k, p in enumerate(pieces)}, False
    if how == "keys" and len(set(pieces)) == len(pieces):      # {"4111 1111": 1, "1111 1111": "x"}
        return {p: rng.choice([1, "x", True, None, {"k": 1}]) for p in pieces}, False
    if how in ("keys", "nested_keys"):                         # {"4111 1111": {"1111 1111": 1}}
        inner: object = rng.choice([1, "x", None])
        for p in reversed(pieces):
            inner = {p: inner}
        assert isinstance(inner, dict)
        return inner, True
    assert how == "siblings"     # [{"id": 0, "d": "4111"}, {"id": 1, "d": "1111"}, ...]
    field = rng.choice(["d", "value", "chunk", "text_part"])
    return [({"id": k, field: p} if rng.random() < 0.5 else {field: p}) for k, p in enumerate(pieces)], True


_HOW = ["values", "keys", "nested_keys", "siblings"]


@pytest.mark.parametrize("path", sorted(SURFACES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_secret_split_over_the_fields_of_an_object_never_reaches_the_provider(path, data):
    rng = random.Random(data.draw(st.integers(0, 10**9)))
    written, needle = _secret(data.draw(st.sampled_from(KINDS)), rng)
    assume(CLASSIFIER.scan(written))        # 1 in ~300 random AWS keys is below the entropy floor
    pieces = _split(written, rng)
    holder, whole = _holder(pieces, data.draw(st.sampled_from(_HOW)), rng)
    body = json.loads(json.dumps(SURFACES[path]))
    places = sorted(_number_places(body), key=repr)
    places = [p for p in places if p[0] in ("object", "json")]
    kind, where = data.draw(st.sampled_from(places))
    if kind == "object":
        obj = _get(body, where)
    else:                        # a string that holds JSON: a tool's arguments or result
        obj = {"q": "x"}
    if whole:
        obj[data.draw(st.sampled_from(["args", "result", "extra", "items"]))] = holder
    else:
        assert isinstance(holder, dict)
        obj.update(holder)
    if kind == "json":
        parent = _get(body, where[:-1])
        parent[where[-1]] = json.dumps(obj)
    assert_no_leak(_route(path), body, needle)


# ---- and not where nothing was split: ordinary objects a model reads ----

_TOOLS_BODY = {
    "model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 800, "seed": 1764480004, "user": "u-7d1f",
    "metadata": {"request_id": "req_8f2a91c3", "trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                 "tenant": "acme", "build": "2024.11.30-4411", "region": "eu-west-1"},
    "messages": [
        {"role": "system", "content": "You are a billing assistant."},
        {"role": "user", "content": "What did order 4411 cost, and when did it ship?"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_Qx81aZ0b", "type": "function", "function": {
                "name": "get_order", "arguments": json.dumps({"order_id": "4411", "include": ["items", "shipping"],
                                                              "currency": "USD", "as_of": "2024-11-30T07:26:53Z"})}},
            {"id": "call_7Hn2kLp0", "type": "function", "function": {
                "name": "get_invoice", "arguments": json.dumps({"invoice": "INV-2024-000417", "page": 1, "per_page": 50})}}]},
        {"role": "tool", "tool_call_id": "call_Qx81aZ0b", "content": json.dumps({
            "order": {"id": "ord_2Yb81K", "created": "2024-11-28T14:02:11Z", "updated": "2024-11-29T09:15:40Z",
                      "status": "shipped", "total": "1299.00", "tax": "104.92", "currency": "USD",
                      "sku": "SKU-4111-22", "zip": "94107", "phone_ext": "1234", "weight_kg": "12.5"},
            "items": [{"sku": "A-1001", "qty": 2, "price": "499.50", "id": "item_01H8X"},
                      {"sku": "B-2002", "qty": 1, "price": "300.00", "id": "item_01H8Y"},
                      {"sku": "C-3003", "qty": 3, "price": "0.00", "id": "item_01H8Z"}],
            "shipping": {"carrier": "UPS", "tracking": "1Z999AA10123456784", "eta": "2024-12-02",
                         "version": "v2", "hub": "SFO", "dock": "12"}})},
        {"role": "tool", "tool_call_id": "call_7Hn2kLp0", "content": json.dumps({
            "invoice": "INV-2024-000417", "lines": [{"n": 1, "amount": "1194.08", "ts": "1764480004"},
                                                    {"n": 2, "amount": "104.92", "ts": "1764480071"}],
            "etag": "W/\"5f3a-1a2b3c\"", "sha": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"})}],
    "tools": [{"type": "function", "function": {
        "name": "get_order", "description": "Look up an order by id.",
        "parameters": {"type": "object", "required": ["order_id"], "additionalProperties": False, "properties": {
            "order_id": {"type": "string", "pattern": "^[0-9]{4,12}$", "minLength": 4, "maxLength": 12},
            "include": {"type": "array", "items": {"type": "string", "enum": ["items", "shipping", "refunds"]}},
            "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"], "default": "USD"},
            "as_of": {"type": "string", "format": "date-time"}}}}},
        {"type": "function", "function": {
            "name": "get_invoice", "description": "Fetch an invoice page.",
            "parameters": {"type": "object", "properties": {
                "invoice": {"type": "string", "examples": ["INV-2024-000001"]},
                "page": {"type": "integer", "minimum": 1}, "per_page": {"type": "integer", "maximum": 100}}}}}],
}

_ANTHROPIC_TOOLS_BODY = {
    "model": "claude-3-5-haiku-latest", "max_tokens": 1024, "metadata": {"user_id": "8f2a91c3-77b4-4e0b-9c1d-2e5f6a7b8c9d"},
    "system": [{"type": "text", "text": "Answer from the tools.", "cache_control": {"type": "ephemeral"}}],
    "tools": [{"name": "search", "description": "Search the catalogue.", "input_schema": {
        "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "default": 10},
                                         "since": {"type": "string", "format": "date"}}, "required": ["query"]}}],
    "messages": [
        {"role": "user", "content": "Find the blue widgets added since March."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "search",
                                           "input": {"query": "blue widget", "limit": 5, "since": "2024-03-01"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": [
            {"type": "text", "text": json.dumps([
                {"id": "w-1007", "name": "Blue widget", "price": "19.99", "stock": "412", "added": "2024-03-04"},
                {"id": "w-1093", "name": "Blue widget XL", "price": "24.99", "stock": "87", "added": "2024-04-11"},
                {"id": "w-1201", "name": "Blue widget mini", "price": "9.99", "stock": "1300", "added": "2024-06-19"}])}]}]}],
}


def _findings(path: str, body: dict, joined: bool) -> list[dict]:
    from ext_proc.pipeline.inspect import classify_document
    from ext_proc.providers import match_surface, parse_request
    from ext_proc.providers.document import read_document

    parsed = parse_request(match_surface("POST", path), json.dumps(body).encode())
    doc = read_document(parsed)
    if not joined:
        doc.object_groups = []
    return classify_document(CLASSIFIER, doc, parsed.body).records()


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", _TOOLS_BODY), ("/v1/messages", _ANTHROPIC_TOOLS_BODY)])
def test_ordinary_tool_schemas_results_and_metadata_give_no_new_findings(path, body):
    """Tool schemas, tool results with ids, timestamps, prices, SKUs and tracking numbers, metadata
    objects: read joined per object and in runs, they give nothing the fields alone did not (the
    NPI-shaped timestamp string and the like are found as before, each in its own field)."""
    from tests.unit.test_pipeline import decide, head

    assert _findings(path, body, True) == _findings(path, body, False)
    assert len(json.dumps(body)) > 1000
    v = decide(json.dumps(body).encode(), head(path))
    assert all("parts" not in f for f in v.record.to_dict()["classification"]["findings"])


def test_each_key_and_string_is_in_one_group_of_each_kind():
    """Linear: an object inside another belongs to the outer one's groups (not a group of its own
    as well), and an array's objects start groups of their own."""
    from ext_proc.providers import match_surface, parse_request
    from ext_proc.providers.document import read_document

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "tool_choice": {"type": "function", "function": {"name": "a", "x": {"y": "b", "z": {"w": "c"}}}},
            "extra": [{"d": "1", "e": "2"}, {"d": "3"}]}
    parsed = parse_request(match_surface("POST", "/v1/chat/completions"), json.dumps(body).encode())
    doc = read_document(parsed)
    from ext_proc.providers.document import RUN_BREAK

    texts = doc.object_views()[0].text.split(RUN_BREAK)      # the groups, glued
    assert "gpt-4o-minifunctionabc" in texts            # the body's string values, nested objects too
    assert "13" in texts and "12" in texts              # field d across the array's objects; one object
    assert "modelmessagestool_choicetypefunctionnamexyzwextra" in texts    # keys likewise
    assert "rolecontent" in texts                       # an array's object: a group of its own
    seen_keys: dict[int, int] = {}
    for group in doc.object_groups:
        for i in group:
            seen_keys[i] = seen_keys.get(i, 0) + 1
    assert max(seen_keys.values()) <= 2                 # its object's group, and one field across siblings


@pytest.mark.parametrize("n", [2000, 20000])
def test_a_wide_or_deep_object_is_read_in_linear_time(n):
    """Many fields, or objects nested deep: every key and string is written once in each view."""
    from ext_proc.providers import match_surface, parse_request
    from ext_proc.providers.document import read_document

    deep: object = "v"
    for k in range(min(n, 30)):
        deep = {f"k{k}": deep, f"s{k}": "ab"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"wide": {f"f{k}": "x" for k in range(n)}, "deep": deep,
                         "rows": [{"a": "1", "b": "2"} for _ in range(n // 10)]}}
    parsed = parse_request(match_surface("POST", "/v1/chat/completions"), json.dumps(body).encode())
    doc = read_document(parsed)
    from ext_proc.providers.document import RUN_BREAK, RUN_PIECES

    glued, runs = (len(v.text) for v in doc.object_views())
    strings = sum(len(s.text) for s in doc.segments)
    # keys and values with their nested objects' and on their own, a field across objects
    assert glued <= 3 * strings + len(RUN_BREAK) * len(doc.object_groups)
    # each piece in at most RUN_PIECES - 1 runs from each of RUN_PIECES starts, plus the breaks
    assert runs <= (RUN_PIECES - 1) * RUN_PIECES * (strings + len(RUN_BREAK) * len(doc.segments))
