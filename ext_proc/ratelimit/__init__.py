"""Identity-aware rate limits and token budgets: reserve before forwarding, settle after."""

from collections.abc import Mapping
from typing import Any

from ext_proc.ratelimit.backend import RateLimitBackend
from ext_proc.ratelimit.limits import (
    Admission,
    LimitSpec,
    MemoryLimiter,
    OutputReservation,
    Reservation,
    limit_key,
    refusal,
)

__all__ = ["Admission", "LimitSpec", "MemoryLimiter", "OutputReservation", "RateLimitBackend",
           "Reservation", "limit_key", "open_limiter", "refusal"]


def open_limiter(config: Mapping[str, Any] | None) -> RateLimitBackend:
    """The limiter the configuration names: in-process, or Redis shared by replicas (imported only
    then, and here rather than in limits.py, which the Redis backend itself builds on)."""
    backend = (config or {}).get("backend", "memory")
    if backend == "memory":
        return MemoryLimiter()
    if backend == "redis":
        from ext_proc.ratelimit.redis_backend import RedisLimiter
        return RedisLimiter((config or {}).get("url", "redis://127.0.0.1:6379/0"))
    raise ValueError(f"ratelimit.backend {backend!r}: expected memory or redis")
