"""Upstream timeouts through the real Envoy: a provider slower than its route timeout is answered
504 by Envoy and the outcome record names the timeout; in a failover chain an attempt that hangs
is cut by the per-try timeout, the next provider answers, and the hung attempt's record carries
the error. Timeouts come from upstreams.NAME in the ledgergate configuration. The response flags
that carry the timeout to ledgergate (x-ledgergate-upstream-flags, added by Envoy's route) reach
no client: ledgergate strips them from the answers it passes on, and its own refusals, which
Envoy gives the route's headers too, remove them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from ext_proc.cli.up import render_envoy_config
from tests.support import REPO, free_ports, start_stack, wait_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timeouts")
    hole_port, good_port = free_ports(2)
    # Accepts connections (the kernel does, from the backlog) and never answers: a hung provider.
    hole = socket.socket()
    hole.bind(("127.0.0.1", hole_port))
    hole.listen(64)
    good = subprocess.Popen([sys.executable, "-m", "ext_proc.cli.main", "mock-provider", "--port", str(good_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(good_port)
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({
        "upstreams": {"openai": {"timeout": "1s", "idle_timeout": "1s"}, "anthropic": {"per_try_timeout": "1s"}},
        "multiplex": {"models": {"resilient": [{"provider": "anthropic", "model": "claude-3-5-haiku-latest"},
                                               {"provider": "gemini", "model": "gemini-2.0-flash"}]}}}))
    s = start_stack(tmp, "--config", str(cfg), f"--upstream=anthropic=http://127.0.0.1:{hole_port}",
                    f"--upstream=gemini=http://127.0.0.1:{good_port}")
    yield s
    s.stop()
    good.terminate()
    good.wait(10)
    hole.close()


def test_a_provider_slower_than_the_route_timeout_is_a_504_on_record(slow):
    r = httpx.post(f"{slow.base_url}/v1/chat/completions",
                   headers={"authorization": f"Bearer {slow.token()}", "x-mock-delay-ms": "4000"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}, timeout=30)
    assert r.status_code == 504, r.text
    assert "x-ledgergate-upstream-flags" not in r.headers
    outcome = [x for x in slow.audit_records() if x.get("request_id") == r.headers["x-request-id"]
               and x["kind"] == "outcome"]
    assert outcome and outcome[0]["error"] == "upstream_request_timeout"


def test_ledgergate_own_replies_carry_no_upstream_flags(slow):
    # Envoy adds the route's response headers to ext_proc's immediate responses as well (there
    # the flags are "-"): a refusal must not carry ledgergate's internal header to the client.
    base, tok = slow.base_url, slow.token()
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    refusals = [
        httpx.post(f"{base}/v1/chat/completions", json=chat, timeout=30),                    # no token
        httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {tok}"}, timeout=30,
                   json={**chat, "messages": [{"role": "user", "content": "key AKIAIOSFODNN7QWERTYZ"}]}),
        httpx.post(f"{base}/v1/files", headers={"authorization": f"Bearer {tok}"}, json={}, timeout=30),
    ]
    assert [r.status_code for r in refusals] == [401, 403, 403], [r.text for r in refusals]
    for r in refusals:
        assert "x-request-id" in r.headers
        assert not [h for h in r.headers if h.startswith("x-ledgergate-upstream")], dict(r.headers)
    # a forwarded answer: the header reached ledgergate (the 504 above is recorded from it) and
    # goes no further
    ok = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {tok}"}, json=chat, timeout=30)
    assert ok.status_code == 200
    assert not [h for h in ok.headers if h.startswith("x-ledgergate-upstream")], dict(ok.headers)
    outcome = [x for x in slow.audit_records() if x.get("request_id") == ok.headers["x-request-id"]
               and x["kind"] == "outcome"]
    assert outcome and outcome[0]["error"] is None and outcome[0].get("upstream_host")


def test_a_fast_answer_is_not_cut_and_has_no_error(slow):
    r = httpx.post(f"{slow.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {slow.token()}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fast"}]}, timeout=30)
    assert r.status_code == 200
    outcome = [x for x in slow.audit_records() if x.get("request_id") == r.headers["x-request-id"]
               and x["kind"] == "outcome"]
    assert outcome[0]["error"] is None


def test_a_hung_attempt_is_cut_by_its_per_try_timeout_and_the_chain_moves_on(slow):
    c = openai.OpenAI(base_url=f"{slow.base_url}/v1", api_key=slow.token(), max_retries=0, timeout=20)
    raw = c.chat.completions.with_raw_response.create(
        model="resilient", messages=[{"role": "user", "content": "hung-then-fine"}])
    assert raw.status_code == 200 and raw.parse().choices[0].message.content.startswith("You said:")
    rid = raw.headers["x-request-id"]
    attempts = [x for x in slow.audit_records() if x.get("request_id") == rid and x["kind"] == "attempt"]
    failed = [a for a in attempts if a["error"]]
    assert [(a["provider"], a["error"]) for a in failed] == [("anthropic", "attempt_ended_without_response")]
    assert [a["provider"] for a in attempts if a["forwarded_sha256"]] == ["anthropic", "gemini"]


def test_rendered_routes_carry_the_configured_timeouts(tmp_path):
    cfg = render_envoy_config(
        REPO / "envoy" / "local.yaml", port=1, tls_port=2, admin_port=3, ext_proc_ports=[4], mock_port=5,
        upstreams={"openai": "http://127.0.0.1:6,http://127.0.0.1:7"}, var_dir=tmp_path,
        upstream_settings={"openai": {"timeout": "2m", "per_try_timeout": "45s"}, "anthropic": {"idle_timeout": 90}})
    routes = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"]["virtual_hosts"][0]["routes"]
    chat = next(r["route"] for r in routes if r["match"].get("prefix") == "/v1/chat/completions")
    messages = next(r["route"] for r in routes if r["match"].get("prefix") == "/v1/messages")
    assert (chat["timeout"], chat["idle_timeout"], chat["retry_policy"]["per_try_timeout"]) == ("120s", "300s", "45s")
    assert (messages["timeout"], messages["idle_timeout"]) == ("600s", "90s")
    assert all(r["route"]["timeout"] != "0s" for r in routes)
