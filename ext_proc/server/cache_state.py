"""The response cache's state in the server: one ResponseCache per process (the store, its
settings and metrics, the fills under way) and one CacheTurn per exchange that missed. Below
server/runtime.py (which holds the ResponseCache) and server/response_cache.py (which uses both),
so neither imports the other back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from ext_proc.cache import CachePlan, CacheUnavailable, Entry, cache_settings, open_store
from ext_proc.cache.metrics import CacheMetrics

log = structlog.get_logger("ledgergate.cache")


class ResponseCache:
    """One per process: the store, its settings and metrics, the fills under way."""

    def __init__(self, section: Mapping[str, Any] | None, registry: Any, clock: Callable[[], float]) -> None:
        self.settings = cache_settings(section)
        self.metrics = CacheMetrics(registry)
        self.store = open_store(self.settings, clock=clock, on_evict=self.metrics.evicted)
        self.max_entry_bytes = int(self.settings["max_entry_bytes"])
        self._fills: set[asyncio.Task] = set()

    def schedule_fill(self, key: str, entry: Entry, ttl_s: int) -> None:
        task = asyncio.get_running_loop().create_task(self._fill(key, entry, ttl_s))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, key: str, entry: Entry, ttl_s: int) -> None:
        try:
            await self.store.put(key, entry, ttl_s)
        except CacheUnavailable as exc:
            self.metrics.fills.labels("store_unavailable").inc()
            log.warning("cache_fill_failed", error_type=str(exc))
            return
        self.metrics.fills.labels("stored").inc()
        self.metrics.bytes.labels("stored").inc(len(entry.body))
        if hasattr(self.store, "bytes_held"):
            self.metrics.held.set(self.store.bytes_held)

    async def close(self) -> None:
        if self._fills:
            await asyncio.gather(*self._fills, return_exceptions=True)
        await self.store.close()


class CacheTurn:
    """One exchange's cache state after a miss: the plan, and the answer as it was delivered."""

    def __init__(self, plan: CachePlan, result: str, max_bytes: int) -> None:
        self.plan = plan
        self.result = result              # "miss" or "unavailable"
        self.max_bytes = max_bytes
        self.body = bytearray()
        self.oversize = False
        self.content_type: str | None = None

    def collect(self, data: bytes) -> None:
        if self.oversize or not data or self.plan.stream:
            return
        if len(self.body) + len(data) > self.max_bytes:
            self.oversize, self.body = True, bytearray()
            return
        self.body += data
