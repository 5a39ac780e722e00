"""Identity-aware request and token budgets, reserved before forwarding and settled with the
actual usage. Fixed windows; keys hash their values so no subject appears in a counter name."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The bucket dimensions a policy may name (docs/policy.md, "Rate limits").
DIMENSIONS = ("subject", "issuer", "tenant", "auth_method", "actor", "role", "roles", "model", "route", "api",
              "provider", "surface")


@dataclass(frozen=True, slots=True)
class LimitSpec:
    id: str
    key: tuple[str, ...]
    requests: int | None
    tokens: int | None
    window_s: int
    on_backend_error: str = "closed"
    default_max_tokens: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LimitSpec:
        key = tuple(d.get("key") or ())
        bad = [k for k in key if k not in DIMENSIONS]
        if bad:
            raise ValueError(f"limit {d.get('id')!r}: unknown key dimension(s) {bad}")
        window = int(d.get("window_s", 60))
        if window <= 0:
            raise ValueError(f"limit {d.get('id')!r}: window_s must be positive")
        if d.get("requests") is None and d.get("tokens") is None:
            raise ValueError(f"limit {d.get('id')!r}: needs requests or tokens")
        mode = d.get("on_backend_error") or "closed"
        if mode not in ("closed", "open"):
            raise ValueError(f"limit {d.get('id')!r}: on_backend_error must be closed or open")
        return cls(id=str(d["id"]), key=key, requests=d.get("requests"), tokens=d.get("tokens"),
                   window_s=window, on_backend_error=mode, default_max_tokens=d.get("default_max_tokens"))


def limit_key(spec: LimitSpec, context: Mapping[str, Any]) -> str:
    parts = []
    for dim in spec.key:
        v = context.get("roles" if dim in ("role", "roles") else dim)
        if isinstance(v, (tuple, list)):
            v = ",".join(sorted(v))
        parts.append(f"{dim}={v}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]
    return f"{spec.id}:{digest}"


@dataclass(frozen=True)
class Reservation:
    request_id: str
    parts: tuple[tuple[str, int, int, int], ...]  # (key, window start, requests, tokens)


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reservation: Reservation | None
    throttled_by: str | None = None
    retry_after_s: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    backend_error: str | None = None
    # Why a refusal: "requests" or "tokens" ran out in this window; "too_large" (the request alone
    # needs more tokens than the whole budget: retrying cannot help); "unavailable" (the shared
    # counter store is down and the limit fails closed).
    exhausted: str | None = None
    requested_tokens: int | None = None

    def to_record(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "throttled_by": self.throttled_by, "retry_after_s": self.retry_after_s,
                "backend_error": self.backend_error, "exhausted": self.exhausted,
                "requested_tokens": self.requested_tokens}


def refusal(admission: Admission) -> tuple[int, str, str]:
    """(status, code, message) for a refused admission: the message says which budget ran out;
    a request that can never fit is not told to retry; a counter store that is down is a 503,
    not a 429 (which SDKs retry as if the caller were too fast)."""
    limit = admission.throttled_by
    if admission.exhausted == "unavailable":
        return (503, "ratelimit_unavailable",
                f"the rate-limit store for limit '{limit}' is unreachable; the request was not forwarded")
    if admission.exhausted == "too_large":
        budget = admission.headers.get("x-ratelimit-limit-tokens", "?")
        return (429, "request_exceeds_token_budget",
                f"this request needs about {admission.requested_tokens} tokens (prompt and reserved output), "
                f"more than the whole token budget '{limit}' ({budget} per window); it cannot succeed "
                f"as sent: lower max_tokens or shorten the prompt")
    if admission.exhausted == "tokens":
        return (429, "token_budget_exhausted",
                f"token budget '{limit}' exhausted (tokens per window); retry after {admission.retry_after_s}s")
    return 429, "rate_limited", f"request rate limit '{limit}' exceeded; retry after {admission.retry_after_s}s"


@dataclass(frozen=True)
class OutputReservation:
    """How many output tokens a request without max_tokens is charged for until its usage is
    known: never zero, so a burst cannot absorb more than the budget (`ratelimit.output_reservation`)."""
    default: int = 1024
    models: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> OutputReservation:
        section = section or {}
        unknown = set(section) - {"default", "models"}
        if unknown:
            raise ValueError(f"ratelimit.output_reservation: unknown key(s) {sorted(unknown)}")
        default = section.get("default", cls.default)
        models = dict(section.get("models") or {})
        for where, v in [("default", default)] + [(f"models.{m}", n) for m, n in models.items()]:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ratelimit.output_reservation.{where}: must be a positive integer")
        return cls(default, models)

    def tokens(self, *, model: str | None, requested: int | None, injected_cap: int | None,
               policy_defaults: Sequence[int | None]) -> int:
        """Output tokens to reserve beyond the prompt: none when the caller set max_tokens (already
        in the estimate); else the cap the policy injected, the limits' default_max_tokens, or this
        model's (else the default) reservation, whichever applies first."""
        if requested is not None:
            return 0
        if injected_cap is not None:
            return injected_cap
        chosen = max((d for d in policy_defaults if d), default=0)
        if chosen:
            return chosen
        return self.models.get(model or "", self.default)


