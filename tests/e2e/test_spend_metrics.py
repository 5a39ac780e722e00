"""Spend as metrics: the usage a provider reports is counted by direction, tenant, model and
provider, with label values bounded (a client cannot grow the registry by inventing models)."""

from __future__ import annotations

import urllib.request

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ext_proc.server.metrics import BoundedLabel, Metrics

pytestmark = pytest.mark.e2e


def _tokens(metrics_port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "ledgergate_tokens":
            for s in fam.samples:
                if s.name == "ledgergate_tokens_total":
                    out[(s.labels["direction"], s.labels["tenant"], s.labels["model"], s.labels["provider"])] = s.value
    return out


def test_token_usage_is_exported_by_tenant_model_and_provider(stack):
    before = _tokens(stack.metrics_port)
    r = httpx.post(f"{stack.base_url}/v1/chat/completions",
                   headers={"authorization": f"Bearer {stack.token(tenant='spend-co')}", "x-mock-reply": "four words of reply"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count my spend"}]}, timeout=20)
    assert r.status_code == 200
    usage = r.json()["usage"]
    after = _tokens(stack.metrics_port)
    key = ("spend-co", "gpt-4o-mini", "openai")
    assert after[("input", *key)] - before.get(("input", *key), 0) == usage["prompt_tokens"]
    assert after[("output", *key)] - before.get(("output", *key), 0) == usage["completion_tokens"]


def test_spend_labels_are_bounded():
    label = BoundedLabel(2)
    assert [label(v) for v in ("a", "b", "c", "a", None, "x" * 500)] == ["a", "b", "other", "a", "none", "other"]
    m = Metrics()
    for i in range(300):
        m.spend({"input_tokens": 1, "output_tokens": 1}, tenant="t", model=f"invented-{i}", provider="openai")
    models = {s.labels["model"] for fam in m.registry.collect() if fam.name == "ledgergate_tokens"
              for s in fam.samples}
    assert len(models) <= 201 and "other" in models
