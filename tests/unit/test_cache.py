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


# --- the inspection memo of cached answers (server/response_cache.py) --------------------------

ANSWER = json.dumps({"id": "c1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "write to jane.doe@example.com"},
     "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}).encode()


def _inspect(rules, tenant="acme", body=ANSWER):
    from ext_proc.classify import Classifier
    from ext_proc.streaming import ResponseInspector

    ins = ResponseInspector("openai.chat_completions", status=200, content_type="application/json",
                            content_encoding=None, classifier=Classifier(), rules=rules, hash_key=b"k" * 32,
                            tenant=tenant, drop_usage_chunk=False)
    released = b"".join(r.body for r in ins.feed(body, True))
    return released, ins.outcome()


def _memo_key(memo, **over):
    from ext_proc.streaming import ResponseRules

    kw = dict(surface="openai.chat_completions", content_type="application/json", policy_version="v1",
              rules=ResponseRules.from_policy({}), tenant="acme", hash_key=b"k" * 32,
              max_buffer_bytes=1 << 20, max_block_chars=60_000)
    kw.update(over)
    return memo.key(over.pop("body", ANSWER), **{k: v for k, v in kw.items() if k != "body"})


def test_inspection_memo_key_holds_every_input_of_the_inspection():
    from ext_proc.server.cache_state import InspectionMemo
    from ext_proc.streaming import ResponseRules

    memo = InspectionMemo()
    base = _memo_key(memo)
    assert _memo_key(memo) == base
    for over in [{"body": ANSWER + b" "}, {"surface": "anthropic.messages"}, {"content_type": "text/event-stream"},
                 {"policy_version": "v2"}, {"rules": ResponseRules.from_policy({"redact": {"pii.email": "mask"}})},
                 {"rules": ResponseRules.from_policy({"block": ["pii.email"]})}, {"tenant": "globex"},
                 {"tenant": None}, {"hash_key": b"j" * 32}, {"max_buffer_bytes": 1 << 10},
                 {"max_block_chars": 10}]:
        assert _memo_key(memo, **over) != base, over
    # Neither the redaction key nor the answer appears in a key in clear.
    assert b"k" * 32 not in base and ANSWER not in base


def test_inspection_memo_keeps_only_unchanged_answers_and_hands_out_copies():
    from ext_proc.server.cache_state import InspectionMemo
    from ext_proc.streaming import ResponseRules

    memo = InspectionMemo(max_entries=2)
    plain, masked = ResponseRules.from_policy({}), ResponseRules.from_policy({"redact": {"pii.email": "mask"}})
    released, summary = _inspect(plain)
    assert released == ANSWER and summary["classification"]        # an e-mail found, nothing changed
    memo.put(_memo_key(memo), ANSWER, released, summary)
    got = memo.get(_memo_key(memo))
    assert got == summary and got is not summary
    got["classification"].clear()                                    # a caller's record is its own
    assert memo.get(_memo_key(memo)) == summary

    # A rule that changes the answer: a different key, and its (redacted) result is never kept.
    key = _memo_key(memo, rules=masked)
    assert memo.get(key) is None
    released2, summary2 = _inspect(masked)
    assert released2 != ANSWER and summary2["redactions"]
    memo.put(key, ANSWER, released2, summary2)
    assert memo.get(key) is None
    blocked = {**summary, "blocked": {"label": "pii.email"}}
    memo.put(_memo_key(memo, tenant="globex"), ANSWER, ANSWER, blocked)
    assert memo.get(_memo_key(memo, tenant="globex")) is None

    # Bounded: least recently used first out.
    for i in range(3):
        memo.put(_memo_key(memo, policy_version=f"p{i}"), ANSWER, ANSWER, summary)
    assert len(memo) == 2 and memo.get(_memo_key(memo, policy_version="p0")) is None


async def test_a_hit_through_the_servicer_reuses_the_inspection_only_under_the_same_response_policy(tmp_path):
    """Fill, then hits through the real Servicer (in-process store, file audit sink): the second
    hit under one policy reuses the first one's inspection (same outcome); a response rule added
    by a policy reload is applied to the next hit (the cached answer is masked)."""
    import time as _time

    from ext_proc.cli.devmaterial import ensure_dev_material
    from ext_proc.identity.dev import mint_dev_token
    from ext_proc.server.config import load_config
    from ext_proc.server.runtime import Runtime
    from ext_proc.server.servicer import Servicer
    from tests.bench import bench_hit_cpu as drive
    from tests.support import REPO

    var = tmp_path / "var"
    ensure_dev_material(var)
    policy = tmp_path / "policy.yaml"
    text = (REPO / "tests" / "e2e" / "policies" / "cache.yaml").read_text()
    policy.write_text(text)
    rt = Runtime(load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(policy)}, "server": {"metrics_listen": None}, "cache": {"backend": "memory"}}))
    await rt.start()
    try:
        servicer = Servicer(rt)
        token = mint_dev_token(var / "dev", sub="alice", roles=["developer"], tenant="acme", now=_time.time())
        payload = json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                              "messages": [{"role": "user", "content": "who do I write to?"}]}).encode()
        answer_msgs = [drive.response_messages()[0],
                       drive.pb.ProcessingRequest(response_body=drive.pb.HttpBody(body=ANSWER, end_of_stream=True))]
        assert len(await drive.drive(servicer, drive.request_messages(token, "fill", payload) + answer_msgs)) == 4
        await asyncio.gather(*rt.cache._fills)

        async def hit(request_id: str) -> bytes:
            out = await drive.drive(servicer, drive.request_messages(token, request_id, payload))
            assert out[-1].HasField("immediate_response"), out
            return out[-1].immediate_response.body

        assert await hit("hit-1") == ANSWER and rt.cache.inspections.hits == 0
        assert await hit("hit-2") == ANSWER and rt.cache.inspections.hits == 1
        # Both hits' records are durable once their answers are out: read them as they are.
        records = {(r.get("request_id"), r.get("kind")): r for f in sorted((var / "audit").glob("*.jsonl"))
                   for r in map(json.loads, f.read_text().splitlines())}
        one, two = records[("hit-1", "outcome")], records[("hit-2", "outcome")]
        for field in ("classification", "redactions", "response_sha256", "blocked", "served_from_cache"):
            assert one[field] == two[field], field
        assert one["classification"] and not one["redactions"]

        policy.write_text(text + "\nresponse_rules:\n  - id: mask-email\n    redact: {\"pii.email\": mask}\n")
        assert rt.reload_policy()
        masked = await hit("hit-3")
        assert b"jane.doe@example.com" not in masked and b"write to" in masked
        assert rt.cache.inspections.hits == 1
    finally:
        await rt.close()



