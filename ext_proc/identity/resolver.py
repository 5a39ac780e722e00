"""The identity resolver the server calls once per request, and the thin I/O around it.

`resolve` looks at the credential headers and, when there are none, at Envoy's peer-certificate
attributes (never a header). JWTs, API keys and mTLS are decided by pure CPU over in-memory state
(the key sets, the API-key table, the verified-token cache); only opaque tokens sent to an RFC 7662
introspection endpoint await the network. One exception, for key rotation: a JWT whose `kid` is
unknown triggers one forced JWKS refresh per cooldown, and the requests that see that kid wait
for it (at most `jwks_timeout`) instead of failing; every other request carries on meanwhile.
JWKS files and URLs are read at `start()` and refreshed by one background task per issuer, off
the event loop (httpx async I/O; file reads and key parsing in a worker thread). This class reads
the wall clock only to schedule those refreshes; every verification uses the `now` it is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import structlog

from ext_proc.identity.claims import identity_from_claims, safe_string
from ext_proc.identity.config import MTLS_ATTRIBUTE, IdentityConfig, IssuerConfig
from ext_proc.identity.credentials import extract_credential
from ext_proc.identity.introspection import IntrospectionClient, interpret_introspection
from ext_proc.identity.jwks import JwksError, JwksState, KeySet, parse_jwks
from ext_proc.identity.jwt_verify import looks_like_jwt, split_jwt, verify_jwt
from ext_proc.identity.model import Identity, IdentityError

log = structlog.get_logger("ledgergate.identity")

CERT_DIGEST_ATTRIBUTE = "connection.sha256_peer_certificate_digest"


TagT = TypeVar("TagT")


@dataclass(slots=True)
class _CacheEntry(Generic[TagT]):
    identity: Identity
    tag: TagT                     # what the entry was verified with (the JWT cache: issuer, key generation)
    expires_at: float


class _RefreshPending(IdentityError):
    """unknown_kid while a forced JWKS refresh is under way: `resolve` waits for it, once."""

    def __init__(self, done: asyncio.Event, timeout_s: float) -> None:
        super().__init__("unknown_kid", "the token's signing key (kid) is not known")
        self.done = done
        self.timeout_s = timeout_s


class VerifiedCache(Generic[TagT]):
    """Bounded LRU of verified identities keyed by SHA-256 of the credential. An entry is never
    returned at or after its `expires_at` (the token's exp, or sooner)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, _CacheEntry[TagT]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> _CacheEntry[TagT] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, identity: Identity, tag: TagT, expires_at: float, now: float) -> None:
        if expires_at <= now:
            return
        self._entries[key] = _CacheEntry(identity, tag, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _read_capped(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise JwksError(f"the JWKS file is larger than {max_bytes} bytes")
    return data


class IdentityResolver:
    def __init__(self, config: IdentityConfig) -> None:
        self.config = config
        self._states: dict[str, JwksState] = {c.issuer: JwksState(c) for c in config.issuers}
        self._wake: dict[str, asyncio.Event] = {c.issuer: asyncio.Event() for c in config.issuers}
        self._refresh_waiters: dict[str, asyncio.Event] = {}  # set when the forced refresh has run
        self._api_keys = {k.sha256: k for k in config.api_keys}
        self._jwt_cache: VerifiedCache[tuple[str, int]] = VerifiedCache(config.cache_size)
        self._introspection_cache: VerifiedCache[None] = VerifiedCache(config.cache_size)
        self._introspection = IntrospectionClient(config.introspection) if config.introspection else None
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # --- lifecycle -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Every configured issuer has keys that are usable now."""
        now = time.time()
        return all(s.keys_at(now) is not None for s in self._states.values())

    async def start(self) -> None:
        """Loads every issuer's JWKS once. A JWKS *file* that cannot be used is a configuration
        error and raises; an unreachable JWKS *URL* leaves `ready` False and is retried in the
        background. Then starts one refresh task per issuer."""
        if any(c.jwks_url for c in self.config.issuers):
            self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        if self._introspection is not None:
            await self._introspection.start()
        errors = await asyncio.gather(*(self._fetch(s) for s in self._states.values()))
        for state, error in zip(self._states.values(), errors, strict=True):
            if error is not None and state.cfg.jwks_file is not None:
                await self.close()
                raise JwksError(f"identity issuer {state.cfg.name!r}: {error}")
        self._tasks = [asyncio.create_task(self._refresh_loop(s, self._wake[iss]), name=f"jwks-refresh:{iss}")
                       for iss, s in self._states.items()]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._introspection is not None:
            await self._introspection.close()

    def jwks_status(self) -> list[dict[str, Any]]:
        """Per issuer: whether keys are usable, how many, when last fetched, the last error."""
        now = time.time()
        return [{"issuer": s.cfg.name, "usable": s.keys_at(now) is not None,
                 "keys": len(s.keyset.keys) if s.keyset else 0, "generation": s.generation,
                 "last_success": s.last_success, "failures": s.failures, "last_error": s.last_error}
                for s in self._states.values()]

    async def _refresh_loop(self, state: JwksState, wake: asyncio.Event) -> None:
        while True:
            if not state.forced_pending:
                try:
                    await asyncio.wait_for(wake.wait(), max(0.0, state.next_fetch_at - time.time()))
                except TimeoutError:
                    pass
            wake.clear()
            state.forced_pending = False
            # Requests that arrive during this fetch wait for the next one (forced_pending is set
            # again), so nobody is told "refreshed" by a fetch that started before their kid.
            waiter = self._refresh_waiters.pop(state.cfg.issuer, None)
            try:
                await self._fetch(state)
            finally:
                if waiter is not None:
                    waiter.set()

    async def _fetch(self, state: JwksState) -> str | None:
        """One fetch of one issuer's JWKS; updates `state`; returns the error text or None."""
        cfg = state.cfg
        try:
            if cfg.jwks_url is not None:
                data = await asyncio.wait_for(self._get_url(cfg), cfg.jwks_timeout_s)
                keyset = await asyncio.to_thread(parse_jwks, data, cfg.algorithms)
            else:
                assert cfg.jwks_file is not None
                keyset = await asyncio.to_thread(self._load_file, cfg)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = "timed out"
        except JwksError as exc:
            error = str(exc)
        except (OSError, httpx.HTTPError) as exc:
            error = f"{type(exc).__name__}"
        except Exception as exc:  # a background task must survive anything; the stale bound fails closed
            error = f"unexpected {type(exc).__name__}"
        else:
            state.on_success(keyset, time.time())
            if keyset.skipped:
                log.info("jwks_keys_skipped", issuer=cfg.name, skipped=keyset.skipped)
            return None
        state.on_failure(error, time.time())
        log.warning("jwks_refresh_failed", issuer=cfg.name, error=error, failures=state.failures,
                    usable=state.keyset is not None)
        return error

    async def _get_url(self, cfg: IssuerConfig) -> bytes:
        assert self._http is not None and cfg.jwks_url is not None
        async with self._http.stream("GET", cfg.jwks_url, headers={"accept": "application/json"},
                                     timeout=cfg.jwks_timeout_s) as resp:
            if resp.status_code != 200:
                raise JwksError(f"the JWKS endpoint answered HTTP {resp.status_code}")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > cfg.jwks_max_bytes:
                    raise JwksError(f"the JWKS is larger than {cfg.jwks_max_bytes} bytes")
        return bytes(body)

    @staticmethod
    def _load_file(cfg: IssuerConfig) -> KeySet:
        assert cfg.jwks_file is not None
        return parse_jwks(_read_capped(cfg.jwks_file, cfg.jwks_max_bytes), cfg.algorithms)

    # --- per request ----------------------------------------------------------------------
    async def resolve(self, headers: Mapping[str, Sequence[str]], attributes: Mapping[str, str],
                      now: float) -> Identity:
        try:
            result = self._resolve_local(headers, attributes, now)
        except _RefreshPending as pending:
            try:
                await asyncio.wait_for(pending.done.wait(), pending.timeout_s)
            except TimeoutError:
                raise IdentityError("unknown_kid", pending.message) from None
            try:
                result = self._resolve_local(headers, attributes, now)  # once: still unknown fails now
            except _RefreshPending as again:
                raise IdentityError("unknown_kid", again.message) from None
        if isinstance(result, Identity):
            return result
        return await self._introspect(result, now)

    def resolve_sync(self, headers: Mapping[str, Sequence[str]], attributes: Mapping[str, str],
                     now: float) -> Identity:
        """`resolve` without the introspection path (tests, benchmarks, sync callers)."""
        result = self._resolve_local(headers, attributes, now)
        if isinstance(result, Identity):
            return result
        raise IdentityError("introspection_failed", "this credential needs token introspection")

    def _resolve_local(self, headers: Mapping[str, Sequence[str]], attributes: Mapping[str, str],
                       now: float) -> Identity | str:
        """An Identity, or the opaque token that only introspection can decide."""
        credential = extract_credential(headers, self.config.max_credential_bytes)
        if credential is None:
            return self._mtls(attributes)
        if looks_like_jwt(credential):
            return self._jwt(credential, now)
        return self._opaque(credential)

    def _jwt(self, token: str, now: float) -> Identity:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._jwt_cache.get(digest, now)
        if hit is not None:
            issuer, generation = hit.tag
            known = self._states[issuer]
            # A key set that changed (rotation, removal) or went past its stale bound invalidates
            # what was verified with it.
            if generation == known.generation and known.keys_at(now) is not None:
                return hit.identity
        unverified = split_jwt(token)
        iss = unverified.payload.get("iss")
        state = self._states.get(iss) if isinstance(iss, str) else None
        if state is None:
            raise IdentityError("issuer_unknown", "the token's issuer is not trusted")
        try:
            claims = verify_jwt(token, unverified, state.cfg, state.keys_at(now), now)
        except IdentityError as exc:
            if exc.reason == "unknown_kid":
                self._on_unknown_kid(state, now)
            raise
        cfg = state.cfg
        identity = identity_from_claims(claims, subject=claims.get("sub"), issuer=cfg.issuer, auth_method="jwt",
                                        paths=cfg.claims, credential_id="jwt:" + digest.hex()[:16],
                                        expires_at=float(claims["exp"]))
        self._jwt_cache.put(digest, identity, (cfg.issuer, state.generation), float(claims["exp"]), now)
        return identity

    def _on_unknown_kid(self, state: JwksState, now: float) -> None:
        iss = state.cfg.issuer
        if state.request_forced_refresh(now):
            self._refresh_waiters.setdefault(iss, asyncio.Event())
            self._wake[iss].set()
        waiter = self._refresh_waiters.get(iss)
        if waiter is not None and any(not t.done() for t in self._tasks):
            raise _RefreshPending(waiter, state.cfg.jwks_timeout_s + 0.5) from None

    def _opaque(self, credential: str) -> Identity | str:
        digest = hashlib.sha256(credential.encode()).digest()
        # A dict lookup on the SHA-256 of the presented key (timing reveals nothing usable about
        # the stored hashes: steering it would need preimages), confirmed in constant time.
        key = self._api_keys.get(digest)
        if key is not None and hmac.compare_digest(key.sha256, digest):
            if key.revoked:
                raise IdentityError("api_key_revoked", "the API key has been revoked")
            return Identity(subject=key.subject, issuer="api_key", auth_method="api_key", roles=key.roles,
                            groups=key.groups, tenant=key.tenant, scopes=key.scopes, actor=(),
                            credential_id=f"api_key:{key.id}", expires_at=None)
        if self._introspection is not None:
            return credential
        raise IdentityError("api_key_unknown", "the credential is not a valid token or API key")

    async def _introspect(self, token: str, now: float) -> Identity:
        assert self._introspection is not None and self.config.introspection is not None
        cfg = self.config.introspection
        if len(token) > cfg.max_token_bytes:
            raise IdentityError("token_too_large", f"the token is larger than {cfg.max_token_bytes} bytes")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._introspection_cache.get(digest, now)
        if hit is not None:
            return hit.identity
        doc = await self._introspection.introspect(token)
        identity = interpret_introspection(doc, cfg, credential_id="opaque:" + digest.hex()[:16], now=now)
        until = now + cfg.cache_max_s
        if identity.expires_at is not None:
            until = min(until, identity.expires_at)
        self._introspection_cache.put(digest, identity, None, until, now)
        return identity

    def _mtls(self, attributes: Mapping[str, str]) -> Identity:
        mtls = self.config.mtls
        if not mtls.enabled:
            raise IdentityError("missing_credential", "no credential: send a bearer token or an API key")
        subject = attributes.get(MTLS_ATTRIBUTE[mtls.subject_from])
        digest = attributes.get(CERT_DIGEST_ATTRIBUTE)
        if not subject or not digest or attributes.get("connection.mtls", "true") != "true":
            raise IdentityError("missing_credential", "no credential and no verified client certificate")
        try:
            subject = safe_string(subject, "certificate subject")
            digest = safe_string(digest, "certificate digest")
        except IdentityError:
            raise IdentityError("malformed_credential", "the client certificate identity is malformed") from None
        return Identity(subject=subject, issuer=mtls.issuer, auth_method="mtls",
                        roles=mtls.roles_by_san.get(subject, ()), groups=(),
                        tenant=mtls.tenant_by_san.get(subject), scopes=(), actor=(),
                        credential_id="x509:" + digest.lower().replace(":", "")[:16], expires_at=None)
