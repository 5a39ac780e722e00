"""OAuth 2.0 token introspection (RFC 7662) for opaque tokens.

`interpret_introspection` is pure: only a JSON boolean `active: true` means active; `"true"` the
string, `1` or no `active` at all mean inactive (RFC 7662 2.2). `exp`/`nbf` are checked against
`now`, `iss`/`aud` against the configuration.
`IntrospectionClient` is the thin HTTP shell: bounded time, bounded body, bounded concurrency,
no redirects, and every failure is a denial.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import httpx

from ext_proc.identity.claims import identity_from_claims
from ext_proc.identity.config import IntrospectionConfig
from ext_proc.identity.jwks import strict_json_object
from ext_proc.identity.model import Identity, IdentityError


def interpret_introspection(doc: Mapping[str, Any], cfg: IntrospectionConfig, *, credential_id: str,
                            now: float) -> Identity:
    if doc.get("active") is not True:
        raise IdentityError("token_inactive", "the token is not active")
    exp = doc.get("exp")
    if exp is not None:
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            raise IdentityError("introspection_failed", "the introspection answer's exp is not a number")
        if exp <= now:
            raise IdentityError("token_expired", "the token has expired")
    nbf = doc.get("nbf")
    if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf > now:
        raise IdentityError("token_not_yet_valid", "the token is not valid yet (nbf)")
    if cfg.issuer is not None and "iss" in doc and doc["iss"] != cfg.issuer:
        raise IdentityError("issuer_unknown", "the token's issuer is not trusted")
    if cfg.audiences:
        aud = doc.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in cfg.audiences for a in auds if isinstance(a, str)):
            raise IdentityError("audience_mismatch", "the token is not issued for this audience")
    subject = doc.get("sub") if doc.get("sub") is not None else doc.get("username")
    if subject is None:
        raise IdentityError("missing_claim", "the introspection answer names no subject (sub/username)")
    return identity_from_claims(doc, subject=subject, issuer=cfg.issuer or cfg.url, auth_method="introspection",
                                paths=cfg.claims, credential_id=credential_id,
                                expires_at=float(exp) if exp is not None else None)


class IntrospectionClient:
    def __init__(self, cfg: IntrospectionConfig) -> None:
        self.cfg = cfg
        self._client: httpx.AsyncClient | None = None
        self._auth: tuple[str, str] | None = None
        self._slots = asyncio.Semaphore(cfg.max_concurrent)

    async def start(self) -> None:
        if self._client is not None:
            return
        if self.cfg.client_secret_file is not None and self.cfg.client_id is not None:
            secret = (await asyncio.to_thread(self.cfg.client_secret_file.read_text, encoding="utf-8")).strip()
            self._auth = (self.cfg.client_id, secret)
        # trust_env=False: no proxy or netrc from the environment silently joins the trust path.
        self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s, follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def introspect(self, token: str) -> dict[str, Any]:
        try:
            if self._client is None:
                await self.start()
            return await asyncio.wait_for(self._post(token), self.cfg.timeout_s)
        except TimeoutError:
            raise IdentityError("introspection_failed", "the introspection endpoint timed out") from None
        except (httpx.HTTPError, OSError):
            raise IdentityError("introspection_failed", "the introspection endpoint could not be reached") from None

    async def _post(self, token: str) -> dict[str, Any]:
        assert self._client is not None
        data = {"token": token, "token_type_hint": "access_token"}
        if self._auth is None and self.cfg.client_id is not None:
            data["client_id"] = self.cfg.client_id  # a public client identifies itself in the body
        async with self._slots:
            async with self._client.stream("POST", self.cfg.url, data=data, auth=self._auth,
                                           headers={"accept": "application/json"}) as resp:
                if resp.status_code != 200:
                    raise IdentityError("introspection_failed",
                                        f"the introspection endpoint answered HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self.cfg.max_response_bytes:
                        raise IdentityError("introspection_failed", "the introspection answer is too large")
        try:
            return strict_json_object(bytes(body), "the introspection answer")
        except ValueError:
            raise IdentityError("introspection_failed", "the introspection answer is not a JSON object") from None
