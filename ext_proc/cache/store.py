"""Where cached answers live: an in-process LRU (the local stack, one replica) or Redis (shared by
replicas). Both hold an `Entry` under the key `CachePlan.key` ("<scope digest>:<model digest>:<key
digest>": no tenant, model or prompt in clear), with a TTL; both bound their size.

Every store failure is raised as `CacheUnavailable`; the caller forwards the request instead."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cachetools
import orjson

from ext_proc.configerror import ConfigError

# redis-py imports OpenTelemetry when it is installed: imported only when a Redis store is built,
# so a process with tracing off and an in-process cache loads none of it.


class CacheUnavailable(Exception):
    """The store could not be reached or answered garbage."""


@dataclass(frozen=True)
class Entry:
    body: bytes                # the answer as delivered (it passed the response policy unchanged)
    content_type: str
    filled_by: str             # request id of the request whose answer this is
    filled_ms: int
    policy_version: str        # the full policy version the fill was decided under
    surface: str

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("body")
        return d

    def encode(self) -> bytes:
        return json.dumps(self.meta(), separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        head, sep, body = raw.partition(b"\n")
        if not sep:
            raise CacheUnavailable("malformed entry")
        try:
            meta = orjson.loads(head)
            return cls(body=body, **meta)
        except (ValueError, TypeError) as exc:
            raise CacheUnavailable("malformed entry") from exc


class _LRU(cachetools.TLRUCache[str, tuple[Entry, int]]):
    """TLRU cache that reports size evictions (expiry is counted separately)."""

    def __init__(self, maxsize: int, timer: Callable[[], float], on_evict: Callable[[str, int], None]) -> None:
        super().__init__(maxsize=maxsize, ttu=lambda _k, v, now: now + v[1], timer=timer,
                         getsizeof=lambda v: len(v[0].body) + 256)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, tuple[Entry, int]]:
        key, value = super().popitem()
        self._on_evict("size", len(value[0].body))
        return key, value


class MemoryStore:
    """One process's LRU: bounded by total bytes, entries expire after their TTL."""

    kind = "memory"

    def __init__(self, *, max_bytes: int, clock: Callable[[], float],
                 on_evict: Callable[[str, int], None] = lambda reason, n: None) -> None:
        self._lock = threading.Lock()
        self._on_evict = on_evict
        self._cache = _LRU(max_bytes, clock, on_evict)

    def _expire(self) -> None:
        for _key, value in self._cache.expire():
            self._on_evict("ttl", len(value[0].body))

    async def get(self, key: str) -> Entry | None:
        with self._lock:
            self._expire()
            value = self._cache.get(key)
        return value[0] if value is not None else None

    async def put(self, key: str, entry: Entry, ttl_s: int) -> None:
        with self._lock:
            self._expire()
            if len(entry.body) + 256 <= self._cache.maxsize:
                self._cache[key] = (entry, ttl_s)

    async def purge(self, scope_sha256: str | None, model_sha256: str | None) -> int:
        with self._lock:
            doomed = [k for k in list(self._cache.keys()) if _matches(k, scope_sha256, model_sha256)]
            for k in doomed:
                self._cache.pop(k, None)
        return len(doomed)

    @property
    def bytes_held(self) -> int:
        return int(self._cache.currsize)

    async def close(self) -> None:
        pass


def _matches(key: str, scope: str | None, model: str | None) -> bool:
    s, _, rest = key.partition(":")
    m, _, _ = rest.partition(":")
    return (scope is None or s == scope) and (model is None or m == model)


