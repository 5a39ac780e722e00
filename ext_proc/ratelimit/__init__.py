"""Identity-aware rate limits and token budgets: reserve before forwarding, settle after."""

from ext_proc.ratelimit.limits import (
    Admission,
    LimitSpec,
    MemoryLimiter,
    OutputReservation,
    Reservation,
    limit_key,
    open_limiter,
    refusal,
)

__all__ = ["Admission", "LimitSpec", "MemoryLimiter", "OutputReservation", "Reservation", "limit_key",
           "open_limiter", "refusal"]
