"""Prometheus metrics of the response cache (registered on the process's registry). Labels carry
only bounded values: lookup results, fill refusals, eviction reasons."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter("ledgergate_cache_lookups_total",
                               "Cache lookups by result (hit, miss, bypass, unavailable); hit ratio = "
                               "hit / (hit + miss)", ["result"], registry=registry)
        self.fills = Counter("ledgergate_cache_fills_total",
                             "Answers considered for a fill, by result (stored, or why not)", ["result"],
                             registry=registry)
        self.bytes = Counter("ledgergate_cache_bytes_total", "Answer bytes stored into and served from the cache",
                             ["direction"], registry=registry)
        self.evictions = Counter("ledgergate_cache_evictions_total",
                                 "Entries the in-process store dropped, by reason (size, ttl); Redis reports "
                                 "its own evictions (INFO stats evicted_keys)", ["reason"], registry=registry)
        self.held = Gauge("ledgergate_cache_held_bytes", "Bytes held by the in-process store", registry=registry)

    def evicted(self, reason: str, nbytes: int) -> None:
        self.evictions.labels(reason).inc()