class RedisStore:
    """Shared by replicas: one string per entry (`SET ... PX`), named prefix + key. Redis' own
    `maxmemory` policy bounds the total; `max_entry_bytes` bounds each entry.

    The look-up (`get`, once per cacheable request) goes over connections of its own, taken from
    an idle list, with one deadline for connect + send + read (`asyncio.timeout`, a scope on the
    caller's task). The client's `get` spends about a third of a hit's store time in its pool,
    retry wrapper and the extra task its per-write `wait_for` starts (a loop turn of its own);
    these connections are redis-py's own (same URL, authentication, database, TLS and reply
    parser), only driven directly. A connection whose command did not complete (timeout,
    cancellation, any error) is closed, never reused: its next reply could be the previous one's."""

    kind = "redis"
    MAX_IDLE = 32     # look-up connections kept open between look-ups (more are opened under load)

    def __init__(self, url: str, *, prefix: str = "lg:cache:", timeout_s: float = 0.25) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError)
        self._connection_errors = (RedisConnectionError, ConnectionError)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.client = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                        retry_on_timeout=False)
        pool = self.client.connection_pool
        # No per-operation socket timeout on these (the deadline covers the whole look-up).
        self._lookup_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._connection_class = pool.connection_class
        self._idle: list[Any] = []
        self._closed = False

    async def get(self, key: str) -> Entry | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self._get(self.prefix + key)
        except (TimeoutError, *self._errors) as exc:
            raise CacheUnavailable(type(exc).__name__) from exc
        if raw is not None and not isinstance(raw, bytes):
            raise CacheUnavailable("malformed entry")
        return Entry.decode(raw) if raw is not None else None

    async def _get(self, name: str) -> Any:
        while True:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._connection_class(**self._lookup_kwargs)
            try:
                if not conn.is_connected:
                    reused = False
                    await conn.connect()
                await conn.send_packed_command(conn.pack_command("GET", name), check_health=False)
                raw = await conn.read_response()
            except BaseException as exc:
                await _drop(conn)
                # An idle connection the server closed meanwhile (a restart, its idle timeout):
                # the look-up goes on with another one, within the same deadline.
                if reused and isinstance(exc, self._connection_errors):
                    continue
                raise
            if len(self._idle) < self.MAX_IDLE and not self._closed:
                self._idle.append(conn)
            else:
                await _drop(conn)
            return raw

    async def put(self, key: str, entry: Entry, ttl_s: int) -> None:
        try:
            await self.client.set(self.prefix + key, entry.encode(), px=int(ttl_s * 1000))
        except self._errors as exc:
            raise CacheUnavailable(type(exc).__name__) from exc

    async def purge(self, scope_sha256: str | None, model_sha256: str | None) -> int:
        pattern = f"{self.prefix}{scope_sha256 or '*'}:{model_sha256 or '*'}:*"
        n = 0
        try:
            batch: list[Any] = []   # the keys as redis-py returns them
            async for k in self.client.scan_iter(match=pattern, count=500):
                batch.append(k)
                if len(batch) >= 500:
                    n += await self.client.unlink(*batch)
                    batch = []
            if batch:
                n += await self.client.unlink(*batch)
        except self._errors as exc:
            raise CacheUnavailable(type(exc).__name__) from exc
        return n

    async def memory_usage(self, key: str) -> int | None:
        return await self.client.memory_usage(self.prefix + key)

    async def close(self) -> None:
        self._closed = True     # a look-up still under way closes its connection itself
        idle, self._idle = self._idle, []
        for conn in idle:
            await _drop(conn)
        await self.client.aclose()


async def _drop(conn: Any) -> None:
    """Close a look-up connection, whatever state it is in (never raises)."""
    try:
        await conn.disconnect(nowait=True)
    except Exception:  # noqa: BLE001 - a connection being dropped may be broken already
        pass


DEFAULTS = {"backend": "memory", "max_bytes": 64 << 20, "max_entry_bytes": 1 << 20,
            "url": "redis://127.0.0.1:6379/0", "prefix": "lg:cache:"}


def cache_settings(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `cache:` section of the configuration, validated, with defaults."""
    s = {**DEFAULTS, **dict(section or {})}
    unknown = set(s) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"cache: unknown key(s) {', '.join(sorted(unknown))}")
    if s["backend"] not in ("memory", "redis"):
        raise ConfigError("cache.backend: must be 'memory' or 'redis'")
    for k in ("max_bytes", "max_entry_bytes"):
        if not isinstance(s[k], int) or s[k] <= 0:
            raise ConfigError(f"cache.{k}: must be a positive integer")
    return s


def open_store(settings: Mapping[str, Any], *, clock: Callable[[], float],
               on_evict: Callable[[str, int], None] = lambda reason, n: None) -> MemoryStore | RedisStore:
    if settings["backend"] == "redis":
        return RedisStore(settings["url"], prefix=settings["prefix"])
    return MemoryStore(max_bytes=settings["max_bytes"], clock=clock, on_evict=on_evict)
