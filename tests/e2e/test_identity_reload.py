"""Revoking an API key without a restart: edit the configuration and send SIGHUP to `ledgergate
up`; the workers rebuild their identity aside and swap it in. An invalid identity section keeps
the running one; both outcomes are logged."""

from __future__ import annotations

import hashlib
import json
import signal
import time

import httpx
import pytest

from tests.support import start_stack

pytestmark = pytest.mark.e2e

KEY = "sk-svc-batch-reload-test-key"


def _config(revoked: bool, *, broken: bool = False) -> str:
    key = {"id": "svc-batch", "sha256": hashlib.sha256(KEY.encode()).hexdigest(), "subject": "svc:batch",
           "roles": ["developer"], "tenant": "acme", "revoked": revoked}
    if broken:
        key["revokd"] = True          # a misspelt key: the whole section is rejected
    return json.dumps({"identity": {"api_keys": [key]}})


def _status(stack) -> tuple[int, str | None]:
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
    return r.status_code, (r.json().get("error") or {}).get("code") if r.status_code != 200 else None


def _wait_log(stack, event: str, count: int, timeout: float = 20.0) -> None:
    """Until a worker has logged EVENT COUNT times. The worker's own event line, not the name:
    `ledgergate up` prints "see their identity_reloaded / policy_reloaded log lines" on every
    SIGHUP, so counting the bare name returned after a rejected reload before the next one was
    in force (the revoked key answered 200 once under load)."""
    needle = f'"event": "{event}"'
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stack.log_path.read_text(errors="replace").count(needle) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not logged {count} time(s):\n{stack.log_path.read_text()[-3000:]}")


def test_an_api_key_is_revoked_by_sighup_and_an_invalid_reload_keeps_the_old(tmp_path):
    cfg = tmp_path / "ledgergate.yaml"
    cfg.write_text(_config(revoked=False))
    stack = start_stack(tmp_path, "--config", str(cfg))
    try:
        assert _status(stack) == (200, None)
        # An invalid identity section: rejected, logged, the key keeps working.
        cfg.write_text(_config(revoked=True, broken=True))
        stack.proc.send_signal(signal.SIGHUP)
        _wait_log(stack, "identity_reload_rejected", 1)
        assert _status(stack) == (200, None)
        # The revocation: in force after the reload, without a restart.
        cfg.write_text(_config(revoked=True))
        stack.proc.send_signal(signal.SIGHUP)
        _wait_log(stack, "identity_reloaded", 1)
        assert _status(stack) == (401, "api_key_revoked")
        assert stack.proc.poll() is None
        # The dev issuer (from the defaults) still verifies: the reload rebuilt all of identity.
        r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {stack.token()}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
        assert r.status_code == 200
    finally:
        stack.stop()
