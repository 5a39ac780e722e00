"""Audit record bodies: a decision record per request, an outcome record per response, an attempt
record per upstream attempt of a failover chain.

Each is a frozen dataclass of typed parts (who asked, where it goes, what was decided, the
digests, what the steps after the policy added); `to_dict()` is the JSON object that is committed.
The chain (audit/chain.py) adds its own members when it seals that object (`writer_id`,
`segment_id`, `seq`, `prev_hash`, `committed_ms`, `key_id`, `hash`, `signature`); nothing else
writes into a record. A record changes only by a new one: the pipeline (pipeline/verdict.py)
calls `overruled`, `attributed` and `annotated`, which return a copy.

Field names follow OPA's decision log where they mean the same thing (decision_id, input, result
-> here `decision`, timestamp). No record holds prompt or response text, tokens or matched values.
The JSON objects a part carries as they are (`identity`, `route`, `input`, a step's section) are
built by their own module's `to_record()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

SCHEMA_VERSION = "ledgergate.audit/v1"

JsonObject = dict[str, Any]
"""A JSON object as records hold it (canonical JSON takes exact dicts, audit/canonical.py)."""


def new_record_id() -> str:
    """A random (version 4) UUID's 32 hex digits, as `uuid.uuid4().hex` gives them, without
    building the UUID object (two per exchange; that object was 2 % of an exchange's CPU)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40   # version 4
    b[8] = (b[8] & 0x3F) | 0x80   # RFC 4122 variant
    return b.hex()


_T = TypeVar("_T")


def evolve(obj: _T, **changes: Any) -> _T:
    """`dataclasses.replace` for a frozen dataclass without `__post_init__` or slots, without
    running `__init__` again: a copy of OBJ's fields with CHANGES, which must name its fields
    (not checked: the callers pass literal names). A request takes several record steps; this
    costs about a tenth of `replace` (a frozen `__init__` sets each field through
    `object.__setattr__`)."""
    new = object.__new__(type(obj))
    vars(new).update(vars(obj), **changes)
    return new


# --- decision record ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """Who asked: the verified identity's record, or the reason no credential could be verified
    (`identity_error`). Both None: the refusal came before any credential was read."""

    identity: JsonObject | None = None
    error: str | None = None


@dataclass(frozen=True)
class Routing:
    """Where the request was addressed and where it goes. `route` is the called route as records
    show it (path without its query, surface, api, provider, inspectable); `upstream` and
    `model_routed` name another provider's endpoint and model when the multiplex serves it."""

    route: JsonObject
    provider: str | None = None
    model_requested: str | None = None
    model_routed: str | None = None
    upstream: str | None = None


@dataclass(frozen=True)
class Classification:
    """What the request inspection found: {label: {count, max_confidence}} and one finding per
    match (label, offsets, confidence; never the matched value)."""

    summary: JsonObject
    findings: Sequence[JsonObject] = ()

    def to_dict(self) -> JsonObject:
        return {"summary": self.summary, "findings": list(self.findings)}


@dataclass(frozen=True)
class PolicyRef:
    """The policy in force: its id, version (SHA-256 of the compiled policy) and label."""

    id: str
    version: str
    label: str | None = None

    def to_dict(self) -> JsonObject:
        return {"id": self.id, "version": self.version, "label": self.label}


@dataclass(frozen=True)
class Overrule:
    """A deny taken after the policy let the request through (a rate limit, the route choice, a
    body that cannot be translated, a header that cannot be rewritten). The record's `decision`
    then says deny with this status and code, keeps what the policy said as `policy_outcome`, and
    adds WHY (e.g. `throttled_by`)."""

    status: int
    code: str
    policy_outcome: str | None
    why: JsonObject = field(default_factory=dict)


@dataclass(frozen=True)
class Ruling:
    """The record's `decision` object. `decided` is the policy's decision (`Decision.to_record()`)
    or, for a refusal taken before any policy rule ran, its outcome, status, code and reason.
    `redactions` are those applied to the request (None: no such member, a refusal before the
    policy); `overrule` a later step's deny; `attribution` who decided a refusal taken outside
    the policy (`decided_by`, with its details)."""

    decided: JsonObject
    redactions: Sequence[JsonObject] | None = None
    overrule: Overrule | None = None
    attribution: JsonObject | None = None

    @property
    def outcome(self) -> str:
        """What was done: permit, redact, observe or deny."""
        if self.overrule is not None:
            return "deny"
        return str(self.decided.get("outcome", "deny"))

    def to_dict(self) -> JsonObject:
        out = dict(self.decided)
        if self.redactions is not None:
            out["redactions"] = list(self.redactions)
        if self.overrule is not None:
            o = self.overrule
            out.update(outcome="deny", status=o.status, code=o.code)
            out.update(o.why)
            out["policy_outcome"] = o.policy_outcome
        if self.attribution is not None:
            out.update(self.attribution)
        return out


@dataclass(frozen=True)
class Digests:
    """SHA-256 of the body as received and as forwarded (None: no body read / nothing forwarded)."""

    request_sha256: str | None = None
    forwarded_sha256: str | None = None


@dataclass(frozen=True)
class Steps:
    """The sections the steps after the policy add (docs/audit-record.md says what each holds).
    `ratelimit` and `capture` are always members of the record (null when no step set them); the
    others only once a step set them."""

    ratelimit: JsonObject | None = None
    capture: JsonObject | None = None
    inspection: JsonObject | None = None
    envelope: JsonObject | None = None
    multiplex: JsonObject | None = None
    cache: JsonObject | None = None
    served_from_cache: JsonObject | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("inspection", "envelope", "multiplex", "cache", "served_from_cache")


# What a step after the policy may set: its own section, or where the request now goes.
_ROUTING_SECTIONS = frozenset({"upstream", "model_routed"})
_DIGEST_SECTIONS = frozenset({"forwarded_sha256"})
_STEP_SECTIONS = frozenset({"ratelimit", "capture", *Steps.OPTIONAL})
SECTIONS = _ROUTING_SECTIONS | _DIGEST_SECTIONS | _STEP_SECTIONS


@dataclass(frozen=True)
class DecisionRecord:
    """One request's decision, committed before the request is released or refused."""

    kind: ClassVar[str] = "decision"

    request_id: str
    received_ms: int
    decided_ms: int
    caller: Caller
    routing: Routing
    decision: Ruling
    policy: PolicyRef | None = None
    classification: Classification | None = None
    input: JsonObject = field(default_factory=dict)
    digests: Digests = Digests()
    steps: Steps = Steps()
    decision_id: str = field(default_factory=new_record_id)

    def overruled(self, status: int, code: str, **why: Any) -> DecisionRecord:
        """A deny after the policy permitted: the record names no forwarded body. (A second
        overrule, which the server never takes, keeps the policy's outcome as `policy_outcome`.)"""
        ruling = self.decision
        first = ruling.overrule.policy_outcome if ruling.overrule is not None else ruling.outcome
        overrule = Overrule(status, code, first,
                            {**(ruling.overrule.why if ruling.overrule is not None else {}), **why})
        return evolve(self, decision=evolve(ruling, overrule=overrule),
                       digests=evolve(self.digests, forwarded_sha256=None))

    def attributed(self, decided_by: str, **details: Any) -> DecisionRecord:
        """A refusal taken outside the policy: who decided it, with DETAILS."""
        attribution = {**(self.decision.attribution or {}), "decided_by": decided_by, **details}
        return evolve(self, decision=evolve(self.decision, attribution=attribution))

    def annotated(self, **sections: Any) -> DecisionRecord:
        """The record with SECTIONS set (names from `SECTIONS` only; an optional step section
        set to None stays absent)."""
        if not sections.keys() <= SECTIONS:
            unknown = sorted(set(sections) - SECTIONS)
            raise ValueError(f"not a decision record section: {', '.join(unknown)}")
        parts: dict[str, Any] = {}
        steps = {k: v for k, v in sections.items() if k in _STEP_SECTIONS}
        if steps:
            parts["steps"] = evolve(self.steps, **steps)
        if len(steps) < len(sections):
            routing = {k: v for k, v in sections.items() if k in _ROUTING_SECTIONS}
            if routing:
                parts["routing"] = evolve(self.routing, **routing)
            if "forwarded_sha256" in sections:
                parts["digests"] = evolve(self.digests, forwarded_sha256=sections["forwarded_sha256"])
        return evolve(self, **parts)

    def to_dict(self) -> JsonObject:
        r, s, d = self.routing, self.steps, self.digests
        out: JsonObject = {
            "schema": SCHEMA_VERSION, "kind": self.kind, "decision_id": self.decision_id,
            "request_id": self.request_id, "timestamp_ms": self.decided_ms,
            "received_ms": self.received_ms, "decided_ms": self.decided_ms,
            "identity": self.caller.identity, "identity_error": self.caller.error,
            "route": r.route, "provider": r.provider, "model_requested": r.model_requested,
            "model_routed": r.model_routed, "upstream": r.upstream,
            "classification": self.classification.to_dict() if self.classification is not None else {},
            "policy": self.policy.to_dict() if self.policy is not None else {},
            "decision": self.decision.to_dict(), "input": self.input,
            "request_sha256": d.request_sha256, "forwarded_sha256": d.forwarded_sha256,
            "ratelimit": s.ratelimit, "capture": s.capture,
        }
        for name in Steps.OPTIONAL:
            value = getattr(s, name)
            if value is not None:
                out[name] = value
        return out


# --- outcome record -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResponseInspection:
    """What the response inspection saw of the answer released to the client: its digest,
    classification summary, the redactions applied, the usage the provider reported, the block
    (label, where, why) if one stopped it, and whether it was streamed."""

    response_sha256: str | None = None
    classification: JsonObject = field(default_factory=dict)
    redactions: Sequence[JsonObject] = ()
    usage: JsonObject | None = None
    blocked: JsonObject | None = None
    streamed: bool = False

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], *, streamed: bool,
                     usage: JsonObject | None) -> ResponseInspection:
        """From a response inspector's `outcome()` ({} when nothing was inspected)."""
        return cls(response_sha256=summary.get("response_sha256"),
                   classification=summary.get("classification") or {},
                   redactions=summary.get("redactions") or [], usage=usage, blocked=summary.get("blocked"),
                   streamed=streamed)


