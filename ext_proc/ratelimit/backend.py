"""Where rate-limit counters live: this process (MemoryLimiter, ratelimit/limits.py) or Redis
shared by every replica (RedisLimiter, ratelimit/redis_backend.py). The runtime reserves before
forwarding and settles or releases after, whichever backend the configuration names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ext_proc.ratelimit.limits import Admission, LimitSpec, Reservation


class RateLimitBackend(Protocol):
    async def reserve(self, request_id: str, specs: Sequence[LimitSpec], context: Mapping[str, Any],
                      tokens: int) -> Admission:
        """Charge one request and `tokens` against every spec, or refuse at the first one
        exhausted; a backend that cannot be reached follows each spec's on_backend_error."""
        ...

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the reserved tokens by the ones the response used."""

    async def release(self, reservation: Reservation) -> None:
        """Give the whole reservation back (the request was never forwarded)."""

    async def close(self) -> None: ...
