"""A rate limit keyed by who is calling counts each of them apart: driven through the real
Servicer.Process (real pipeline, identity, policy, in-memory limiter) with dev tokens of two
tenants and two agents. Found by `make mutation`: the request path passing no tenant (or no actor)
to the limiter put every caller in one bucket, and no test saw it (docs/testing.md)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.ratelimit.limits import LimitSpec, limit_key
from ext_proc.server.config import load_config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO, inside_one_window
from tests.unit.test_request_reservation import _request
from tests.unit.test_tracing import _drive


def _policy_with_one_request_per(tmp_path, key: str) -> str:
    text = (REPO / "tests" / "e2e" / "policies" / "strict.yaml").read_text()
    text = text[:text.index("rate_limits:")] + f"""rate_limits:
  - id: one-per-{key}
    key: [{key}]
    requests: 1
    window_s: 3600
"""
    path = tmp_path / "one.yaml"
    path.write_text(text.replace("id: e2e-strict", f"id: unit-one-per-{key}"))
    return str(path)


@pytest.mark.parametrize("key, same, other", [
    ("tenant", {"sub": "alice", "tenant": "acme"}, {"sub": "carol", "tenant": "globex"}),
    ("actor", {"sub": "alice", "tenant": "acme", "act": "agent-one"}, {"sub": "alice", "tenant": "acme", "act": "agent-two"}),
])
async def test_a_limit_keyed_by_a_caller_attribute_counts_each_value_apart(tmp_path, key, same, other):
    inside_one_window(3600)
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": _policy_with_one_request_per(tmp_path, key)}, "server": {"metrics_listen": None}})
    rt = Runtime(config)
    await rt.start()
    try:
        servicer = Servicer(rt)
        dev = tmp_path / "var" / "dev"

        async def outcome(claims: dict, rid: str):
            token = mint_dev_token(dev, roles=["developer"], now=time.time(), **claims)
            replies, ctx = await _drive(servicer, _request(token, rid, 10))
            assert ctx.aborted is None
            last = replies[-1]
            return last.immediate_response.status.code if last.WhichOneof("response") == "immediate_response" else "released"

        assert await outcome(same, "k-1") == "released"
        # The same value again (another subject where the key is the tenant): its one request is used.
        again = dict(same, sub="bob") if key == "tenant" else same
        assert await outcome(again, "k-2") == 429
        # Another value has its own count.
        assert await outcome(other, "k-3") == "released"
    finally:
        await rt.close()


def test_an_answer_settles_exactly_the_tokens_its_usage_reports_even_with_one_side_missing():
    """What a reservation is settled to (pipeline/outcome.py): input plus output tokens, a side the
    provider leaves out counting 0 (found by `make mutation`: counting it as -1 or 1 passed)."""
    from ext_proc.pipeline.outcome import tokens_used

    assert tokens_used({"input_tokens": 12, "output_tokens": 30}) == 42
    assert tokens_used({"output_tokens": 30}) == 30
    assert tokens_used({"input_tokens": 12, "output_tokens": None}) == 12
    assert tokens_used({}) is None and tokens_used(None) is None


async def _limited_runtime(tmp_path, key: str) -> Runtime:
    inside_one_window(3600)
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": _policy_with_one_request_per(tmp_path, key)}, "server": {"metrics_listen": None}})
    rt = Runtime(config)
    await rt.start()
    return rt


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def test_the_limiter_is_told_the_callers_issuer_auth_method_and_route(tmp_path):
    """A limit keyed by issuer, auth method or route counts by what the request carries (found by
    `make mutation`: runtime.py:191, 192 passing no issuer or no auth method, and 197 (`decision.route
    and surface`) the surface for the route the decision named and none when it names none, put
    every issuer, method or route in one bucket). The unit
    runtime has one issuer and one method, so what the limiter is told is read at its door."""
    rt = await _limited_runtime(tmp_path, "tenant")
    try:
        seen: list[dict] = []
        reserve = rt.limiter.reserve

        async def recording_reserve(request_id, specs, context, tokens):
            seen.append(dict(context))
            return await reserve(request_id, specs, context, tokens)
        rt.limiter.reserve = recording_reserve
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())
        replies, ctx = await _drive(Servicer(rt), _request(token, "k-context", 10))
        assert ctx.aborted is None
        [context] = seen
        assert context["issuer"] == _claims(token)["iss"]
        assert context["auth_method"] == "jwt"
        # The route the policy's decision named (strict.yaml's "inference"), not the API surface.
        assert (context["route"], context["surface"]) == ("inference", "openai.chat_completions")
        keyed = {dim: limit_key(LimitSpec.from_dict({"id": "l", "key": [dim], "requests": 1, "window_s": 60}), context)
                 for dim in ("issuer", "auth_method", "route")}
        other = dict(context, issuer="https://other.example", auth_method="api_key", route="openai.embeddings")
        for dim, key in keyed.items():
            assert limit_key(LimitSpec.from_dict({"id": "l", "key": [dim], "requests": 1, "window_s": 60}), other) != key
    finally:
        await rt.close()


async def test_the_rejection_metric_counts_only_rejections_by_the_limit_that_refused(tmp_path):
    """ledgergate_ratelimit_rejections_total{limit=...} (found by `make mutation`: runtime.py:206
    counting on admission instead of rejection, 207 labelling every rejection "unknown")."""
    rt = await _limited_runtime(tmp_path, "tenant")
    try:
        def counts() -> dict[str, float]:
            return {s.labels["limit"]: s.value for m in rt.metrics.registry.collect()
                    if m.name == "ledgergate_ratelimit_rejections" for s in m.samples
                    if s.name == "ledgergate_ratelimit_rejections_total"}
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme", now=time.time())
        servicer = Servicer(rt)
        replies, ctx = await _drive(servicer, _request(token, "m-1", 10))
        assert replies[-1].WhichOneof("response") != "immediate_response"
        assert counts() == {}
        replies, ctx = await _drive(servicer, _request(token, "m-2", 10))
        assert replies[-1].immediate_response.status.code == 429
        assert counts() == {"one-per-tenant": 1.0}
    finally:
        await rt.close()
