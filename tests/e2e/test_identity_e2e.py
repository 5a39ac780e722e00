"""Bad credentials through the real Envoy path: each gets 401 in the provider's format, never
reaches the upstream, and leaves a decision record with the reason and without the token."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

pytestmark = pytest.mark.e2e


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def dev_key(stack):
    return serialization.load_pem_private_key((stack.var_dir / "dev" / "issuer-key.pem").read_bytes(), None)


def signed(stack, **over):
    now = int(time.time())
    kid = json.loads((stack.var_dir / "dev" / "jwks.json").read_text())["keys"][0]["kid"]
    claims = {"iss": "https://ledgergate.local/dev", "aud": "ledgergate", "sub": "mallory", "iat": now,
              "exp": now + 600, "roles": ["developer"]}
    headers = {"kid": over.pop("_kid", kid)}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, dev_key(stack), algorithm="EdDSA", headers=headers)


CASES = {
    "alg_none": lambda s: b64(b'{"alg":"none"}') + "." + b64(b'{"sub":"x"}') + ".",
    "expired": lambda s: signed(s, exp=int(time.time()) - 3600, iat=int(time.time()) - 4000),
    "future_iat": lambda s: signed(s, iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
    "no_exp": lambda s: signed(s, exp=None),
    "exp_string": lambda s: signed(s, exp=str(int(time.time()) + 60)),
    "absurd_lifetime": lambda s: signed(s, exp=int(time.time()) + 10**8),
    "wrong_aud": lambda s: signed(s, aud="someone-else"),
    "wrong_iss": lambda s: signed(s, iss="https://evil.example"),
    "unknown_kid": lambda s: signed(s, _kid="nope"),
    "pathlike_kid": lambda s: signed(s, _kid="../../../etc/passwd"),
    "tampered": lambda s: (lambda t: t.split(".")[0] + "." + b64(b'{"sub":"admin"}') + "." + t.split(".")[2])(signed(s)),
    "oversized": lambda s: signed(s, pad="x" * 20000),
    "extra_segments": lambda s: signed(s) + ".AAAA",
    "garbage": lambda s: "eyJ%%%.eyJ$$$.x",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_token_is_401_recorded_and_never_forwarded(stack, case):
    stack.clear_mock()
    token = CASES[case](stack)
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {token}"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}, timeout=20)
    assert r.status_code in (401, 413, 431), (case, r.status_code)  # Envoy itself refuses giant headers
    assert not [m for m in stack.mock_requests() if m["path"].startswith("/v1/chat")]
    if r.status_code == 401:
        assert r.json()["error"]["type"] == "authentication_error"
        rid = r.headers["x-request-id"]
        recs = [x for x in stack.audit_records() if x.get("request_id") == rid]
        assert recs and recs[0]["identity_error"]
        assert token[-20:] not in json.dumps(recs)


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer"}, {"authorization": "Basic YTpi"}, {"authorization": ""},
    {"x-api-key": "key with spaces"}, {"x-api-key": "not-a-known-key"},
])
def test_bad_header_shapes_are_401(stack, headers):
    r = httpx.post(f"{stack.base_url}/v1/messages", headers=headers,
                   json={"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"


def test_doubled_authorization_header_is_401(stack):
    t = stack.token()
    r = httpx.post(f"{stack.base_url}/v1/chat/completions",
                   headers=[("authorization", f"Bearer {t}"), ("authorization", f"Bearer {t}")],
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
