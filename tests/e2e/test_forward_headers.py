"""Identity forwarded upstream (`identity.forward_headers`) through the real Envoy: the client's
own copy of a forwarded header is removed and ledgergate's is the only one the upstream sees.
Both arrive in one ext_proc HeaderMutation (remove_headers and set_headers of the same name), so
this pins the order in which Envoy applies them."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import start_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def forwarding(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fwd")
    cfg = tmp / "ledgergate.yaml"
    cfg.write_text(json.dumps({"identity": {"forward_headers": {
        "subject": "x-ledgergate-subject", "tenant": "x-ledgergate-tenant", "roles": "x-ledgergate-roles"}}}))
    s = start_stack(tmp, "--config", str(cfg))
    yield s
    s.stop()


def _upstream_headers(stack, marker: str) -> list[list[str]]:
    reqs = [r for r in stack.mock_requests() if marker in r["body"]]
    assert len(reqs) == 1
    return reqs[0]["header_list"]


def test_the_client_cannot_add_to_or_replace_a_forwarded_identity_header(forwarding):
    token = forwarding.token(sub="alice", roles="developer", tenant="acme")
    r = httpx.post(f"{forwarding.base_url}/v1/chat/completions", timeout=30, headers=[
        ("authorization", f"Bearer {token}"),
        ("x-ledgergate-subject", "mallory"), ("x-ledgergate-subject", "eve"),
        ("x-ledgergate-tenant", "evil-corp"), ("x-ledgergate-roles", "admin"),
        ("x-ledgergate-anything", "spoof")],
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fwd-marker-1"}]})
    assert r.status_code == 200, r.text
    headers = _upstream_headers(forwarding, "fwd-marker-1")
    seen = [(k, v) for k, v in headers if k.startswith("x-ledgergate-")]
    assert sorted(seen) == [("x-ledgergate-roles", "developer"), ("x-ledgergate-subject", "alice"),
                            ("x-ledgergate-tenant", "acme")]
    assert not any(k == "authorization" for k, _ in headers)  # the client's credential stays here


def test_an_identity_without_a_tenant_sends_no_tenant_header_even_if_the_client_did(forwarding):
    token = forwarding.token(sub="bob", roles="developer", tenant=None)
    r = httpx.post(f"{forwarding.base_url}/v1/chat/completions", timeout=30, headers=[
        ("authorization", f"Bearer {token}"), ("x-ledgergate-tenant", "evil-corp")],
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fwd-marker-2"}]})
    assert r.status_code == 200, r.text
    headers = _upstream_headers(forwarding, "fwd-marker-2")
    assert not any(k == "x-ledgergate-tenant" for k, _ in headers)
    assert ["x-ledgergate-subject", "bob"] in headers
