"""Two ledgergate workers behind one Envoy (N ports as N endpoints), sharing rate-limit counters in
the real Redis: the budget holds across workers, and each worker writes its own audit segment."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.support import REPO, inside_one_window, start_stack

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"policy": {"path": str(REPO / "tests" / "e2e" / "policies" / "strict.yaml")},
                               "ratelimit": {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}}))
    s = start_stack(tmp, "--config", str(cfg), workers=2)
    yield s
    s.stop()


def test_budget_is_exact_across_workers_under_a_concurrent_burst(two_workers):
    s = two_workers
    token = s.token(sub=f"limited-{uuid.uuid4().hex[:8]}")
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=token, max_retries=0, timeout=30)

    def one(_):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            return 200
        except openai.RateLimitError:
            return 429
    inside_one_window(3600, need_s=30)   # the policy's window
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(24)))
    assert codes.count(200) == 3 and codes.count(429) == 21


def test_each_worker_writes_its_own_verifiable_segment(two_workers):
    s = two_workers
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=s.token(), max_retries=0, timeout=30)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "spread"}]), range(40)))
    writers = {r["writer_id"] for r in s.audit_records() if r.get("kind") == "decision"}
    assert len(writers) == 2
    res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "verify", str(s.audit_dir)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