@dataclass(frozen=True)
class OutcomeRecord:
    """One response's outcome, committed before the end of the response is released.
    `delivered_status` None: the client got `status`. `transparency` (the marker that was sent)
    and `served_from_cache` are members only when set."""

    kind: ClassVar[str] = "outcome"

    request_id: str
    completed_ms: int
    status: int | None
    response: ResponseInspection
    delivered_status: int | None = None
    error: str | None = None
    capture: JsonObject | None = None
    upstream_host: str | None = None
    transparency: JsonObject | None = None
    served_from_cache: JsonObject | None = None
    decision_id: str = field(default_factory=new_record_id)

    def to_dict(self) -> JsonObject:
        resp = self.response
        out: JsonObject = {
            "schema": SCHEMA_VERSION, "kind": self.kind, "decision_id": self.decision_id,
            "request_id": self.request_id, "timestamp_ms": self.completed_ms, "completed_ms": self.completed_ms,
            "status": self.status,
            "delivered_status": self.delivered_status if self.delivered_status is not None else self.status,
            "response_sha256": resp.response_sha256, "classification": resp.classification,
            "redactions": list(resp.redactions), "usage": resp.usage, "blocked": resp.blocked,
            "streamed": resp.streamed, "error": self.error, "capture": self.capture,
            "upstream_host": self.upstream_host,
        }
        if self.transparency is not None:
            out["transparency"] = self.transparency
        if self.served_from_cache is not None:
            out["served_from_cache"] = self.served_from_cache
        return out


# --- attempt record -------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttemptRecord:
    """One upstream attempt of a cross-provider failover chain, committed before its translated
    body is released: which provider and endpoint it went to and what was sent (digest)."""

    kind: ClassVar[str] = "attempt"

    request_id: str
    attempted_ms: int
    provider: str
    model: str
    upstream_address: str | None
    forwarded_sha256: str | None
    error: str | None = None
    decision_id: str = field(default_factory=new_record_id)

    def to_dict(self) -> JsonObject:
        return {
            "schema": SCHEMA_VERSION, "kind": self.kind, "decision_id": self.decision_id,
            "request_id": self.request_id, "timestamp_ms": self.attempted_ms, "provider": self.provider,
            "model": self.model, "upstream_address": self.upstream_address,
            "forwarded_sha256": self.forwarded_sha256, "error": self.error,
        }


AuditRecord = DecisionRecord | OutcomeRecord | AttemptRecord
"""What the gateway commits (its `to_dict()`); the chain's own genesis and checkpoint records
are built by the audit log."""
