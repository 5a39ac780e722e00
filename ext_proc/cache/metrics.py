"""Prometheus metrics of the response cache (registered on the process's registry). Labels carry
only bounded values: lookup results, fill refusals, eviction reasons."""

from __future__ import annotations

from typing import Any

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
        # Each labelled child looked up once (`labels()` takes a lock and builds a key each call)
        # and only on first use, so a result never seen is not exported as a zero.
        self._children: dict[tuple[str, str], Any] = {}

    def lookup(self, result: str) -> None:
        self._child("lookups", result).inc()

    def bytes_moved(self, direction: str, n: int) -> None:
        self._child("bytes", direction).inc(n)

    def _child(self, metric: str, label: str) -> Any:
        child = self._children.get((metric, label))
        if child is None:
            child = self._children[(metric, label)] = getattr(self, metric).labels(label)
        return child

    def evicted(self, reason: str, nbytes: int) -> None:
        self.evictions.labels(reason).inc()
