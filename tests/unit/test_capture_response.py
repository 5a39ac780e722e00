"""Encrypted capture of the response as delivered, through the real Servicer and file audit sink:
the bound cuts it and says so; without capture configured nothing is sealed."""

from __future__ import annotations

import json
import time

import pytest

from ext_proc.audit.capture import RESPONSE_CAPTURE_AAD, open_capture
from ext_proc.cli.devmaterial import ensure_dev_material
from ext_proc.identity.dev import mint_dev_token
from ext_proc.server.config import load_config
from ext_proc.server.runtime import Runtime
from ext_proc.server.servicer import Servicer
from tests.support import REPO
from tests.unit.test_tracing import _drive, _exchange

KEY = bytes(range(32))


async def _runtime(tmp_path, capture: dict | None) -> Runtime:
    ensure_dev_material(tmp_path / "var")
    audit = {"dir": str(tmp_path / "audit")}
    if capture is not None:
        (tmp_path / "capture.key").write_bytes(KEY)
        audit["capture"] = {"key_file": str(tmp_path / "capture.key"), "key_id": "legal-1", **capture}
    config = load_config(None, base_dir=tmp_path, overrides={
        "policy": {"path": str(REPO / "policies" / "default.yaml")}, "server": {"metrics_listen": None},
        "audit": audit})
    rt = Runtime(config)
    await rt.start()
    return rt


def _outcome(tmp_path, request_id: str) -> dict:
    for f in (tmp_path / "audit").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "outcome" and rec.get("request_id") == request_id:
                return rec
    raise AssertionError("no outcome record")


def _delivered(replies) -> bytes:
    return b"".join(r.response_body.response.body_mutation.streamed_response.body
                    for r in replies if r.WhichOneof("response") == "response_body")


@pytest.mark.parametrize("bound", [10, 1 << 20])
async def test_the_response_capture_is_what_was_delivered_up_to_the_bound(tmp_path, bound):
    rt = await _runtime(tmp_path, {"max_response_bytes": bound})
    try:
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme",
                               now=time.time())
        replies, ctx = await _drive(Servicer(rt), _exchange(token, "cap-1", {}))
        assert ctx.aborted is None
    finally:
        await rt.close()
    delivered = _delivered(replies)
    rec = _outcome(tmp_path, "cap-1")
    opened = open_capture(KEY, rec["capture"], b"cap-1" + RESPONSE_CAPTURE_AAD)
    assert opened == delivered[:bound]
    assert rec["capture"]["truncated"] is (len(delivered) > bound)


async def test_no_capture_unless_configured(tmp_path):
    rt = await _runtime(tmp_path, None)
    try:
        token = mint_dev_token(tmp_path / "var" / "dev", sub="alice", roles=["developer"], tenant="acme",
                               now=time.time())
        await _drive(Servicer(rt), _exchange(token, "cap-2", {}))
    finally:
        await rt.close()
    assert _outcome(tmp_path, "cap-2")["capture"] is None
