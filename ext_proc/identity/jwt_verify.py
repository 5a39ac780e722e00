"""JWT verification as a pure function of (token, issuer config, key set, now).

Order matters for cost and for precise reasons: size before any decoding; shape and base64url
alphabet before json; issuer, algorithm, typ and kid before any signature work; PyJWT verifies the
signature with the `PyJWK` bound to one algorithm, iss, aud and the presence of the required
claims; the time checks use `now` (the caller's clock) so a decision is a function of its inputs.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ext_proc.identity.config import IssuerConfig
from ext_proc.identity.jwks import JwksError, KeySet, strict_json_object
from ext_proc.identity.model import IdentityError

REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# Header members this verifier understands or deliberately ignores. jku, x5u, jwk and x5c are
# ignored: keys come only from the configured JWKS, never from the token.
_UNSUPPORTED_HEADER_MEMBERS = ("crit", "b64", "zip", "enc")


def looks_like_jwt(credential: str) -> bool:
    """A JWS compact serialization starts with base64url('{"') and has dots; anything with two or
    more dots is treated as a (possibly mangled) JWT too, so it fails as one. API keys and opaque
    tokens (`sk-...`, `AIza...`, `ya29.x`) have at most one dot."""
    return (credential.startswith("eyJ") and "." in credential) or credential.count(".") >= 2


@dataclass(frozen=True, slots=True)
class UnverifiedJwt:
    header: dict[str, Any]
    payload: dict[str, Any]


def _segment(seg: str, what: str) -> dict[str, Any]:
    if not seg or not set(seg) <= _B64URL or len(seg) % 4 == 1:
        raise IdentityError("malformed_token", f"the token's {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))
        return strict_json_object(raw, what)
    except (ValueError, JwksError):
        raise IdentityError("malformed_token", f"the token's {what} is not a JSON object") from None


def split_jwt(token: str) -> UnverifiedJwt:
    parts = token.split(".")
    if len(parts) == 5:
        raise IdentityError("malformed_token", "encrypted tokens (JWE) are not accepted")
    if len(parts) != 3:
        raise IdentityError("malformed_token", "a JWT has exactly three dot-separated segments")
    if parts[2] and not set(parts[2]) <= _B64URL:
        raise IdentityError("malformed_token", "the token's signature is not base64url")
    return UnverifiedJwt(header=_segment(parts[0], "header"), payload=_segment(parts[1], "payload"))


def _typ_matches(typ: Any, required: str) -> bool:
    # RFC 7515 4.1.9: "application/" may be omitted and the comparison is case-insensitive.
    if not isinstance(typ, str):
        return False
    norm = typ.lower().removeprefix("application/")
    return norm == required.lower().removeprefix("application/")


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise IdentityError("invalid_claim", f"the {name} claim must be a finite number (NumericDate)")
    return float(v)


def verify_jwt(token: str, unverified: UnverifiedJwt, cfg: IssuerConfig, keyset: KeySet | None,
               now: float) -> dict[str, Any]:
    """Returns the verified claims or raises IdentityError. `cfg` was chosen by the token's
    (unverified) iss; PyJWT checks iss again after the signature."""
    if len(token) > cfg.max_token_bytes:
        raise IdentityError("token_too_large", f"the token is larger than {cfg.max_token_bytes} bytes")
    header = unverified.header
    alg = header.get("alg")
    if alg not in cfg.algorithms:
        raise IdentityError("alg_not_allowed", "the token's algorithm is not allowed for its issuer")
    if any(m in header for m in _UNSUPPORTED_HEADER_MEMBERS):
        raise IdentityError("unsupported_header", "the token's header uses an unsupported extension")
    if cfg.require_typ is not None and not _typ_matches(header.get("typ"), cfg.require_typ):
        raise IdentityError("typ_mismatch", "the token's typ header is not the one this issuer requires")
    if keyset is None:
        raise IdentityError("jwks_unavailable", "the issuer's signing keys are not available")
    kid = header.get("kid")
    by_alg = keyset.keys.get(kid) if isinstance(kid, str) else None
    if by_alg is None:
        raise IdentityError("unknown_kid", "the token's signing key (kid) is not known")
    key = by_alg.get(alg)
    if key is None:
        raise IdentityError("key_alg_mismatch", "the token's algorithm does not match its signing key")
    if not token.rsplit(".", 1)[1]:
        raise IdentityError("bad_signature", "the token has no signature")
    try:
        claims = jwt.decode(token, key, algorithms=[alg], audience=list(cfg.audiences), issuer=cfg.issuer,
                            options={"require": REQUIRED_CLAIMS, "verify_signature": True, "verify_aud": True,
                                     "verify_iss": True, "verify_exp": False, "verify_nbf": False,
                                     "verify_iat": False})
    except jwt.InvalidSignatureError:
        raise IdentityError("bad_signature", "the token's signature does not verify") from None
    except jwt.MissingRequiredClaimError as exc:
        raise IdentityError("missing_claim", f"the token lacks the required claim '{exc.claim}'") from None
    except jwt.InvalidAudienceError:
        raise IdentityError("audience_mismatch", "the token is not issued for this audience") from None
    except jwt.InvalidIssuerError:
        raise IdentityError("issuer_unknown", "the token's issuer is not trusted") from None
    except jwt.InvalidAlgorithmError:
        raise IdentityError("key_alg_mismatch", "the token's algorithm does not match its signing key") from None
    except jwt.DecodeError:
        raise IdentityError("malformed_token", "the token could not be decoded") from None
    except jwt.PyJWTError:
        raise IdentityError("invalid_claim", "the token has an invalid claim") from None
    check_times(claims, cfg, now)
    return claims


def check_times(claims: Mapping[str, Any], cfg: IssuerConfig, now: float) -> None:
    exp = _number(claims.get("exp"), "exp")
    iat = _number(claims.get("iat"), "iat")
    nbf = _number(claims["nbf"], "nbf") if "nbf" in claims else iat
    if exp <= now - cfg.leeway_s:
        raise IdentityError("token_expired", "the token has expired")
    if nbf > now + cfg.leeway_s:
        raise IdentityError("token_not_yet_valid", "the token is not valid yet (nbf)")
    if iat > now + cfg.leeway_s:
        raise IdentityError("token_not_yet_valid", "the token was issued in the future (iat)")
    if exp - iat > cfg.max_lifetime_s:
        raise IdentityError("lifetime_too_long", "the token's lifetime (exp - iat) exceeds the issuer's maximum")
