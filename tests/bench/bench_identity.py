"""`make bench-identity`: cost of resolving a caller per request, verified-token cache hit vs a
fresh verification (EdDSA and RS256), median and p99 over many calls."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from ext_proc.identity import IdentityConfig, IdentityResolver  # noqa: E402
from ext_proc.identity.dev import generate_dev_issuer, mint_dev_token  # noqa: E402


def measure(fn, n: int) -> tuple[float, float]:
    xs = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        xs.append((time.perf_counter_ns() - t) / 1000)
    xs.sort()
    return statistics.median(xs), xs[int(0.99 * len(xs))]


def main() -> None:
    d = Path(tempfile.mkdtemp())
    generate_dev_issuer(d)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = json.loads((d / "jwks.json").read_text())
    jwks["keys"].append({**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
                         "kid": "rsa", "use": "sig", "alg": "RS256"})
    (d / "jwks.json").write_text(json.dumps(jwks))
    cfg = IdentityConfig.from_dict({"issuers": [{"issuer": "https://ledgergate.local/dev", "audiences": ["ledgergate"],
                                                 "jwks_file": str(d / "jwks.json"), "algorithms": ["EdDSA", "RS256"]}]}, d)
    now = time.time()
    r = IdentityResolver(cfg)
    import asyncio
    asyncio.run(r.start())
    ed_tokens = [mint_dev_token(d, sub=f"u{i}", roles=["developer"], now=now) for i in range(3000)]
    rs_tokens = [jwt.encode({"iss": "https://ledgergate.local/dev", "aud": "ledgergate", "sub": f"u{i}",
                             "iat": int(now), "exp": int(now) + 600}, rsa_key, algorithm="RS256",
                            headers={"kid": "rsa"}) for i in range(3000)]
    for name, toks in (("EdDSA", ed_tokens), ("RS256", rs_tokens)):
        it = iter(toks)
        p50, p99 = measure(lambda: r.resolve_sync({"authorization": [f"Bearer {next(it)}"]}, {}, now), 3000)
        print(f"{name} uncached (signature + claims): median {p50:.1f} us, p99 {p99:.1f} us")
        t = toks[0]
        p50, p99 = measure(lambda: r.resolve_sync({"authorization": [f"Bearer {t}"]}, {}, now), 20000)
        print(f"{name} cached (verified-token cache hit): median {p50:.1f} us, p99 {p99:.1f} us")


if __name__ == "__main__":
    main()
