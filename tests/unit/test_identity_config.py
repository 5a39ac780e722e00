"""Identity configuration (strict: typos and weak settings are errors), the forwarded identity
headers, the dev issuer, and a fuzz of hostile credential headers (only IdentityError comes out)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.identity import (
    ConfigError,
    Identity,
    IdentityConfig,
    IdentityError,
    IdentityResolver,
    forwarded_identity_headers,
    spoofable_headers,
)
from ext_proc.identity.config import parse_duration
from ext_proc.identity.dev import DEV_AUDIENCE, DEV_ISSUER, generate_dev_issuer, mint_dev_token
from ext_proc.server.config import default_config_dict

BASE = {"issuer": "https://idp.example", "audiences": ["ledgergate"], "jwks_file": "jwks.json",
        "algorithms": ["RS256"]}


def issuers(**over):
    return {"issuers": [{**BASE, **over}]}


@pytest.mark.parametrize("d,fragment", [
    ({"issuer": [BASE]}, "unknown key"),
    (issuers(audience=["x"]), "unknown key"),
    (issuers(algorithms=["HS256"]), "not allowed"),
    (issuers(algorithms=["none"]), "not allowed"),
    (issuers(algorithms=[]), "pin at least one"),
    (issuers(audiences=[]), "audience"),
    (issuers(issuer=""), "issuer"),
    (issuers(jwks_url="https://idp.example/jwks"), "exactly one"),
    (issuers(jwks_file=None), "exactly one"),
    (issuers(jwks_file=None, jwks_url="http://idp.example/jwks"), "https"),
    (issuers(jwks_file=None, jwks_url="file:///etc/jwks"), "https"),
    (issuers(leeway="soon"), "duration"),
    (issuers(max_lifetime="-1h"), "non-negative"),
    (issuers(max_token_bytes=0), "positive"),
    (issuers(claims={"role": "roles"}), "unknown key"),
    (issuers(claims={"roles": "a..b"}), "dotted"),
    ({"issuers": [BASE, BASE]}, "twice"),
    ({"api_keys": [{"id": "a", "sha256": "abc", "subject": "s"}]}, "SHA-256"),
    ({"api_keys": [{"id": "a", "sha256": "sk-live-plaintext-key", "subject": "s"}]}, "SHA-256"),
    ({"api_keys": [{"id": "a", "sha256": "00" * 32, "subject": "s", "revoked": "no"}]}, "revoked"),
    ({"api_keys": [{"id": "a", "sha256": "00" * 32, "subject": "s"},
                   {"id": "b", "sha256": "00" * 32, "subject": "t"}]}, "unique"),
    ({"mtls": {"enabled": True, "subject_from": "header"}}, "subject_from"),
    ({"introspection": {"url": "http://idp.example/introspect", "client_id": "x"}}, "https"),
    ({"introspection": {"url": "https://idp.example/introspect", "client_secret_file": "s"}}, "client_id"),
    (issuers(jwks_refresh="1h", jwks_stale_max="30m"), "longer than jwks_refresh"),
    ({"forward_headers": {"subject": "authorization"}}, "must start with"),
    ({"forward_headers": {"subject": "x-user"}}, "must start with"),
    ({"forward_headers": {"subject": "x-ledgergate-"}}, "must start with"),
    ({"forward_headers": {"subject": "X-Ledgergate-User"}}, "lower-case"),
    ({"forward_headers": {"subject": "x-user\r\nx-evil"}}, "lower-case"),
    ({"forward_headers": {"password": "x-pw"}}, "unknown key"),
])
def test_bad_configs_are_refused_with_the_key_named(tmp_path, d, fragment):
    with pytest.raises(ConfigError) as ei:
        IdentityConfig.from_dict(d, tmp_path)
    assert fragment in str(ei.value)


def test_defaults_and_relative_paths(tmp_path):
    cfg = IdentityConfig.from_dict(issuers(), tmp_path)
    c = cfg.issuers[0]
    assert c.jwks_file == tmp_path / "jwks.json"
    assert (c.max_lifetime_s, c.leeway_s, c.max_token_bytes, c.jwks_refresh_s, c.jwks_stale_max_s) == \
        (86400, 30, 8192, 300, 3600)
    assert c.claims == {"roles": "roles", "groups": "groups", "tenant": "tenant", "scopes": "scope"}
    assert cfg.forward_headers == {} and cfg.introspection is None and not cfg.mtls.enabled


def test_loopback_http_is_allowed_for_local_endpoints(tmp_path):
    for url in ("http://127.0.0.1:8080/jwks", "http://localhost/jwks", "http://[::1]:1/jwks"):
        assert IdentityConfig.from_dict(issuers(jwks_file=None, jwks_url=url), tmp_path).issuers[0].jwks_url == url


@pytest.mark.parametrize("text,seconds", [("300s", 300), ("500ms", 0.5), ("5m", 300), ("24h", 86400), ("1d", 86400),
                                          (30, 30), ("2.5s", 2.5), ("10", 10)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["nan", "inf", "-1s", "1y", True, "s"])
def test_bad_durations(text):
    with pytest.raises(ConfigError):
        parse_duration(text, "x")


def test_the_servers_default_identity_section_parses(tmp_path):
    cfg = IdentityConfig.from_dict(default_config_dict()["identity"], tmp_path)
    assert cfg.issuers[0].issuer == DEV_ISSUER and cfg.issuers[0].algorithms == ("EdDSA",)


# --- forwarded headers ------------------------------------------------------------------------

IDENT = Identity(subject="alice", issuer="https://idp", auth_method="jwt", roles=("analyst", "a,b"), groups=(),
                 tenant=None, scopes=("llm:read",), actor=("agent-1", "orchestrator"), credential_id="jwt:0123",
                 expires_at=None)


def test_no_identity_headers_are_forwarded_by_default(tmp_path):
    cfg = IdentityConfig.from_dict({}, tmp_path)
    assert forwarded_identity_headers(IDENT, cfg) == {}
    assert spoofable_headers(cfg) == frozenset()


def test_forwarded_headers_only_as_configured(tmp_path):
    cfg = IdentityConfig.from_dict({"forward_headers": {"subject": "x-ledgergate-subject", "roles": "x-ledgergate-roles",
                                                        "actor": "x-ledgergate-actor", "tenant": "x-ledgergate-tenant"}},
                                   tmp_path)
    out = forwarded_identity_headers(IDENT, cfg)
    assert out == {"x-ledgergate-subject": "alice", "x-ledgergate-roles": "analyst,a%2Cb",
                   "x-ledgergate-actor": "agent-1,orchestrator"}  # no tenant: no header
    assert spoofable_headers(cfg) == {"x-ledgergate-subject", "x-ledgergate-roles", "x-ledgergate-actor",
                                      "x-ledgergate-tenant"}


def test_forwarded_values_cannot_inject_headers(tmp_path):
    cfg = IdentityConfig.from_dict({"forward_headers": {"subject": "x-ledgergate-subject"}}, tmp_path)
    evil = Identity(subject="bob\r\nx-admin: 1\u00e9", issuer="i", auth_method="jwt", roles=(), groups=(),
                    tenant=None, scopes=(), actor=(), credential_id="c", expires_at=None)
    value = forwarded_identity_headers(evil, cfg)["x-ledgergate-subject"]
    assert "\r" not in value and "\n" not in value and value.isascii()


# --- dev issuer -------------------------------------------------------------------------------

def test_dev_issuer_round_trip_through_the_resolver(tmp_path):
    dev = tmp_path / "dev"
    generate_dev_issuer(dev)
    key_pem = (dev / "issuer-key.pem").read_bytes()
    assert stat.S_IMODE((dev / "issuer-key.pem").stat().st_mode) == 0o600
    generate_dev_issuer(dev)  # idempotent: the key is kept
    assert (dev / "issuer-key.pem").read_bytes() == key_pem
    now = time.time()
    t = mint_dev_token(dev, sub="alice", roles=["analyst"], tenant="acme", groups=["eng"], ttl_s=600,
                       act=["agent-1", "orchestrator"], now=now)
    header = jwt.get_unverified_header(t)
    jwk = json.loads((dev / "jwks.json").read_text())["keys"][0]
    thumb = jwt.utils.base64url_encode(hashlib.sha256(json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":")).encode()).digest()).decode()
    assert header["kid"] == jwk["kid"] == thumb
    cfg = IdentityConfig.from_dict(default_config_dict(str(tmp_path))["identity"], tmp_path)
    r = IdentityResolver(cfg)
    asyncio.run(r.start())
    assert r.ready
    ident = r.resolve_sync({"authorization": [f"Bearer {t}"]}, {}, now)
    assert (ident.subject, ident.issuer, ident.roles, ident.tenant, ident.groups, ident.actor) == \
        ("alice", DEV_ISSUER, ("analyst",), "acme", ("eng",), ("agent-1", "orchestrator"))
    assert jwt.decode(t, options={"verify_signature": False})["aud"] == DEV_AUDIENCE


def test_dev_jwks_is_rebuilt_from_an_existing_key(tmp_path):
    generate_dev_issuer(tmp_path)
    before = (tmp_path / "jwks.json").read_text()
    (tmp_path / "jwks.json").unlink()
    generate_dev_issuer(tmp_path)
    assert (tmp_path / "jwks.json").read_text() == before


# --- fuzz -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_resolver(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    generate_dev_issuer(d / "dev")
    cfg = IdentityConfig.from_dict({**default_config_dict(str(d))["identity"],
                                    "api_keys": [{"id": "k", "sha256": "11" * 32, "subject": "svc"}],
                                    "mtls": {"enabled": True}}, d)
    r = IdentityResolver(cfg)
    asyncio.run(r.start())
    return r


header_names = st.sampled_from(["authorization", "Authorization", "x-api-key", "x-goog-api-key", "x-other"])
header_values = st.one_of(
    st.text(max_size=300),
    st.builds(lambda a, b: f"Bearer {a}.{b}", st.text(max_size=80), st.text(max_size=80)),
    st.builds(lambda a: f"Bearer eyJ{a}", st.text(alphabet="ABCabc012-_.=", max_size=200)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(header_names, st.lists(header_values, min_size=1, max_size=3), max_size=3),
       attrs=st.dictionaries(st.sampled_from(["connection.uri_san_peer_certificate",
                                              "connection.sha256_peer_certificate_digest", "connection.mtls"]),
                             st.text(max_size=50)))
def test_hostile_headers_only_ever_raise_identity_error(fuzz_resolver, headers, attrs):
    try:
        ident = fuzz_resolver.resolve_sync(headers, attrs, time.time())
    except IdentityError as exc:
        assert exc.reason and exc.reason.replace("_", "").isalpha()
        for vals in headers.values():
            for v in vals:
                if len(v) >= 24:
                    assert v not in exc.message
    else:
        # Nothing random verifies as a token or key: only a certificate attribute set can succeed.
        assert ident.auth_method == "mtls" and attrs.get("connection.sha256_peer_certificate_digest")
