"""The `identity:` section of the ledgergate configuration, parsed and checked once at start.

Unknown keys are errors: a misspelt `audience:` silently ignored would weaken verification.
"""

from __future__ import annotations

import ipaddress
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ext_proc.configerror import ConfigError

# Asymmetric JWS algorithms only: no "none", no HMAC (which is what makes HS256-signed-with-the-
# RSA-public-key possible), nothing PyJWT would need a shared secret for.
ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})

DEFAULT_CLAIMS = {"roles": "roles", "groups": "groups", "tenant": "tenant", "scopes": "scope"}
CLAIM_FIELDS = frozenset({"roles", "groups", "tenant", "scopes"})

# Identity fields that may be forwarded upstream, and the headers they must never be written to.
FORWARDABLE_FIELDS = frozenset({"subject", "issuer", "auth_method", "roles", "groups", "tenant", "scopes", "actor",
                                "credential_id"})
IDENTITY_HEADER_PREFIX = "x-ledgergate-"
_HEADER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def parse_duration(v: Any, where: str) -> float:
    """`300`, `300s`, `500ms`, `5m`, `24h`, `7d` -> seconds."""
    if isinstance(v, bool):
        raise ConfigError(f"{where}: not a duration: {v!r}")
    if isinstance(v, (int, float)):
        seconds = float(v)
    else:
        s = str(v).strip().lower()
        for unit, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0)):
            if s.endswith(unit):
                s, mult = s[: -len(unit)], factor
                break
        else:
            mult = 1.0
        try:
            seconds = float(s) * mult
        except ValueError:
            raise ConfigError(f"{where}: not a duration: {v!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{where}: must be a finite, non-negative duration")
    return seconds


