"""Resolve the caller from the request: JWT bearer tokens verified against per-issuer JWKS, hashed
API keys, or the mTLS peer certificate Envoy verified. The JWT/API-key/mTLS paths are pure CPU over
in-memory state; JWKS files are loaded at start and re-read in the background."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import jwt
import structlog
from jwt import PyJWK

from ext_proc.identity.model import Identity, IdentityError

ALLOWED_ALGS = {"RS256", "ES256", "EdDSA", "PS256", "ES384", "RS384"}
log = structlog.get_logger("ledgergate.identity")
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def _duration(v: Any, default: float) -> float:
    if v is None:
        return default
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip().lower()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for u in ("ms", "s", "m", "h", "d"):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


@dataclass
class IssuerConfig:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_file: Path | None
    claims: dict[str, str]
    max_lifetime_s: float
    leeway_s: float
    max_token_bytes: int
    require_typ: str | None
    jwks_refresh_s: float
    jwks_url: str | None = None
    jwks_stale_max_s: float = 3600.0
    jwks_timeout_s: float = 3.0
    jwks_refetch_cooldown_s: float = 30.0


@dataclass
class ApiKey:
    id: str
    sha256: bytes
    subject: str
    roles: tuple[str, ...]
    tenant: str | None
    revoked: bool


@dataclass
class IdentityConfig:
    issuers: list[IssuerConfig] = field(default_factory=list)
    api_keys: list[ApiKey] = field(default_factory=list)
    mtls_enabled: bool = False
    mtls_subject_from: str = "uri_san"
    mtls_roles_by_san: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cache_size: int = 10000
    introspection: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path) -> "IdentityConfig":
        issuers = []
        for i, it in enumerate(d.get("issuers") or []):
            algs = tuple(it.get("algorithms") or ["RS256"])
            bad = [a for a in algs if a not in ALLOWED_ALGS]
            if bad:
                raise ValueError(f"identity.issuers[{i}].algorithms: not allowed: {bad}")
            if not it.get("issuer") or not it.get("audiences"):
                raise ValueError(f"identity.issuers[{i}]: 'issuer' and 'audiences' are required")
            jf = it.get("jwks_file")
            url = it.get("jwks_url")
            if bool(jf) == bool(url):
                raise ValueError(f"identity.issuers[{i}]: exactly one of jwks_file and jwks_url")
            if url and not str(url).startswith(("https://", "http://127.0.0.1", "http://localhost")):
                raise ValueError(f"identity.issuers[{i}].jwks_url must be https (plain http only on loopback)")
            issuers.append(IssuerConfig(
                name=str(it.get("name") or it["issuer"]), issuer=str(it["issuer"]),
                audiences=tuple(it["audiences"]), algorithms=algs,
                jwks_file=(Path(jf) if Path(jf).is_absolute() else base_dir / jf) if jf else None,
                claims=dict(it.get("claims") or {"roles": "roles", "groups": "groups", "tenant": "tenant",
                                                   "scopes": "scope"}),
                max_lifetime_s=_duration(it.get("max_lifetime"), 86400), leeway_s=_duration(it.get("leeway"), 30),
                max_token_bytes=int(it.get("max_token_bytes") or 8192), require_typ=it.get("require_typ"),
                jwks_refresh_s=_duration(it.get("jwks_refresh"), 300), jwks_url=url,
                jwks_stale_max_s=_duration(it.get("jwks_stale_max"), 3600),
                jwks_timeout_s=_duration(it.get("jwks_timeout"), 3),
                jwks_refetch_cooldown_s=_duration(it.get("jwks_refetch_cooldown"), 30)))
        keys = []
        for i, k in enumerate(d.get("api_keys") or []):
            try:
                digest = bytes.fromhex(k["sha256"])
            except (KeyError, ValueError):
                raise ValueError(f"identity.api_keys[{i}].sha256 must be a hex SHA-256") from None
            if len(digest) != 32:
                raise ValueError(f"identity.api_keys[{i}].sha256 must be 64 hex characters")
            keys.append(ApiKey(id=str(k.get("id") or i), sha256=digest, subject=str(k["subject"]),
                               roles=tuple(k.get("roles") or ()), tenant=k.get("tenant"),
                               revoked=bool(k.get("revoked"))))
        mtls = d.get("mtls") or {}
        intro = d.get("introspection")
        if intro is not None:
            if not isinstance(intro, Mapping) or not intro.get("url"):
                raise ValueError("identity.introspection needs a url")
            url = str(intro["url"])
            if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
                raise ValueError("identity.introspection.url must be https (plain http only on loopback)")
            secret = None
            if intro.get("client_secret_file"):
                sf = Path(intro["client_secret_file"])
                secret = (sf if sf.is_absolute() else base_dir / sf).read_text().strip()
            intro = {"url": url, "client_id": intro.get("client_id"), "client_secret": secret,
                     "timeout_s": _duration(intro.get("timeout"), 2), "cache_max_s": _duration(intro.get("cache_max"), 60),
                     "issuer": str(intro.get("issuer") or url), "claims": dict(intro.get("claims") or
                                                                                 {"roles": "roles", "scopes": "scope"})}
        return cls(issuers=issuers, api_keys=keys, introspection=intro, mtls_enabled=bool(mtls.get("enabled")),
                   mtls_subject_from=str(mtls.get("subject_from") or "uri_san"),
                   mtls_roles_by_san={k: tuple(v) for k, v in (mtls.get("roles_by_san") or {}).items()})


def _claim(claims: Mapping[str, Any], dotted: str | None) -> Any:
    if not dotted:
        return None
    node: Any = claims
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _strings(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(x for x in v.replace(",", " ").split() if x)
    if isinstance(v, (list, tuple)):
        return tuple(str(x) for x in v if isinstance(x, (str, int)))
    return ()


def _actor_chain(claims: Mapping[str, Any]) -> tuple[str, ...]:
    chain, act, depth = [], claims.get("act"), 0
    while isinstance(act, Mapping) and depth < 8:
        if isinstance(act.get("sub"), str):
            chain.append(act["sub"])
        act, depth = act.get("act"), depth + 1
    return tuple(chain)


class JwksKeys:
    """The keys of one issuer, by kid; only signature keys of the pinned algorithms."""

    def __init__(self, cfg: IssuerConfig) -> None:
        self.cfg = cfg
        self.keys: dict[str, PyJWK] = {}
        self.loaded_at = 0.0
        self.last_attempt = -1e18
        self.last_forced = -1e18

    def load_text(self, text: str, now: float) -> None:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError("JWKS is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("JWKS has no 'keys' array")
        keys: dict[str, PyJWK] = {}
        seen: set[str] = set()
        for jwk in doc["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
                continue
            kid = jwk["kid"]
            if kid in seen:
                keys.pop(kid, None)  # a duplicated kid is ambiguous: trust neither
                continue
            seen.add(kid)
            alg = jwk.get("alg")
            if alg is not None and alg not in self.cfg.algorithms:
                continue
            try:
                keys[kid] = PyJWK(jwk, algorithm=alg or self._default_alg(jwk))
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
        if not keys:
            raise ValueError("JWKS has no usable signature keys")
        self.keys = keys
        self.loaded_at = now

    def _default_alg(self, jwk: dict) -> str:
        kty = jwk.get("kty")
        for alg in self.cfg.algorithms:
            if (kty, alg[:2]) in (("RSA", "RS"), ("RSA", "PS"), ("EC", "ES")) or (kty == "OKP" and alg == "EdDSA"):
                return alg
        raise ValueError("no pinned algorithm fits this key")

    def reload(self, now: float) -> None:
        """Blocking (file read or HTTP GET): call it from a thread, never on the event loop."""
        self.last_attempt = now
        if self.cfg.jwks_file is not None:
            self.load_text(self.cfg.jwks_file.read_text(encoding="utf-8"), now)
            return
        import httpx

        # No redirects, a size cap and a short timeout; never a URL taken from a token (jku/x5u).
        with httpx.Client(timeout=self.cfg.jwks_timeout_s, follow_redirects=False) as client:
            resp = client.get(self.cfg.jwks_url, headers={"accept": "application/json"})
        if resp.status_code != 200:
            raise ValueError(f"JWKS endpoint answered {resp.status_code}")
        if len(resp.content) > 1 << 20:
            raise ValueError("JWKS document larger than 1 MiB")
        self.load_text(resp.text, now)

    def usable(self, now: float) -> bool:
        """Keys are served stale for at most jwks_stale_max after the last successful load."""
        return bool(self.keys) and (self.cfg.jwks_url is None or now - self.loaded_at <= self.cfg.jwks_stale_max_s)


def _b64json(seg: str) -> Any:
    pad = "=" * (-len(seg) % 4)
    return json.loads(base64.urlsafe_b64decode(seg + pad))


class IdentityResolver:
    def __init__(self, config: IdentityConfig) -> None:
        self.config = config
        self._jwks = {c.issuer: JwksKeys(c) for c in config.issuers}
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()
        self._refresh_task: asyncio.Task | None = None
        self._api_keys = {k.sha256: k for k in config.api_keys}
        self._refetching: JwksKeys | None = None

    @property
    def ready(self) -> bool:
        return all(k.usable(time.time()) for k in self._jwks.values())

    async def start(self) -> None:
        now = time.time()
        for keys in self._jwks.values():
            if keys.cfg.jwks_url is None:
                await asyncio.to_thread(keys.reload, now)  # a broken local file is a config error
            else:
                try:
                    await asyncio.to_thread(keys.reload, now)
                except Exception:  # noqa: BLE001 - not ready until the endpoint answers
                    log.warning("jwks_fetch_failed", issuer=keys.cfg.name)
        self._refresh_task = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        interval = min((c.jwks_refresh_s for c in self.config.issuers), default=300)
        while True:
            # Unready issuers retry quickly; ready ones refresh on their interval.
            await asyncio.sleep(interval if self.ready else min(interval, 2.0))
            for keys in self._jwks.values():
                try:
                    await asyncio.to_thread(keys.reload, time.time())
                except Exception:  # noqa: BLE001 - keep serving the last good key set (bounded stale)
                    log.warning("jwks_refresh_failed", issuer=keys.cfg.name)

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()

    async def resolve(self, headers: Mapping[str, list[str]], attributes: Mapping[str, str], now: float) -> Identity:
        try:
            return self.resolve_sync(headers, attributes, now)
        except IdentityError as exc:
            if exc.reason == "invalid_credential" and self.config.introspection is not None:
                credential = self._credential(headers)
                if credential is not None:
                    return await self._introspect(credential, now)
            if exc.reason not in ("unknown_kid", "jwks_unavailable") or self._refetching is None:
                raise
            keys = self._refetching
            self._refetching = None
            # One forced refresh for an unknown kid (key rotation), at most once per cooldown.
            if keys.cfg.jwks_url is None or now - keys.last_forced < keys.cfg.jwks_refetch_cooldown_s:
                raise
            keys.last_forced = now
            try:
                await asyncio.to_thread(keys.reload, now)
            except Exception:  # noqa: BLE001
                raise exc from None
            return self.resolve_sync(headers, attributes, now)

    def resolve_sync(self, headers: Mapping[str, list[str]], attributes: Mapping[str, str], now: float) -> Identity:
        credential = self._credential(headers)
        if credential is None:
            if self.config.mtls_enabled and attributes.get("connection.uri_san_peer_certificate"):
                return self._mtls(attributes)
            raise IdentityError("missing_credential", "no credential: send a bearer token or API key")
        if credential.count(".") == 2 and credential.startswith("ey"):
            return self._jwt(credential, now)
        return self._api_key(credential)

    def _credential(self, headers: Mapping[str, list[str]]) -> str | None:
        found: list[str] = []
        for name in CREDENTIAL_HEADERS:
            values = headers.get(name) or []
            if len(values) > 1:
                raise IdentityError("malformed_credential", f"the {name} header appears more than once")
            if not values:
                continue
            v = values[0].strip()
            if name == "authorization":
                scheme, _, rest = v.partition(" ")
                if scheme.lower() != "bearer":
                    raise IdentityError("malformed_credential", "authorization must use the Bearer scheme")
                v = rest.strip()
                if not v or " " in v:
                    raise IdentityError("malformed_credential", "the bearer token is empty or malformed")
            elif not v:
                raise IdentityError("malformed_credential", f"the {name} header is empty")
            found.append(v)
        if len(set(found)) > 1:
            raise IdentityError("malformed_credential", "more than one different credential was sent")
        return found[0] if found else None

    def _jwt(self, token: str, now: float) -> Identity:
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at is not None and cached.expires_at > now:
            self._cache.move_to_end(key)
            return cached
        max_bytes = max((c.max_token_bytes for c in self.config.issuers), default=8192)
        if len(token) > max_bytes:
            raise IdentityError("token_too_large", f"the token is larger than {max_bytes} bytes")
        try:
            header_seg, payload_seg, _sig = token.split(".")
            header, payload = _b64json(header_seg), _b64json(payload_seg)
        except (ValueError, UnicodeDecodeError, TypeError):
            raise IdentityError("malformed_token", "the token is not a well-formed JWT") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise IdentityError("malformed_token", "the token is not a well-formed JWT")
        keys = self._jwks.get(payload.get("iss")) if isinstance(payload.get("iss"), str) else None
        if keys is None:
            raise IdentityError("issuer_unknown", "the token's issuer is not trusted")
        cfg = keys.cfg
        if not keys.usable(now):
            self._refetching = keys
            raise IdentityError("jwks_unavailable", "the issuer's signing keys are unavailable")
        if len(token) > cfg.max_token_bytes:
            raise IdentityError("token_too_large", f"the token is larger than {cfg.max_token_bytes} bytes")
        alg = header.get("alg")
        if alg not in cfg.algorithms:
            raise IdentityError("alg_not_allowed", "the token's algorithm is not allowed for its issuer")
        if cfg.require_typ is not None and header.get("typ") != cfg.require_typ:
            raise IdentityError("bad_typ", "the token's typ header is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or len(kid) > 256:
            raise IdentityError("unknown_kid", "the token's signing key is not known")
        if kid not in keys.keys:
            self._refetching = keys
            raise IdentityError("unknown_kid", "the token's signing key is not known")
        jwk = keys.keys[kid]
        try:
            # Signature, iss, aud and presence of claims here; the time checks below use `now`, the
            # caller's clock, so a decision is a function of its recorded inputs.
            claims = jwt.decode(token, jwk, algorithms=[alg], audience=list(cfg.audiences), issuer=cfg.issuer,
                                options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_exp": False,
                                         "verify_nbf": False, "verify_iat": False})
        except jwt.InvalidAudienceError:
            raise IdentityError("audience_mismatch", "the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise IdentityError("issuer_unknown", "the token's issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise IdentityError("missing_claim", f"the token lacks the required claim '{exc.claim}'") from None
        except jwt.InvalidSignatureError:
            raise IdentityError("bad_signature", "the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise IdentityError("invalid_token", "the token is invalid") from None
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", claims.get("iat"))
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (exp, iat, nbf)):
            raise IdentityError("invalid_token", "exp, iat and nbf must be numbers")
        if exp <= now - cfg.leeway_s:
            raise IdentityError("token_expired", "the token has expired")
        if nbf > now + cfg.leeway_s or iat > now + cfg.leeway_s:
            raise IdentityError("token_not_yet_valid", "the token is not valid yet")
        if exp - iat > cfg.max_lifetime_s:
            raise IdentityError("lifetime_too_long", "the token's lifetime exceeds the issuer's maximum")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise IdentityError("missing_claim", "the token lacks a subject")
        tenant = _claim(claims, cfg.claims.get("tenant"))
        ident = Identity(
            subject=claims["sub"], issuer=cfg.issuer, auth_method="jwt",
            roles=_strings(_claim(claims, cfg.claims.get("roles"))),
            groups=_strings(_claim(claims, cfg.claims.get("groups"))),
            tenant=tenant if isinstance(tenant, str) else None,
            scopes=_strings(_claim(claims, cfg.claims.get("scopes"))),
            actor=_actor_chain(claims), credential_id=key.hex()[:16], expires_at=float(exp))
        self._cache[key] = ident
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return ident

    async def _introspect(self, token: str, now: float) -> Identity:
        """RFC 7662: only a JSON boolean `active: true` passes; anything else, a timeout or an
        error is a denial. Answers are cached no longer than cache_max nor past the token's exp."""
        cfg = self.config.introspection
        assert cfg is not None
        key = b"i:" + hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at is not None and cached.expires_at > now:
            return cached
        import httpx

        auth = (cfg["client_id"], cfg["client_secret"]) if cfg["client_id"] and cfg["client_secret"] else None
        try:
            async with httpx.AsyncClient(timeout=cfg["timeout_s"], follow_redirects=False) as client:
                resp = await client.post(cfg["url"], data={"token": token, "token_type_hint": "access_token"},
                                         auth=auth, headers={"accept": "application/json"})
        except httpx.HTTPError:
            raise IdentityError("introspection_failed", "the token could not be introspected") from None
        if resp.status_code != 200 or len(resp.content) > 65536:
            raise IdentityError("introspection_failed", "the token could not be introspected")
        try:
            claims = resp.json()
        except ValueError:
            raise IdentityError("introspection_failed", "the token could not be introspected") from None
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise IdentityError("token_inactive", "the token is not active")
        sub = claims.get("sub") or claims.get("client_id")
        exp = claims.get("exp")
        if not isinstance(sub, str) or not sub:
            raise IdentityError("missing_claim", "the introspected token has no subject")
        if exp is not None and (not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now):
            raise IdentityError("token_expired", "the token has expired")
        until = now + cfg["cache_max_s"] if exp is None else min(float(exp), now + cfg["cache_max_s"])
        tenant = _claim(claims, cfg["claims"].get("tenant"))
        ident = Identity(subject=sub, issuer=cfg["issuer"], auth_method="introspection",
                         roles=_strings(_claim(claims, cfg["claims"].get("roles"))),
                         groups=_strings(_claim(claims, cfg["claims"].get("groups"))),
                         tenant=tenant if isinstance(tenant, str) else None,
                         scopes=_strings(_claim(claims, cfg["claims"].get("scopes"))), actor=_actor_chain(claims),
                         credential_id=key.hex()[4:20], expires_at=until)
        self._cache[key] = ident
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return ident

    def _api_key(self, credential: str) -> Identity:
        digest = hashlib.sha256(credential.encode()).digest()
        match = None
        for stored, k in self._api_keys.items():  # constant-time compare against every key
            if hmac.compare_digest(stored, digest):
                match = k
        if match is None:
            raise IdentityError("invalid_credential", "the credential is not a valid token or API key")
        if match.revoked:
            raise IdentityError("api_key_revoked", "the API key has been revoked")
        return Identity(subject=match.subject, issuer="ledgergate:api_key", auth_method="api_key",
                        roles=match.roles, groups=(), tenant=match.tenant, scopes=(), actor=(),
                        credential_id=f"api_key:{match.id}", expires_at=None)

    def _mtls(self, attributes: Mapping[str, str]) -> Identity:
        san = attributes.get("connection.uri_san_peer_certificate") or ""
        digest = attributes.get("connection.sha256_peer_certificate_digest") or ""
        return Identity(subject=san, issuer="ledgergate:mtls", auth_method="mtls",
                        roles=self.config.mtls_roles_by_san.get(san, ()), groups=(), tenant=None, scopes=(),
                        actor=(), credential_id=f"cert:{digest[:16]}", expires_at=None)


def forwarded_identity_headers(identity: Identity, config: IdentityConfig) -> dict[str, str]:
    return {}
