"""Readiness: whether this process should be sent traffic now, re-evaluated periodically.

`evaluate` and `ready_http_answer` are pure (facts and times in, status out). `ReadinessMonitor` is
the I/O shell: it gathers the facts from the Runtime every `server.health_interval_s`, reopens a
failed audit log, and publishes the status to the gRPC health service and to `/ready` on the
metrics port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("ledgergate.health")

# A failed audit sink is reopened after base * 2**attempts seconds, at most this long apart.
AUDIT_REOPEN_MAX_DELAY_S = 30.0


@dataclass(frozen=True)
class HealthFacts:
    policy_loaded: bool
    identity_ready: bool   # every issuer has usable keys (a JWKS URL fetched at least once, within jwks_stale_max)
    audit_ready: bool      # the audit log started and no commit has failed since
    draining: bool


@dataclass(frozen=True)
class Readiness:
    serving: bool
    reasons: tuple[str, ...]   # why not serving; empty when serving
    evaluated_at: float        # monotonic seconds


def evaluate(facts: HealthFacts, now: float) -> Readiness:
    reasons = []
    if facts.draining:
        reasons.append("draining")
    if not facts.policy_loaded:
        reasons.append("policy_not_loaded")
    if not facts.identity_ready:
        reasons.append("identity_not_ready")
    if not facts.audit_ready:
        reasons.append("audit_unavailable")
    return Readiness(serving=not reasons, reasons=tuple(reasons), evaluated_at=now)


def ready_http_answer(readiness: Readiness | None, now: float, stale_after_s: float) -> tuple[int, bytes]:
    """The `/ready` answer: 200 only for a SERVING evaluation made within `stale_after_s`. The
    HTTP server runs on its own thread, so an evaluation that stopped coming means the event loop
    that serves ext_proc is stuck: not ready either."""
    if readiness is None:
        return 503, b"not ready: starting\n"
    if now - readiness.evaluated_at > stale_after_s:
        return 503, b"not ready: health not re-evaluated (event loop stalled)\n"
    if not readiness.serving:
        return 503, ("not ready: " + ", ".join(readiness.reasons) + "\n").encode()
    return 200, b"ready\n"


def audit_reopen_delay(attempts: int, base_s: float) -> float:
    return min(AUDIT_REOPEN_MAX_DELAY_S, base_s * 2.0 ** min(attempts, 16))


class ReadinessMonitor:
    """Gathers the facts, publishes changes via `publish(serving)` and keeps the latest
    evaluation in `current` for the `/ready` handler (read from another thread: one reference
    assignment, atomic)."""

    def __init__(self, rt: Any, publish: Callable[[bool], Awaitable[None]], *, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rt = rt
        self.publish = publish
        self.interval_s = interval_s
        self.clock = clock
        self.current: Readiness | None = None
        self.draining = False
        self._published: bool | None = None
        self._reopen_attempts = 0
        self._next_reopen_at = 0.0

    def facts(self) -> HealthFacts:
        rt = self.rt
        return HealthFacts(policy_loaded=rt.policies.current is not None, identity_ready=bool(rt.identity.ready),
                           audit_ready=bool(rt.audit.ready), draining=self.draining)

    async def check(self) -> Readiness:
        now = self.clock()
        if not self.draining and not self.rt.audit.ready and now >= self._next_reopen_at:
            if await self.rt.reopen_audit():
                self._reopen_attempts = 0
            else:
                self._next_reopen_at = now + audit_reopen_delay(self._reopen_attempts, self.interval_s)
                self._reopen_attempts += 1
        readiness = evaluate(self.facts(), self.clock())
        self.current = readiness
        if readiness.serving != self._published:
            if self._published is not None:
                log.warning("readiness_changed", serving=readiness.serving, reasons=list(readiness.reasons))
            await self.publish(readiness.serving)
            self._published = readiness.serving
        return readiness

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the monitor must outlive any one failed check
                log.error("readiness_check_failed", error_type=type(exc).__name__)
                # Unknown facts: not ready (fail closed) until a check succeeds.
                self.current = Readiness(serving=False, reasons=("health_check_failed",), evaluated_at=self.clock())
                if self._published is not False:
                    await self.publish(False)
                    self._published = False
            await asyncio.sleep(self.interval_s)

    async def drain(self) -> None:
        """Not ready from now on, whatever the facts say."""
        self.draining = True
        await self.check()

    def http_answer(self) -> tuple[int, bytes]:
        return ready_http_answer(self.current, self.clock(), stale_after_s=max(3 * self.interval_s, 2.0))