def _check_keys(d: Any, allowed: set[str], where: str) -> Mapping[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return d


def _str_list(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise ConfigError(f"{where}: must be a list of non-empty strings")
    return tuple(v)


def _positive_int(v: Any, default: int, where: str) -> int:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{where}: must be a positive integer")
    return v


def check_url(url: Any, where: str) -> str:
    """https only, except plain http to a loopback address (a local sidecar, tests)."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: must be a URL")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host:
        try:
            if ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            if host == "localhost":
                return url
    raise ConfigError(f"{where}: must be an https:// URL (http:// only to a loopback address)")


def _path(v: Any, base_dir: Path) -> Path:
    p = Path(str(v))
    return p if p.is_absolute() else base_dir / p


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_file: Path | None
    jwks_url: str | None
    claims: Mapping[str, str]  # identity field -> dotted claim path
    max_lifetime_s: float
    leeway_s: float
    max_token_bytes: int
    require_typ: str | None
    jwks_refresh_s: float
    jwks_stale_max_s: float
    jwks_refetch_cooldown_s: float
    jwks_timeout_s: float
    jwks_max_bytes: int


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    id: str
    sha256: bytes
    subject: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    scopes: tuple[str, ...]
    tenant: str | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class MtlsConfig:
    enabled: bool = False
    subject_from: str = "uri_san"  # uri_san | dns_san | subject
    issuer: str = "mtls"
    roles_by_san: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tenant_by_san: Mapping[str, str] = field(default_factory=dict)


MTLS_ATTRIBUTE = {"uri_san": "connection.uri_san_peer_certificate",
                  "dns_san": "connection.dns_san_peer_certificate",
                  "subject": "connection.subject_peer_certificate"}


@dataclass(frozen=True, slots=True)
class IntrospectionConfig:
    url: str
    client_id: str | None  # None: the endpoint needs no client authentication (e.g. a local sidecar)
    client_secret_file: Path | None
    issuer: str | None  # when set, a response carrying `iss` must carry exactly this
    audiences: tuple[str, ...]  # when set, the response's `aud` must contain one of them
    claims: Mapping[str, str]
    timeout_s: float
    cache_max_s: float
    max_token_bytes: int
    max_response_bytes: int
    max_concurrent: int


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    issuers: tuple[IssuerConfig, ...] = ()
    api_keys: tuple[ApiKeyConfig, ...] = ()
    mtls: MtlsConfig = field(default_factory=MtlsConfig)
    introspection: IntrospectionConfig | None = None
    forward_headers: Mapping[str, str] = field(default_factory=dict)  # identity field -> header name
    cache_size: int = 10_000
    max_api_key_bytes: int = 1024

    @property
    def max_credential_bytes(self) -> int:
        """The largest credential any configured path accepts; longer ones are refused unread."""
        sizes = [c.max_token_bytes for c in self.issuers] + [self.max_api_key_bytes]
        if self.introspection is not None:
            sizes.append(self.introspection.max_token_bytes)
        return max(sizes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, base_dir: Path) -> IdentityConfig:
        d = _check_keys(d, {"issuers", "api_keys", "mtls", "introspection", "forward_headers", "cache_size"},
                        "identity")
        base_dir = Path(base_dir)
        issuers = tuple(_issuer(it, base_dir, f"identity.issuers[{i}]")
                        for i, it in enumerate(d.get("issuers") or []))
        seen: set[str] = set()
        for c in issuers:
            if c.issuer in seen:
                raise ConfigError(f"identity.issuers: issuer {c.issuer!r} is configured twice")
            seen.add(c.issuer)
        api_keys = tuple(_api_key(k, f"identity.api_keys[{i}]") for i, k in enumerate(d.get("api_keys") or []))
        if len({k.sha256 for k in api_keys}) != len(api_keys) or len({k.id for k in api_keys}) != len(api_keys):
            raise ConfigError("identity.api_keys: ids and hashes must be unique")
        intro = d.get("introspection")
        return cls(issuers=issuers, api_keys=api_keys, mtls=_mtls(d.get("mtls")),
                   introspection=_introspection(intro, base_dir) if intro else None,
                   forward_headers=_forward_headers(d.get("forward_headers")),
                   cache_size=_positive_int(d.get("cache_size"), 10_000, "identity.cache_size"))


def _claims(v: Any, where: str) -> dict[str, str]:
    if v is None:
        return dict(DEFAULT_CLAIMS)
    v = _check_keys(v, set(CLAIM_FIELDS), where)
    out: dict[str, str] = {}
    for k, path in v.items():
        if path is None:
            continue
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ConfigError(f"{where}.{k}: must be a dotted claim path such as realm_access.roles")
        out[k] = path
    return out


def _issuer(it: Any, base_dir: Path, where: str) -> IssuerConfig:
    it = _check_keys(it, {"name", "issuer", "audiences", "jwks_file", "jwks_url", "algorithms", "claims",
                          "max_lifetime", "leeway", "max_token_bytes", "require_typ", "jwks_refresh",
                          "jwks_stale_max", "jwks_refetch_cooldown", "jwks_timeout", "jwks_max_bytes"}, where)
    issuer = it.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise ConfigError(f"{where}.issuer: required (must equal the tokens' iss)")
    audiences = _str_list(it.get("audiences"), f"{where}.audiences")
    if not audiences:
        raise ConfigError(f"{where}.audiences: at least one audience is required")
    algorithms = _str_list(it.get("algorithms"), f"{where}.algorithms")
    if not algorithms:
        raise ConfigError(f"{where}.algorithms: pin at least one of {sorted(ALLOWED_ALGORITHMS)}")
    bad = sorted(set(algorithms) - ALLOWED_ALGORITHMS)
    if bad:
        raise ConfigError(f"{where}.algorithms: not allowed: {bad}; allowed: {sorted(ALLOWED_ALGORITHMS)}")
    if (it.get("jwks_file") is None) == (it.get("jwks_url") is None):
        raise ConfigError(f"{where}: exactly one of jwks_file and jwks_url is required")
    require_typ = it.get("require_typ")
    if require_typ is not None and (not isinstance(require_typ, str) or not require_typ):
        raise ConfigError(f"{where}.require_typ: must be a string such as 'at+jwt' or null")
    refresh = parse_duration(it.get("jwks_refresh", "300s"), f"{where}.jwks_refresh")
    if refresh < 1:
        raise ConfigError(f"{where}.jwks_refresh: at least 1s")
    timeout = parse_duration(it.get("jwks_timeout", "5s"), f"{where}.jwks_timeout")
    if timeout <= 0:
        raise ConfigError(f"{where}.jwks_timeout: must be positive")
    stale_max = parse_duration(it.get("jwks_stale_max", "1h"), f"{where}.jwks_stale_max")
    if stale_max <= refresh:
        # Keys older than jwks_stale_max are refused: it must leave room for at least one refresh.
        raise ConfigError(f"{where}.jwks_stale_max: must be longer than jwks_refresh")
    return IssuerConfig(
        name=str(it.get("name") or issuer), issuer=issuer, audiences=audiences, algorithms=algorithms,
        jwks_file=_path(it["jwks_file"], base_dir) if it.get("jwks_file") is not None else None,
        jwks_url=check_url(it["jwks_url"], f"{where}.jwks_url") if it.get("jwks_url") is not None else None,
        claims=_claims(it.get("claims"), f"{where}.claims"),
        max_lifetime_s=parse_duration(it.get("max_lifetime", "24h"), f"{where}.max_lifetime"),
        leeway_s=parse_duration(it.get("leeway", "30s"), f"{where}.leeway"),
        max_token_bytes=_positive_int(it.get("max_token_bytes"), 8192, f"{where}.max_token_bytes"),
        require_typ=require_typ, jwks_refresh_s=refresh,
        jwks_stale_max_s=stale_max,
        jwks_refetch_cooldown_s=parse_duration(it.get("jwks_refetch_cooldown", "30s"),
                                               f"{where}.jwks_refetch_cooldown"),
        jwks_timeout_s=timeout,
        jwks_max_bytes=_positive_int(it.get("jwks_max_bytes"), 512 * 1024, f"{where}.jwks_max_bytes"))


def _api_key(k: Any, where: str) -> ApiKeyConfig:
    k = _check_keys(k, {"id", "sha256", "subject", "roles", "groups", "scopes", "tenant", "revoked"}, where)
    raw = k.get("sha256")
    try:
        digest = bytes.fromhex(raw) if isinstance(raw, str) else b""
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ConfigError(f"{where}.sha256: must be the 64-hex-digit SHA-256 of the key (never the key)")
    if not isinstance(k.get("id"), str) or not k["id"]:
        raise ConfigError(f"{where}.id: required")
    if not isinstance(k.get("subject"), str) or not k["subject"]:
        raise ConfigError(f"{where}.subject: required")
    tenant = k.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        raise ConfigError(f"{where}.tenant: must be a string")
    revoked = k.get("revoked", False)
    if not isinstance(revoked, bool):
        raise ConfigError(f"{where}.revoked: must be true or false")
    return ApiKeyConfig(id=k["id"], sha256=digest, subject=k["subject"],
                        roles=_str_list(k.get("roles"), f"{where}.roles"),
                        groups=_str_list(k.get("groups"), f"{where}.groups"),
                        scopes=_str_list(k.get("scopes"), f"{where}.scopes"), tenant=tenant, revoked=revoked)


def _mtls(m: Any) -> MtlsConfig:
    m = _check_keys(m, {"enabled", "subject_from", "issuer", "roles_by_san", "tenant_by_san"}, "identity.mtls")
    enabled = m.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("identity.mtls.enabled: must be true or false")
    subject_from = m.get("subject_from", "uri_san")
    if subject_from not in MTLS_ATTRIBUTE:
        raise ConfigError(f"identity.mtls.subject_from: one of {sorted(MTLS_ATTRIBUTE)}")
    roles = m.get("roles_by_san") or {}
    if not isinstance(roles, Mapping):
        raise ConfigError("identity.mtls.roles_by_san: must map SAN -> list of roles")
    tenants = m.get("tenant_by_san") or {}
    if not isinstance(tenants, Mapping) or not all(isinstance(v, str) for v in tenants.values()):
        raise ConfigError("identity.mtls.tenant_by_san: must map SAN -> tenant string")
    return MtlsConfig(enabled=enabled, subject_from=subject_from, issuer=str(m.get("issuer") or "mtls"),
                      roles_by_san={str(s): _str_list(r, f"identity.mtls.roles_by_san[{s!r}]")
                                    for s, r in roles.items()},
                      tenant_by_san={str(s): t for s, t in tenants.items()})


def _introspection(v: Any, base_dir: Path) -> IntrospectionConfig:
    where = "identity.introspection"
    v = _check_keys(v, {"url", "client_id", "client_secret_file", "issuer", "audiences", "claims", "timeout",
                        "cache_max", "max_token_bytes", "max_response_bytes", "max_concurrent"}, where)
    url = check_url(v.get("url"), f"{where}.url")
    client_id = v.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or not client_id):
        raise ConfigError(f"{where}.client_id: must be a non-empty string")
    if v.get("client_secret_file") and client_id is None:
        raise ConfigError(f"{where}.client_id: required with client_secret_file")
    timeout = parse_duration(v.get("timeout", "2s"), f"{where}.timeout")
    if timeout <= 0:
        raise ConfigError(f"{where}.timeout: must be positive")
    return IntrospectionConfig(
        url=url, client_id=client_id,
        client_secret_file=_path(v["client_secret_file"], base_dir) if v.get("client_secret_file") else None,
        issuer=str(v["issuer"]) if v.get("issuer") else None, audiences=_str_list(v.get("audiences"), f"{where}.audiences"),
        claims=_claims(v.get("claims"), f"{where}.claims"), timeout_s=timeout,
        cache_max_s=parse_duration(v.get("cache_max", "60s"), f"{where}.cache_max"),
        max_token_bytes=_positive_int(v.get("max_token_bytes"), 4096, f"{where}.max_token_bytes"),
        max_response_bytes=_positive_int(v.get("max_response_bytes"), 64 * 1024, f"{where}.max_response_bytes"),
        max_concurrent=_positive_int(v.get("max_concurrent"), 32, f"{where}.max_concurrent"))


def _forward_headers(v: Any) -> dict[str, str]:
    where = "identity.forward_headers"
    v = _check_keys(v, set(FORWARDABLE_FIELDS), where)
    out: dict[str, str] = {}
    for fld, name in v.items():
        if name is None:
            continue
        if not isinstance(name, str) or not name or set(name) - _HEADER_NAME_CHARS:
            raise ConfigError(f"{where}.{fld}: must be a lower-case header name")
        if not name.startswith(IDENTITY_HEADER_PREFIX) or len(name) == len(IDENTITY_HEADER_PREFIX):
            # The server strips every client-sent header with this prefix; a name outside it could
            # be spoofed by the client whenever the field is empty and ledgergate sends nothing.
            raise ConfigError(f"{where}.{fld}: must start with {IDENTITY_HEADER_PREFIX!r}")
        if name in out.values():
            raise ConfigError(f"{where}.{fld}: header {name!r} is used twice")
        out[fld] = name
    return out