def too_large(request_id: str, specs: Sequence[LimitSpec], tokens: int) -> Admission | None:
    """The refusal of a request that needs more tokens than a whole window's budget: no retry-after
    (it would never fit), whatever the counters say; None when every budget could hold it."""
    for spec in specs:
        if spec.tokens is not None and tokens > spec.tokens:
            return Admission(False, None, spec.id, None, {"x-ratelimit-limit-tokens": str(spec.tokens),
                                                          "x-should-retry": "false"},
                             exhausted="too_large", requested_tokens=tokens)
    return None


def format_reset(seconds: float) -> str:
    """Seconds until a window resets, as the x-ratelimit-reset-* headers write it (`1m5s`, `42s`)."""
    s = max(0, int(math.ceil(seconds)))
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class MemoryLimiter:
    """One replica: counters in this process (the embedded default)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # (key, window start) -> [requests, tokens, window length in seconds]
        self._used: dict[tuple[str, int], list[int]] = {}
        self._lock = asyncio.Lock()

    async def reserve(self, request_id: str, specs: Sequence[LimitSpec], context: Mapping[str, Any], tokens: int) -> Admission:
        refused = too_large(request_id, specs, tokens)
        if refused is not None:
            return refused
        now = self.clock()
        async with self._lock:
            self._expire(now)
            plan, headers = [], {}
            for spec in specs:
                start = int(now // spec.window_s) * spec.window_s
                k = limit_key(spec, context)
                used = self._used.get((k, start), [0, 0])
                reset = start + spec.window_s - now
                req_ok = spec.requests is None or used[0] + 1 <= spec.requests
                tok_ok = spec.tokens is None or used[1] + tokens <= spec.tokens
                if spec.requests is not None:
                    headers["x-ratelimit-limit-requests"] = str(spec.requests)
                    headers["x-ratelimit-remaining-requests"] = str(max(0, spec.requests - used[0] - (1 if req_ok else 0)))
                    headers["x-ratelimit-reset-requests"] = format_reset(reset)
                if spec.tokens is not None:
                    headers["x-ratelimit-limit-tokens"] = str(spec.tokens)
                    headers["x-ratelimit-remaining-tokens"] = str(max(0, spec.tokens - used[1] - (tokens if tok_ok else 0)))
                    headers["x-ratelimit-reset-tokens"] = format_reset(reset)
                if not (req_ok and tok_ok):
                    retry = max(1, int(math.ceil(reset)))
                    headers["retry-after"] = str(retry)
                    return Admission(False, None, spec.id, retry, headers, exhausted="requests" if not req_ok else "tokens",
                                     requested_tokens=tokens)
                plan.append((k, start, 1, tokens))
            for spec, (k, start, r, t) in zip(specs, plan, strict=True):   # one part per limit: all admitted
                used = self._used.setdefault((k, start), [0, 0, spec.window_s])
                used[0] += r
                used[1] += t
            return Admission(True, Reservation(request_id, tuple(plan)), headers=headers)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        async with self._lock:
            for k, start, _r, t in reservation.parts:
                used = self._used.get((k, start))
                if used is not None:
                    used[1] = max(0, used[1] - t + max(0, actual_tokens))

    async def release(self, reservation: Reservation) -> None:
        async with self._lock:
            for k, start, r, t in reservation.parts:
                used = self._used.get((k, start))
                if used is not None:
                    used[0] = max(0, used[0] - r)
                    used[1] = max(0, used[1] - t)

    def _expire(self, now: float) -> None:
        """Drop the windows that are over (no reservation reads them again), whatever their length."""
        if len(self._used) < 4096:
            return
        for key in [k for k, v in self._used.items() if k[1] + v[2] < now]:
            del self._used[key]

    async def close(self) -> None:
        pass

