"""The response cache's state in the server: one ResponseCache per process (the store, its
settings and metrics, the fills under way) and one CacheTurn per exchange that missed. Below
server/runtime.py (which holds the ResponseCache) and server/response_cache.py (which uses both),
so neither imports the other back."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import cachetools
import orjson
import structlog

from ext_proc.audit.canonical import canonical_json
from ext_proc.cache import CachePlan, CacheUnavailable, Entry, cache_settings, open_store
from ext_proc.cache.metrics import CacheMetrics
from ext_proc.streaming import ResponseRules

log = structlog.get_logger("ledgergate.cache")


# How many inspection results of cached answers one process remembers (InspectionMemo).
INSPECTION_MEMO_ENTRIES = 1024


class InspectionMemo:
    """The response inspection of a cached answer, remembered when it let the answer through
    unchanged, so that the next hit on the same answer under the same response policy does not
    run the same pure computation again (docs/cache.md, "A hit").

    `ResponseInspector` is sans-I/O and deterministic: no clock, no randomness, no state shared
    between inspectors that changes a result (the classifier's memo of clean strings only makes
    it faster). Its result is a function of exactly what the key holds: the answer's bytes (their
    SHA-256), the surface, the content type, the classifier (one per full policy version, which
    covers custom dictionaries), the response rules the decision carries (redact and block), the
    tenant (`hash` redaction is keyed per tenant), the process's redaction key, and the limits;
    status 200, no content encoding, the usage chunk kept and no marker field are fixed at the one
    caller. A different value of any of these is a different key, so a remembered result is the
    result the inspection would give now. Only unchanged answers are kept (not blocked, nothing
    redacted, released byte for byte): the value is the summary alone, never an answer's bytes,
    at most INSPECTION_MEMO_ENTRIES of them (LRU), each a few hundred bytes. It is kept as its
    canonical JSON and parsed anew for each hit, so the records built from it are the caller's own
    (a tenth of a deep copy's cost); a summary outside what records may hold (audit/canonical.py)
    is not remembered. Event loop only."""

    def __init__(self, max_entries: int = INSPECTION_MEMO_ENTRIES) -> None:
        self._memo: cachetools.LRUCache = cachetools.LRUCache(max_entries)
        self._hash_key: bytes | None = None
        self._hash_key_id = b""
        self.hits = 0

    def key(self, body: bytes, *, surface: str, content_type: str, policy_version: str, rules: ResponseRules,
            tenant: str | None, hash_key: bytes, max_buffer_bytes: int, max_block_chars: int) -> tuple:
        if hash_key is not self._hash_key:
            # The redaction key in the memo's keys by digest only (it is fixed for a process).
            self._hash_key, self._hash_key_id = hash_key, hashlib.sha256(b"ledgergate.inspection-memo\0" + hash_key).digest()
        return (hashlib.sha256(body).digest(), surface, content_type, policy_version,
                tuple(sorted(rules.redact.items())), tuple(sorted(rules.block)), tenant, self._hash_key_id,
                max_buffer_bytes, max_block_chars)

    def get(self, key: tuple) -> dict | None:
        kept = self._memo.get(key)
        if kept is None:
            return None
        self.hits += 1
        summary: dict = orjson.loads(kept)    # a new object: records built from it are the caller's own
        return summary

    def put(self, key: tuple, body: bytes, released: bytes, summary: Mapping[str, Any]) -> None:
        if released == body and not summary.get("blocked") and not summary.get("redactions") \
                and not summary.get("redactions_not_listed"):
            try:
                kept = canonical_json(dict(summary))
            except (TypeError, ValueError):
                return
            self._memo[key] = kept

    def __len__(self) -> int:
        return len(self._memo)


class ResponseCache:
    """One per process: the store, its settings and metrics, the fills under way."""

    def __init__(self, section: Mapping[str, Any] | None, registry: Any, clock: Callable[[], float]) -> None:
        self.settings = cache_settings(section)
        self.metrics = CacheMetrics(registry)
        self.store = open_store(self.settings, clock=clock, on_evict=self.metrics.evicted)
        self.max_entry_bytes = int(self.settings["max_entry_bytes"])
        self.inspections = InspectionMemo()
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
        self.metrics.bytes_moved("stored", len(entry.body))
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
