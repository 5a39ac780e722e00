"""The exact response cache through the real Envoy, with the official SDKs and the machine's Redis
(a unique key prefix per run): a hit never reaches the provider and is audited with the request
that filled it; tenants do not share; the response policy in force is applied to a cached answer;
streamed requests get the cached answer in the provider's stream format; no-store is honoured; a
request-side policy change misses; blocked or failed answers do not fill; Redis down forwards."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import redis

from tests.support import PY, REPO, free_ports, start_stack

pytestmark = pytest.mark.e2e

POLICY = (REPO / "tests" / "e2e" / "policies" / "cache.yaml").read_text()
BLOCK_PCI = """
response_rules:
  - id: block-cards
    block: ["pci.*"]
"""
REDACT_EMAIL = """
  - id: mask-email-late
    redact: {"pii.email": mask}
"""
EXTRA_RULE = """
  - id: permit-auditors
    effect: permit
    when: {roles: [auditor]}
"""
CARD = "4111 1111 1111 1111"


def _write_policy(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture(scope="module")
def cache_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    prefix = f"lg:test-cache:{uuid.uuid4().hex[:12]}:"
    policy = tmp / "policy.yaml"
    _write_policy(policy, POLICY + BLOCK_PCI)
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"policy": {"path": str(policy)},
                               "cache": {"backend": "redis", "url": "redis://127.0.0.1:6379/0", "prefix": prefix}}))
    s = start_stack(tmp, "--config", str(cfg))
    s.policy_file = policy
    s.config_file = cfg
    s.redis_prefix = prefix
    r = redis.Redis(host="127.0.0.1", port=6379)
    yield s, r
    s.stop()
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)


def _oai(stack, tenant="acme", **headers):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(tenant=tenant), max_retries=0,
                         timeout=30, default_headers=headers or None)


def _anth(stack, tenant="acme", **headers):
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.token(tenant=tenant), max_retries=0,
                               timeout=30, default_headers=headers or None)


def _upstream_calls(stack, marker: str) -> int:
    return sum(1 for r in stack.mock_requests() if marker in json.dumps(r.get("body")))


def _records(stack, request_id: str) -> dict[str, dict]:
    return {r["kind"]: r for r in stack.audit_records() if r.get("request_id") == request_id}


def _entries(r: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in r.scan_iter(match=prefix + "*"))


def _wait_entries(r, prefix: str, n: int) -> None:
    # The fill runs after the outcome record committed, beside the end of the response.
    deadline = time.time() + 10
    while _entries(r, prefix) < n:
        assert time.time() < deadline, "the answer was not stored"
        time.sleep(0.05)


def _chat(client, marker: str, **kw):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": f"question {marker}"}], **kw)
    return raw, raw.parse()


def test_hit_is_answered_without_the_provider_and_names_the_filling_request(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    raw1, c1 = _chat(_oai(stack), marker)
    assert raw1.headers["x-ledgergate-cache"] == "miss"
    filled_by = raw1.headers["x-request-id"]
    _wait_entries(r, stack.redis_prefix, before + 1)
    assert _upstream_calls(stack, marker) == 1

    raw2, c2 = _chat(_oai(stack), marker)
    assert raw2.headers["x-ledgergate-cache"] == "hit"
    assert c2.choices[0].message.content == c1.choices[0].message.content == f"You said: question {marker}"
    assert _upstream_calls(stack, marker) == 1, "a hit must not reach the provider"
    recs = _records(stack, raw2.headers["x-request-id"])
    served = recs["decision"]["served_from_cache"]
    assert served["filled_by_request_id"] == filled_by
    assert len(served["key_sha256"]) == 64
    assert recs["decision"]["cache"]["result"] == "hit" and recs["decision"]["forwarded_sha256"] is None
    assert recs["outcome"]["served_from_cache"]["key_sha256"] == served["key_sha256"]
    assert recs["outcome"]["status"] == 200
    assert _records(stack, filled_by)["decision"]["cache"]["result"] == "miss"
    metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
    assert 'ledgergate_cache_lookups_total{result="hit"}' in metrics
    assert 'ledgergate_cache_bytes_total{direction="served"}' in metrics
    assert 'ledgergate_cache_fills_total{result="stored"}' in metrics
    # No prompt or key material in clear in Redis key names.
    assert not any(marker.encode() in k or b"acme" in k for k in r.scan_iter(match=stack.redis_prefix + "*"))


def test_tenants_never_share_an_entry(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    raw1, _ = _chat(_oai(stack, tenant="acme"), marker)
    _wait_entries(r, stack.redis_prefix, before + 1)
    raw2, _ = _chat(_oai(stack, tenant="globex"), marker)
    assert raw2.headers["x-ledgergate-cache"] == "miss"
    assert _upstream_calls(stack, marker) == 2
    k1 = _records(stack, raw1.headers["x-request-id"])["decision"]["cache"]["key_sha256"]
    k2 = _records(stack, raw2.headers["x-request-id"])["decision"]["cache"]["key_sha256"]
    assert k1 != k2


def test_openai_stream_is_replayed_from_a_non_streamed_fill(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    _, c1 = _chat(_oai(stack), marker)
    _wait_entries(r, stack.redis_prefix, before + 1)
    raw = _oai(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": f"question {marker}"}],
        stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-ledgergate-cache"] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == c1.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == c1.usage.completion_tokens
    assert _upstream_calls(stack, marker) == 1


def test_anthropic_stream_is_replayed_from_a_non_streamed_fill(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    client = _anth(stack)
    # (this SDK version has no temperature argument: it travels in the body)
    kw = dict(model="claude-3-5-haiku-latest", max_tokens=64, extra_body={"temperature": 0},
              messages=[{"role": "user", "content": f"question {marker}"}])
    before = _entries(r, stack.redis_prefix)
    first = client.messages.create(**kw)
    _wait_entries(r, stack.redis_prefix, before + 1)
    with client.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == first.content[0].text
    assert final.stop_reason == first.stop_reason and final.usage.output_tokens == first.usage.output_tokens
    assert _upstream_calls(stack, marker) == 1


@pytest.mark.parametrize("directive", ["no-store", "no-cache"])
def test_client_cache_control_is_honoured(cache_stack, directive):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    _chat(_oai(stack), marker)
    _wait_entries(r, stack.redis_prefix, before + 1)
    raw, _ = _chat(_oai(stack, **{"cache-control": directive}), marker)
    assert "x-ledgergate-cache" not in raw.headers
    assert _upstream_calls(stack, marker) == 2
    cache = _records(stack, raw.headers["x-request-id"])["decision"]["cache"]
    assert cache == {"result": "bypass", "reason": f"client_{directive.replace('-', '_')}", "rule": "cache-inference"}


def test_a_sampled_request_is_not_cached(cache_stack):
    stack, _ = cache_stack
    marker = uuid.uuid4().hex[:10]
    for _ in range(2):
        raw = _oai(stack).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", temperature=0.7, messages=[{"role": "user", "content": f"question {marker}"}])
    assert _upstream_calls(stack, marker) == 2
    assert _records(stack, raw.headers["x-request-id"])["decision"]["cache"]["reason"] == "not_deterministic"


def test_blocked_and_failed_answers_do_not_fill(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    blocked = _oai(stack, **{"x-mock-reply": f"card {CARD} {marker}"})
    for _ in range(2):
        with pytest.raises(openai.PermissionDeniedError):
            _chat(blocked, marker)
    failing = _oai(stack, **{"x-mock-status": "500"})
    other = uuid.uuid4().hex[:10]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            _chat(failing, other)
    time.sleep(0.5)
    assert _entries(r, stack.redis_prefix) == before
    assert _upstream_calls(stack, marker) == 2 and _upstream_calls(stack, other) == 2


def _wait_policy_version(stack, client, marker: str, old_version: str) -> None:
    deadline = time.time() + 20
    while True:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", temperature=0.5, messages=[{"role": "user", "content": f"probe {marker}"}])
        rec = _records(stack, raw.headers["x-request-id"])["decision"]
        if rec["policy"]["version"] != old_version:
            return
        assert time.time() < deadline, "the policy was not reloaded"
        time.sleep(0.3)


def test_response_policy_in_force_is_applied_to_a_hit_and_a_request_policy_change_misses(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    email = f"jane.{marker}@example.com"
    client = _oai(stack, **{"x-mock-reply": f"write to {email} please"})
    before = _entries(r, stack.redis_prefix)
    raw1, c1 = _chat(client, marker)
    assert email in c1.choices[0].message.content
    _wait_entries(r, stack.redis_prefix, before + 1)
    v1 = _records(stack, raw1.headers["x-request-id"])["decision"]["policy"]["version"]
    # A hit under the policy of the fill: the answer as it was (and its inspection remembered).
    raw1b, c1b = _chat(client, marker)
    assert raw1b.headers["x-ledgergate-cache"] == "hit" and email in c1b.choices[0].message.content

    # A response rule added after the fill: the same entry is served, masked by the new rule.
    _write_policy(stack.policy_file, POLICY + BLOCK_PCI + REDACT_EMAIL)
    _wait_policy_version(stack, client, marker, v1)
    raw2, c2 = _chat(client, marker)
    assert raw2.headers["x-ledgergate-cache"] == "hit"
    assert email not in c2.choices[0].message.content and "write to" in c2.choices[0].message.content
    out = _records(stack, raw2.headers["x-request-id"])["outcome"]
    assert out["redactions"] and out["served_from_cache"]["filled_by_request_id"] == raw1.headers["x-request-id"]
    assert _upstream_calls(stack, f"question {marker}") == 1
    v2 = _records(stack, raw2.headers["x-request-id"])["decision"]["policy"]["version"]

    # A request-side rule added: the key changes, the provider is asked again.
    policy = POLICY.replace("\ncache:", EXTRA_RULE + "\ncache:", 1)
    _write_policy(stack.policy_file, policy + BLOCK_PCI + REDACT_EMAIL)
    _wait_policy_version(stack, client, marker, v2)
    raw3, _ = _chat(client, marker)
    assert raw3.headers["x-ledgergate-cache"] == "miss"
    assert _upstream_calls(stack, f"question {marker}") == 2


def test_redis_down_forwards_and_the_decision_says_so(tmp_path):
    (dead_port,) = free_ports(1)
    cfg = tmp_path / "ledgergate.yaml"
    cfg.write_text(json.dumps({
        "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "cache.yaml")},
        "cache": {"backend": "redis", "url": f"redis://127.0.0.1:{dead_port}/0", "prefix": "lg:test-dead:"}}))
    stack = start_stack(tmp_path, "--config", str(cfg))
    try:
        marker = uuid.uuid4().hex[:10]
        raw, c = _chat(_oai(stack), marker)
        assert c.choices[0].message.content == f"You said: question {marker}"
        assert raw.headers["x-ledgergate-cache"] == "miss"
        cache = _records(stack, raw.headers["x-request-id"])["decision"]["cache"]
        assert cache["result"] == "unavailable"
        assert _upstream_calls(stack, marker) == 1
        metrics = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics").text
        assert 'ledgergate_cache_lookups_total{result="unavailable"} 1.0' in metrics
    finally:
        stack.stop()


def test_purge_by_tenant_drops_only_that_tenants_entries(cache_stack):
    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    _chat(_oai(stack, tenant="acme"), marker)
    _chat(_oai(stack, tenant="initech"), marker)
    _wait_entries(r, stack.redis_prefix, before + 2)
    out = subprocess.run([PY, "-m", "ext_proc.cli.main", "cache", "purge", "--config", str(stack.config_file),
                          "--tenant", "initech"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "purged 1 entries"
    assert _chat(_oai(stack, tenant="acme"), marker)[0].headers["x-ledgergate-cache"] == "hit"
    assert _chat(_oai(stack, tenant="initech"), marker)[0].headers["x-ledgergate-cache"] == "miss"


def test_a_hits_two_records_are_on_disk_adjacent_and_verify_when_the_answer_arrives(cache_stack):
    # Issue 22: a hit's decision and outcome are committed in one durable write before the
    # answer is released; read the segment the moment the answer is back, then verify the chain.
    from ext_proc.audit.verify import verify_dir

    stack, r = cache_stack
    marker = uuid.uuid4().hex[:10]
    before = _entries(r, stack.redis_prefix)
    _chat(_oai(stack), marker)
    _wait_entries(r, stack.redis_prefix, before + 1)
    raw, _ = _chat(_oai(stack), marker)
    assert raw.headers["x-ledgergate-cache"] == "hit"
    request_id = raw.headers["x-request-id"]
    lines = [json.loads(x) for f in sorted(stack.audit_dir.glob("*.jsonl")) for x in f.read_bytes().splitlines()]
    mine = [rec for rec in lines if rec.get("request_id") == request_id]
    assert [rec["kind"] for rec in mine] == ["decision", "outcome"]
    decision, outcome = mine
    assert outcome["seq"] == decision["seq"] + 1 and outcome["segment_id"] == decision["segment_id"]
    assert outcome["served_from_cache"]["key_sha256"] == decision["served_from_cache"]["key_sha256"]
    rep = verify_dir(stack.audit_dir)
    assert rep.ok, rep.problem
