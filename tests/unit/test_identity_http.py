"""Identity over the network, against a tiny HTTP server on 127.0.0.1: JWKS from a URL (duplicate
kids, enc-only keys, down, slow, non-JSON, forced refresh on an unknown kid with a cooldown,
bounded stale-while-revalidate) and RFC 7662 introspection (only a JSON boolean `active: true`
passes; every failure denies)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ext_proc.identity import IdentityConfig, IdentityError, IdentityResolver
from tests.unit.test_identity_resolver import AUD, ISS, Keys, ed_jwk, jwks_for, token


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, tuple[int, bytes, float]] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[tuple[str, dict, bytes]] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def serve(self, path: str, body, status: int = 200, delay: float = 0.0) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, data, delay)


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
            self.server.requests.append((self.path, dict(self.headers), body))
        status, data, delay = self.server.routes.get(self.path, (404, b"not found", 0.0))
        if delay:
            time.sleep(delay)
        try:
            self.send_response(status)
            if status in (301, 302):
                self.send_header("location", self.server.url("/jwks.json"))
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = _answer
    do_POST = _answer


@pytest.fixture()
def server():
    srv = FakeServer()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def free_port_url(path: str) -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}{path}"


def url_config(tmp_path, url: str, **over) -> IdentityConfig:
    issuer = {"issuer": ISS, "audiences": [AUD], "jwks_url": url, "algorithms": ["EdDSA", "RS256", "ES256"],
              "jwks_timeout": "300ms", "jwks_refresh": "300s", "jwks_stale_max": "1h"}
    issuer.update(over)
    return IdentityConfig.from_dict({"issuers": [issuer]}, tmp_path)


async def started(cfg: IdentityConfig) -> IdentityResolver:
    r = IdentityResolver(cfg)
    await r.start()
    return r


async def reason_of(r: IdentityResolver, value: str, now: float | None = None, header: str = "authorization") -> str:
    hv = f"Bearer {value}" if header == "authorization" else value
    with pytest.raises(IdentityError) as ei:
        await r.resolve({header: [hv]}, {}, time.time() if now is None else now)
    assert value not in ei.value.message and value[-16:] not in str(ei.value)
    return ei.value.reason


async def subject_of(r: IdentityResolver, value: str, now: float | None = None, header: str = "authorization"):
    hv = f"Bearer {value}" if header == "authorization" else value
    return (await r.resolve({header: [hv]}, {}, time.time() if now is None else now)).subject


def fresh(key, **kw) -> str:
    now = int(time.time())
    return token(key, iat=now, exp=now + 600, **kw)


# --- JWKS from a URL --------------------------------------------------------------------------

async def test_jwks_url_good(tmp_path, server, keys):
    server.serve("/jwks.json", jwks_for(keys))
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        assert r.ready
        assert await subject_of(r, fresh(keys.ed)) == "alice"
        assert await subject_of(r, fresh(keys.rsa, kid="rsa1", alg="RS256")) == "alice"
    finally:
        await r.close()


async def test_jwks_url_duplicate_kids(tmp_path, server, keys):
    jwks = jwks_for(keys)
    jwks["keys"].append(ed_jwk(keys.attacker, "ed1"))
    server.serve("/jwks.json", jwks)
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        assert await reason_of(r, fresh(keys.attacker)) == "unknown_kid"
        assert await reason_of(r, fresh(keys.ed)) == "unknown_kid"
        assert await subject_of(r, fresh(keys.rsa, kid="rsa1", alg="RS256")) == "alice"
    finally:
        await r.close()


@pytest.mark.parametrize("route", [
    ("/jwks.json", {"keys": [ed_jwk(Keys().ed, "ed1", use="enc")]}, 200),   # only use=enc keys
    ("/jwks.json", b"<html>maintenance</html>", 200),                        # not JSON
    ("/jwks.json", b"", 200),
    ("/jwks.json", {"keys": "nope"}, 200),
    ("/jwks.json", {"error": "boom"}, 500),
    ("/jwks.json", b"", 302),                                                # redirects are not followed
    ("/jwks.json", b" " * (600 * 1024), 200),                                # over jwks_max_bytes
])
async def test_jwks_url_unusable_answers(tmp_path, server, keys, route):
    path, body, status = route
    server.serve(path, body, status=status)
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        assert not r.ready  # start does not raise for a URL: it retries in the background
        assert await reason_of(r, fresh(keys.ed)) == "jwks_unavailable"
        assert r.jwks_status()[0]["last_error"]
    finally:
        await r.close()


async def test_jwks_url_down(tmp_path, keys):
    r = await started(url_config(tmp_path, free_port_url("/jwks.json")))
    try:
        assert not r.ready
        assert await reason_of(r, fresh(keys.ed)) == "jwks_unavailable"
    finally:
        await r.close()


async def test_jwks_url_slow_is_bounded_by_the_timeout(tmp_path, server, keys):
    server.serve("/jwks.json", jwks_for(keys), delay=3.0)
    t0 = time.monotonic()
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        assert time.monotonic() - t0 < 2.0
        assert not r.ready
        assert await reason_of(r, fresh(keys.ed)) == "jwks_unavailable"
    finally:
        await r.close()


async def test_rotation_unknown_kid_waits_for_one_forced_refresh_then_cooldown(tmp_path, server, keys):
    server.serve("/jwks.json", jwks_for(keys))
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        assert server.hits["/jwks.json"] == 1
        # The issuer rotates: its JWKS now has ed2, which we have not fetched yet. Concurrent
        # requests with the new kid share one forced refresh and all succeed.
        server.serve("/jwks.json", jwks_for(keys, extra=[ed_jwk(keys.attacker, "ed2")]))
        rotated = [fresh(keys.attacker, kid="ed2", sub=f"u{i}") for i in range(5)]
        subjects = await asyncio.gather(*(subject_of(r, t) for t in rotated))
        assert subjects == [f"u{i}" for i in range(5)]
        assert server.hits["/jwks.json"] == 2
        # Random kids within the cooldown do not turn into fetches, nor wait.
        t0 = time.monotonic()
        for i in range(20):
            assert await reason_of(r, fresh(keys.ed, kid=f"random-{i}")) == "unknown_kid"
        assert time.monotonic() - t0 < 0.5
        await asyncio.sleep(0.05)
        assert server.hits["/jwks.json"] == 2
    finally:
        await r.close()


async def test_forced_refresh_to_a_slow_endpoint_waits_at_most_the_timeout(tmp_path, server, keys):
    server.serve("/jwks.json", jwks_for(keys))
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        server.serve("/jwks.json", jwks_for(keys, extra=[ed_jwk(keys.attacker, "ed2")]), delay=3.0)
        t0 = time.monotonic()
        assert await reason_of(r, fresh(keys.attacker, kid="ed2")) == "unknown_kid"
        assert time.monotonic() - t0 < 1.5
        assert await subject_of(r, fresh(keys.ed)) == "alice"  # known kids never waited
    finally:
        await r.close()


async def test_stale_keys_serve_for_a_bounded_time_when_the_endpoint_is_down(tmp_path, server, keys):
    server.serve("/jwks.json", jwks_for(keys))
    r = await started(url_config(tmp_path, server.url("/jwks.json"), jwks_refresh="1s", jwks_stale_max="2s"))
    try:
        state = r._states[ISS]
        server.serve("/jwks.json", b"down", status=503)
        assert await r._fetch(state) is not None
        assert r.ready and state.failures == 1
        now = time.time()
        t = token(keys.ed, iat=int(now), exp=int(now) + 600)
        assert await subject_of(r, t, now=now) == "alice"             # stale but within the bound
        r._jwt_cache._entries.clear()
        assert await reason_of(r, t, now=now + 1 + 2 + 5) == "jwks_unavailable"  # past the bound
        await r.resolve({"authorization": [f"Bearer {t}"]}, {}, now)   # re-cached while usable
        assert await reason_of(r, t, now=now + 1 + 2 + 5) == "jwks_unavailable"  # the cache obeys it too
        state.on_failure("down", now + 10)
        assert state.keyset is None and not r.ready
        server.serve("/jwks.json", jwks_for(keys))
        assert await r._fetch(state) is None and r.ready             # recovers on the next good fetch
    finally:
        await r.close()


async def test_jku_is_never_fetched(tmp_path, server, keys):
    server.serve("/jwks.json", jwks_for(keys))
    server.serve("/evil.json", {"keys": [ed_jwk(keys.attacker, "evil")]})
    r = await started(url_config(tmp_path, server.url("/jwks.json")))
    try:
        t = fresh(keys.attacker, kid="evil", headers={"jku": server.url("/evil.json"),
                                                      "x5u": server.url("/evil.json")})
        assert await reason_of(r, t) == "unknown_kid"
        await asyncio.sleep(0.1)
        assert "/evil.json" not in server.hits
    finally:
        await r.close()


# --- introspection ----------------------------------------------------------------------------

OPAQUE = "opaque-tok_" + "A1b2C3d4" * 4


def intro_config(tmp_path, url: str, **over) -> IdentityConfig:
    (tmp_path / "client-secret").write_text("s3cret\n")
    intro = {"url": url, "client_id": "ledgergate", "client_secret_file": "client-secret", "timeout": "300ms",
             "cache_max": "60s", "claims": {"roles": "roles", "scopes": "scope", "tenant": "tenant"}}
    intro.update(over)
    api = {"id": "svc", "sha256": hashlib.sha256(b"lg_local_key_0123456789").hexdigest(), "subject": "svc:x"}
    return IdentityConfig.from_dict({"introspection": intro, "api_keys": [api]}, tmp_path)


async def test_introspection_active_token(tmp_path, server):
    now = time.time()
    server.serve("/introspect", {"active": True, "sub": "bob", "scope": "llm:read llm:write", "roles": ["analyst"],
                                 "tenant": "acme", "exp": int(now) + 300, "act": {"sub": "agent-7"}})
    r = await started(intro_config(tmp_path, server.url("/introspect")))
    try:
        ident = await r.resolve({"authorization": [f"Bearer {OPAQUE}"]}, {}, now)
        assert (ident.subject, ident.auth_method, ident.tenant) == ("bob", "introspection", "acme")
        assert ident.scopes == ("llm:read", "llm:write") and ident.actor == ("agent-7",)
        assert OPAQUE not in json.dumps(ident.to_record())
        path, headers, body = server.requests[0]
        assert b"token=" + OPAQUE.encode() in body and b"token_type_hint=access_token" in body
        expected_auth = "Basic " + base64.b64encode(b"ledgergate:s3cret").decode()
        assert {k.lower(): v for k, v in headers.items()}["authorization"] == expected_auth
        await r.resolve({"authorization": [f"Bearer {OPAQUE}"]}, {}, now + 1)
        assert server.hits["/introspect"] == 1  # cached
        await r.resolve({"authorization": [f"Bearer {OPAQUE}"]}, {}, now + 61)
        assert server.hits["/introspect"] == 2  # cache_max
    finally:
        await r.close()


async def test_introspection_cache_is_bounded_by_exp(tmp_path, server):
    now = time.time()
    server.serve("/introspect", {"active": True, "sub": "bob", "exp": now + 5})
    r = await started(intro_config(tmp_path, server.url("/introspect")))
    try:
        assert (await r.resolve({"x-api-key": [OPAQUE]}, {}, now)).subject == "bob"
        assert await reason_of(r, OPAQUE, now=now + 6, header="x-api-key") == "token_expired"
        assert server.hits["/introspect"] == 2
    finally:
        await r.close()


@pytest.mark.parametrize("body,status,expected", [
    ({"active": "true", "sub": "bob"}, 200, "token_inactive"),
    ({"sub": "bob"}, 200, "token_inactive"),
    ({"active": 1, "sub": "bob"}, 200, "token_inactive"),
    ({"active": False}, 200, "token_inactive"),
    (b'{"active": false, "active": true, "sub": "bob"}', 200, "introspection_failed"),
    (b"<html>oops</html>", 200, "introspection_failed"),
    (b"[true]", 200, "introspection_failed"),
    ({"active": True, "sub": "bob"}, 500, "introspection_failed"),
    ({"active": True, "sub": "bob"}, 302, "introspection_failed"),
    ({"active": True}, 200, "missing_claim"),
    ({"active": True, "sub": "bob", "exp": "9999999999"}, 200, "introspection_failed"),
    ({"active": True, "sub": "bob", "roles": ["admin\nx"]}, 200, "invalid_claim"),
    (b'{"active": true, "sub": "bob", "pad": "' + b"x" * 70000 + b'"}', 200, "introspection_failed"),
])
async def test_introspection_denials(tmp_path, server, body, status, expected):
    server.serve("/introspect", body, status=status)
    r = await started(intro_config(tmp_path, server.url("/introspect")))
    try:
        assert await reason_of(r, OPAQUE) == expected
        assert server.hits["/introspect"] == 1
        assert await reason_of(r, OPAQUE) == expected
        assert server.hits["/introspect"] == 2  # denials are not cached
    finally:
        await r.close()


async def test_introspection_timeout_denies(tmp_path, server):
    server.serve("/introspect", {"active": True, "sub": "bob"}, delay=2.0)
    r = await started(intro_config(tmp_path, server.url("/introspect")))
    try:
        t0 = time.monotonic()
        assert await reason_of(r, OPAQUE) == "introspection_failed"
        assert time.monotonic() - t0 < 1.0
    finally:
        await r.close()


async def test_introspection_down_denies(tmp_path):
    r = await started(intro_config(tmp_path, free_port_url("/introspect")))
    try:
        assert await reason_of(r, OPAQUE) == "introspection_failed"
    finally:
        await r.close()


async def test_introspection_checks_configured_issuer_and_audience(tmp_path, server):
    server.serve("/introspect", {"active": True, "sub": "bob", "iss": "https://other", "aud": "ledgergate"})
    r = await started(intro_config(tmp_path, server.url("/introspect"), issuer="https://idp"))
    try:
        assert await reason_of(r, OPAQUE) == "issuer_unknown"
    finally:
        await r.close()
    server.serve("/introspect", {"active": True, "sub": "bob", "aud": ["someone-else"]})
    r = await started(intro_config(tmp_path, server.url("/introspect"), audiences=["ledgergate"]))
    try:
        assert await reason_of(r, OPAQUE) == "audience_mismatch"
    finally:
        await r.close()


async def test_local_credentials_never_reach_the_introspection_endpoint(tmp_path, server, keys):
    server.serve("/introspect", {"active": True, "sub": "bob"})
    r = await started(intro_config(tmp_path, server.url("/introspect")))
    try:
        assert (await r.resolve({"x-api-key": ["lg_local_key_0123456789"]}, {}, time.time())).subject == "svc:x"
        assert await reason_of(r, fresh(keys.ed)) == "issuer_unknown"  # a JWT is verified locally or not at all
        assert "/introspect" not in server.hits
    finally:
        await r.close()
