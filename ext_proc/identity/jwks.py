"""JWKS handling without I/O: parse a key set into `PyJWK` objects for the pinned algorithms, and
the refresh/staleness bookkeeping of one issuer's key set (the shell in resolver.py does the reads).

A key is used only if it is a public signature key (`use` absent or "sig", no private parts) of
kty RSA/EC/OKP, its `kid` is unique in the set, and one of the issuer's pinned algorithms fits it.
`oct` (symmetric) keys are never accepted, so no HMAC verification with published material.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK

from ext_proc.identity.config import IssuerConfig

MAX_KEYS = 64            # bounds the CPU of one parse
MAX_KID_CHARS = 256
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

# Which pinned algorithm fits which key type / curve.
_FITS = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
}


class JwksError(ValueError):
    """A key set that cannot be used at all (not JSON, no usable keys, too large, unreachable)."""


def strict_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """json.loads that refuses duplicate member names and NaN/Infinity, and wants an object: two
    parsers disagreeing about `{"active": false, "active": true}` is how checks get bypassed."""
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ValueError("duplicate member")
            out[k] = v
        return out

    def no_constants(name: str) -> Any:
        raise ValueError("non-finite number")

    try:
        doc = json.loads(data, object_pairs_hook=pairs, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JwksError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise JwksError(f"{what} is not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: Mapping[str, Mapping[str, PyJWK]]  # kid -> algorithm -> key bound to that algorithm
    fingerprint: str                          # changes whenever the accepted keys change
    skipped: int                              # keys present but not usable (for logs)


def _fitting_algorithms(jwk: Mapping[str, Any], pinned: tuple[str, ...]) -> list[str]:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    declared = jwk.get("alg")
    candidates = [declared] if declared is not None else list(pinned)
    out = []
    for alg in candidates:
        if alg not in pinned or alg not in _FITS:
            continue
        want_kty, want_crv = _FITS[alg]
        if kty == want_kty and (want_crv is None or crv == want_crv):
            out.append(alg)
    return out


def parse_jwks(data: bytes | str, algorithms: tuple[str, ...]) -> KeySet:
    doc = strict_json_object(data, "the JWKS")
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list):
        raise JwksError("the JWKS has no 'keys' array")
    if len(raw_keys) > MAX_KEYS:
        raise JwksError(f"the JWKS has more than {MAX_KEYS} keys")
    kids = [k.get("kid") for k in raw_keys if isinstance(k, dict)]
    duplicated = {kid for kid in kids if kids.count(kid) > 1}
    keys: dict[str, dict[str, PyJWK]] = {}
    accepted: list[dict[str, Any]] = []
    skipped = 0
    for jwk in raw_keys:
        if not isinstance(jwk, dict):
            skipped += 1
            continue
        kid = jwk.get("kid")
        usable = (isinstance(kid, str) and 0 < len(kid) <= MAX_KID_CHARS and kid not in duplicated
                  and jwk.get("kty") in ("RSA", "EC", "OKP") and jwk.get("use", "sig") == "sig"
                  and not (_PRIVATE_MEMBERS & jwk.keys())
                  and (not isinstance(jwk.get("key_ops"), list) or "verify" in jwk["key_ops"]))
        by_alg: dict[str, PyJWK] = {}
        if usable:
            for alg in _fitting_algorithms(jwk, algorithms):
                try:
                    key = PyJWK(jwk, algorithm=alg)
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                    continue
                if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
                    continue
                by_alg[alg] = key
        if not by_alg or not isinstance(kid, str):  # `usable` already required a str kid
            skipped += 1
            continue
        keys[kid] = by_alg
        accepted.append({k: v for k, v in jwk.items() if isinstance(v, (str, int))})
    if not keys:
        raise JwksError("the JWKS has no usable signature key for the pinned algorithms")
    fingerprint = hashlib.sha256(json.dumps(sorted(accepted, key=lambda k: k["kid"]), sort_keys=True)
                                 .encode()).hexdigest()
    return KeySet(keys=keys, fingerprint=fingerprint, skipped=skipped)


@dataclass(slots=True)
class JwksState:
    """One issuer's key set over time: what is usable at `now`, when to fetch next, and whether an
    unknown `kid` may force an early fetch. Every method takes the time; none reads a clock."""

    cfg: IssuerConfig
    keyset: KeySet | None = None
    generation: int = 0           # bumped when the accepted keys change; cached tokens carry it
    last_success: float | None = None
    next_fetch_at: float = 0.0
    failures: int = 0
    last_error: str | None = None
    last_forced: float = -math.inf
    forced_pending: bool = field(default=False)

    def usable_until(self) -> float:
        """Keys are used for at most `jwks_stale_max` after the last good fetch (normally they
        are refreshed every `jwks_refresh`, which is shorter): bounded stale-while-revalidate
        when the endpoint is down, then fail closed."""
        if self.last_success is None:
            return -math.inf
        return self.last_success + self.cfg.jwks_stale_max_s

    def keys_at(self, now: float) -> KeySet | None:
        if self.keyset is None or now > self.usable_until():
            return None
        return self.keyset

    def on_success(self, keyset: KeySet, now: float) -> None:
        if self.keyset is None or keyset.fingerprint != self.keyset.fingerprint:
            self.generation += 1
        self.keyset = keyset
        self.last_success = now
        self.failures = 0
        self.last_error = None
        self.next_fetch_at = now + self.cfg.jwks_refresh_s

    def on_failure(self, error: str, now: float) -> None:
        self.failures += 1
        self.last_error = error
        # Retry sooner than the refresh interval while failing, with a capped exponential backoff.
        self.next_fetch_at = now + min(self.cfg.jwks_refresh_s, 2.0 ** min(self.failures, 8))
        if self.keyset is not None and now > self.usable_until():
            self.keyset = None  # past the stale bound: refuse rather than trust old keys forever
            self.generation += 1

    def request_forced_refresh(self, now: float) -> bool:
        """An unknown kid may be a rotation: allow one early fetch per cooldown (a stream of
        random kids must not turn into a stream of fetches)."""
        if now - self.last_forced < self.cfg.jwks_refetch_cooldown_s:
            return False
        self.last_forced = now
        self.forced_pending = True
        return True
