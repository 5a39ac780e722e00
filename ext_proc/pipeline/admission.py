"""Admission: what the rate limiter's answer does to a verdict the policy let through.

The counters are I/O (ratelimit/, awaited by the server); what follows from their answer is
decided here: the record's `ratelimit` section, the deny that replaces a permit when a budget ran
out (429, or 503 when the counter store is down: SDKs retry a 429 as if the caller were too
fast), and the headers the caller sees either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ext_proc.pipeline.verdict import Verdict, annotated, overruled
from ext_proc.ratelimit import Admission, refusal
from ext_proc.ratelimit.limits import Reservation


@dataclass(frozen=True)
class Admitted:
    """The verdict after admission. `reservation` is held until the outcome settles it (None when
    refused: nothing was reserved). `refusal_headers` go on the error answer of a refusal;
    `answer_headers` (the `x-ratelimit-*` budget) on the upstream's answer of an admitted request."""

    verdict: Verdict
    reservation: Reservation | None = None
    refusal_headers: Mapping[str, str] = field(default_factory=dict)
    answer_headers: Mapping[str, str] = field(default_factory=dict)


def needs_admission(verdict: Verdict) -> bool:
    """Only a request about to be forwarded under at least one limit asks the counters."""
    return verdict.forward and bool(verdict.limits)


def admit(verdict: Verdict, admission: Admission, provider: str) -> Admitted:
    """The verdict as the limiter's ADMISSION leaves it; PROVIDER formats a refusal's error body."""
    verdict = annotated(verdict, ratelimit=admission.to_record())
    if admission.admitted:
        budget = {k: v for k, v in admission.headers.items() if k.startswith("x-ratelimit-")}
        return Admitted(verdict, reservation=admission.reservation, answer_headers=budget)
    status, code, message = refusal(admission)
    return Admitted(overruled(verdict, status, code, message, provider, throttled_by=admission.throttled_by),
                    refusal_headers=dict(admission.headers))
