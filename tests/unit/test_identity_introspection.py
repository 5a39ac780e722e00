"""OAuth2 token introspection (RFC 7662) against a local endpoint."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ext_proc.identity import IdentityConfig, IdentityError, IdentityResolver


class Endpoint:
    def __init__(self) -> None:
        self.answer: object = {"active": True, "sub": "svc:etl", "scope": "llm:chat", "roles": ["service"]}
        self.status, self.delay, self.hits = 200, 0.0, 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                outer.hits += 1
                self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(outer.delay)
                body = outer.answer if isinstance(outer.answer, bytes) else json.dumps(outer.answer).encode()
                try:
                    self.send_response(outer.status)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/introspect"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def ep():
    e = Endpoint()
    yield e
    e.httpd.shutdown()
    e.httpd.server_close()


def resolve(ep, token="opaque-token-123", now=None):
    cfg = IdentityConfig.from_dict({"introspection": {"url": ep.url, "timeout": "0.5s", "cache_max": "60s"}}, Path("."))
    r = IdentityResolver(cfg)
    now = now or time.time()

    async def go():
        first = await r.resolve({"authorization": [f"Bearer {token}"]}, {}, now)
        second = await r.resolve({"authorization": [f"Bearer {token}"]}, {}, now + 1)
        return first, second
    return asyncio.run(go())


def test_active_true_passes_and_is_cached(ep):
    first, second = resolve(ep)
    assert first.subject == "svc:etl" and first.auth_method == "introspection" and first.roles == ("service",)
    assert second == first and ep.hits == 1


@pytest.mark.parametrize("answer,status,delay,reason", [
    ({"active": "true", "sub": "x"}, 200, 0, "token_inactive"),
    ({"sub": "x"}, 200, 0, "token_inactive"),
    ({"active": False}, 200, 0, "token_inactive"),
    ({"active": True, "sub": "x"}, 500, 0, "introspection_failed"),
    (b"not json", 200, 0, "introspection_failed"),
    ({"active": True, "sub": "x"}, 200, 1.5, "introspection_failed"),
    ({"active": True, "sub": "x", "exp": 1}, 200, 0, "token_expired"),
    ({"active": True}, 200, 0, "missing_claim"),
])
def test_anything_but_a_boolean_active_true_is_denied(ep, answer, status, delay, reason):
    ep.answer, ep.status, ep.delay = answer, status, delay
    with pytest.raises(IdentityError) as ei:
        resolve(ep)
    assert ei.value.reason == reason and "opaque-token-123" not in ei.value.message


def test_cache_never_outlives_the_token(ep):
    now = time.time()
    ep.answer = {"active": True, "sub": "svc", "exp": int(now) + 5}
    cfg = IdentityConfig.from_dict({"introspection": {"url": ep.url, "cache_max": "60s"}}, Path("."))
    r = IdentityResolver(cfg)

    async def go():
        await r.resolve({"authorization": ["Bearer tok"]}, {}, now)
        ep.answer = {"active": False}
        with pytest.raises(IdentityError):
            await r.resolve({"authorization": ["Bearer tok"]}, {}, now + 10)
    asyncio.run(go())
    assert ep.hits == 2
