"""The envelope module (pipeline/envelope.py) on malformed, oversized and hostile input, and the
per-request inspection budget (pipeline/budget.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.classify import Classifier, InputTooLarge
from ext_proc.classify.engine import InspectionBudgetExceeded
from ext_proc.pipeline.budget import BudgetedClassifier
from ext_proc.pipeline.envelope import (
    MAX_QUERY_BYTES,
    MAX_QUERY_PARAMS,
    EnvelopeRejected,
    EnvelopeRules,
    body_refused,
    inspect_envelope,
    recordable_name,
)
from ext_proc.providers import match_surface

CLASSIFIER = Classifier()
AWS_KEY = "AKIAIOSFODNN7EXAMPL3"


def has_findings(text: str) -> bool:
    return bool(CLASSIFIER.scan(text))


def envelope(method="POST", path="/v1/chat/completions", headers=None, rules=None, **kw):
    return inspect_envelope(method, path, headers or {}, match_surface(method, path), rules or EnvelopeRules(),
                            has_findings=has_findings, **kw)


def test_only_the_providers_headers_are_forwarded():
    env = envelope(path="/v1/messages", headers={
        ":path": ["/v1/messages"], ":method": ["POST"], "host": ["h"], "content-type": ["application/json"],
        "anthropic-version": ["2023-06-01"], "anthropic-beta": ["tools-2024"], "openai-beta": ["x"],
        "x-stainless-lang": ["python"], "user-agent": ["Anthropic/Python"], "x-custom": [AWS_KEY],
        "x-envoy-expected-rq-timeout-ms": ["1000"], "x-request-id": ["r"]})
    assert env.removed_headers == ["openai-beta", "user-agent", "x-custom", "x-stainless-lang"]
    classified = {s.where for s in env.segments}
    # (an x-envoy- name is let through by its prefix: the client chose the rest, so it is read too)
    assert classified == {"header:anthropic-beta", "header:anthropic-version", "header:content-type",
                          "header:x-envoy-expected-rq-timeout-ms", "header-name:x-envoy-expected-rq-timeout-ms"}


def test_headers_ledgergate_sets_are_never_removed():
    env = envelope(headers={"x-ledgergate-subject": ["alice"], "api-key": ["k"]},
                   keep=["x-ledgergate-subject", "api-key"])
    assert env.removed_headers == [] and env.segments == []


def test_the_deployer_extends_the_allowlist_per_provider_with_patterns():
    rules = EnvelopeRules.from_config({"headers": {"openai": ["x-mock-*"], "*": ["x-trace-id"]},
                                       "query": {"anthropic": ["debug"]}})
    env = envelope(headers={"x-mock-status": ["500"], "x-trace-id": ["t"], "x-other": ["o"]}, rules=rules)
    assert env.removed_headers == ["x-other"]
    assert {s.where for s in env.segments} == {"header:x-mock-status", "header-name:x-mock-status", "header:x-trace-id"}
    env = envelope(path="/v1/messages", headers={"x-mock-status": ["500"]}, rules=rules)
    assert env.removed_headers == ["x-mock-status"]
    env = envelope(path="/v1/messages?debug=1&x=2", rules=rules)
    assert env.query == [("debug", "1")] and env.removed_query == ["x"]


@pytest.mark.parametrize("section, message", [
    ("strip", "mapping"), ({"unknown_query": "allow"}, "strip, reject"), ({"headerz": {}}, "unknown key"),
    ({"headers": {"acme": ["x"]}}, "unknown provider"), ({"headers": {"openai": "x-a"}}, "list of names"),
    ({"headers": {"openai": [""]}}, "list of names"), ({"query": ["a"]}, "mapping"),
])
def test_bad_configuration_is_refused(section, message):
    with pytest.raises(ValueError, match=message):
        EnvelopeRules.from_config(section)


def test_query_known_parameters_kept_unknown_stripped_credentials_never_segments():
    env = envelope(path="/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=SECRETKEY&x=1&x=2")
    assert env.query == [("alt", "sse")]
    assert env.removed_query == ["key", "x", "x"]
    assert [s.where for s in env.segments] == ["path:model", "query:alt"]
    assert env.query_changed
    assert env.forwarded_path() == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


def test_an_unchanged_query_is_not_rewritten_and_redactions_are_reencoded():
    env = envelope(path="/openai/deployments/d/chat/completions?api-version=2024-10-21")
    assert not env.query_changed and env.removed_query == []
    env = envelope(path="/v1/chat/completions?limit=a%20b%26c&")
    assert env.query == [("limit", "a b&c")]
    assert env.forwarded_path({0: "[PII.EMAIL] & more"}) == "/v1/chat/completions?limit=%5BPII.EMAIL%5D%20%26%20more"


def test_a_bare_question_mark_or_fragment_is_dropped():
    assert envelope(path="/v1/chat/completions?").forwarded_path() == "/v1/chat/completions"
    env = envelope(path="/v1/chat/completions?limit=1#frag")
    assert env.query == [("limit", "1")]


def test_names_that_could_carry_a_secret_are_not_recorded_verbatim():
    env = envelope(path=f"/v1/chat/completions?{AWS_KEY}=1&%E2%80%AE=2&{'a' * 100}=3",
                   headers={"x-" + AWS_KEY.lower(): ["v"]})
    rec = env.to_record(has_findings)
    assert rec["removed_query"] == ["[classified]", "[unprintable]", "[unprintable]"]
    assert rec["removed_headers"] == ["[classified]"]
    assert recordable_name("x-token-a8f3k29dj3", None) == "[withheld]"
    assert AWS_KEY not in repr(rec) and AWS_KEY.lower() not in repr(rec)
    assert recordable_name("limit", has_findings) == "limit"


def test_hostile_query_strings_are_refused_not_guessed():
    with pytest.raises(EnvelopeRejected) as err:
        envelope(path="/v1/chat/completions?limit=%ff%fe")       # not UTF-8
    assert err.value.status == 400 and err.value.code == "invalid_query"
    with pytest.raises(EnvelopeRejected):
        envelope(path="/v1/chat/completions?" + "&".join(f"a{i}=1" for i in range(MAX_QUERY_PARAMS + 1)))
    with pytest.raises(EnvelopeRejected):
        envelope(path="/v1/chat/completions?limit=" + "a" * MAX_QUERY_BYTES)


def test_unknown_parameters_can_be_refused_and_the_message_never_echoes_a_secret():
    rules = EnvelopeRules.from_config({"unknown_query": "reject"})
    with pytest.raises(EnvelopeRejected) as err:
        envelope(path=f"/v1/chat/completions?{AWS_KEY}=1", rules=rules)
    assert err.value.code == "unknown_query_parameter" and AWS_KEY not in str(err.value)


@pytest.mark.parametrize("method, headers, body_len, refused", [
    ("GET", {}, None, False), ("GET", {"content-length": ["0"]}, None, False),
    ("GET", {"content-length": ["12"]}, None, True), ("get", {"transfer-encoding": ["chunked"]}, None, True),
    ("HEAD", {}, 3, True), ("DELETE", {"content-length": [" 5 "]}, None, True),
    ("POST", {"content-length": ["12"]}, 12, False), ("GET", {"content-length": ["abc"]}, None, True),
])
def test_a_body_on_a_bodiless_method(method, headers, body_len, refused):
    assert body_refused(method, headers, body_len) is refused


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.dictionaries(st.text(max_size=20), st.lists(st.text(max_size=50), max_size=3),
                                              max_size=8))
def test_any_input_is_either_an_envelope_or_a_clean_refusal(query, headers):
    try:
        env = envelope(path="/v1/chat/completions?" + query, headers=headers)
    except EnvelopeRejected as exc:
        assert exc.status == 400
        return
    # Whatever is forwarded is on the list; whatever is removed is not.
    for name in env.removed_headers:
        assert not EnvelopeRules().header_allowed("openai", name)
    assert all(k in ("limit", "after", "before", "order", "purpose", "include[]", "include", "stream",
                     "starting_after") for k, _ in env.query)
    assert len(env.to_record(has_findings)["removed_query"]) <= 33


def test_the_budget_counts_utf8_bytes_across_scans():
    b = BudgetedClassifier(CLASSIFIER, max_bytes=10, max_candidates=100)
    b.scan("12345")
    b.scan("é€")             # 2 + 3 bytes: exactly at the limit
    with pytest.raises(InspectionBudgetExceeded) as err:
        b.scan("x")
    assert isinstance(err.value, InputTooLarge) and "10 bytes of text" in str(err.value)


def test_the_candidate_budget_stops_text_made_of_near_misses():
    b = BudgetedClassifier(CLASSIFIER, max_bytes=1 << 30, max_candidates=500)
    with pytest.raises(InspectionBudgetExceeded, match="500 candidate matches"):
        b.scan("123-45-" * 20_000)
    # The budget is shared by the request's scans, and ordinary text spends little of it.
    b = BudgetedClassifier(CLASSIFIER, max_bytes=1 << 30, max_candidates=500)
    findings = b.scan("card 4111 1111 1111 1111 and mail jane@example.com")
    assert {f.label for f in findings} >= {"pci.card_number", "pii.email"}
    assert 0 < b.to_record()["candidates"] < 10
    assert b.labels == CLASSIFIER.labels           # everything else is the shared classifier's


def test_without_a_budget_the_classifier_is_unchanged():
    assert CLASSIFIER.scan("123-45-" * 200) == []


def test_patterns_are_prefixes_only():
    with pytest.raises(ValueError, match="prefix"):
        EnvelopeRules.from_config({"headers": {"openai": ["x-*-id"]}})
    rules = EnvelopeRules.from_config({"headers": {"openai": ["x-mock-*", "exact"]}})
    assert rules.header_allowed("openai", "x-mock-") and not rules.header_allowed("openai", "exactly")


def test_a_scan_in_the_pool_process_finds_what_a_local_scan_finds_and_spends_the_same_budget():
    from ext_proc.pipeline.budget import REMOTE_SCAN_MIN_CHARS, ScanPool

    pool = ScanPool()
    try:
        text = ("mail jane@example.com, card 4111 1111 1111 1111, Bluebird. " * 400)[:REMOTE_SCAN_MIN_CHARS * 2]
        terms = {"projects": ["Bluebird"]}
        local = BudgetedClassifier(Classifier(terms), max_candidates=100_000)
        remote = BudgetedClassifier(Classifier(terms), max_candidates=100_000, pool=pool, custom_terms=terms)
        assert remote.scan(text) == local.scan(text)
        assert remote.candidates_left == local.candidates_left < 100_000
        tight = BudgetedClassifier(CLASSIFIER, max_candidates=50, pool=pool)
        with pytest.raises(InspectionBudgetExceeded, match="50 candidate matches"):
            tight.scan("123-45-" * 10_000)
        with pytest.raises(InputTooLarge):
            BudgetedClassifier(CLASSIFIER, max_bytes=1 << 30, pool=pool).scan("a" * (CLASSIFIER.max_input_chars + 1))
    finally:
        pool.close()


def test_the_model_segment_of_the_path_is_a_segment_that_cannot_be_rewritten():
    from ext_proc.pipeline.envelope import rewritable

    env = envelope(path="/model/anthropic.claude-3%2Dhaiku/invoke", headers={"x-envoy-a": ["b"], "accept": ["c"]})
    by_where = {s.where: s for s in env.segments}
    assert by_where["path:model"].text == "anthropic.claude-3-haiku"
    assert not rewritable(by_where["path:model"]) and not rewritable(by_where["header:x-envoy-a"])
    assert rewritable(by_where["header:accept"])


def test_with_a_pool_many_small_near_miss_texts_move_to_the_pool_after_a_local_allowance():
    from ext_proc.pipeline import budget as budget_mod
    from ext_proc.pipeline.budget import LOCAL_CANDIDATES, ScanPool

    calls = []

    class CountingPool(ScanPool):
        def scan(self, *args):
            calls.append(len(args[2]))
            return super().scan(*args)

    pool = CountingPool()
    try:
        b = BudgetedClassifier(CLASSIFIER, max_candidates=100_000, pool=pool)
        assert b.scan("card 4111 1111 1111 1111") and not calls          # small and clean: local
        for _ in range(20):
            assert b.scan("123-45-" * 100) == []                          # ~25 candidates each
        assert calls, "the local allowance should have run out"
        local_spent = 100_000 - b.candidates_left
        assert local_spent > LOCAL_CANDIDATES                              # the pool's candidates count too
        assert b._local_left == 0 and budget_mod.REMOTE_SCAN_MIN_CHARS > 700
        tight = BudgetedClassifier(CLASSIFIER, max_candidates=30, pool=pool)
        with pytest.raises(InspectionBudgetExceeded, match="30 candidate matches"):
            tight.scan("123-45-" * 300)
    finally:
        pool.close()


def test_an_address_in_a_forwarding_header_is_what_it_carries_not_a_finding():
    from ext_proc.pipeline.envelope import EnvelopeSegment, expected_finding
    edge = EnvelopeSegment("header:x-envoy-external-address", "x-envoy-external-address", "203.0.113.7")
    assert expected_finding(edge, "pii.ip_address")
    assert not expected_finding(edge, "pci.card_number")
    custom = EnvelopeSegment("header:x-note", "x-note", "203.0.113.7")
    assert not expected_finding(custom, "pii.ip_address")
