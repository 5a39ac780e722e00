"""The dev issuer of the local stack: an Ed25519 key and its JWKS under var/dev, and tokens it signs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ext_proc.keyfiles import load_or_create_ed25519

DEV_ISSUER = "https://ledgergate.local/dev"
DEV_AUDIENCE = "ledgergate"


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _jwk(pub_raw: bytes) -> dict[str, Any]:
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64(pub_raw)}
    # RFC 7638 thumbprint as the kid.
    thumb = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    return {**jwk, "kid": _b64(thumb), "use": "sig", "alg": "EdDSA"}


def generate_dev_issuer(directory: Path) -> None:
    """Writes issuer-key.pem (Ed25519, mode 0600) and jwks.json into `directory` unless present;
    an existing key is kept and its JWKS rebuilt when only the JWKS is missing."""
    directory = Path(directory)
    key_path, jwks_path = directory / "issuer-key.pem", directory / "jwks.json"
    if key_path.exists() and jwks_path.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    priv = load_or_create_ed25519(key_path, "dev issuer key")
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tmp = jwks_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"keys": [_jwk(pub)]}, indent=2))
    os.replace(tmp, jwks_path)  # a reader never sees a half-written JWKS


def mint_dev_token(directory: Path, *, sub: str, roles: Sequence[str], tenant: str | None = None,
                   groups: Sequence[str] = (), ttl_s: int = 3600, act: str | Sequence[str] | None = None,
                   now: float) -> str:
    """A token of the dev issuer. `act` names the agent acting for `sub` (RFC 8693); a sequence
    is a delegation chain, the agent calling first."""
    directory = Path(directory)
    priv = serialization.load_pem_private_key((directory / "issuer-key.pem").read_bytes(), password=None)
    if not isinstance(priv, Ed25519PrivateKey):
        raise ValueError(f"{directory / 'issuer-key.pem'} is not an Ed25519 key (the dev issuer signs EdDSA)")
    pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    claims = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": sub, "iat": int(now), "nbf": int(now),
              "exp": int(now) + int(ttl_s), "roles": list(roles), "groups": list(groups)}
    if tenant:
        claims["tenant"] = tenant
    chain = [act] if isinstance(act, str) else list(act or ())
    nested: dict[str, Any] | None = None
    for actor in reversed(chain):
        nested = {"sub": actor, **({"act": nested} if nested else {})}
    if nested:
        claims["act"] = nested
    return jwt.encode(claims, priv, algorithm="EdDSA", headers={"kid": _jwk(pub)["kid"], "typ": "JWT"})
