"""Identity: every bad credential gets an IdentityError with a precise reason, through the resolver
the server uses (JWKS from a file, pinned algorithms)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.identity import IdentityConfig, IdentityError, IdentityResolver

ISS, AUD = "https://issuer.test", "ledgergate"
NOW = time.time()


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def keys():
    ed = Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed, rsa_key


def jwks_for(ed, rsa_key, *, extra=()):
    ed_pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(ed_pub), "kid": "ed1", "use": "sig", "alg": "EdDSA"},
                     {**rsa_jwk, "kid": "rsa1", "use": "sig", "alg": "RS256"}, *extra]}


def make_resolver(tmp_path, keys, *, jwks=None, api_keys=(), algorithms=("EdDSA", "RS256")):
    ed, rsa_key = keys
    (tmp_path / "jwks.json").write_text(json.dumps(jwks or jwks_for(ed, rsa_key)))
    cfg = IdentityConfig.from_dict({"issuers": [{"issuer": ISS, "audiences": [AUD], "jwks_file": "jwks.json",
                                                 "algorithms": list(algorithms), "max_lifetime": "24h",
                                                 "leeway": "30s", "max_token_bytes": 4096,
                                                 "claims": {"roles": "realm_access.roles", "tenant": "org"}}],
                                    "api_keys": list(api_keys)}, tmp_path)
    r = IdentityResolver(cfg)
    asyncio.run(r.start())
    return r


def token(key, *, kid="ed1", alg="EdDSA", **over):
    claims = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600,
              "realm_access": {"roles": ["analyst"]}, "org": "acme"}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def resolve(r, value, header="authorization"):
    hv = value if header != "authorization" or value.startswith(("Bearer", "bearer", "Basic")) else f"Bearer {value}"
    return r.resolve_sync({header: [hv]}, {}, NOW)


def reason(r, value, header="authorization"):
    with pytest.raises(IdentityError) as ei:
        resolve(r, value, header)
    sig = value.split(".")[-1]
    assert not sig or sig[:20] not in ei.value.message
    return ei.value.reason


def test_good_tokens_map_claims(tmp_path, keys):
    r = make_resolver(tmp_path, keys)
    ident = resolve(r, token(keys[0], act={"sub": "agent-1", "act": {"sub": "orchestrator"}}))
    assert ident.subject == "alice" and ident.roles == ("analyst",) and ident.tenant == "acme"
    assert ident.actor == ("agent-1", "orchestrator")
    assert resolve(r, token(keys[1], kid="rsa1", alg="RS256")).auth_method == "jwt"
    # The Anthropic SDK sends its key in x-api-key; a JWT there works too.
    assert resolve(r, token(keys[0]), header="x-api-key").subject == "alice"


def test_alg_none_and_hs256_with_the_rsa_public_key(tmp_path, keys):
    r = make_resolver(tmp_path, keys)
    header = b64(json.dumps({"alg": "none", "kid": "ed1"}).encode())
    payload = b64(json.dumps({"iss": ISS, "aud": AUD, "sub": "x", "iat": int(NOW), "exp": int(NOW) + 60}).encode())
    assert reason(r, f"{header}.{payload}.") in ("alg_not_allowed", "malformed_token")
    pem = keys[1].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    h = b64(json.dumps({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}).encode())
    import hmac
    sig = b64(hmac.new(pem, f"{h}.{payload}".encode(), hashlib.sha256).digest())
    assert reason(r, f"{h}.{payload}.{sig}") == "alg_not_allowed"


@pytest.mark.parametrize("kid", ["nope", None, "../../etc/passwd", "rsa1"])
def test_unknown_missing_pathlike_or_mismatched_kid(tmp_path, keys, kid):
    r = make_resolver(tmp_path, keys)
    got = reason(r, token(keys[0], kid=kid))
    assert got in ("unknown_kid", "bad_signature", "invalid_token")


@pytest.mark.parametrize("over,expected", [
    ({"exp": int(NOW) - 3600}, "token_expired"),
    ({"nbf": int(NOW) + 3600}, "token_not_yet_valid"),
    ({"iat": int(NOW) + 3600, "exp": int(NOW) + 7200}, "token_not_yet_valid"),
    ({"exp": str(int(NOW) + 600)}, "invalid_token"),
    ({"exp": None}, "missing_claim"),
    ({"exp": int(NOW) + 10**9}, "lifetime_too_long"),
    ({"iss": "https://evil.test"}, "issuer_unknown"),
    ({"iss": None}, "issuer_unknown"),
    ({"aud": "someone-else"}, "audience_mismatch"),
    ({"aud": ["a", "b"]}, "audience_mismatch"),
    ({"aud": None}, "missing_claim"),
    ({"sub": None}, "missing_claim"),
])
def test_claim_problems(tmp_path, keys, over, expected):
    r = make_resolver(tmp_path, keys)
    assert reason(r, token(keys[0], **over)) == expected


def test_tampering_size_and_shape(tmp_path, keys):
    r = make_resolver(tmp_path, keys)
    good = token(keys[0])
    h, p, s = good.split(".")
    forged = json.loads(base64.urlsafe_b64decode(p + "=="))
    forged["sub"] = "admin"
    assert reason(r, f"{h}.{b64(json.dumps(forged).encode())}.{s}") in ("bad_signature", "invalid_token")
    assert reason(r, f"{h}.{p}.{s[:-4]}AAAA") in ("bad_signature", "invalid_token")
    assert reason(r, token(keys[0], pad="x" * 5000)) == "token_too_large"
    assert reason(r, "eyJ!!!.eyJ@@@.sig") in ("malformed_token", "invalid_credential")
    assert reason(r, good + ".extra") in ("invalid_credential", "malformed_token")


@pytest.mark.parametrize("headers,expected", [
    ({}, "missing_credential"),
    ({"authorization": [""]}, "malformed_credential"),
    ({"authorization": ["Bearer"]}, "malformed_credential"),
    ({"authorization": ["Bearer "]}, "malformed_credential"),
    ({"authorization": ["Basic dXNlcjpwYXNz"]}, "malformed_credential"),
    ({"authorization": ["Bearer a", "Bearer b"]}, "malformed_credential"),
    ({"authorization": ["Bearer  two words"]}, "malformed_credential"),
    ({"authorization": ["Bearer x"], "x-api-key": ["y"]}, "malformed_credential"),
])
def test_authorization_header_shapes(tmp_path, keys, headers, expected):
    r = make_resolver(tmp_path, keys)
    with pytest.raises(IdentityError) as ei:
        r.resolve_sync(headers, {}, NOW)
    assert ei.value.reason == expected


def test_case_of_the_scheme_is_tolerated_but_not_of_the_token(tmp_path, keys):
    r = make_resolver(tmp_path, keys)
    t = token(keys[0])
    assert r.resolve_sync({"authorization": [f"bearer {t}"]}, {}, NOW).subject == "alice"
    with pytest.raises(IdentityError):
        r.resolve_sync({"authorization": [f"Bearer {t.upper()}"]}, {}, NOW)


def test_jwks_problems(tmp_path, keys):
    ed, rsa_key = keys
    dup = jwks_for(ed, rsa_key)
    dup["keys"].append(dict(dup["keys"][0]))
    r = make_resolver(tmp_path, keys, jwks=dup)
    assert reason(r, token(ed)) == "unknown_kid"  # a duplicated kid is trusted for neither key
    enc_only = {"keys": [dict(k, use="enc") for k in jwks_for(ed, rsa_key)["keys"]]}
    (tmp_path / "jwks.json").write_text(json.dumps(enc_only))
    cfg = IdentityConfig.from_dict({"issuers": [{"issuer": ISS, "audiences": [AUD], "jwks_file": "jwks.json",
                                                 "algorithms": ["EdDSA"]}]}, tmp_path)
    with pytest.raises(ValueError):
        asyncio.run(IdentityResolver(cfg).start())
    (tmp_path / "jwks.json").write_text("<html>not json</html>")
    with pytest.raises(ValueError):
        asyncio.run(IdentityResolver(cfg).start())


def test_api_keys_hashed_constant_time_revocable(tmp_path, keys):
    good, revoked = "lg_live_abcdefghijklmnop", "lg_live_revoked000000000"
    r = make_resolver(tmp_path, keys, api_keys=[
        {"id": "svc", "sha256": hashlib.sha256(good.encode()).hexdigest(), "subject": "svc:batch", "roles": ["service"]},
        {"id": "old", "sha256": hashlib.sha256(revoked.encode()).hexdigest(), "subject": "svc:old", "revoked": True}])
    ident = r.resolve_sync({"x-api-key": [good]}, {}, NOW)
    assert ident.subject == "svc:batch" and ident.auth_method == "api_key" and good not in repr(ident)
    for bad, why in [(revoked, "api_key_revoked"), ("nope", "invalid_credential")]:
        with pytest.raises(IdentityError) as ei:
            r.resolve_sync({"x-api-key": [bad]}, {}, NOW)
        assert ei.value.reason == why
    for blank in ["", "   "]:
        with pytest.raises(IdentityError) as ei:
            r.resolve_sync({"x-api-key": [blank]}, {}, NOW)
        assert ei.value.reason == "malformed_credential"


def test_mtls_identity_only_from_attributes(tmp_path, keys):
    ed, rsa_key = keys
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_for(ed, rsa_key)))
    cfg = IdentityConfig.from_dict({"mtls": {"enabled": True, "roles_by_san": {"spiffe://acme/app": ["service"]}}},
                                   tmp_path)
    r = IdentityResolver(cfg)
    ident = r.resolve_sync({}, {"connection.uri_san_peer_certificate": "spiffe://acme/app",
                                "connection.sha256_peer_certificate_digest": "ab" * 32}, NOW)
    assert ident.auth_method == "mtls" and ident.roles == ("service",)
    with pytest.raises(IdentityError):  # a client-sent header is not a certificate
        r.resolve_sync({"x-forwarded-client-cert": ["URI=spiffe://acme/app"]}, {}, NOW)


def test_verified_token_cache_never_outlives_the_token(tmp_path, keys):
    r = make_resolver(tmp_path, keys)
    t = token(keys[0], exp=int(NOW) + 5)
    assert r.resolve_sync({"authorization": [f"Bearer {t}"]}, {}, NOW).subject == "alice"
    with pytest.raises(IdentityError) as ei:
        r.resolve_sync({"authorization": [f"Bearer {t}"]}, {}, NOW + 3600)
    assert ei.value.reason == "token_expired"


def test_identity_is_forwarded_only_as_configured(tmp_path, keys):
    from ext_proc.identity import forwarded_identity_headers

    r = make_resolver(tmp_path, keys)
    ident = resolve(r, token(keys[0]))
    assert forwarded_identity_headers(ident, r.config) == {}
    cfg = IdentityConfig.from_dict({"forward_headers": {"subject": "x-ledgergate-subject", "roles": "x-ledgergate-roles"}},
                                   tmp_path)
    assert forwarded_identity_headers(ident, cfg) == {"x-ledgergate-subject": "alice", "x-ledgergate-roles": "analyst"}
    with pytest.raises(ValueError):  # outside the stripped namespace a client could spoof it
        IdentityConfig.from_dict({"forward_headers": {"subject": "x-user"}}, tmp_path)
