"""The compiled policy and its evaluation, OPA's input -> eval -> result:
``Policy.evaluate(input) -> Decision`` reads the input as facts (facts.py), finds the route and
the rules that match (matchers.py) and combines their effects (effects.py).

Evaluation is pure and deterministic: no clock, no I/O, no randomness, no dependence on the order
of roles, groups or labels in the input. Everything that can be precomputed (globs, label sets,
per-route candidate indexes) is built once in ``Policy.__init__`` from the canonical compiled form.

Combination (docs/policy.md has the long form):
  1. the first route (declaration order) that matches gives the mode; no route -> deny;
  2. candidate rules come from the route's indexes (by label, by role, or always);
  3. role constraints add synthetic denies (model not allowed, max_tokens above the cap);
  4. the effects of the matched rules combine by effects.PRECEDENCE (deny > redact > permit);
     nothing matched -> default deny; the highest priority rule of the winning effect (then the
     earliest declared) gives status/code/reason;
  5. an override effect (effects.OVERRIDES: ``observe``) whose best rule has a priority strictly
     above that winner's turns the outcome into ``observe`` (the request passes unchanged;
     ``observed`` says what enforce would have done);
  6. route mode ``observe`` does the same for every request on the route; ``shadow`` enforces
     the normal rules and evaluates ``shadow`` rules too, recording the shadow outcome (``multiplex``
     is its former name, still accepted: "multiplex" now means only provider translation).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ext_proc.policy.compile import STRATEGY_ORDER, PolicyError, canonical_json
from ext_proc.policy.effects import OVERRIDES, PRECEDENCE, ROWS, Effect, ResponseSide
from ext_proc.policy.facts import BadInput, Facts, read_facts
from ext_proc.policy.glob import GlobSet
from ext_proc.policy.matchers import Matcher, Route, index_key

# The route mode that also evaluates shadow rules; "multiplex" is its former name.
SHADOW_MODES = ("shadow", "multiplex")

_INF = math.inf
_NEG_INF = -math.inf
_STRATEGY_RANK = {s: i for i, s in enumerate(STRATEGY_ORDER)}   # lower = more restrictive
_MEMO_MAX = 4096
# Enum attribute access (and .value) costs a Python-level lookup each time: the hot path reads these.
_DENY, _REDACT, _OBSERVE = Effect.DENY, Effect.REDACT, Effect.OBSERVE
_ALL_RESPONSE, _MARKER_ONLY = ResponseSide.ALL, ResponseSide.MARKER
_DENY_NAME = str(Effect.DENY)                       # an exact str, as records need
_OBSERVED_CODE = ROWS[Effect.OBSERVE].code or ""
# Why the default deny: "no permit or redact rule matched" (the combining effects that release).
_NOTHING_RELEASED = "no {} rule matched".format(
    " or ".join(e.value for e in Effect if any(row.effect is e and row.releases for row in PRECEDENCE)))


@dataclass(frozen=True)
class Decision:
    outcome: Effect
    observed: Effect | None
    status: int
    reason: str
    code: str
    matched: tuple[dict[str, Any], ...]
    redact: Mapping[str, str]
    max_tokens_cap: int | None
    response: Mapping[str, Any]
    limits: tuple[dict[str, Any], ...]
    mode: str
    policy_id: str
    policy_version: str
    policy_label: str | None
    route: str | None = None
    serve_with: str | None = None     # a model of the multiplex map the policy chose for this request
    # What the non-enforced evaluation would have done (observe outcome / multiplex shadow).
    detail: Mapping[str, Any] = field(default_factory=dict)

    def denied(self, code: str, reason: str, status: int = 403) -> Decision:
        """This decision turned into a deny by a fact found after evaluation (a redaction the
        request cannot carry); the matched rules stay as evidence of what was decided first."""
        return replace(self, outcome=Effect.DENY, status=status, code=code, reason=reason)

    @property
    def releases(self) -> bool:
        """Whether the request goes upstream (effects.py says which outcomes do)."""
        return ROWS[self.outcome].releases

    def to_record(self) -> dict[str, Any]:
        # Plain strings: the audit's canonical JSON refuses an enum member.
        return {
            "outcome": str(self.outcome), "observed": str(self.observed) if self.observed else None,
            "status": self.status,
            "reason": self.reason, "code": self.code,
            "matched": [dict(m, why=list(m["why"])) for m in self.matched],
            "redact": dict(self.redact), "max_tokens_cap": self.max_tokens_cap,
            "response": {"redact": dict(self.response["redact"]), "block": list(self.response["block"]),
                         "marker_header": (dict(self.response["marker_header"])
                                           if self.response["marker_header"] else None),
                         "rules": list(self.response.get("rules", ()))},
            "limits": [dict(x, key=list(x["key"])) for x in self.limits],
            "mode": self.mode, "route": self.route, "serve_with": self.serve_with,
            "policy": {"id": self.policy_id, "version": self.policy_version, "label": self.policy_label},
            "detail": _plain(self.detail),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value



class Rule:
    __slots__ = ("idx", "id", "effect", "effect_name", "releases", "priority", "shadow", "matcher", "tests",
                 "unless", "deny", "redact", "redact_labels", "max_tokens", "serve_with", "routes", "index")

    def __init__(self, idx: int, spec: Mapping[str, Any]) -> None:
        self.idx = idx
        self.id = spec["id"]
        self.effect = Effect(spec["effect"])
        self.effect_name = str(self.effect)          # an exact str for the record
        self.releases = ROWS[self.effect].releases
        self.priority = spec["priority"]
        self.shadow = spec["shadow"]
        when = spec["when"]
        self.matcher = Matcher(when, spec["unless"])
        self.tests = self.matcher.tests
        self.unless = self.matcher.unless
        self.deny = spec["deny"]
        self.redact = dict(spec["redact"])
        # A redact rule needs one of its labels present to match at all.
        self.redact_labels = frozenset(self.redact) if self.effect is Effect.REDACT else None
        self.max_tokens = spec["max_tokens"]
        self.serve_with = spec.get("serve_with")
        self.routes = frozenset(when.get("routes", ())) or None
        self.index = index_key(when, self.redact if self.effect is Effect.REDACT else None)

    def entry(self, f: Facts) -> dict[str, Any]:
        why = self.matcher.why(f)
        if self.redact_labels is not None:
            why = why + ("redacts " + ", ".join(sorted(self.redact_labels.intersection(f.labels))),)
        return {"rule": self.id, "effect": self.effect_name, "priority": self.priority, "why": why}



class _Role:
    __slots__ = ("models", "max_tokens")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.models = GlobSet(spec["models"])
        self.max_tokens = spec["max_tokens"]


class _ResponseRule:
    __slots__ = ("idx", "id", "priority", "matcher", "redact", "block", "marker")

    def __init__(self, idx: int, spec: Mapping[str, Any]) -> None:
        self.idx, self.id, self.priority = idx, spec["id"], spec["priority"]
        self.matcher = Matcher(spec["when"], spec["unless"])
        self.redact = dict(spec["redact"])
        self.block = tuple(spec["block"])
        self.marker = dict(spec["marker_header"]) if spec["marker_header"] else None


class _Limit:
    __slots__ = ("matcher", "record")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.matcher = Matcher(spec["when"], spec["unless"])
        self.record = {k: spec[k] for k in ("id", "requests", "tokens", "window_s", "on_backend_error",
                                            "default_max_tokens")}
        self.record["key"] = tuple(spec["key"])


@dataclass
class _Result:
    """One evaluation pass (enforced or shadow) before it becomes a Decision."""

    outcome: Effect
    status: int
    code: str
    reason: str
    matched: list[dict[str, Any]]
    redact: dict[str, str]
    cap: int | None
    observed: Effect | None = None
    observe_rule: str | None = None
    serve_with: str | None = None     # the model the winning serve_with rule names


def _empty_response() -> dict[str, Any]:
    return {"redact": {}, "block": (), "marker_header": None, "rules": ()}


class Policy:
    """A validated, compiled policy. Build with ``load_policy``/``load_policy_text`` or
    ``Policy.from_compiled``; never half-built (the constructor raises before anything is exposed)."""

    def __init__(self, compiled: Mapping[str, Any], *, sources: tuple[Any, ...] = ()) -> None:
        self.compiled = compiled
        self.canonical = canonical_json(compiled)
        self.version = hashlib.sha256(self.canonical).hexdigest()
        self.id: str = compiled["id"]
        self.label: str | None = compiled["label"]
        self.sources = tuple(sources)
        self.dictionaries: Mapping[str, tuple[str, ...]] = {k: tuple(v) for k, v in compiled["dictionaries"].items()}
        d = compiled["defaults"]["deny"]
        self._default_deny = (d["status"], d["code"], d["reason"])
        self._rules = [Rule(i, r) for i, r in enumerate(compiled["rules"])]
        self._shadow_rules = [r for r in self._rules if r.shadow]
        routes = compiled["routes"] or [{"id": "default", "paths": [], "apis": [], "surfaces": [],
                                         "providers": [], "mode": compiled["defaults"]["mode"]}]
        self._routes = tuple(Route(r, self._rules) for r in routes)
        self._roles = {k: _Role(v) for k, v in compiled["roles"].items()}
        self._response = tuple(_ResponseRule(i, r) for i, r in enumerate(compiled["response_rules"]))
        self._limits = tuple(_Limit(x) for x in compiled["rate_limits"])
        self._redact_memo: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._response_memo: dict[tuple[Any, ...], dict[str, Any]] = {}

    @classmethod
    def from_compiled(cls, compiled: Mapping[str, Any], *, sources: tuple[Any, ...] = ()) -> Policy:
        try:
            return cls(compiled, sources=sources)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"<compiled>: malformed compiled policy ({type(exc).__name__})") from None

    def __repr__(self) -> str:
        return f"Policy(id={self.id!r}, version={self.version[:12]}…, label={self.label!r})"

    # --- evaluation ------------------------------------------------------------------------
    def _decision(self, **kw: Any) -> Decision:
        kw.setdefault("detail", {})
        return Decision(policy_id=self.id, policy_version=self.version, policy_label=self.label, **kw)

    def evaluate(self, input: Mapping[str, Any]) -> Decision:  # noqa: A002 - the name is the interface
        try:
            f = read_facts(input)
        except BadInput as exc:
            # A server bug, not the client's: fail closed, say so in the record.
            return self._decision(outcome=_DENY, observed=None, status=500,
                                  reason="the request could not be evaluated", code="policy_input_invalid",
                                  matched=({"rule": "$input", "effect": _DENY_NAME, "priority": None,
                                            "why": [str(exc)]},),
                                  redact={}, max_tokens_cap=None, response=_empty_response(), limits=(),
                                  mode="enforce")
        route = next((r for r in self._routes if r.matches(f)), None)
        if route is None:
            status, _, _ = self._default_deny
            return self._decision(outcome=_DENY, observed=None, status=status, code="route_not_allowed",
                                  reason="no policy route covers this request",
                                  matched=({"rule": "$no_route", "effect": _DENY_NAME, "priority": None,
                                            "why": ["no route matches this path and api"]},),
                                  redact={}, max_tokens_cap=None, response=_empty_response(), limits=(),
                                  mode="enforce")
        f.route_id = route.id
        res = self._pass(f, route, shadow=False)
        detail: dict[str, Any] = {}
        observed = res.observed
        if route.mode == "observe" and res.outcome is not _OBSERVE:
            observed, res.observe_rule = res.outcome, None
            detail["observed"] = self._would(res)
            res = _Result(_OBSERVE, 200, _OBSERVED_CODE, "", res.matched, {}, None, observed)
        elif res.outcome is _OBSERVE:
            detail["observed"] = {"outcome": str(res.observed) if res.observed else None,
                                  "by_rule": res.observe_rule}
        matched = list(res.matched)
        if route.mode in SHADOW_MODES and self._shadow_rules:
            sh = self._pass(f, route, shadow=True)
            own = {m["rule"] for m in matched}
            matched += [dict(m, shadow=True) for m in sh.matched if m["rule"] not in own]
            detail["shadow"] = self._would(sh)
            if res.outcome is not _OBSERVE:
                observed = sh.outcome

        applies = ROWS[res.outcome].response
        if applies is _ALL_RESPONSE:
            response = self._response_for(f)
            limits = tuple(dict(x.record) for x in self._limits if x.matcher.test(f))
        elif applies is _MARKER_ONLY:
            marker = self._response_for(f)["marker_header"]
            response = {"redact": {}, "block": (), "marker_header": marker, "rules": ()}
            limits = ()
            if "observed" in detail and route.mode == "observe":
                detail["observed"]["limits"] = [x.record["id"] for x in self._limits if x.matcher.test(f)]
        else:
            response, limits = _empty_response(), ()
        return self._decision(outcome=res.outcome, observed=observed, status=res.status, reason=res.reason,
                              code=res.code, matched=tuple(matched), redact=res.redact, max_tokens_cap=res.cap,
                              response=response, limits=limits, mode=route.mode, route=route.id, detail=detail,
                              serve_with=res.serve_with if applies is _ALL_RESPONSE else None)

    @staticmethod
    def _would(res: _Result) -> dict[str, Any]:
        return {"outcome": str(res.outcome), "status": res.status, "code": res.code, "reason": res.reason,
                "redact": dict(res.redact), "max_tokens_cap": res.cap,
                "rules": [m["rule"] for m in res.matched]}

    def _pass(self, f: Facts, route: Route[Rule], *, shadow: bool) -> _Result:
        labels = f.labels
        entries: list[dict[str, Any]] = []
        best: dict[Effect, Rule] = {}     # per effect, the rule of the highest priority
        redacts: list[Rule] = []
        rule_cap: int | None = None
        serve_w: Rule | None = None
        for r in route.candidates(f):
            if r.shadow and not shadow:
                continue
            if r.redact_labels is not None and r.redact_labels.isdisjoint(labels):
                continue       # a redact rule needs something to redact
            for t in r.tests:
                if not t(f):
                    break
            else:
                if r.unless is not None and all(t(f) for t in r.unless):
                    continue
                entries.append(r.entry(f))
                # Candidates come in declaration order: on equal priority the earlier rule stays.
                w = best.get(r.effect)
                if w is None or r.priority > w.priority:
                    best[r.effect] = r
                if not r.releases:
                    continue   # a rule that stops the request has no cap and no model to serve with
                if r.max_tokens is not None:
                    rule_cap = r.max_tokens if rule_cap is None else min(rule_cap, r.max_tokens)
                if r.serve_with is not None and (serve_w is None or r.priority > serve_w.priority):
                    serve_w = r
                if r.redact_labels is not None:
                    redacts.append(r)

        # Role constraints: model allowlist and the max_tokens cap.
        synthetic: list[tuple[dict[str, Any], tuple[int, str, str]]] = []
        cap: int | None = None
        if self._roles and f.model is not None:
            roles = self._roles
            caps = [roles[r].max_tokens for r in f.roles if r in roles and roles[r].models.match(f.model)]
            if not caps:
                synthetic.append(({"rule": "$roles.models", "effect": _DENY_NAME, "priority": None,
                                   "why": ("none of the caller's roles allows this model",)},
                                  (403, "model_not_allowed", "the requested model is not allowed for your roles")))
            else:
                cap = None if None in caps else max(caps)      # roles add up: the most generous applies
        if rule_cap is not None:
            cap = rule_cap if cap is None else min(cap, rule_cap)   # rules only restrict
        if cap is not None and f.max_tokens is not None and f.max_tokens > cap:
            synthetic.append(({"rule": "$max_tokens", "effect": _DENY_NAME, "priority": None,
                               "why": (f"max_tokens {f.max_tokens} > cap {cap}",)},
                              (400, "max_tokens_exceeded", f"max_tokens is above the cap of {cap} for your roles")))

        redact: dict[str, str] = {}
        win_priority: float
        winner: Rule | None = None
        if best and not synthetic:
            for row in PRECEDENCE:
                winner = best.get(row.effect)
                if winner is not None:
                    break
        if synthetic:                      # role constraints rank above every rule
            status, code, reason = synthetic[0][1]
            entries = [e for e, _ in synthetic] + entries
            outcome, win_priority = _DENY, _INF
        elif winner is None:
            status, code, reason = self._default_deny
            entries.append({"rule": "$default", "effect": _DENY_NAME, "priority": None,
                            "why": (_NOTHING_RELEASED,)})
            outcome, win_priority = _DENY, _NEG_INF
        else:
            outcome, win_priority = winner.effect, winner.priority
            row = ROWS[outcome]
            if row.code is None:           # the rule's own status, code and reason (deny)
                status, code, reason = winner.deny["status"], winner.deny["code"], winner.deny["reason"]
            else:
                status, code, reason = 200, row.code, ""
            if outcome is _REDACT:
                redact = self._merged_redact(tuple(r.idx for r in redacts))
        for row in OVERRIDES if best else ():
            w = best.get(row.effect)
            if w is not None and w.priority > win_priority:
                return _Result(row.effect, 200, row.code or "", "", entries, {}, None,
                               observed=outcome, observe_rule=w.id)
        releases = ROWS[outcome].releases
        return _Result(outcome, status, code, reason, entries, redact, cap if releases else None,
                       serve_with=serve_w.serve_with if serve_w is not None and releases else None)

    def _merged_redact(self, idxs: tuple[int, ...]) -> dict[str, str]:
        """Most restrictive strategy per label over these redact rules (memoised: a policy has
        few distinct combinations, and the result depends on nothing else)."""
        hit = self._redact_memo.get(idxs)
        if hit is None:
            merged: dict[str, str] = {}
            for i in idxs:
                for lab, strat in self._rules[i].redact.items():
                    prev = merged.get(lab)
                    if prev is None or _STRATEGY_RANK[strat] < _STRATEGY_RANK[prev]:
                        merged[lab] = strat
            hit = {k: merged[k] for k in sorted(merged)}
            if len(self._redact_memo) >= _MEMO_MAX:
                self._redact_memo.clear()
            self._redact_memo[idxs] = hit
        return dict(hit)

    def _response_for(self, f: Facts) -> dict[str, Any]:
        idxs = tuple(rr.idx for rr in self._response if rr.matcher.test(f))
        hit = self._response_memo.get(idxs)
        if hit is None:
            hit = self._merge_response(idxs)
            if len(self._response_memo) >= _MEMO_MAX:
                self._response_memo.clear()
            self._response_memo[idxs] = hit
        return {"redact": dict(hit["redact"]), "block": hit["block"],
                "marker_header": dict(hit["marker_header"]) if hit["marker_header"] else None, "rules": hit["rules"]}

    def _merge_response(self, idxs: tuple[int, ...]) -> dict[str, Any]:
        redact: dict[str, str] = {}
        block: set[str] = set()
        marker: tuple[Any, ...] | None = None
        ids: list[str] = []
        for i in idxs:
            rr = self._response[i]
            ids.append(rr.id)
            for lab, strat in rr.redact.items():
                prev = redact.get(lab)
                if prev is None or _STRATEGY_RANK[strat] < _STRATEGY_RANK[prev]:
                    redact[lab] = strat
            block.update(rr.block)
            if rr.marker is not None and (marker is None or rr.priority > marker[0]):
                marker = (rr.priority, rr.marker)
        return {"redact": {k: redact[k] for k in sorted(redact)}, "block": tuple(sorted(block)),
                "marker_header": marker[1] if marker else None, "rules": tuple(ids)}
