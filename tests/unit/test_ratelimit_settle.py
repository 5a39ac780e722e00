"""An answer's usage settles its reservation: the next request sees the budget charged with what
the answer used, not with what was reserved for it (found by `make mutation`: the servicer never
settling an answer that reports usage passed every test)."""

from __future__ import annotations

import time

import pytest

from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server.config import load_config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO, inside_one_window
from tests.unit.test_tracing import _drive, _exchange

pytestmark = pytest.mark.asyncio


def _remaining(replies) -> int:
    (headers,) = [r.response_headers.response.header_mutation for r in replies if r.WhichOneof("response") == "response_headers"]
    values = {h.header.key: h.header.raw_value.decode() for h in headers.set_headers}
    return int(values["x-ratelimit-remaining-tokens"])


def _policy_with_token_budget(tmp_path) -> str:
    text = (REPO / "tests" / "e2e" / "policies" / "strict.yaml").read_text()
    text = text[:text.index("rate_limits:")] + """rate_limits:
  - id: token-budget
    key: [subject]
    tokens: 100000
    window_s: 3600
"""
    path = tmp_path / "budget.yaml"
    path.write_text(text.replace("id: e2e-strict", "id: unit-settle"))
    return str(path)


async def test_the_next_request_sees_the_budget_charged_with_the_tokens_the_answer_used(tmp_path):
    inside_one_window(3600)
    ensure_dev_material(tmp_path / "var")
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": _policy_with_token_budget(tmp_path)}, "server": {"metrics_listen": None}})
    rt = Runtime(config)
    await rt.start()
    try:
        token = mint_dev_token(tmp_path / "var" / "dev", sub="settle-alice", roles=["developer"], tenant="acme",
                               now=time.time())
        servicer = Servicer(rt)
        first, ctx = await _drive(servicer, _exchange(token, "settle-1", {}))
        assert ctx.aborted is None
        second, ctx = await _drive(servicer, _exchange(token, "settle-2", {}))
        assert ctx.aborted is None
        # Each answer reports 17 + 11 = 28 tokens; the same request reserves the same estimate.
        assert _remaining(second) == _remaining(first) - 28
    finally:
        await rt.close()
