"""The `ratelimit:` section of the configuration, checked once at load: where the counters live
and what a request without max_tokens is charged for output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ext_proc.configerror import ConfigError
from ext_proc.ratelimit.limits import OutputReservation

_KEYS = {"backend", "url", "output_reservation"}
DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    backend: Literal["memory", "redis"] = "memory"
    url: str = DEFAULT_URL
    output_reservation: OutputReservation = field(default_factory=OutputReservation)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | None) -> RateLimitConfig:
        d = section or {}
        if not isinstance(d, Mapping):
            raise ConfigError("ratelimit: must be a mapping")
        unknown = sorted(set(d) - _KEYS)
        if unknown:
            raise ConfigError(f"ratelimit.{unknown[0]}: unknown key; allowed under ratelimit: {', '.join(sorted(_KEYS))}")
        backend = d.get("backend", "memory")
        if backend not in ("memory", "redis"):
            raise ConfigError(f"ratelimit.backend: {backend!r}: expected memory or redis")
        url = d.get("url", DEFAULT_URL)
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("ratelimit.url: must be a redis://, rediss:// or unix:// URL")
        try:
            reservation = OutputReservation.from_config(d.get("output_reservation"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(backend=backend, url=url, output_reservation=reservation)