async def test_a_hit_whose_records_cannot_be_made_durable_releases_nothing_of_the_answer(tmp_path):
    """The hit's answer is built while its records are being written; a write that fails must
    still send none of it: the client gets the 503 audit_unavailable, never the cached body."""
    import time as _time

    from ext_proc.cli.devmaterial import ensure_dev_material
    from ext_proc.identity.dev import mint_dev_token
    from ext_proc.server.config import load_config
    from ext_proc.server.runtime import Runtime
    from ext_proc.server.servicer import Servicer
    from tests.bench import bench_hit_cpu as drive
    from tests.support import REPO

    var = tmp_path / "var"
    ensure_dev_material(var)
    rt = Runtime(load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "cache.yaml")},
        "server": {"metrics_listen": None}, "cache": {"backend": "memory"}}))
    await rt.start()
    try:
        servicer = Servicer(rt)
        token = mint_dev_token(var / "dev", sub="alice", roles=["developer"], tenant="acme", now=_time.time())
        payload = json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                              "messages": [{"role": "user", "content": "who do I write to?"}]}).encode()
        answer_msgs = [drive.response_messages()[0],
                       drive.pb.ProcessingRequest(response_body=drive.pb.HttpBody(body=ANSWER, end_of_stream=True))]
        assert len(await drive.drive(servicer, drive.request_messages(token, "fill", payload) + answer_msgs)) == 4
        await asyncio.gather(*rt.cache._fills)
        hit = await drive.drive(servicer, drive.request_messages(token, "hit-ok", payload))
        assert hit[-1].immediate_response.body == ANSWER

        def broken(lines):
            raise OSError("disk gone")
        rt.audit.sink.write_batch = broken
        out = await drive.drive(servicer, drive.request_messages(token, "hit-lost", payload))
        assert out[-1].HasField("immediate_response"), out
        refused = out[-1].immediate_response
        assert refused.status.code == 503 and b"audit_unavailable" in refused.body
        assert all(ANSWER not in r.SerializeToString() for r in out)
    finally:
        await rt.close()



