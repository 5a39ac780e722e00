"""Envoy's own replies through the real Envoy (issue 19, item 7): a body over Envoy's buffer limit,
a path with `#`, a draining worker and an unreachable ledgergate reach the official SDKs in their
provider's error format (retry-after on 503, never an empty 500), a 413 is not retried, and each
reply ledgergate can know of is a signed decision record that `ledgergate audit verify` accepts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import anthropic
import botocore.config
import botocore.session
import httpx
import openai
import pytest
from botocore.exceptions import ClientError

from tests.support import free_ports, start_envoy, start_stack

pytestmark = pytest.mark.e2e

# Over Envoy's per-connection buffer limit (4 MiB in envoy/*.yaml): ext_proc cannot buffer it.
OVER_LIMIT = "a" * (5 * 1024 * 1024)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp("envoy-replies"))
    yield s
    s.stop()


def envoy_decisions(stack, code: str | None = None) -> list[dict]:
    return [r for r in stack.audit_records() if r.get("kind") == "decision"
            and r["decision"].get("decided_by") == "envoy" and (code is None or r["decision"]["code"] == code)]


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("not recorded in time")


def verify(audit_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "verify", str(audit_dir)],
                          capture_output=True, text=True, timeout=120, check=False)


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange on a raw socket (httpx would drop the `#` fragment before sending)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(request)
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return int(lines[0].split()[1]), headers, body


# --- a body over Envoy's buffer limit: 413 in the provider's format, not retried, recorded ------

def test_openai_sdk_gets_a_413_it_does_not_retry_and_the_refusal_is_recorded(stack):
    before = len(envoy_decisions(stack, "envoy_request_too_large"))
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.token(), max_retries=2, timeout=60)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": OVER_LIMIT}])
    assert err.value.status_code == 413
    assert err.value.body["code"] == "envoy_request_too_large"
    assert err.value.body["type"] == "invalid_request_error"
    # One attempt (the SDK retried nothing), refused by Envoy, nothing reached the provider.
    records = envoy_decisions(stack, "envoy_request_too_large")
    assert len(records) == before + 1
    rec = records[-1]
    assert rec["request_id"] == err.value.response.headers["x-request-id"]
    assert rec["decision"]["outcome"] == "deny" and rec["decision"]["status"] == 413
    assert rec["route"]["surface"] == "openai.chat_completions"
    assert rec["identity"]["subject"] == "alice"   # ledgergate had the headers: who was refused
    assert not [r for r in stack.mock_requests() if r["path"].startswith("/v1/chat/completions")
                and len(r.get("body") or "") > 1024 * 1024]
    assert OVER_LIMIT[:64] not in json.dumps(stack.audit_records())


def test_anthropic_sdk_gets_its_own_request_too_large(stack):
    client = anthropic.Anthropic(base_url=stack.base_url, api_key=stack.token(), max_retries=2, timeout=60)
    before = len(envoy_decisions(stack, "envoy_request_too_large"))
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model="claude-3-5-haiku-latest", max_tokens=16,
                               messages=[{"role": "user", "content": OVER_LIMIT}])
    assert err.value.status_code == 413
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "request_too_large"
    assert len(envoy_decisions(stack, "envoy_request_too_large")) == before + 1


def test_botocore_gets_a_validation_exception_once(stack, monkeypatch):
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", stack.token())
    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=f"https://127.0.0.1:{stack.tls_port}",
        verify=str(stack.var_dir / "dev" / "tls" / "server.crt"),
        config=botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"}))
    before = len(envoy_decisions(stack, "envoy_request_too_large"))
    with pytest.raises(ClientError) as err:
        client.converse(modelId="anthropic.claude-3-5-haiku-20241022-v1:0",
                        messages=[{"role": "user", "content": [{"text": OVER_LIMIT}]}])
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 0
    assert len(envoy_decisions(stack, "envoy_request_too_large")) == before + 1


# --- a path with `#`: Envoy refuses it before the filter chain; 400 in the provider's format ----

def test_a_path_with_a_fragment_is_a_provider_shaped_400_on_record(stack):
    token = stack.token()
    status, headers, body = raw_http(stack.port, (
        "POST /v1/messages#tail HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {token}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}").encode())
    assert status == 400
    assert headers["content-type"] == "application/json"
    err = json.loads(body)
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"   # Anthropic's shape
    rec = wait_for(lambda: [r for r in envoy_decisions(stack, "envoy_bad_request")
                            if r["decision"]["envoy_details"] == "path_normalization_failed"])[-1]
    assert rec["decision"]["status"] == 400 and rec["route"]["provider"] == "anthropic"
    assert rec["route"]["path"] == "/v1/messages"   # no fragment (nor query) in a record
    assert token not in json.dumps(rec)


def test_the_store_with_envoy_decisions_verifies(stack):
    assert envoy_decisions(stack)
    res = verify(stack.audit_dir)
    assert res.returncode == 0, res.stdout + res.stderr


# --- a draining worker: a recorded 503 + retry-after, the request in flight still answered -----

def test_a_request_during_drain_gets_a_recorded_503_with_retry_after(tmp_path):
    s = start_stack(tmp_path)
    try:
        token = s.token()
        client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=token, max_retries=0, timeout=60)
        slow: dict = {}

        def in_flight():
            slow["reply"] = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "slow one"}],
                extra_headers={"x-mock-delay-ms": "3000"})

        t = threading.Thread(target=in_flight)
        t.start()
        wait_for(lambda: s.mock_requests())   # the slow request reached the provider
        worker = subprocess.run(["pgrep", "-f", str(s.var_dir / "run" / "ledgergate-w0.yaml")],
                                capture_output=True, text=True, check=False).stdout.split()
        assert len(worker) == 1
        os.kill(int(worker[0]), signal.SIGTERM)
        wait_for(lambda: b"ledgergate_draining" in s.log_path.read_bytes())
        r = httpx.post(f"{s.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "too late"}]},
                       timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "draining"
        t.join(30)
        assert slow["reply"].status_code == 200   # the stream in flight finished
        s.proc.wait(30)   # the worker drained and exited; `up` stopped the stack
        refused = [x for x in s.audit_records() if x.get("request_id") == r.headers["x-request-id"]]
        assert [x["decision"]["code"] for x in refused] == ["draining"]
        assert refused[0]["decision"]["status"] == 503
        res = verify(s.audit_dir)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        s.stop()


# --- no ledgergate at all: a 503 with retry-after in the provider's format, not an empty 500 -----

def test_an_unreachable_ledgergate_is_a_provider_shaped_503_with_retry_after(tmp_path):
    closed, mock = free_ports(2)
    proc, port = start_envoy(tmp_path, ext_proc_ports=[closed], mock_port=mock)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json={"model": "m", "max_tokens": 1, "messages": []},
                       timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "overloaded_error"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as err:
            client.models.list()
        assert err.value.status_code == 503 and err.value.response.headers["retry-after"] == "1"
        assert err.value.body["type"] == "service_unavailable"
        r = httpx.post(f"http://127.0.0.1:{port}/v1beta/models/gemini-2.0-flash:generateContent", json={},
                       timeout=30)
        assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE"
        r = httpx.post(f"http://127.0.0.1:{port}/model/m/converse", json={}, timeout=30)
        assert r.status_code == 503 and r.headers["x-amzn-errortype"] == "ServiceUnavailableException"
    finally:
        proc.terminate()
        proc.wait(10)


# --- an upstream Envoy cannot reach: its 503 in the provider's format, retry-after, on record ----

def test_an_unreachable_provider_is_a_provider_shaped_503_with_retry_after(tmp_path):
    (closed,) = free_ports(1)
    s = start_stack(tmp_path, f"--upstream=anthropic=http://127.0.0.1:{closed}")
    try:
        client = anthropic.Anthropic(base_url=s.base_url, api_key=s.token(), max_retries=0, timeout=30)
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(model="claude-3-5-haiku-latest", max_tokens=16,
                                   messages=[{"role": "user", "content": "anyone there?"}])
        assert err.value.status_code == 503
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.body["error"]["type"] == "overloaded_error"
        rid = err.value.response.headers["x-request-id"]
        # Released by ledgergate, answered by Envoy: the outcome record names why.
        outcome = wait_for(lambda: [x for x in s.audit_records()
                                    if x.get("request_id") == rid and x["kind"] == "outcome"])
        assert outcome[0]["status"] == 503 and outcome[0]["error"] == "upstream_connection_failure"
        stats = httpx.get(f"http://127.0.0.1:{s.admin_port}/stats?filter=grpc_access_log", timeout=5).text
        assert "logs_dropped" in stats, stats
    finally:
        s.stop()
