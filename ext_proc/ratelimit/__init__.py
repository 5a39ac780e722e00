"""Identity-aware rate limits and token budgets: reserve before forwarding, settle after."""

from ext_proc.ratelimit.backend import RateLimitBackend
from ext_proc.ratelimit.config import RateLimitConfig
from ext_proc.ratelimit.limits import (
    Admission,
    LimitSpec,
    MemoryLimiter,
    OutputReservation,
    Reservation,
    limit_key,
    refusal,
)

__all__ = ["Admission", "LimitSpec", "MemoryLimiter", "OutputReservation", "RateLimitBackend", "RateLimitConfig",
           "Reservation", "limit_key", "open_limiter", "refusal"]


def open_limiter(config: RateLimitConfig) -> RateLimitBackend:
    """The limiter the configuration names: in-process, or Redis shared by replicas (imported only
    then, and here rather than in limits.py, which the Redis backend itself builds on)."""
    if config.backend == "redis":
        from ext_proc.ratelimit.redis_backend import RedisLimiter
        return RedisLimiter(config.url)
    return MemoryLimiter()
