"""JWKS from a URL: fetched off the event loop, one forced refresh on an unknown kid (with a
cooldown), bounded stale-while-revalidate when the endpoint is down, refusal of bad endpoints."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.identity import IdentityConfig, IdentityError, IdentityResolver
from tests.unit.test_identity_resolver import AUD, ISS, b64


def jwk(key: Ed25519PrivateKey, kid: str) -> dict:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": kid, "use": "sig", "alg": "EdDSA"}


class JwksServer:
    def __init__(self) -> None:
        self.doc: bytes = b'{"keys": []}'
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits += 1
                time.sleep(outer.delay)
                self.send_response(outer.status)
                self.send_header("content-length", str(len(outer.doc)))
                self.end_headers()
                self.wfile.write(outer.doc)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = JwksServer()
    yield s
    s.stop()


def resolver(url: str, **extra) -> IdentityResolver:
    return IdentityResolver(IdentityConfig.from_dict({"issuers": [{
        "issuer": ISS, "audiences": [AUD], "jwks_url": url, "algorithms": ["EdDSA"], "jwks_timeout": "0.5s",
        "jwks_refresh": "30s", "jwks_stale_max": "60s", "jwks_refetch_cooldown": "30s", **extra}]}, base_dir=__import__("pathlib").Path(".")))


def tok(key, kid, now):
    return jwt.encode({"iss": ISS, "aud": AUD, "sub": "alice", "iat": int(now), "exp": int(now) + 600},
                      key, algorithm="EdDSA", headers={"kid": kid})


def test_rotation_forced_refresh_once_per_cooldown_and_bounded_stale(server):
    k1, k2, k3 = (Ed25519PrivateKey.generate() for _ in range(3))
    server.doc = json.dumps({"keys": [jwk(k1, "k1")]}).encode()
    r = resolver(server.url)
    now = time.time()

    async def go():
        await r.start()
        assert r.ready
        assert (await r.resolve({"authorization": [f"Bearer {tok(k1, 'k1', now)}"]}, {}, now)).subject == "alice"
        # Rotation: the issuer publishes k2; the first k2 token forces one refresh.
        server.doc = json.dumps({"keys": [jwk(k1, "k1"), jwk(k2, "k2")]}).encode()
        hits = server.hits
        assert (await r.resolve({"authorization": [f"Bearer {tok(k2, 'k2', now)}"]}, {}, now + 1)).subject == "alice"
        assert server.hits == hits + 1
        # An unknown kid within the cooldown does not hammer the endpoint.
        with pytest.raises(IdentityError) as ei:
            await r.resolve({"authorization": [f"Bearer {tok(k3, 'k3', now)}"]}, {}, now + 2)
        assert ei.value.reason == "unknown_kid" and server.hits == hits + 1
        # Endpoint down: the last good keys serve until jwks_stale_max, then requests fail closed.
        server.status = 500
        t = tok(k1, "k1", now + 30)
        assert (await r.resolve({"authorization": [f"Bearer {t}"]}, {}, now + 30)).subject == "alice"
        t2 = tok(k1, "k1", now + 120)
        with pytest.raises(IdentityError) as ei:
            await r.resolve({"authorization": [f"Bearer {t2}"]}, {}, now + 120)
        assert ei.value.reason == "jwks_unavailable"
        await r.close()
    asyncio.run(go())


@pytest.mark.parametrize("problem", ["non_json", "status_500", "slow", "enc_only"])
def test_bad_endpoint_leaves_the_issuer_unready_and_requests_fail_closed(server, problem):
    k1 = Ed25519PrivateKey.generate()
    server.doc = json.dumps({"keys": [jwk(k1, "k1")]}).encode()
    if problem == "non_json":
        server.doc = b"<html>oops</html>"
    elif problem == "status_500":
        server.status = 500
    elif problem == "slow":
        server.delay = 2.0
    else:
        server.doc = json.dumps({"keys": [dict(jwk(k1, "k1"), use="enc")]}).encode()
    r = resolver(server.url)
    now = time.time()

    async def go():
        t0 = time.time()
        await r.start()
        assert time.time() - t0 < 1.9  # the timeout bounds start-up
        assert not r.ready
        with pytest.raises(IdentityError) as ei:
            await r.resolve({"authorization": [f"Bearer {tok(k1, 'k1', now)}"]}, {}, now)
        assert ei.value.reason in ("jwks_unavailable", "unknown_kid")
        await r.close()
    asyncio.run(go())


def test_plain_http_jwks_only_on_loopback():
    with pytest.raises(ValueError):
        resolver("http://idp.example.com/jwks.json")
    with pytest.raises(ValueError):
        IdentityConfig.from_dict({"issuers": [{"issuer": ISS, "audiences": [AUD]}]}, base_dir=__import__("pathlib").Path("."))
