"""Fail closed, proven on ledgergate itself: a fault injected into the real worker (a raising
classifier, a failing audit sink, a hung policy evaluation; tests/fault/inject/sitecustomize.py)
with the real Envoy in front and the mock upstream as the witness. The client gets a 5xx (from
ledgergate in its provider's format when ledgergate can still answer, from Envoy when it cannot),
and the upstream sees nothing."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request

import httpx
import openai
import pytest
import yaml

from tests.support import REPO, start_stack, unique_marker

pytestmark = pytest.mark.e2e

INJECT = REPO / "tests" / "fault" / "inject"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faulty")
    fault_dir = tmp / "faults"
    fault_dir.mkdir()
    # Envoy gives up on a silent processor after 1 s here instead of 10 s (the hung-policy case).
    envoy_cfg = yaml.safe_load((REPO / "envoy" / "local.yaml").read_text())
    for listener in envoy_cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"]["http_filters"]:
                    if hf["name"] == "envoy.filters.http.ext_proc":
                        hf["typed_config"]["message_timeout"] = "1s"
    envoy_path = tmp / "envoy-1s.yaml"
    envoy_path.write_text(yaml.safe_dump(envoy_cfg, sort_keys=False))
    pythonpath = os.pathsep.join(p for p in (str(INJECT), os.environ.get("PYTHONPATH")) if p)
    s = start_stack(tmp, "--envoy-config", str(envoy_path),
                    env={"PYTHONPATH": pythonpath, "LEDGERGATE_FAULT_DIR": str(fault_dir)})
    yield s, fault_dir
    s.stop()


@contextlib.contextmanager
def switched_on(fault_dir, name: str):
    switch = fault_dir / name
    switch.touch()
    try:
        yield
    finally:
        switch.unlink()


def _wait_ready(stack, timeout: float = 30.0) -> None:
    """After a sink failure the worker is unready until it has reopened the audit log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the worker did not become ready again")
        time.sleep(0.1)


def _reached_upstream(stack, marker: str) -> bool:
    return any(marker in r["body"] for r in stack.mock_requests())


def _post(stack, token: str, marker: str) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {token}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}]})


# The sink case last: the worker must reopen its audit log before it serves again.
@pytest.mark.parametrize("fault, code", [("classifier_raises", "processing_error"),
                                         ("policy_hangs", None),
                                         ("sink_fails", "audit_unavailable")])
def test_a_fault_inside_ledgergate_never_lets_the_request_through(faulty, fault, code):
    s, fault_dir = faulty
    _wait_ready(s)
    token = s.token()
    clean = unique_marker("clean")
    assert _post(s, token, clean).status_code == 200 and _reached_upstream(s, clean)  # the witness works

    marker = unique_marker(fault.replace("_", ""))
    with switched_on(fault_dir, fault):
        r = _post(s, token, marker)
    assert r.status_code >= 500, (fault, r.status_code, r.text[:200])
    assert not _reached_upstream(s, marker), f"{fault}: the request reached the upstream"
    assert marker not in r.text
    assert marker not in s.log_path.read_text(errors="replace"), "the prompt reached the process logs"
    if code is not None:
        # ledgergate answered itself: a 503 in OpenAI's error shape, and the SDK raises it.
        assert r.status_code == 503 and r.json()["error"]["code"] == code
        rid = r.headers["x-request-id"]
        records = [x for x in s.audit_records() if x.get("request_id") == rid]
        if fault == "classifier_raises":   # the record says why
            (decision,) = records
            assert decision["decision"]["code"] == "processing_error" and decision["decision"]["status"] == 503
        else:                              # nothing could be recorded, so nothing was released
            assert records == []
    # After the fault ledgergate serves again (after a sink failure: once the worker has reopened
    # its audit log on a new segment; until then every request is refused and reaches nothing).
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=token, max_retries=0, timeout=30)
    deadline = time.monotonic() + 30
    while True:
        after = unique_marker("after")
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": after}])
            break
        except openai.InternalServerError as exc:
            assert exc.status_code == 503 and exc.code == "audit_unavailable" and fault == "sink_fails"
            assert not _reached_upstream(s, after)
            assert time.monotonic() < deadline, "ledgergate did not recover from the fault"
            time.sleep(0.2)
    assert _reached_upstream(s, after)
