"""Budgets shared by many replicas: one Lua script per decision (atomic across every limit of the
request, Redis TIME as the clock so replica clock skew does not matter), counters that expire."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ext_proc.ratelimit.limits import Admission, LimitSpec, Reservation, format_reset, limit_key, too_large

# ARGV: n, tokens, then per limit: key, request limit (-1 none), token limit (-1 none), window seconds.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local plan = {}
for i = 1, n do
  local b = 2 + (i - 1) * 4
  local w = tonumber(ARGV[b + 4])
  local start = math.floor(now / w) * w
  local key = ARGV[b + 1] .. ':' .. start
  local r = tonumber(redis.call('HGET', key, 'r') or '0')
  local tk = tonumber(redis.call('HGET', key, 't') or '0')
  local rl, tl = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local reset = tostring(start + w - now)
  if (rl >= 0 and r + 1 > rl) or (tl >= 0 and tk + tokens > tl) then
    return {0, i, reset, r, tk}
  end
  plan[i] = {key, w, r, tk, reset}
end
local out = {1}
for i = 1, n do
  local p = plan[i]
  redis.call('HINCRBY', p[1], 'r', 1)
  redis.call('HINCRBY', p[1], 't', tokens)
  redis.call('EXPIRE', p[1], p[2] * 2 + 60)
  table.insert(out, p[1]); table.insert(out, p[3] + 1); table.insert(out, p[4] + tokens); table.insert(out, p[5])
end
return out
"""

# KEYS: counter keys; ARGV: requests delta, tokens delta. Only windows that still exist are adjusted.
_ADJUST = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'r', tonumber(ARGV[1]))
    redis.call('HINCRBY', KEYS[i], 't', tonumber(ARGV[2]))
  end
end
return 1
"""


class RedisLimiter:
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "lg:rl:", timeout_s: float = 0.25) -> None:
        self.prefix = prefix
        self.client = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                        retry_on_timeout=False)
        self._reserve = self.client.register_script(_RESERVE)
        self._adjust = self.client.register_script(_ADJUST)

    async def reserve(self, request_id: str, specs: Sequence[LimitSpec], context: Mapping[str, Any], tokens: int) -> Admission:
        if not specs:
            return Admission(True, Reservation(request_id, ()))
        refused = too_large(request_id, specs, tokens)
        if refused is not None:
            return refused
        argv: list[Any] = [len(specs), tokens]
        for s in specs:
            argv += [self.prefix + limit_key(s, context), s.requests if s.requests is not None else -1,
                     s.tokens if s.tokens is not None else -1, s.window_s]
        try:
            res = await self._reserve(args=argv)
        except (RedisError, OSError) as exc:
            return self._backend_down(request_id, specs, type(exc).__name__)
        headers: dict[str, str] = {}
        if int(res[0]) == 0:
            i = int(res[1]) - 1
            spec, reset = specs[i], float(res[2])
            retry = max(1, int(math.ceil(reset)))
            used_r, used_t = int(res[3]), int(res[4])
            self._headers(headers, spec, used_r, used_t, reset)
            headers["retry-after"] = str(retry)
            requests_out = spec.requests is not None and used_r + 1 > spec.requests
            return Admission(False, None, spec.id, retry, headers, exhausted="requests" if requests_out else "tokens",
                             requested_tokens=tokens)
        parts = []
        for i, spec in enumerate(specs):
            key, used_r, used_t, reset = res[1 + 4 * i: 5 + 4 * i]
            key = key.decode() if isinstance(key, bytes) else key
            self._headers(headers, spec, int(used_r), int(used_t), float(reset))
            parts.append((key, 0, 1, tokens))
        return Admission(True, Reservation(request_id, tuple(parts)), headers=headers)

    @staticmethod
    def _headers(headers: dict[str, str], spec: LimitSpec, used_r: int, used_t: int, reset: float) -> None:
        if spec.requests is not None:
            headers["x-ratelimit-limit-requests"] = str(spec.requests)
            headers["x-ratelimit-remaining-requests"] = str(max(0, spec.requests - used_r))
            headers["x-ratelimit-reset-requests"] = format_reset(reset)
        if spec.tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(spec.tokens)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, spec.tokens - used_t))
            headers["x-ratelimit-reset-tokens"] = format_reset(reset)

    def _backend_down(self, request_id: str, specs: Sequence[LimitSpec], error: str) -> Admission:
        closed = [s for s in specs if s.on_backend_error == "closed"]
        if closed:
            return Admission(False, None, closed[0].id, 1, {"retry-after": "1"},
                             backend_error=f"redis unreachable ({error}); limit fails closed", exhausted="unavailable")
        return Admission(True, Reservation(request_id, ()), backend_error=f"redis unreachable ({error}); failed open")

    # Every part of a reservation carries the same request and token counts (reserve charges each
    # limit alike), so settling or releasing is one script call over all of its keys.
    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        if not reservation.parts:
            return
        _key, _start, _r, t = reservation.parts[0]
        try:
            await self._adjust(keys=[p[0] for p in reservation.parts], args=[0, max(0, actual_tokens) - t])
        except (RedisError, OSError):
            pass  # the window's counter keeps the reservation: over-charging, never under

    async def release(self, reservation: Reservation) -> None:
        if not reservation.parts:
            return
        _key, _start, r, t = reservation.parts[0]
        try:
            await self._adjust(keys=[p[0] for p in reservation.parts], args=[-r, -t])
        except (RedisError, OSError):
            pass

    async def close(self) -> None:
        await self.client.aclose()
