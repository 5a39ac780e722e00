"""The answer for one request, and the ways a later step of the pipeline may change it.

A `Verdict` is frozen: every step after the policy (the envelope's rewrite limits, the route
choice, admission, the cache) returns a new one. A step that refuses a request the policy let
through is an *overrule*: the decision record keeps what the policy said (`policy_outcome`) next
to the deny that was sent, and the record names no forwarded body.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ext_proc.audit.record import DecisionRecord, evolve
from ext_proc.identity import Identity
from ext_proc.policy import Decision
from ext_proc.providers import error_body


@dataclass(frozen=True)
class Verdict:
    """The answer for one request: forward (possibly with a new body) or reject, and the decision
    record to commit. `record` is built by the pipeline only (pipeline/request.py builds it, the
    functions below derive a new one)."""

    forward: bool
    status: int
    code: str
    message: str
    record: DecisionRecord
    decision: Decision | None = None
    identity: Identity | None = None
    new_body: bytes | None = None
    error_headers: dict[str, str] = field(default_factory=dict)
    error_body: bytes = b""
    limits: tuple[dict[str, Any], ...] = ()
    estimated_tokens: int = 0
    model: str | None = None
    stream: bool = False
    usage_injected: bool = False   # ledgergate asked for stream usage the client did not ask for
    envelope_redacted: dict[int, str] = field(default_factory=dict)  # envelope segment -> redacted value

    @property
    def outcome(self) -> str:
        """What the record says was done: permit, redact, observe or deny."""
        return self.record.decision.outcome

    def rejected(self, status: int, code: str, message: str, provider: str) -> Verdict:
        """The same record, answered with an error in the client's provider's format."""
        headers, body = error_body(provider, status, code, message)
        return replace(self, forward=False, status=status, code=code, message=message,
                       error_headers=headers, error_body=body, new_body=None)


def overruled(verdict: Verdict, status: int, code: str, message: str, provider: str, **why: Any) -> Verdict:
    """A deny after the policy permitted: the record says deny with STATUS and CODE, keeps the
    policy's own outcome as `policy_outcome`, adds WHY (e.g. `throttled_by`), and forwards nothing."""
    record = verdict.record.overruled(status, code, **why)
    return replace(verdict, record=record).rejected(status, code, message, provider)


def attributed(verdict: Verdict, decided_by: str, *, retry_after_s: int | None = None, **details: Any) -> Verdict:
    """A refusal taken outside the policy (by Envoy, or by ledgergate while draining): the
    record's decision names who decided it, with DETAILS; RETRY_AFTER_S goes on the error answer."""
    headers = dict(verdict.error_headers)
    if retry_after_s is not None:
        headers["retry-after"] = str(retry_after_s)
    return replace(verdict, record=verdict.record.attributed(decided_by, **details), error_headers=headers)


def annotated(verdict: Verdict, **sections: Any) -> Verdict:
    """The verdict with SECTIONS set in its record (the names in `audit.record.SECTIONS` only:
    a step's own section, or where the request now goes)."""
    return evolve(verdict, record=verdict.record.annotated(**sections))
