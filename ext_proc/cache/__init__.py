"""The exact response cache: policy-enabled, per-tenant, audited (docs/cache.md).

`plan` decides cacheability and the key (pure), `replay` re-frames a cached answer as the
provider's stream (pure), `store` holds entries (in-process LRU or Redis)."""

from ext_proc.cache.plan import CachePlan, fillable, plan_request, request_policy_version
from ext_proc.cache.replay import NotReplayable, replay_stream
from ext_proc.cache.store import CacheUnavailable, Entry, MemoryStore, RedisStore, cache_settings, open_store

__all__ = ["CachePlan", "CacheUnavailable", "Entry", "MemoryStore", "NotReplayable", "RedisStore",
           "cache_settings", "fillable", "open_store", "plan_request", "replay_stream", "request_policy_version"]