async def test_a_hits_stream_ends_without_a_task_and_a_released_request_still_gets_its_outcome(tmp_path, monkeypatch):
    """The stream's end runs shielded in a task of its own only when it has something to wait
    for: a hit's end does not (its records are committed); a released request whose answer never
    came does, and its outcome is committed."""
    import time as _time

    from ext_proc.cli.devmaterial import ensure_dev_material
    from ext_proc.identity.dev import mint_dev_token
    from ext_proc.server import stream
    from ext_proc.server.config import load_config
    from ext_proc.server.runtime import Runtime
    from ext_proc.server.servicer import Servicer
    from tests.bench import bench_hit_cpu as drive
    from tests.support import REPO

    shielded: list[object] = []
    real_shield = stream.asyncio.shield

    def counting_shield(aw):
        shielded.append(aw)
        return real_shield(aw)
    monkeypatch.setattr(stream.asyncio, "shield", counting_shield)
    var = tmp_path / "var"
    ensure_dev_material(var)
    rt = Runtime(load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "cache.yaml")},
        "server": {"metrics_listen": None}, "cache": {"backend": "memory"}}))
    await rt.start()
    try:
        servicer = Servicer(rt)
        token = mint_dev_token(var / "dev", sub="alice", roles=["developer"], tenant="acme", now=_time.time())

        def payload(text: str) -> bytes:
            return json.dumps({"model": "gpt-4o-mini", "temperature": 0,
                               "messages": [{"role": "user", "content": text}]}).encode()
        answer_msgs = [drive.response_messages()[0],
                       drive.pb.ProcessingRequest(response_body=drive.pb.HttpBody(body=ANSWER, end_of_stream=True))]
        await drive.drive(servicer, drive.request_messages(token, "fill", payload("q")) + answer_msgs)
        await asyncio.gather(*rt.cache._fills)
        shielded.clear()
        out = await drive.drive(servicer, drive.request_messages(token, "hit", payload("q")))
        assert out[-1].immediate_response.body == ANSWER and shielded == []

        # The request side left open by the immediate response is closed by then, not later by
        # the event loop's async-generator finaliser (a task of its own).
        closed: list[bool] = []

        async def requests():
            try:
                for m in drive.request_messages(token, "hit-2", payload("q")):
                    yield m
            finally:
                closed.append(True)
        out = [r async for r in servicer.Process(requests(), drive.Ctx())]
        assert out[-1].immediate_response.body == ANSWER and closed == [True]

        # Released (a miss), then the stream ends before any answer: the outcome says so.
        out = await drive.drive(servicer, drive.request_messages(token, "gone", payload("another question")))
        assert not out[-1].HasField("immediate_response") and len(shielded) == 1
        records = [r for f in sorted((var / "audit").glob("*.jsonl"))
                   for r in map(json.loads, f.read_text().splitlines())]
        gone = [r for r in records if r.get("request_id") == "gone" and r.get("kind") == "outcome"]
        assert len(gone) == 1 and gone[0]["error"] == "stream_ended_before_response_completed"
    finally:
        await rt.close()


# --- the Redis store's look-up connections (the machine's Redis) ---------------------------------

def _stored(i: int = 0) -> Entry:
    return Entry(body=b'{"answer": %d}' % i, content_type="application/json", filled_by=f"r{i}", filled_ms=i,
                 policy_version="v", surface="openai.chat_completions")


@pytest.fixture
async def redis_store():
    import uuid

    from ext_proc.cache import RedisStore

    store = RedisStore("redis://127.0.0.1:6379/0", prefix=f"lg:test-store:{uuid.uuid4().hex[:8]}:")
    try:
        yield store
    finally:
        await store.purge(None, None)
        await store.close()


