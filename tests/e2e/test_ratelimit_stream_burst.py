"""A concurrent burst of streamed requests against one token budget, through one Envoy and two
ledgergate workers sharing the real Redis. Tokens are reserved by estimate before release and
settled from the usage in the stream's final events: the budget is never exceeded while streams
are in flight, and afterwards only the real usage stays charged (nothing is left reserved)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis

from ext_proc.ratelimit.limits import LimitSpec, limit_key
from tests.support import REPO, inside_one_window, start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

BUDGET = 1000
MAX_TOKENS = 200  # the estimate is dominated by it: about 205 tokens per request
REPLY = "short answer"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("burst")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "token_budget.yaml")},
                               "ratelimit": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}}))
    s = start_stack(tmp, "--config", str(cfg), workers=2)
    yield s
    s.stop()


def _counters(subject: str) -> tuple[int, int]:
    spec = LimitSpec(id="stream-tokens", key=("subject",), requests=None, tokens=BUDGET, window_s=3600)
    r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    keys = list(r.scan_iter(match=f"lg:rl:{limit_key(spec, {'subject': subject})}:*"))
    assert len(keys) == 1, keys
    h = r.hgetall(keys[0])
    return int(h.get(b"r", 0)), int(h.get(b"t", 0))


def _stream(client: openai.OpenAI, n: int) -> tuple[int, object]:
    try:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=MAX_TOKENS, stream=True,
            messages=[{"role": "user", "content": f"burst {n}"}])
        text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
        assert text == REPLY
        return 200, None
    except openai.RateLimitError as exc:
        return 429, exc.response


def test_a_streamed_burst_never_exceeds_the_token_budget_and_leaves_only_real_usage(stack):
    subject = f"streamer-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(sub=subject), max_retries=0,
                           timeout=30, default_headers={"x-mock-reply": REPLY, "x-mock-chunk-chars": "1",
                                                        "x-mock-event-delay-ms": "40"})
    inside_one_window(3600, need_s=30)   # the policy's window
    # 12 streams at once, each lasting about half a second: their reservations overlap.
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda n: _stream(client, n), range(12)))
    admitted = [r for r in results if r[0] == 200]
    throttled = [resp for code, resp in results if code == 429]
    # ~205 estimated tokens each: at most four fit in 1,000 at the same time.
    assert 1 <= len(admitted) <= 4 and len(admitted) + len(throttled) == 12
    for resp in throttled:
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["x-ratelimit-limit-tokens"] == str(BUDGET)
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) < MAX_TOKENS + 10

    # Settled: the counter holds what the admitted streams really used, from their final events.
    time.sleep(0.5)
    records = stack.audit_records()
    ids = {d["request_id"] for d in records
           if d.get("kind") == "decision" and (d.get("identity") or {}).get("subject") == subject}
    mine = [r for r in records if r.get("kind") == "outcome" and r.get("usage") and r["request_id"] in ids]
    used = sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in mine)
    assert len(mine) == len(admitted) and 0 < used < 20 * len(admitted)
    requests, tokens = _counters(subject)
    assert (requests, tokens) == (len(admitted), used)
    assert tokens <= BUDGET

    # The difference was released: four more full estimates fit again, one after the other.
    again = [_stream(client, 100 + n)[0] for n in range(4)]
    assert again == [200] * 4
