"""Identity resolution cost per request: verified-token cache hit vs full verification.

    .venv/bin/python tests/bench/bench_identity.py [--iterations 3000] [--json]

Each call is timed on its own (perf_counter_ns around one ``IdentityResolver.resolve_sync``, the
CPU path the server awaits for JWTs, API keys and mTLS), after a warm-up, with realistic headers
(an OpenAI-style `authorization: Bearer`, an Anthropic-style `x-api-key`, plus a dozen other
headers). "uncached" uses a distinct token per call, so every call splits, parses and verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ext_proc.identity import IdentityConfig, IdentityError, IdentityResolver  # noqa: E402

ISS, AUD = "https://idp.bench", "ledgergate"
OTHER_HEADERS = {":method": ["POST"], ":path": ["/v1/chat/completions"], ":authority": ["api.openai.com"],
                 "content-type": ["application/json"], "user-agent": ["OpenAI/Python 1.55.0"],
                 "accept": ["application/json"], "x-stainless-lang": ["python"], "x-stainless-os": ["Linux"],
                 "x-stainless-arch": ["x64"], "x-stainless-runtime": ["CPython"], "x-request-id": ["r-1"],
                 "accept-encoding": ["gzip, deflate"], "content-length": ["512"]}


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def setup(tmp: Path):
    ed = Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed.public_key())), "kid": "ed", "alg": "EdDSA", "use": "sig"},
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rs.public_key())), "kid": "rs", "alg": "RS256", "use": "sig"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(es.public_key())), "kid": "es", "alg": "ES256", "use": "sig"},
    ]}
    (tmp / "jwks.json").write_text(json.dumps(jwks))
    api_key = "lg_live_" + "k" * 32
    cfg = IdentityConfig.from_dict({
        "issuers": [{"issuer": ISS, "audiences": [AUD], "jwks_file": "jwks.json",
                     "algorithms": ["EdDSA", "RS256", "ES256"],
                     "claims": {"roles": "realm_access.roles", "groups": "groups", "tenant": "org", "scopes": "scope"}}],
        "api_keys": [{"id": f"k{i}", "sha256": hashlib.sha256(f"other-{i}".encode()).hexdigest(), "subject": f"s{i}"}
                     for i in range(200)] + [{"id": "bench", "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                                              "subject": "svc:bench", "roles": ["service"]}],
        "mtls": {"enabled": True, "roles_by_san": {"spiffe://acme/ns/app/sa/x": ["service"]}},
        "cache_size": 100_000,
    }, tmp)
    r = IdentityResolver(cfg)
    asyncio.run(r.start())
    return r, {"EdDSA": (ed, "ed"), "RS256": (rs, "rs"), "ES256": (es, "es")}, api_key


def mint(key, kid, alg, now, i) -> str:
    claims = {"iss": ISS, "aud": AUD, "sub": f"user-{i}", "iat": int(now), "exp": int(now) + 3600,
              "realm_access": {"roles": ["analyst", "developer"]}, "groups": ["eng", "sre"], "org": "acme",
              "scope": "llm:read llm:write", "act": {"sub": "agent-7"}, "jti": f"j{i}"}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def time_calls(fn, inputs) -> list[float]:
    out = []
    for x in inputs:
        t0 = time.perf_counter_ns()
        fn(x)
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.iterations
    now = time.time()
    with tempfile.TemporaryDirectory() as d:
        r, keys, api_key = setup(Path(d))

        def bearer(t):
            return r.resolve_sync({**OTHER_HEADERS, "authorization": [f"Bearer {t}"]}, {}, now)

        def rejected(t):
            try:
                bearer(t)
            except IdentityError:
                return
            raise AssertionError("a forged token was accepted")

        results: dict[str, list[float]] = {}
        for alg, (key, kid) in keys.items():
            tokens = [mint(key, kid, alg, now, i) for i in range(n + 200)]
            time_calls(bearer, tokens[:200])  # warm-up (these stay cached)
            results[f"jwt {alg} uncached"] = time_calls(bearer, tokens[200:])
            hot = tokens[:50]
            results[f"jwt {alg} cached"] = time_calls(bearer, [hot[i % 50] for i in range(n)])
        ed, kid = keys["EdDSA"]
        good = mint(ed, kid, "EdDSA", now, 0)
        h, p, s = good.split(".")
        forged = [f"{h}.{p}.{s[:20]}{chr(65 + i % 26)}{chr(97 + i % 26)}{s[22:]}" for i in range(n)]
        results["jwt EdDSA bad signature (rejected)"] = time_calls(rejected, forged)
        results["api key (x-api-key)"] = time_calls(
            lambda _: r.resolve_sync({**OTHER_HEADERS, "x-api-key": [api_key]}, {}, now), range(n))
        cert = {"connection.uri_san_peer_certificate": "spiffe://acme/ns/app/sa/x",
                "connection.sha256_peer_certificate_digest": "ab" * 32}
        results["mtls attributes"] = time_calls(lambda _: r.resolve_sync(OTHER_HEADERS, cert, now), range(n))

    rows = {name: {"median_us": round(statistics.median(xs), 1), "p99_us": round(percentile(xs, 99), 1),
                   "n": len(xs)} for name, xs in results.items()}
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"identity resolve cost per request ({n} calls each, Python {sys.version.split()[0]})")
        print(f"{'case':34} {'median us':>10} {'p99 us':>10}")
        for name, row in rows.items():
            print(f"{name:34} {row['median_us']:>10} {row['p99_us']:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
