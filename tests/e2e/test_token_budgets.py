"""Token budgets through Envoy: a burst of requests without max_tokens cannot absorb more than the
budget (each reserves a bounded output, not the prompt alone); the refusals say which budget ran
out; a request larger than the whole budget is not told to retry; admitted answers carry the
x-ratelimit-* headers; a rate-limit store that is down is a 503 with its own code, not a 429."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support import REPO, free_ports, inside_one_window, start_stack

pytestmark = pytest.mark.e2e

BUDGET = 3000
RESERVED_OUTPUT = 1000
REPLY = ("word " * 480).strip()         # about 600 tokens by the mock's count: less than the reservation


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budgets")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({
        "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "token_budget_3000.yaml")},
        "ratelimit": {"backend": "memory", "output_reservation": {"default": RESERVED_OUTPUT}}}))
    s = start_stack(tmp, "--config", str(cfg))
    yield s
    s.stop()


def _client(stack, subject: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(sub=subject), timeout=30,
                         default_headers={"x-mock-reply": REPLY}, **{"max_retries": 0, **kw})


def _usage_of(stack, subject: str) -> int:
    records = stack.audit_records()
    ids = {d["request_id"] for d in records
           if d.get("kind") == "decision" and (d.get("identity") or {}).get("subject") == subject}
    return sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"]
               for r in records if r.get("kind") == "outcome" and r.get("usage") and r["request_id"] in ids)


def test_a_burst_without_max_tokens_never_overruns_the_budget(stack):
    subject = f"burst-{uuid.uuid4().hex[:8]}"
    client = _client(stack, subject)
    inside_one_window(3600, need_s=30)

    def one(n: int):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"burst {n}"}])
            return 200, raw.headers
        except openai.RateLimitError as exc:
            return 429, exc

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    admitted = [h for code, h in results if code == 200]
    refused = [e for code, e in results if code == 429]
    assert admitted and refused and len(admitted) + len(refused) == 20
    used = _usage_of(stack, subject)
    assert 0 < used <= BUDGET, f"{len(admitted)} admitted used {used} tokens of a {BUDGET}-token budget"
    for h in admitted:   # 200 answers carry the budget, as OpenAI's do
        assert h["x-ratelimit-limit-tokens"] == str(BUDGET)
        assert 0 <= int(h["x-ratelimit-remaining-tokens"]) < BUDGET
        assert h["x-ratelimit-reset-tokens"].endswith("s")
    for e in refused:    # the token budget ran out: the message and the code say tokens
        assert e.code == "token_budget_exhausted" and e.type == "tokens"
        assert "token budget" in e.message and "request rate" not in e.message
        assert int(e.response.headers["retry-after"]) >= 1


def test_a_request_larger_than_the_whole_budget_is_not_told_to_retry(stack):
    subject = f"huge-{uuid.uuid4().hex[:8]}"
    client = _client(stack, subject, max_retries=3)   # the SDK retries 429s unless told not to
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=BUDGET + 1,
                                       messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert err.code == "request_exceeds_token_budget" and "more than the whole token budget" in err.message
    assert "retry-after" not in err.response.headers
    assert err.response.headers["x-should-retry"] == "false"
    decisions = [r for r in stack.audit_records() if r.get("kind") == "decision"
                 and (r.get("identity") or {}).get("subject") == subject]
    assert len(decisions) == 1     # one attempt: the SDK did not retry
    assert decisions[0]["decision"]["code"] == "request_exceeds_token_budget"


def test_redis_unreachable_is_a_503_with_its_own_code(tmp_path):
    dead = free_ports(1)[0]
    cfg = tmp_path / "ledgergate.yaml"
    cfg.write_text(json.dumps({
        "policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "token_budget_3000.yaml")},
        "ratelimit": {"backend": "redis", "url": f"redis://127.0.0.1:{dead}/0"}}))
    s = start_stack(tmp_path, "--config", str(cfg))
    try:
        r = httpx.post(f"{s.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {s.token()}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "ratelimit_unavailable"
        assert s.mock_requests() == []
        rec = [x for x in s.audit_records() if x.get("request_id") == r.headers["x-request-id"]]
        assert rec[0]["ratelimit"]["exhausted"] == "unavailable" and "unreachable" in rec[0]["ratelimit"]["backend_error"]
    finally:
        s.stop()
