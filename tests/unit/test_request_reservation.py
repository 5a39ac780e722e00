"""The request path reserves the request's estimated tokens (prompt estimate + max_tokens) against
a token budget before it is released: driven through the real Servicer.Process with ext_proc
messages as Envoy sends them, the real pipeline, identity, policy and in-memory limiter. A path
that reserved 0 tokens would admit every request here."""

from __future__ import annotations

import json
import time

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server.config import load_config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO, inside_one_window
from tests.unit.test_tracing import _drive, _request_headers

BUDGET = 1000
MAX_TOKENS = 300
PROMPT = "summarise the quarterly figures in plain words " * 8   # 384 characters: ~97 tokens


def _policy_with_token_budget(tmp_path) -> str:
    text = (REPO / "tests" / "e2e" / "policies" / "strict.yaml").read_text()
    text = text[:text.index("rate_limits:")] + f"""rate_limits:
  - id: token-budget
    key: [subject]
    tokens: {BUDGET}
    window_s: 3600
"""
    path = tmp_path / "budget.yaml"
    path.write_text(text.replace("id: e2e-strict", "id: unit-token-budget"))
    return str(path)


@pytest.fixture
async def runtime(tmp_path):
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": _policy_with_token_budget(tmp_path)}, "server": {"metrics_listen": None}})
    rt = Runtime(config)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.close()


def _request(token: str, request_id: str, max_tokens: int | None) -> list[pb.ProcessingRequest]:
    body: dict = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return [_request_headers({":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw",
                              "authorization": f"Bearer {token}", "content-type": "application/json"}, request_id),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True))]


async def test_each_released_request_reserves_its_estimate_until_the_budget_refuses(runtime, tmp_path):
    inside_one_window(3600)
    token = mint_dev_token(tmp_path / "var" / "dev", sub="budget-alice", roles=["developer"], tenant="acme",
                           now=time.time())
    servicer = Servicer(runtime)
    # Each request estimates ~97 prompt tokens + 300 max_tokens ≈ 398: two fit in 1000, a third does not.
    # The streams end without a response (no usage), so each reservation stays charged as estimated.
    outcomes = []
    for i in range(3):
        replies, ctx = await _drive(servicer, _request(token, f"budget-{i}", MAX_TOKENS))
        assert ctx.aborted is None
        kind = replies[-1].WhichOneof("response")
        outcomes.append(replies[-1].immediate_response.status.code if kind == "immediate_response" else "released")
    assert outcomes == ["released", "released", 429]
    refused = {h.header.key: h.header.raw_value.decode()
               for h in replies[-1].immediate_response.headers.set_headers}
    assert refused["x-ratelimit-limit-tokens"] == str(BUDGET)
    used = BUDGET - int(refused["x-ratelimit-remaining-tokens"])
    # What the first two reserved: at least their max_tokens each, never more than the whole budget.
    assert 2 * MAX_TOKENS < used <= BUDGET

    # A request small enough to fit in what is left is still admitted: the refusal was the budget.
    small, ctx = await _drive(servicer, _request(token, "budget-small", 1))
    assert small[-1].WhichOneof("response") == "request_body"


async def test_a_request_whose_decision_commit_failed_gives_its_reservation_back(runtime, tmp_path, monkeypatch):
    """docs/ratelimit.md: a reservation is released when the request was not forwarded. A request
    admitted (its estimate reserved) whose decision record could not be committed is answered 503
    and never released upstream: the stream's end gives its reservation back, so the budget is
    whole for the next requests (found by `make mutation`: `reservation is None` at the stream's
    end kept it charged, and no test executed that line)."""
    from ext_proc.audit.log import AuditUnavailable
    inside_one_window(3600)
    token = mint_dev_token(tmp_path / "var" / "dev", sub="budget-bob", roles=["developer"], tenant="acme",
                           now=time.time())
    servicer = Servicer(runtime)
    real_commit = runtime.audit.commit

    async def failing(record):
        raise AuditUnavailable("the audit store is down")

    monkeypatch.setattr(runtime.audit, "commit", failing)
    replies, ctx = await _drive(servicer, _request(token, "budget-outage", MAX_TOKENS))
    assert ctx.aborted is None and replies[-1].immediate_response.status.code == 503
    monkeypatch.setattr(runtime.audit, "commit", real_commit)
    # Two requests of ~398 tokens fit in 1000 only if the failed one's ~398 were given back.
    outcomes = []
    for i in range(2):
        replies, ctx = await _drive(servicer, _request(token, f"budget-after-{i}", MAX_TOKENS))
        kind = replies[-1].WhichOneof("response")
        outcomes.append(replies[-1].immediate_response.status.code if kind == "immediate_response" else "released")
    assert outcomes == ["released", "released"]
