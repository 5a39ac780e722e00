"""The response cache's sans-I/O core (plan, key, fill rule, stream replay) and its in-process
store (LRU by bytes, TTL with the clock passed in)."""

from __future__ import annotations

import asyncio
import json

import pytest

from ext_proc.cache import Entry, MemoryStore, NotReplayable, fillable, plan_request, replay_stream
from ext_proc.cache.plan import client_refuses_cache, request_policy_version
from ext_proc.policy import load_policy_text
from ext_proc.wire.sse import SSEFramer

RULES = [{"id": "c", "routes": ["inference"], "rules": [], "deterministic": False, "share_across_tenants": False,
          "ttl_s": 60}]


def plan(body: dict, **over):
    kw = dict(cache_rules=RULES, route="inference", matched_rules=["permit"], outcome="permit",
              surface="openai.chat_completions", provider="openai", model=body.get("model"),
              forwarded_body=json.dumps(body).encode(), tenant="acme", subject_scope="iss|alice",
              client_headers={}, policy_request_version="v1", multiplexed=False)
    kw.update(over)
    return plan_request(**kw)


BODY = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def test_streamed_and_plain_forms_share_a_key_and_body_order_does_not_matter():
    a = plan(BODY)
    b = plan({**BODY, "stream": True, "stream_options": {"include_usage": True}})
    c = plan(dict(reversed(list(BODY.items()))))
    assert a.cacheable and a.key == b.key == c.key and b.stream and not a.stream


def test_the_key_depends_on_tenant_policy_model_and_body():
    base = plan(BODY).key
    assert plan(BODY, tenant="globex").key != base
    assert plan(BODY, policy_request_version="v2").key != base
    assert plan({**BODY, "model": "n"}).key != base
    assert plan({**BODY, "messages": [{"role": "user", "content": "ho"}]}).key != base
    assert plan(BODY, provider="azure").key != base


def test_sharing_across_tenants_only_when_the_rule_says_so():
    shared = [dict(RULES[0], share_across_tenants=True)]
    assert plan(BODY, cache_rules=shared).key == plan(BODY, cache_rules=shared, tenant="globex").key
    assert plan(BODY, tenant=None).key != plan(BODY, tenant=None, subject_scope="iss|bob").key
    assert plan(BODY, tenant=None, subject_scope=None).reason == "no_scope"


@pytest.mark.parametrize("over,reason", [
    ({"cache_rules": []}, "off"),
    ({"route": "other"}, "off"),
    ({"outcome": "observe"}, "outcome_observe"),
    ({"surface": "openai.responses"}, "surface_not_replayable"),
    ({"multiplexed": True}, "multiplexed"),
    ({"client_headers": {"cache-control": ["max-age=0, No-Store"]}}, "client_no_store"),
    ({"forwarded_body": b"not json"}, "body_not_json"),
])
def test_bypass_reasons(over, reason):
    p = plan(BODY, **over)
    assert not p.cacheable and p.reason == reason


def test_only_deterministic_requests_unless_the_rule_says_the_route_is():
    assert plan({**BODY, "temperature": 0.2}).reason == "not_deterministic"
    assert plan({k: v for k, v in BODY.items() if k != "temperature"}).reason == "not_deterministic"
    assert plan({**BODY, "n": 3}).reason == "not_deterministic"
    assert plan({**BODY, "temperature": 0.2}, cache_rules=[dict(RULES[0], deterministic=True)]).cacheable
    assert plan(BODY, route=None, matched_rules=["permit"],
                cache_rules=[dict(RULES[0], routes=[], rules=["permit"])]).cacheable


def test_client_refuses_cache():
    assert client_refuses_cache({"cache-control": ["no-cache"]}) == "no-cache"
    assert client_refuses_cache({"cache-control": ["max-age=10"]}) is None


def test_request_policy_version_ignores_response_rules_only():
    text = ("id: p\nroutes: [{id: inference}]\nrules:\n  - {id: permit, effect: permit}\n"
            "cache: [{id: c, routes: [inference]}]\n")
    p1 = load_policy_text(text)
    p2 = load_policy_text(text + "response_rules: [{id: r, redact: {'pii.email': mask}}]\n")
    p3 = load_policy_text(text.replace("effect: permit}", "effect: permit, max_tokens: 5}"))
    v = request_policy_version
    assert p1.version != p2.version
    assert v(p1.compiled, p1.version) == v(p2.compiled, p2.version) != v(p3.compiled, p3.version)


