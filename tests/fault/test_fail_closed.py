"""A request cannot reach the upstream when the processor errors, times out, is killed, or is not
running. Real Envoy, real mock upstream; only the processor misbehaves."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.support import REPO, free_ports, start_envoy, wait_port

pytestmark = pytest.mark.e2e

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "card 4111 1111 1111 1111"}]}


@pytest.fixture(scope="module")
def mock():
    from ext_proc.dev.mock import MockProviderServer

    m = MockProviderServer(host="127.0.0.1", port=free_ports(1)[0])
    m.start()
    yield m
    m.stop()


def _mock_hits(mock) -> list[dict]:
    return httpx.get(f"http://127.0.0.1:{mock.port}/_mock/requests").json()


def _processor(mode: str) -> tuple[subprocess.Popen, int]:
    port = free_ports(1)[0]
    p = subprocess.Popen([sys.executable, "-m", "tests.fault.processors", "--mode", mode, "--port", str(port)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def _send(port: int, timeout: float = 20.0) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY,
                      headers={"authorization": "Bearer x"}, timeout=timeout)


@pytest.mark.parametrize("mode", ["raise", "hang", "kill", "absent"])
def test_processor_failure_never_reaches_upstream(tmp_path, mock, mode):
    httpx.delete(f"http://127.0.0.1:{mock.port}/_mock/requests")
    proc = None
    if mode == "absent":
        ext_port = free_ports(1)[0]
    else:
        proc, ext_port = _processor("slow" if mode == "kill" else mode)
    envoy, port = start_envoy(tmp_path, ext_proc_ports=[ext_port], mock_port=mock.port,
                              message_timeout="1s" if mode == "hang" else None)
    try:
        if mode == "kill":
            import threading

            killer = threading.Timer(0.7, lambda: proc.send_signal(signal.SIGKILL))
            killer.start()
        r = _send(port)
        assert r.status_code >= 500, (mode, r.status_code)
        time.sleep(0.3)
        assert _mock_hits(mock) == [], f"{mode}: the request reached the upstream"
    finally:
        envoy.terminate()
        envoy.wait(10)
        if proc is not None:
            proc.kill()
            proc.wait(10)


def test_a_processor_that_returns_cleanly_is_bypassed_by_envoy(tmp_path, mock):
    """Documents the Envoy behaviour that makes `abort, never return` a rule in ledgergate's
    servicer: a clean end of the gRPC stream lets the request through unprocessed."""
    httpx.delete(f"http://127.0.0.1:{mock.port}/_mock/requests")
    proc, ext_port = _processor("return")
    envoy, port = start_envoy(tmp_path, ext_proc_ports=[ext_port], mock_port=mock.port)
    try:
        r = _send(port)
        hits = _mock_hits(mock)
        assert r.status_code == 200 and hits, "Envoy behaviour changed: update docs/architecture.md"
    finally:
        envoy.terminate()
        envoy.wait(10)
        proc.kill()
        proc.wait(10)