@pytest.mark.redis
async def test_redis_lookups_reuse_their_connections_and_answer_concurrent_callers(redis_store):
    store = redis_store
    for i in range(20):
        await store.put(f"s:m:{i}", _stored(i), 60)
    assert await store.get("s:m:0") == _stored(0) and await store.get("s:m:none") is None
    assert len(store._idle) == 1                       # one connection, used twice
    got = await asyncio.gather(*(store.get(f"s:m:{i}") for i in range(20)))
    assert got == [_stored(i) for i in range(20)]
    assert 1 <= len(store._idle) <= store.MAX_IDLE


@pytest.mark.redis
async def test_redis_lookup_error_reply_is_unavailable_and_the_connection_is_not_reused(redis_store):
    from ext_proc.cache import CacheUnavailable

    store = redis_store
    await store.client.rpush(store.prefix + "s:m:list", b"x")     # GET on a list: WRONGTYPE
    await store.put("s:m:ok", _stored(1), 60)
    assert await store.get("s:m:ok") == _stored(1)
    first = store._idle[0]
    with pytest.raises(CacheUnavailable):
        await store.get("s:m:list")
    assert first not in store._idle
    assert await store.get("s:m:ok") == _stored(1)


@pytest.mark.redis
async def test_redis_lookup_survives_an_idle_connection_the_server_closed(redis_store):
    store = redis_store
    await store.put("s:m:ok", _stored(2), 60)
    assert await store.get("s:m:ok") == _stored(2)
    conn = store._idle[0]
    await conn.send_packed_command(conn.pack_command("CLIENT", "ID"), check_health=False)
    client_id = await conn.read_response()
    assert await store.client.client_kill_filter(_id=client_id) == 1
    assert await store.get("s:m:ok") == _stored(2)


async def test_redis_lookup_has_one_deadline_and_never_reuses_an_unfinished_connection():
    """A server that accepts and never answers: the look-up fails within its deadline; a caller
    cancelled mid-look-up leaves no connection behind to read the stale reply later."""
    import time as _time

    from ext_proc.cache import CacheUnavailable, RedisStore

    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader, writer):
        accepted.append(writer)
    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="lg:t:", timeout_s=0.2)
    try:
        t0 = _time.monotonic()
        with pytest.raises(CacheUnavailable):
            await store.get("s:m:k")
        assert _time.monotonic() - t0 < 1.0 and not store._idle
        task = asyncio.ensure_future(store.get("s:m:k"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not store._idle and len(accepted) == 2
    finally:
        await store.close()
        server.close()
        for w in accepted:
            w.close()


async def test_redis_lookup_on_a_dead_port_is_unavailable():
    from ext_proc.cache import CacheUnavailable, RedisStore
    from tests.support import free_ports

    (port,) = free_ports(1)
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="lg:t:", timeout_s=0.2)
    try:
        with pytest.raises(CacheUnavailable):
            await store.get("s:m:k")
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_lookup_finishing_after_close_keeps_no_connection():
    from ext_proc.cache import RedisStore

    store = RedisStore("redis://127.0.0.1:6379/0", prefix="lg:test-store-close:")
    assert await store.get("s:m:none") is None and len(store._idle) == 1
    pending = asyncio.ensure_future(store.get("s:m:none"))
    await asyncio.sleep(0)            # the look-up has its connection (taken from the idle list)
    await store.close()
    assert await pending is None and store._idle == []


def test_inspection_memo_does_not_remember_a_summary_records_could_not_hold():
    # The memo keeps a summary as its canonical JSON; one that JSON cannot carry canonically
    # (a float, say a provider's cost) is not remembered: the next hit inspects again.
    from ext_proc.server.cache_state import InspectionMemo

    memo = InspectionMemo()
    released, summary = _inspect(_rules_plain())
    memo.put(_memo_key(memo), ANSWER, released, {**summary, "usage": {"cost": 0.25}})
    assert memo.get(_memo_key(memo)) is None and len(memo) == 0
    memo.put(_memo_key(memo), ANSWER, released, summary)
    got = memo.get(_memo_key(memo))
    assert got == summary and got is not summary


def _rules_plain():
    from ext_proc.streaming import ResponseRules

    return ResponseRules.from_policy({})
