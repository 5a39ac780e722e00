"""Identity: every bad credential gets an IdentityError with one precise reason, through the
resolver the server uses (JWKS from a file, pinned algorithms). No message ever contains the token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.identity import IdentityConfig, IdentityError, IdentityResolver, JwksError

ISS, AUD = "https://issuer.test", "ledgergate"
NOW = float(int(time.time()))


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Keys:
    def __init__(self) -> None:
        self.ed = Ed25519PrivateKey.generate()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.attacker = Ed25519PrivateKey.generate()


def ed_jwk(priv, kid: str, **extra) -> dict:
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": kid, "use": "sig", "alg": "EdDSA", **extra}


def jwks_for(k: Keys, *, extra=()) -> dict:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.rsa.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.ec.public_key()))
    return {"keys": [ed_jwk(k.ed, "ed1"), {**rsa_jwk, "kid": "rsa1", "use": "sig", "alg": "RS256"},
                     {**ec_jwk, "kid": "ec1"}, *extra]}  # ec1 has no alg: the pinned ES256 fits it


def issuer_cfg(**over) -> dict:
    cfg = {"issuer": ISS, "audiences": [AUD], "jwks_file": "jwks.json", "algorithms": ["EdDSA", "RS256", "ES256"],
           "max_lifetime": "24h", "leeway": "30s", "max_token_bytes": 4096,
           "claims": {"roles": "realm_access.roles", "tenant": "org", "groups": "groups", "scopes": "scope"}}
    cfg.update(over)
    return cfg


def make_resolver(tmp_path, k: Keys, *, jwks=None, api_keys=(), mtls=None, **issuer_over) -> IdentityResolver:
    (tmp_path / "jwks.json").write_text(json.dumps(jwks if jwks is not None else jwks_for(k)))
    d = {"issuers": [issuer_cfg(**issuer_over)], "api_keys": list(api_keys)}
    if mtls is not None:
        d["mtls"] = mtls
    r = IdentityResolver(IdentityConfig.from_dict(d, tmp_path))
    asyncio.run(r.start())
    return r


def claims(**over) -> dict:
    c = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600,
         "realm_access": {"roles": ["analyst"]}, "org": "acme"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def token(key, *, kid="ed1", alg="EdDSA", headers=None, **over) -> str:
    h = {"kid": kid} if kid is not None else {}
    h.update(headers or {})
    return jwt.encode(claims(**over), key, algorithm=alg, headers=h)


def unsigned(header: dict, payload: dict, sig: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{sig}"


def ed_signed(priv, header: dict, payload: dict) -> str:
    """A token signed by hand, for headers PyJWT refuses to write (a non-string kid)."""
    head = unsigned(header, payload).rstrip(".")
    return f"{head}.{b64(priv.sign(head.encode()))}"


def resolve(r: IdentityResolver, value: str, header: str = "authorization", now: float = NOW):
    hv = f"Bearer {value}" if header == "authorization" else value
    return r.resolve_sync({header: [hv]}, {}, now)


def reason(r: IdentityResolver, value: str, header: str = "authorization", now: float = NOW) -> str:
    with pytest.raises(IdentityError) as ei:
        resolve(r, value, header, now)
    err = ei.value
    # The 401 body and logs carry the message: never the token, not even its signature.
    for part in value.split("."):
        if len(part) >= 12:
            assert part not in err.message and part not in str(err)
    return err.reason


@pytest.fixture()
def r(tmp_path, keys) -> IdentityResolver:
    return make_resolver(tmp_path, keys)


# --- accepted tokens ---------------------------------------------------------------------------

def test_good_tokens_map_nested_claims_scopes_and_actor_chain(r, keys):
    ident = resolve(r, token(keys.ed, groups=["eng"], scope="llm:read llm:write",
                             act={"sub": "agent-1", "act": {"sub": "orchestrator"}}))
    assert (ident.subject, ident.issuer, ident.auth_method) == ("alice", ISS, "jwt")
    assert ident.roles == ("analyst",) and ident.tenant == "acme" and ident.groups == ("eng",)
    assert ident.scopes == ("llm:read", "llm:write")
    assert ident.actor == ("agent-1", "orchestrator")
    assert ident.expires_at == NOW + 600 and ident.credential_id.startswith("jwt:")
    rec = ident.to_record()
    assert rec["actor"] == ["agent-1", "orchestrator"] and json.loads(json.dumps(rec)) == rec


@pytest.mark.parametrize("kid,alg,keyname", [("rsa1", "RS256", "rsa"), ("ec1", "ES256", "ec")])
def test_rsa_and_ec_keys_verify(r, keys, kid, alg, keyname):
    assert resolve(r, token(getattr(keys, keyname), kid=kid, alg=alg)).subject == "alice"


@pytest.mark.parametrize("header", ["x-api-key", "x-goog-api-key"])
def test_sdk_key_headers_carry_jwts(r, keys, header):
    # The Anthropic SDK sends its api_key in x-api-key, Gemini clients in x-goog-api-key.
    assert resolve(r, token(keys.ed), header=header).subject == "alice"


def test_scheme_is_case_insensitive_but_the_token_is_not(r, keys):
    t = token(keys.ed)
    assert r.resolve_sync({"authorization": [f"bEaReR {t}"]}, {}, NOW).subject == "alice"
    assert reason(r, t.swapcase()) == "malformed_token"


# --- algorithms and keys ----------------------------------------------------------------------

def test_alg_none(r):
    assert reason(r, unsigned({"alg": "none", "kid": "ed1"}, claims())) == "alg_not_allowed"


def test_hs256_signed_with_the_rsa_public_key(r, keys):
    pem = keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    head = unsigned({"alg": "HS256", "kid": "rsa1", "typ": "JWT"}, claims()).rsplit(".", 1)[0]
    sig = b64(hmac.new(pem, head.encode(), hashlib.sha256).digest())
    assert reason(r, f"{head}.{sig}") == "alg_not_allowed"


def test_alg_not_pinned_for_this_issuer(tmp_path, keys):
    r = make_resolver(tmp_path, keys, algorithms=["EdDSA"])
    assert reason(r, token(keys.rsa, kid="rsa1", alg="RS256")) == "alg_not_allowed"


@pytest.mark.parametrize("kid", ["nope", None, "../../../../etc/passwd", "/dev/zero", "", 7, ["ed1"]])
def test_unknown_missing_or_pathlike_kid(r, keys, kid):
    header = {"alg": "EdDSA", "typ": "JWT", **({"kid": kid} if kid is not None else {})}
    assert reason(r, ed_signed(keys.ed, header, claims())) == "unknown_kid"


def test_hand_signed_token_verifies(r, keys):
    # The control for the test above: the same construction with the right kid is accepted.
    assert resolve(r, ed_signed(keys.ed, {"alg": "EdDSA", "kid": "ed1"}, claims())).subject == "alice"


def test_kid_of_a_key_of_another_algorithm(r, keys):
    assert reason(r, token(keys.ed, kid="rsa1")) == "key_alg_mismatch"


def test_signed_by_someone_else_with_our_kid(r, keys):
    assert reason(r, token(keys.attacker)) == "bad_signature"


def test_jku_x5u_and_embedded_jwk_are_never_used(r, keys):
    evil = ed_jwk(keys.attacker, "evil")
    t = token(keys.attacker, kid="evil", headers={"jku": "http://127.0.0.1:9/jwks.json",
                                                  "x5u": "http://127.0.0.1:9/cert.pem", "jwk": evil})
    assert reason(r, t) == "unknown_kid"
    t = token(keys.attacker, headers={"jwk": evil})  # our kid, the attacker's embedded key
    assert reason(r, t) == "bad_signature"


def test_crit_header_is_refused(r, keys):
    assert reason(r, token(keys.ed, headers={"crit": ["exp"]})) == "unsupported_header"


def test_required_typ(tmp_path, keys):
    r = make_resolver(tmp_path, keys, require_typ="at+jwt")
    assert reason(r, token(keys.ed, headers={"typ": "JWT"})) == "typ_mismatch"
    assert reason(r, token(keys.ed)) == "typ_mismatch"  # PyJWT writes typ JWT by default
    assert resolve(r, token(keys.ed, headers={"typ": "application/at+jwt"})).subject == "alice"


# --- claims -----------------------------------------------------------------------------------

@pytest.mark.parametrize("over,expected", [
    ({"exp": int(NOW) - 3600}, "token_expired"),
    ({"nbf": int(NOW) + 3600}, "token_not_yet_valid"),
    ({"iat": int(NOW) + 3600, "exp": int(NOW) + 7200}, "token_not_yet_valid"),
    ({"exp": str(int(NOW) + 600)}, "invalid_claim"),
    ({"exp": True}, "invalid_claim"),
    ({"exp": None}, "missing_claim"),
    ({"iat": None}, "missing_claim"),
    ({"exp": int(NOW) + 10 ** 9}, "lifetime_too_long"),
    ({"exp": 1e30}, "lifetime_too_long"),
    ({"iat": int(NOW) - 10 ** 7}, "lifetime_too_long"),
    ({"iss": "https://evil.test"}, "issuer_unknown"),
    ({"iss": None}, "issuer_unknown"),
    ({"iss": ISS + "/"}, "issuer_unknown"),
    ({"aud": "someone-else"}, "audience_mismatch"),
    ({"aud": ["a", "b"]}, "audience_mismatch"),
    ({"aud": None}, "missing_claim"),
    ({"sub": None}, "missing_claim"),
    ({"sub": "alice\r\nx-ledgergate-role: admin"}, "invalid_claim"),
    ({"realm_access": {"roles": "admin"}, "org": {"id": 1}}, "invalid_claim"),
    ({"realm_access": {"roles": ["a", 5]}}, "invalid_claim"),
    ({"act": "agent-1"}, "invalid_claim"),
    ({"act": {"act": {"sub": "x"}}}, "invalid_claim"),
])
def test_claim_problems(r, keys, over, expected):
    assert reason(r, token(keys.ed, **over)) == expected


def test_within_leeway_is_accepted(r, keys):
    assert resolve(r, token(keys.ed, exp=int(NOW) - 10)).subject == "alice"
    assert resolve(r, token(keys.ed, nbf=int(NOW) + 10)).subject == "alice"


def test_aud_array_containing_ours(r, keys):
    assert resolve(r, token(keys.ed, aud=["other", AUD])).subject == "alice"


def test_actor_chain_depth_is_bounded(r, keys):
    act = None
    for i in range(9):
        act = {"sub": f"agent-{i}", **({"act": act} if act else {})}
    assert reason(r, token(keys.ed, act=act)) == "invalid_claim"


def test_nan_exp_is_not_a_number(r, keys):
    # json.dumps writes NaN; a verifier comparing NaN would find it neither expired nor too long.
    assert reason(r, token(keys.ed, exp=float("nan"))) == "malformed_token"


def test_duplicate_claim_names_are_refused(r, keys):
    t = token(keys.ed)
    h, p, s = t.split(".")
    dup = base64.urlsafe_b64decode(p + "==").decode()[:-1] + ', "sub": "admin"}'
    assert reason(r, f"{h}.{b64(dup.encode())}.{s}") == "malformed_token"


# --- tampering, size, shape -------------------------------------------------------------------

def test_tampered_payload(r, keys):
    h, p, s = token(keys.ed).split(".")
    forged = json.loads(base64.urlsafe_b64decode(p + "=="))
    forged["sub"] = "admin"
    assert reason(r, f"{h}.{b64(json.dumps(forged).encode())}.{s}") == "bad_signature"


def test_tampered_signature(r, keys):
    h, p, s = token(keys.ed).split(".")
    flipped = s[:10] + ("A" if s[10] != "A" else "B") + s[11:]
    assert reason(r, f"{h}.{p}.{flipped}") == "bad_signature"
    assert reason(r, f"{h}.{p}.") == "bad_signature"


def test_oversized_token_is_refused_before_decoding(r, keys, monkeypatch):
    import ext_proc.identity.jwt_verify as jv

    def boom(*a, **k):
        raise AssertionError("decoded an oversized token")
    monkeypatch.setattr(jv.base64, "urlsafe_b64decode", boom)
    assert reason(r, token(keys.ed, pad="x" * 5000)) == "token_too_large"
    assert reason(r, "eyJ" + "A" * (1 << 20) + ".x.y") == "token_too_large"


@pytest.mark.parametrize("mangle", [
    lambda t: "eyJ!!!." + t.split(".", 1)[1],
    lambda t: t.split(".")[0] + ".eyJ@@@." + t.split(".")[2],
    lambda t: t + ".extra",
    lambda t: t + ".a.b",       # five segments: a JWE shape
    lambda t: t.rsplit(".", 1)[0],
    lambda t: t.split(".")[0] + "=." + t.split(".", 1)[1],
    lambda t: "eyJ" + b64(b"not json") + "." + t.split(".", 1)[1],
    lambda t: t.split(".")[0] + "." + b64(b"[1,2]") + "." + t.split(".")[2],
    lambda t: t.split(".")[0] + ".." + t.split(".")[2],
])
def test_malformed_base64_json_and_segments(r, keys, mangle):
    assert reason(r, mangle(token(keys.ed))) == "malformed_token"


# --- headers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers,expected", [
    ({}, "missing_credential"),
    ({"x-forwarded-client-cert": ["URI=spiffe://acme/app"]}, "missing_credential"),
    ({"authorization": [""]}, "empty_credential"),
    ({"authorization": ["   "]}, "empty_credential"),
    ({"authorization": ["Bearer"]}, "empty_credential"),
    ({"authorization": ["Bearer   "]}, "empty_credential"),
    ({"authorization": ["Basic dXNlcjpwYXNz"]}, "malformed_credential"),
    ({"authorization": ["Bearertoken"]}, "malformed_credential"),
    ({"authorization": ["Bearer a", "Bearer a"]}, "duplicate_credential"),
    ({"authorization": ["Bearer a"], "Authorization": ["Bearer a"]}, "duplicate_credential"),
    ({"AUTHORIZATION": ["Bearer a"], "authorization": ["Bearer b"]}, "duplicate_credential"),
    ({"authorization": ["Bearer two words"]}, "malformed_credential"),
    ({"authorization": ["Bearer abc\r\nx-evil: 1"]}, "malformed_credential"),
    ({"authorization": ["Bearer t\u00f6ken"]}, "malformed_credential"),
    ({"authorization": ["Bearer x"], "x-api-key": ["y"]}, "conflicting_credentials"),
    ({"x-api-key": [""]}, "empty_credential"),
    ({"x-api-key": [" \t "]}, "empty_credential"),
    ({"x-goog-api-key": ["a", "b"]}, "duplicate_credential"),
])
def test_credential_header_shapes(r, headers, expected):
    with pytest.raises(IdentityError) as ei:
        r.resolve_sync(headers, {}, NOW)
    assert ei.value.reason == expected


def test_same_credential_in_two_headers_is_one_credential(r, keys):
    t = token(keys.ed)
    assert r.resolve_sync({"authorization": [f"Bearer {t}"], "x-api-key": [t]}, {}, NOW).subject == "alice"


# --- JWKS files -------------------------------------------------------------------------------

def test_duplicate_kid_is_trusted_for_neither_key(tmp_path, keys):
    jwks = jwks_for(keys)
    jwks["keys"].append(ed_jwk(keys.attacker, "ed1"))
    r = make_resolver(tmp_path, keys, jwks=jwks)
    assert reason(r, token(keys.ed)) == "unknown_kid"
    assert reason(r, token(keys.attacker)) == "unknown_kid"
    assert resolve(r, token(keys.rsa, kid="rsa1", alg="RS256")).subject == "alice"


@pytest.mark.parametrize("bad", [
    {"keys": [ed_jwk(Ed25519PrivateKey.generate(), "e", use="enc")]},
    {"keys": [{"kty": "oct", "k": b64(b"secret" * 8), "kid": "hmac", "alg": "HS256"}]},
    {"keys": []},
    {"nokeys": 1},
    [1, 2],
])
def test_jwks_file_without_usable_keys_fails_start(tmp_path, keys, bad):
    (tmp_path / "jwks.json").write_text(json.dumps(bad))
    r = IdentityResolver(IdentityConfig.from_dict({"issuers": [issuer_cfg()]}, tmp_path))
    with pytest.raises(JwksError):
        asyncio.run(r.start())
    assert not r.ready


def test_jwks_file_not_json_or_missing_fails_start(tmp_path):
    r = IdentityResolver(IdentityConfig.from_dict({"issuers": [issuer_cfg()]}, tmp_path))
    with pytest.raises(JwksError):
        asyncio.run(r.start())
    (tmp_path / "jwks.json").write_text("<html>not json</html>")
    with pytest.raises(JwksError):
        asyncio.run(r.start())


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_weak_rsa_private_parts_and_enc_keys_are_skipped(tmp_path, keys):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak", "alg": "RS256"}
    leaked = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(keys.attacker))  # includes "d"
    jwks = jwks_for(keys, extra=[weak_jwk, {**leaked, "kid": "leaked", "alg": "EdDSA"},
                                 ed_jwk(keys.attacker, "enc", use="enc")])
    r = make_resolver(tmp_path, keys, jwks=jwks)
    assert reason(r, token(weak, kid="weak", alg="RS256")) == "unknown_kid"
    assert reason(r, token(keys.attacker, kid="leaked")) == "unknown_kid"
    assert reason(r, token(keys.attacker, kid="enc")) == "unknown_kid"


# --- cache ------------------------------------------------------------------------------------

def test_verified_token_cache_never_outlives_the_token(r, keys):
    t = token(keys.ed, exp=int(NOW) + 5)
    assert resolve(r, t).subject == "alice"
    assert len(r._jwt_cache) == 1
    assert reason(r, t, now=NOW + 3600) == "token_expired"


def test_cache_is_bounded(tmp_path, keys):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_for(keys)))
    r = IdentityResolver(IdentityConfig.from_dict({"issuers": [issuer_cfg()], "cache_size": 3}, tmp_path))
    asyncio.run(r.start())
    for i in range(10):
        resolve(r, token(keys.ed, sub=f"user-{i}"))
    assert len(r._jwt_cache) == 3


def test_key_removed_from_jwks_invalidates_cached_tokens(tmp_path, keys):
    r = make_resolver(tmp_path, keys)
    t = token(keys.ed)
    assert resolve(r, t).subject == "alice"
    jwks = jwks_for(keys)
    jwks["keys"] = jwks["keys"][1:]  # ed1 withdrawn (say, compromised)
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    asyncio.run(r._fetch(r._states[ISS]))
    assert reason(r, t) == "unknown_kid"


def test_unknown_kid_requests_one_forced_refresh_per_cooldown(r, keys):
    state = r._states[ISS]
    assert reason(r, token(keys.ed, kid="new-1")) == "unknown_kid"
    assert state.forced_pending and r._wake[ISS].is_set()
    r._wake[ISS].clear()
    state.forced_pending = False
    assert reason(r, token(keys.ed, kid="new-2"), now=NOW + 5) == "unknown_kid"
    assert not state.forced_pending and not r._wake[ISS].is_set()  # within the 30 s cooldown
    assert reason(r, token(keys.ed, kid="new-3"), now=NOW + 31) == "unknown_kid"
    assert state.forced_pending


# --- API keys and mTLS ------------------------------------------------------------------------

GOOD_KEY, REVOKED_KEY = "lg_live_abcdefghijklmnop", "lg_live_revoked000000000"
API_KEYS = [
    {"id": "svc", "sha256": hashlib.sha256(GOOD_KEY.encode()).hexdigest(), "subject": "svc:batch",
     "roles": ["service"], "tenant": "acme"},
    {"id": "old", "sha256": hashlib.sha256(REVOKED_KEY.encode()).hexdigest(), "subject": "svc:old", "revoked": True},
]


@pytest.mark.parametrize("header", ["x-api-key", "authorization", "x-goog-api-key"])
def test_api_key_accepted_in_every_sdk_header(tmp_path, keys, header):
    r = make_resolver(tmp_path, keys, api_keys=API_KEYS)
    ident = resolve(r, GOOD_KEY, header=header)
    assert (ident.subject, ident.auth_method, ident.roles, ident.tenant) == ("svc:batch", "api_key", ("service",),
                                                                             "acme")
    assert GOOD_KEY not in repr(ident) and GOOD_KEY not in json.dumps(ident.to_record())


@pytest.mark.parametrize("value,expected", [
    (REVOKED_KEY, "api_key_revoked"),
    ("lg_live_unknown0000000000", "api_key_unknown"),
    (GOOD_KEY.upper(), "api_key_unknown"),
    (GOOD_KEY + "x", "api_key_unknown"),
])
def test_api_key_revoked_or_unknown(tmp_path, keys, value, expected):
    r = make_resolver(tmp_path, keys, api_keys=API_KEYS)
    assert reason(r, value, header="x-api-key") == expected


def test_api_key_hash_comparison_is_constant_time(tmp_path, keys, monkeypatch):
    """What makes the API-key check safe against timing: the key is never compared as presented.
    It is looked up by its SHA-256 (timing of that lookup can only reveal hash prefixes, which
    cannot be steered without preimages) and confirmed with compare_digest on the two digests.
    No timing is measured (no timing assertions in tests): the arguments are what is pinned."""
    import ext_proc.identity.resolver as res
    calls: list[tuple[bytes, bytes]] = []
    real = res.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)
    monkeypatch.setattr(res.hmac, "compare_digest", spy)
    r = make_resolver(tmp_path, keys, api_keys=API_KEYS)
    ident = resolve(r, GOOD_KEY, header="x-api-key")
    assert ident.auth_method == "api_key"
    digest = hashlib.sha256(GOOD_KEY.encode()).digest()
    assert calls == [(digest, digest)]   # digests on both sides, never the key itself
    # The resolver holds the keys by hash only: nothing in its table is the key or contains it.
    assert all(GOOD_KEY.encode() not in (k if isinstance(k, bytes) else str(k).encode()) for k in r._api_keys)
    assert GOOD_KEY not in repr(r._api_keys)
    # A key differing from a valid one in its last character takes the same path as any unknown
    # key: a miss on the hash, so no byte-by-byte comparison against the stored key ever happens.
    calls.clear()
    assert reason(r, GOOD_KEY[:-1] + ("x" if GOOD_KEY[-1] != "x" else "y"), header="x-api-key") == "api_key_unknown"
    assert calls == []


MTLS = {"enabled": True, "roles_by_san": {"spiffe://acme/ns/app/sa/x": ["service"]}}
CERT = {"connection.uri_san_peer_certificate": "spiffe://acme/ns/app/sa/x",
        "connection.sha256_peer_certificate_digest": "ab" * 32}


def test_mtls_identity_comes_only_from_peer_certificate_attributes(tmp_path, keys):
    r = make_resolver(tmp_path, keys, mtls=MTLS)
    ident = r.resolve_sync({}, CERT, NOW)
    assert (ident.auth_method, ident.subject, ident.roles) == ("mtls", "spiffe://acme/ns/app/sa/x", ("service",))
    assert ident.credential_id == "x509:" + "ab" * 8
    for headers in ({"x-forwarded-client-cert": ["By=x;URI=spiffe://acme/ns/app/sa/x"]},
                    {"x-ledgergate-subject": ["spiffe://acme/ns/app/sa/x"]}):
        with pytest.raises(IdentityError) as ei:
            r.resolve_sync(headers, {}, NOW)
        assert ei.value.reason == "missing_credential"


@pytest.mark.parametrize("attrs,expected", [
    ({"connection.uri_san_peer_certificate": "spiffe://acme/x"}, "missing_credential"),  # no digest
    ({**CERT, "connection.mtls": "false"}, "missing_credential"),
    ({**CERT, "connection.uri_san_peer_certificate": "spiffe://x\nevil"}, "malformed_credential"),
])
def test_mtls_incomplete_or_hostile_attributes(tmp_path, keys, attrs, expected):
    r = make_resolver(tmp_path, keys, mtls=MTLS)
    with pytest.raises(IdentityError) as ei:
        r.resolve_sync({}, attrs, NOW)
    assert ei.value.reason == expected


def test_mtls_disabled_ignores_certificates(r):
    with pytest.raises(IdentityError) as ei:
        r.resolve_sync({}, CERT, NOW)
    assert ei.value.reason == "missing_credential"


def test_bearer_token_wins_over_the_certificate(tmp_path, keys):
    r = make_resolver(tmp_path, keys, mtls=MTLS)
    assert r.resolve_sync({"authorization": [f"Bearer {token(keys.ed)}"]}, CERT, NOW).auth_method == "jwt"