def test_a_policy_without_cache_section_keeps_its_compiled_form():
    p = load_policy_text("id: p\nroutes: [{id: inference}]\nrules:\n  - {id: permit, effect: permit}\n")
    assert "cache" not in p.compiled


def test_cache_rule_references_are_checked():
    with pytest.raises(Exception, match="unknown route id 'nope'"):
        load_policy_text("id: p\nroutes: [{id: inference}]\nrules: [{id: permit, effect: permit}]\n"
                         "cache: [{id: c, routes: [nope]}]\n")


@pytest.mark.parametrize("over,why", [
    ({}, None),
    ({"status": 500}, "status"),
    ({"error": "upstream_reset"}, "error"),
    ({"finished": False}, "partial"),
    ({"outcome": {"blocked": {"label": "pci.pan"}}}, "blocked"),
    ({"outcome": {"redactions": [{"label": "pii.email"}]}}, "redacted"),
    ({"content_type": "text/event-stream"}, "content_type"),
    ({"body_len": 2048}, "size"),
])
def test_fill_only_complete_unchanged_200_answers(over, why):
    kw = dict(plan=plan(BODY), status=200, outcome={"blocked": None, "redactions": []}, error=None,
              finished=True, content_type="application/json", body_len=100, max_entry_bytes=1024)
    kw.update(over)
    assert fillable(**kw) == why


def test_a_streamed_miss_does_not_fill():
    assert fillable(plan=plan({**BODY, "stream": True}), status=200, outcome={}, error=None, finished=True,
                    content_type="application/json", body_len=10, max_entry_bytes=100) == "streamed"


def _entry(n: int, tag: str = "x") -> Entry:
    return Entry(body=tag.encode() * n, content_type="application/json", filled_by="r", filled_ms=0,
                 policy_version="v", surface="openai.chat_completions")


def test_memory_store_expires_and_evicts_least_recently_used():
    now = [1000.0]
    evicted = []
    store = MemoryStore(max_bytes=3 * (100 + 256), clock=lambda: now[0], on_evict=lambda r, n: evicted.append(r))

    async def run():
        await store.put("s:m:a", _entry(100), 10)
        await store.put("s:m:b", _entry(100), 10)
        await store.put("s:m:c", _entry(100), 100)
        assert (await store.get("s:m:a")) is not None     # a is now the most recently used
        await store.put("s:m:d", _entry(100), 100)         # b goes
        assert await store.get("s:m:b") is None and evicted == ["size"]
        now[0] += 11
        assert await store.get("s:m:a") is None and "ttl" in evicted
        assert (await store.get("s:m:c")).body == b"x" * 100
        assert await store.purge(None, "m") == 2 and await store.get("s:m:c") is None

    asyncio.run(run())


def test_entry_round_trip():
    e = _entry(5)
    assert Entry.decode(e.encode()) == e


def _events(raw: bytes) -> list:
    framer = SSEFramer(1 << 20)
    return framer.feed(raw) + framer.finish()


def test_openai_replay_frames_text_usage_and_done():
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 150}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    raw = replay_stream("openai.chat_completions", json.dumps(answer).encode(), include_usage=True)
    evs = _events(raw)
    datas = [e.data for e in evs]
    assert datas[-1] == b"[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "x" * 150
    assert chunks[-1]["usage"]["completion_tokens"] == 2
    no_usage = replay_stream("openai.chat_completions", json.dumps(answer).encode(), include_usage=False)
    assert b'"usage"' not in no_usage


def test_tool_calls_are_not_replayed():
    answer = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [{}]}}]}
    with pytest.raises(NotReplayable):
        replay_stream("openai.chat_completions", json.dumps(answer).encode(), include_usage=False)
    with pytest.raises(NotReplayable):
        replay_stream("anthropic.messages", json.dumps({"content": [{"type": "tool_use"}]}).encode(),
                      include_usage=False)


def test_anthropic_replay_event_sequence():
    answer = {"id": "m1", "type": "message", "role": "assistant", "model": "c", "stop_reason": "end_turn",
              "stop_sequence": None, "content": [{"type": "text", "text": "hello"}],
              "usage": {"input_tokens": 3, "output_tokens": 2}}
    evs = _events(replay_stream("anthropic.messages", json.dumps(answer).encode(), include_usage=False))
    assert [e.other_lines for e in evs] == [(b"event: " + n,) for n in (
        b"message_start", b"content_block_start", b"content_block_delta", b"content_block_stop",
        b"message_delta", b"message_stop")]
    assert [json.loads(e.data)["type"] for e in evs][-1] == "message_stop"
