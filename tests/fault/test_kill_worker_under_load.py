"""kill -9 of the ledgergate worker under load through the real Envoy: every request the upstream
saw has a committed decision record, and the audit chain still verifies after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.support import start_stack

pytestmark = pytest.mark.e2e


def test_every_request_the_upstream_saw_was_recorded_first(tmp_path):
    from ext_proc.dev.mock import MockProviderServer

    # The upstream lives outside the stack, so it outlives the `ledgergate up` that stops when its
    # worker dies.
    mock = MockProviderServer()
    mock.start()
    s = start_stack(tmp_path, f"--upstream=openai=http://127.0.0.1:{mock.port}")
    try:
        token = s.token()
        # This stack's worker only (other stacks of the test session run workers too).
        conf = str(s.var_dir / "run" / "ledgergate-w0.yaml")
        worker = int(subprocess.run(["pgrep", "-f", conf], capture_output=True, text=True).stdout.split()[0])
        stop = time.time() + 2.5
        codes: list[int] = []

        def load():
            with httpx.Client(timeout=10) as c:
                while time.time() < stop:
                    try:
                        r = c.post(f"{s.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 2000}]})
                        codes.append(r.status_code)
                    except httpx.HTTPError:
                        codes.append(0)
        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.2)
        os.kill(worker, signal.SIGKILL)
        for t in threads:
            t.join()
        assert 200 in codes and any(c >= 500 for c in codes)  # traffic flowed, then failed closed
        seen = {r["headers"].get("x-request-id") or r["headers"].get("X-Request-Id")
                for r in httpx.get(f"http://127.0.0.1:{mock.port}/_mock/requests").json()
                if r["path"].startswith("/v1/chat")}
        seen.discard(None)
        recorded = {r.get("request_id") for r in s.audit_records() if r.get("kind") == "decision"}
        assert seen and seen <= recorded, f"{len(seen - recorded)} upstream requests without a decision record"
    finally:
        s.stop()
    # The restart the docstring promises: a new stack on the same audit directory. Its worker opens
    # a new segment whose genesis attests the killed worker's torn tail, and it serves again.
    try:
        restarted = start_stack(tmp_path, f"--upstream=openai=http://127.0.0.1:{mock.port}")
        try:
            r = httpx.post(f"{restarted.base_url}/v1/chat/completions", timeout=30,
                           headers={"authorization": f"Bearer {restarted.token()}"},
                           json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after restart"}]})
            assert r.status_code == 200, r.text[:300]
        finally:
            restarted.stop()
    finally:
        mock.stop()
    res = subprocess.run([sys.executable, "-m", "ext_proc.cli.main", "audit", "verify", str(s.audit_dir)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # Two segments at least: the killed worker's (no closing checkpoint) and the restarted one's.
    assert len(list(s.audit_dir.glob("*.jsonl"))) >= 2
