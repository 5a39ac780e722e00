"""Reading records out of a store for people: filters (time, subject, tenant, route, decision,
label), and what-if replay of recorded policy inputs under a candidate policy. Pure functions over
record dicts; the CLI only reads the store and prints."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ext_proc.audit.segments import Segment


def iter_records(segments: Iterable[Segment]) -> Iterator[dict[str, Any]]:
    """Every parsable record of the segments in store order, streaming chunk by chunk. Reading is
    not verifying: `audit verify` is the check; a line that does not parse is skipped here."""
    from ext_proc.audit.verify import check_chunk_lines

    for seg in segments:
        for chunk in seg.chunks():
            for line in check_chunk_lines(chunk):
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    yield rec


def parse_time(value: str) -> int:
    """Unix milliseconds from an ISO 8601 time (UTC when it has no offset) or a number of ms."""
    if value.isdigit():
        return int(value)
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{value!r} is neither ISO 8601 nor unix milliseconds") from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


@dataclass
class RecordFilter:
    since_ms: int | None = None
    until_ms: int | None = None
    subject: str | None = None
    tenant: str | None = None
    route: str | None = None
    decision: str | None = None
    label: str | None = None

    def about_requests(self) -> bool:
        return any(v is not None for v in (self.subject, self.tenant, self.route, self.decision, self.label))

    def in_time(self, rec: dict[str, Any]) -> bool:
        t = rec.get("timestamp_ms", rec.get("committed_ms"))
        if not isinstance(t, int):
            return self.since_ms is None and self.until_ms is None
        return (self.since_ms is None or t >= self.since_ms) and (self.until_ms is None or t < self.until_ms)

    def decision_matches(self, rec: dict[str, Any]) -> bool:
        """Whether a decision record matches the request filters (subject, tenant, route,
        decision outcome, label)."""
        ident = rec.get("identity") or {}
        if self.subject is not None and ident.get("subject") != self.subject:
            return False
        if self.tenant is not None and ident.get("tenant") != self.tenant:
            return False
        if self.route is not None and self.route not in route_names(rec):
            return False
        decision = rec.get("decision") or {}
        if self.decision is not None and self.decision not in (decision.get("outcome"), decision.get("code")):
            return False
        if self.label is not None and self.label not in labels_of(rec):
            return False
        return True


def route_names(rec: dict[str, Any]) -> set[str]:
    """The names a route filter matches: the policy route, the path and the API surface."""
    route = rec.get("route") or {}
    decision = rec.get("decision") or {}
    return {x for x in (decision.get("route"), route.get("path"), route.get("api"), route.get("surface"))
            if isinstance(x, str)}


def labels_of(rec: dict[str, Any]) -> set[str]:
    summary = ((rec.get("classification") or {}).get("summary")) or ((rec.get("input") or {}).get("classification"))
    return set(summary) if isinstance(summary, dict) else set()


def filter_records(records: Iterable[dict[str, Any]], flt: RecordFilter) -> Iterator[dict[str, Any]]:
    """Records within the time window; with request filters, the matching decision records and
    the other records (outcome, attempts) of the same requests, which follow their decision in
    the store. Genesis and checkpoint records only when no request filter is given."""
    about = flt.about_requests()
    matched: set[str] = set()
    for rec in records:
        if not flt.in_time(rec):
            continue
        if not about:
            yield rec
            continue
        kind, rid = rec.get("kind"), rec.get("request_id")
        if kind == "decision":
            if flt.decision_matches(rec):
                if isinstance(rid, str):
                    matched.add(rid)
                yield rec
        elif isinstance(rid, str) and rid in matched:
            yield rec


# --- What-if replay -----------------------------------------------------------------------------

# Keyed by a recorded outcome, which a record may lack (None: strictness 0, as an unknown outcome).
_STRICTNESS: dict[str | None, int] = {"permit": 0, "observe": 0, "redact": 1, "deny": 2}


@dataclass
class WhatIfReport:
    """What a candidate policy would have done to recorded traffic."""
    candidate: dict[str, Any]
    decisions: int = 0
    replayed: int = 0
    skipped: int = 0              # no policy input recorded (identity or input failures)
    unchanged: int = 0
    changed: int = 0
    stricter: int = 0
    looser: int = 0
    transitions: Counter[str] = field(default_factory=Counter)     # "permit -> deny"
    by_rule: Counter[str] = field(default_factory=Counter)         # rules that newly match or stop matching
    by_route: Counter[str] = field(default_factory=Counter)
    by_role: Counter[str] = field(default_factory=Counter)
    by_label: Counter[str] = field(default_factory=Counter)
    # transition -> request ids (None for a record without one; printed as such)
    samples: dict[str, list[str | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "decisions": self.decisions, "replayed": self.replayed,
                "skipped": self.skipped, "unchanged": self.unchanged, "changed": self.changed,
                "stricter": self.stricter, "looser": self.looser,
                "transitions": dict(self.transitions), "by_rule": dict(self.by_rule),
                "by_route": dict(self.by_route), "by_role": dict(self.by_role), "by_label": dict(self.by_label),
                "samples": self.samples}


def _recorded_outcome(rec: dict[str, Any]) -> str | None:
    d = rec.get("decision") or {}
    # A throttled request keeps the policy's own outcome in policy_outcome.
    return d.get("policy_outcome", d.get("outcome"))


def _rules(decision: dict[str, Any]) -> set[str]:
    # The evaluator names every match (a str); an entry without a name is no rule to count.
    return {rule for m in decision.get("matched") or []
            if isinstance(m, dict) and not m.get("shadow") and isinstance(rule := m.get("rule"), str)}


def what_if(records: Iterable[dict[str, Any]], evaluate: Callable[[dict[str, Any]], dict[str, Any]], candidate: dict[str, Any],
            samples: int = 5) -> WhatIfReport:
    """Re-decide every recorded decision input with `evaluate(input) -> decision record` (the
    candidate policy) and count what changes: the outcome, or for the same outcome the status
    and code (a different denial is a change an operator must see)."""
    rep = WhatIfReport(candidate=candidate)
    for rec in records:
        if rec.get("kind") != "decision":
            continue
        rep.decisions += 1
        inp = rec.get("input")
        if not isinstance(inp, dict) or not inp:
            rep.skipped += 1
            continue
        rep.replayed += 1
        old = rec.get("decision") or {}
        new = evaluate(inp)
        before: str | None = _recorded_outcome(rec)
        after: str | None = new.get("outcome")
        same = before == after and (after != "deny" or
                                    (old.get("status"), old.get("code")) == (new.get("status"), new.get("code")))
        if same:
            rep.unchanged += 1
            continue
        rep.changed += 1
        step = _STRICTNESS.get(after, 0) - _STRICTNESS.get(before, 0)
        rep.stricter += step > 0
        rep.looser += step < 0
        key = f"{before} -> {after}" if before != after else f"{before} ({old.get('code')} -> {new.get('code')})"
        rep.transitions[key] += 1
        for rule in sorted(_rules(new) ^ _rules(old)):
            rep.by_rule[rule] += 1
        rep.by_route[new.get("route") or (inp.get("route") or {}).get("path") or "-"] += 1
        for role in sorted((inp.get("identity") or {}).get("roles") or ["-"]):
            rep.by_role[role] += 1
        for label in sorted(inp.get("classification") or {"-": None}):
            rep.by_label[label] += 1
        ids = rep.samples.setdefault(key, [])
        if len(ids) < samples:
            ids.append(rec.get("request_id"))
    return rep


def replay(records: Iterable[dict[str, Any]],
           evaluate: Callable[[str, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Re-evaluate each decision record's recorded input with its recorded policy version.
    `evaluate(version, input) -> decision dict` is injected so replay is testable without files."""
    out: dict[str, Any] = {"replayed": 0, "skipped": 0, "mismatches": [], "errors": 0}
    for rec in records:
        if rec.get("kind") != "decision":
            continue
        version = (rec.get("policy") or {}).get("version")
        if not version or not rec.get("input"):
            out["skipped"] += 1
            continue
        try:
            again = evaluate(version, rec["input"])
        except Exception as exc:  # noqa: BLE001 - a missing version is reported, not fatal
            out["errors"] += 1
            out["mismatches"].append({"request_id": rec.get("request_id"), "recorded": rec["decision"].get("outcome"),
                                      "replayed": f"error: {type(exc).__name__}"})
            continue
        out["replayed"] += 1
        recorded = rec.get("decision") or {}
        # A throttled request keeps the policy's own outcome in policy_outcome.
        want = recorded.get("policy_outcome", recorded.get("outcome"))
        if again.get("outcome") != want:
            out["mismatches"].append({"request_id": rec.get("request_id"), "recorded": want,
                                      "replayed": again.get("outcome")})
    return out
