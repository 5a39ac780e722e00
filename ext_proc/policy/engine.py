"""The compiled policy and its evaluation: ``Policy.evaluate(input) -> Decision``.

Evaluation is pure and deterministic: no clock, no I/O, no randomness, no dependence on the order
of roles, groups or labels in the input. Everything that can be precomputed (globs, label sets,
per-route candidate indexes) is built once in ``Policy.__init__`` from the canonical compiled form.

Combination (docs/policy.md has the long form):
  1. the first route (declaration order) that matches gives the mode; no route -> deny;
  2. candidate rules come from the route's indexes (by label, by role, or always);
  3. role constraints add synthetic denies (model not allowed, max_tokens above the cap);
  4. deny > redact > permit among matched rules; nothing matched -> default deny; the highest
     priority rule of the winning effect (then the earliest declared) gives status/code/reason;
  5. an ``observe`` rule with a priority strictly above that winner turns the outcome into
     ``observe`` (the request passes unchanged; ``observed`` says what enforce would have done);
  6. route mode ``observe`` does the same for every request on the route; ``shadow`` enforces
     the normal rules and evaluates ``shadow`` rules too, recording the shadow outcome (``multiplex``
     is its former name, still accepted: "multiplex" now means only provider translation).
"""

from __future__ import annotations

# The route mode that also evaluates shadow rules; "multiplex" is its former name.
SHADOW_MODES = ("shadow", "multiplex")

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from ext_proc.policy.compile import STRATEGY_ORDER, PolicyError, canonical_json
from ext_proc.policy.glob import GlobSet

_INF = math.inf
_NEG_INF = -math.inf
_STRATEGY_RANK = {s: i for i, s in enumerate(STRATEGY_ORDER)}   # lower = more restrictive
_MEMO_MAX = 4096


@dataclass(frozen=True)
class Decision:
    outcome: str
    observed: str | None
    status: int
    reason: str
    code: str
    matched: tuple[dict, ...]
    redact: Mapping[str, str]
    max_tokens_cap: int | None
    response: Mapping
    limits: tuple[dict, ...]
    mode: str
    policy_id: str
    policy_version: str
    policy_label: str | None
    route: str | None = None
    serve_with: str | None = None     # a model of the multiplex map the policy chose for this request
    # What the non-enforced evaluation would have done (observe outcome / multiplex shadow).
    detail: Mapping = field(default_factory=dict)

    def denied(self, code: str, reason: str, status: int = 403) -> "Decision":
        """This decision turned into a deny by a fact found after evaluation (a redaction the
        request cannot carry); the matched rules stay as evidence of what was decided first."""
        return replace(self, outcome="deny", status=status, code=code, reason=reason)

    def to_record(self) -> dict:
        return {
            "outcome": self.outcome, "observed": self.observed, "status": self.status,
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


class _BadInput(ValueError):
    pass


class _Facts:
    """The policy input, checked and pre-digested once per evaluation."""

    __slots__ = ("subject", "issuer", "auth_method", "roles", "groups", "tenant", "scopes", "actors",
                 "path", "surface", "api", "provider", "inspectable", "model", "labels",
                 "bytes", "tokens", "max_tokens", "stream", "route_id")


def _str_or_none(v: Any, what: str) -> str | None:
    if v is None or type(v) is str:
        return v
    raise _BadInput(f"{what} must be a string or null")


def _str_set(v: Any, what: str) -> frozenset[str]:
    if not v:
        if v is None or isinstance(v, (list, tuple)):
            return _EMPTY_SET
        raise _BadInput(f"{what} must be a list of strings")
    if type(v) is not list and type(v) is not tuple:
        raise _BadInput(f"{what} must be a list of strings")
    for x in v:
        if type(x) is not str:
            raise _BadInput(f"{what} must be a list of strings")
    return frozenset(v)


_EMPTY_SET: frozenset[str] = frozenset()


def _int(v: Any, what: str, *, optional: bool = False) -> int | None:
    if type(v) is int and v >= 0:
        return v
    if v is None and optional:
        return None
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _BadInput(f"{what} must be a non-negative integer")
    return v


def _mapping(v: Any, what: str) -> Mapping:
    if type(v) is dict:          # the common case; isinstance on an ABC is slow
        return v
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _BadInput(f"{what} must be an object")
    return v


def _facts(inp: Any) -> _Facts:
    if type(inp) is not dict and not isinstance(inp, Mapping):
        raise _BadInput("the policy input must be an object")
    f = _Facts()
    ident = _mapping(inp.get("identity"), "identity")
    f.subject = _str_or_none(ident.get("subject"), "identity.subject")
    f.issuer = _str_or_none(ident.get("issuer"), "identity.issuer")
    f.auth_method = _str_or_none(ident.get("auth_method"), "identity.auth_method")
    f.tenant = _str_or_none(ident.get("tenant"), "identity.tenant")
    f.roles = _str_set(ident.get("roles"), "identity.roles")
    f.groups = _str_set(ident.get("groups"), "identity.groups")
    f.scopes = _str_set(ident.get("scopes"), "identity.scopes")
    actor = ident.get("actor")
    if isinstance(actor, str):           # a single actor is accepted as a one-element chain
        actor = [actor]
    f.actors = tuple(sorted(_str_set(actor, "identity.actor")))
    route = _mapping(inp.get("route"), "route")
    f.path = _str_or_none(route.get("path"), "route.path") or ""
    f.surface = _str_or_none(route.get("surface"), "route.surface") or "unknown"
    f.api = _str_or_none(route.get("api"), "route.api") or "unknown"
    f.provider = _str_or_none(route.get("provider"), "route.provider")
    insp = route.get("inspectable", False)
    if not isinstance(insp, bool):
        raise _BadInput("route.inspectable must be a boolean")
    f.inspectable = insp
    model = _str_or_none(inp.get("model"), "model")
    f.model = model.lower() if model is not None else None
    labels: dict[str, tuple[int, int]] = {}
    for label, summary in _mapping(inp.get("classification"), "classification").items():
        if type(label) is not str:
            raise _BadInput("classification keys must be labels")
        s = _mapping(summary, "classification entries")
        count = _int(s.get("count", 1), "classification count")
        conf = _int(s.get("max_confidence", 100), "classification max_confidence")
        if count:
            labels[label] = (count, conf)
    f.labels = labels
    req = _mapping(inp.get("request"), "request")
    f.bytes = _int(req.get("bytes"), "request.bytes")
    f.tokens = _int(req.get("estimated_tokens"), "request.estimated_tokens")
    f.max_tokens = _int(req.get("max_tokens"), "request.max_tokens", optional=True)
    stream = req.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadInput("request.stream must be a boolean")
    f.stream = stream
    f.route_id = None
    return f


# --- conditions ------------------------------------------------------------------------
# A condition is (test, why). test(facts) -> bool is the hot path. why explains a match: a
# string fixed at load time (the input itself is recorded next to the decision, so the record
# shows which value met it) or, for labels, a function of the facts (which labels, how many).
Cond = tuple[Callable[[_Facts], bool], Any]


def _show(values: Any, limit: int = 8) -> str:
    vals = list(values)
    text = ", ".join(vals[:limit])
    return f"[{text}{', ...' if len(vals) > limit else ''}]"


def _glob_cond(attr: str, patterns: list[str]) -> Cond:
    gs = GlobSet(patterns)
    first = gs.first_match
    getter = {"subject": lambda f: f.subject, "issuer": lambda f: f.issuer, "tenant": lambda f: f.tenant,
              "path": lambda f: f.path, "surface": lambda f: f.surface, "model": lambda f: f.model}[attr]
    if len(gs.patterns) == 1 and not gs.globs:                 # one exact value
        (only,) = gs.patterns
        return (lambda f: getter(f) == only), f"{attr} is {only!r}"
    if not gs.globs:
        exact = gs.exact
        return (lambda f: getter(f) in exact), f"{attr} in {_show(gs.patterns)}"

    def test(f: _Facts) -> bool:
        v = getter(f)
        return v is not None and first(v) is not None

    return test, f"{attr} matches one of {_show(gs.patterns)}"


def _labels_cond(spec: dict) -> list[Cond]:
    mc, mconf = spec["min_count"], spec["min_confidence"]
    plain = mc <= 1 and mconf <= 0
    qual = "" if plain else f" (count >= {mc}, confidence >= {mconf})"

    def present(f: _Facts, label: str) -> bool:
        s = f.labels.get(label)
        return s is not None and (plain or (s[0] >= mc and s[1] >= mconf))

    out: list[Cond] = []
    if "any" in spec:
        anyl = tuple(spec["any"])
        anys = frozenset(anyl)
        if plain:
            test = lambda f: not anys.isdisjoint(f.labels)  # noqa: E731
        else:
            def test(f: _Facts) -> bool:
                for lab in anys.intersection(f.labels):
                    s = f.labels[lab]
                    if s[0] >= mc and s[1] >= mconf:
                        return True
                return False
        if len(anyl) == 1:
            why: Any = f"label {anyl[0]} present{qual}"
        else:
            # Only the label ids: their counts and confidences are in the recorded input.
            why = lambda f: ("labels present" + qual + ": "  # noqa: E731
                             + ", ".join(sorted(lab for lab in anys.intersection(f.labels) if present(f, lab))))
        out.append((test, why))
    if "all" in spec:
        alll = tuple(spec["all"])
        out.append((lambda f: all(present(f, lab) for lab in alll),
                    f"all of {_show(alll)} present{qual}"))
    if "none" in spec:
        nonel = frozenset(spec["none"])
        if plain:
            test_none = lambda f: nonel.isdisjoint(f.labels)  # noqa: E731
        else:
            test_none = lambda f: not any(present(f, lab) for lab in nonel.intersection(f.labels))  # noqa: E731
        out.append((test_none, f"none of {_show(sorted(nonel))} present{qual}"))
    return out


def _compile_when(when: Mapping[str, Any]) -> tuple[Cond, ...]:
    conds: list[Cond] = []
    # Cheap, selective checks first.
    order = ("routes", "apis", "providers", "roles", "roles_all", "groups", "groups_all", "scopes",
             "scopes_all", "auth_methods", "actor", "model", "inspectable", "stream", "labels",
             "bytes_over", "tokens_over", "max_tokens_over", "subjects", "issuers", "tenants",
             "actors", "paths", "surfaces", "models")
    for key in order:
        if key not in when:
            continue
        v = when[key]
        s = frozenset(v) if isinstance(v, list) else None
        if key == "routes":
            conds.append(((lambda f, s=s: f.route_id in s), f"route in {_show(v)}"))
        elif key == "apis":
            conds.append(((lambda f, s=s: f.api in s), f"api in {_show(v)}"))
        elif key == "providers":
            conds.append(((lambda f, s=s: f.provider in s), f"provider in {_show(v)}"))
        elif key == "auth_methods":
            conds.append(((lambda f, s=s: f.auth_method in s), f"auth_method in {_show(v)}"))
        elif key == "roles":
            conds.append(((lambda f, s=s: not s.isdisjoint(f.roles)), f"roles include one of {_show(v)}"))
        elif key == "groups":
            conds.append(((lambda f, s=s: not s.isdisjoint(f.groups)), f"groups include one of {_show(v)}"))
        elif key == "scopes":
            conds.append(((lambda f, s=s: not s.isdisjoint(f.scopes)), f"scopes include one of {_show(v)}"))
        elif key == "roles_all":
            conds.append(((lambda f, s=s: s <= f.roles), f"roles include all of {_show(v)}"))
        elif key == "groups_all":
            conds.append(((lambda f, s=s: s <= f.groups), f"groups include all of {_show(v)}"))
        elif key == "scopes_all":
            conds.append(((lambda f, s=s: s <= f.scopes), f"scopes include all of {_show(v)}"))
        elif key == "actor":
            if v == "present":
                conds.append(((lambda f: bool(f.actors)), "an actor (agent) acts for the subject"))
            else:
                conds.append(((lambda f: not f.actors), "no actor (agent)"))
        elif key == "model":
            if v == "present":
                conds.append(((lambda f: f.model is not None), "a model is named"))
            else:
                conds.append(((lambda f: f.model is None), "no model is named"))
        elif key == "inspectable":
            conds.append(((lambda f, w=v: f.inspectable is w), f"inspectable is {str(v).lower()}"))
        elif key == "stream":
            conds.append(((lambda f, w=v: f.stream is w), f"stream is {str(v).lower()}"))
        elif key == "labels":
            conds.extend(_labels_cond(v))
        elif key == "bytes_over":
            conds.append(((lambda f, n=v: f.bytes > n), f"request bytes > {v}"))
        elif key == "tokens_over":
            conds.append(((lambda f, n=v: f.tokens > n), f"estimated tokens > {v}"))
        elif key == "max_tokens_over":
            conds.append(((lambda f, n=v: f.max_tokens is not None and f.max_tokens > n), f"max_tokens > {v}"))
        elif key in ("subjects", "issuers", "tenants", "paths", "surfaces", "models"):
            attr = {"subjects": "subject", "issuers": "issuer", "tenants": "tenant", "paths": "path",
                    "surfaces": "surface", "models": "model"}[key]
            conds.append(_glob_cond(attr, v))
        elif key == "actors":
            gs = GlobSet(v)
            conds.append(((lambda f, g=gs: (g.match(f.actors[0]) if len(f.actors) == 1
                                            else any(g.match(a) for a in f.actors))),
                          f"an actor matches one of {_show(gs.patterns)}"))
    return tuple(conds)


class _Matcher:
    """``when`` and ``unless`` of a rule, response rule or rate limit."""

    __slots__ = ("tests", "whys", "unless", "static_why")

    def __init__(self, when: Mapping, unless: Mapping | None) -> None:
        conds = _compile_when(when)
        self.tests = tuple(c[0] for c in conds)
        self.whys = tuple(c[1] for c in conds)
        self.unless = tuple(c[0] for c in _compile_when(unless)) if unless else None
        static = list(self.whys) or ["no conditions (matches every request on its routes)"]
        if self.unless is not None:
            static.append("'unless' did not match")
        self.static_why = tuple(static) if all(type(w) is str for w in static) else None

    def test(self, f: _Facts) -> bool:
        for t in self.tests:
            if not t(f):
                return False
        if self.unless is not None and all(t(f) for t in self.unless):
            return False
        return True

    def why(self, f: _Facts) -> tuple[str, ...]:
        if self.static_why is not None:
            return self.static_why
        out = [w if type(w) is str else w(f) for w in self.whys]
        if self.unless is not None:
            out.append("'unless' did not match")
        return tuple(out)
        return out


class _Rule:
    __slots__ = ("idx", "id", "effect", "priority", "shadow", "matcher", "tests", "unless", "deny", "redact",
                 "redact_labels", "max_tokens", "serve_with", "routes", "index")

    def __init__(self, idx: int, spec: Mapping) -> None:
        self.idx = idx
        self.id = spec["id"]
        self.effect = spec["effect"]
        self.priority = spec["priority"]
        self.shadow = spec["shadow"]
        when = spec["when"]
        self.matcher = _Matcher(when, spec["unless"])
        self.tests = self.matcher.tests
        self.unless = self.matcher.unless
        self.deny = spec["deny"]
        self.redact = dict(spec["redact"])
        self.redact_labels = frozenset(self.redact) if self.effect == "redact" else None
        self.max_tokens = spec["max_tokens"]
        self.serve_with = spec.get("serve_with")
        self.routes = frozenset(when.get("routes", ())) or None
        self.index = _index_key(when, self.redact if self.effect == "redact" else None)

    def entry(self, f: _Facts) -> dict:
        why = self.matcher.why(f)
        if self.redact_labels is not None:
            why = why + ("redacts " + ", ".join(sorted(self.redact_labels.intersection(f.labels))),)
        return {"rule": self.id, "effect": self.effect, "priority": self.priority, "why": why}


def _affix_keys(patterns: list[str]) -> tuple[str, ...] | None:
    """Index keys for glob patterns: ``=value`` for an exact pattern, ``^prefix`` for ``prefix*``;
    None when a pattern has another shape (then this facet cannot index the rule)."""
    keys = []
    for p in patterns:
        if "*" not in p and "?" not in p:
            keys.append("=" + p)
        elif p.endswith("*") and "*" not in p[:-1] and "?" not in p and len(p) > 1:
            keys.append("^" + p[:-1])
        else:
            return None
    return tuple(keys)


def _index_key(when: Mapping, redact: Mapping | None) -> tuple[str, tuple[str, ...]] | None:
    """The one necessary condition a rule is indexed under: (facet, keys). The rule is a
    candidate only when the input has one of ``keys`` in ``facet``; None: always a candidate.
    Facets are tried from the most to the least selective."""
    labels = when.get("labels", {})
    if labels.get("any"):
        return "labels", tuple(labels["any"])
    if labels.get("all"):
        return "labels", (labels["all"][0],)
    if redact:
        return "labels", tuple(redact)          # a redact rule needs one of its labels present
    for facet in ("subjects", "tenants"):
        keys = _affix_keys(when[facet]) if when.get(facet) else None
        if keys:
            return facet, keys
    for facet in ("roles", "groups", "scopes"):
        if when.get(facet):
            return facet, tuple(when[facet])
        if when.get(facet + "_all"):
            return facet, (when[facet + "_all"][0],)
    for facet in ("actors", "models"):
        keys = _affix_keys(when[facet]) if when.get(facet) else None
        if keys:
            return facet, keys
    if when.get("actor") == "present" or when.get("actors"):
        return "actor", ("present",)
    if when.get("actor") == "absent":
        return "actor", ("absent",)
    if when.get("auth_methods"):
        return "auth_methods", tuple(when["auth_methods"])
    if when.get("apis"):
        return "apis", tuple(when["apis"])
    return None


_GLOB_FACETS = ("subjects", "tenants", "actors", "models")


class _GlobBucket:
    """Rules keyed by exact values and literal prefixes: lookup is a few dict probes."""

    __slots__ = ("exact", "prefix", "lengths")

    def __init__(self, entries: dict[str, list]) -> None:
        self.exact = {k[1:]: tuple(v) for k, v in entries.items() if k[0] == "="}
        self.prefix = {k[1:]: tuple(v) for k, v in entries.items() if k[0] == "^"}
        self.lengths = tuple(sorted({len(k) for k in self.prefix}))

    def lookup(self, value: str | None, found: list) -> None:
        if value is None:
            return
        hit = self.exact.get(value)
        if hit:
            found.extend(hit)
        for n in self.lengths:
            if n > len(value):
                break
            hit = self.prefix.get(value[:n])
            if hit:
                found.extend(hit)


class _Route:
    __slots__ = ("id", "mode", "paths", "apis", "surfaces", "providers", "always", "index")

    def __init__(self, spec: Mapping, rules: list[_Rule]) -> None:
        self.id = spec["id"]
        self.mode = spec["mode"]
        self.paths = GlobSet(spec["paths"]) if spec["paths"] else None
        self.apis = frozenset(spec["apis"]) or None
        self.surfaces = GlobSet(spec["surfaces"]) if spec["surfaces"] else None
        self.providers = frozenset(spec["providers"]) or None
        always: list[_Rule] = []
        index: dict[str, dict[str, list[_Rule]]] = {}
        for r in rules:
            if r.routes is not None and self.id not in r.routes:
                continue
            if r.index is None:
                always.append(r)
                continue
            facet, keys = r.index
            bucket = index.setdefault(facet, {})
            for k in keys:
                bucket.setdefault(k, []).append(r)
        self.always = tuple(always)
        self.index = tuple((facet, _GlobBucket(b) if facet in _GLOB_FACETS else {k: tuple(v) for k, v in b.items()})
                           for facet, b in sorted(index.items()))

    def matches(self, f: _Facts) -> bool:
        return ((self.apis is None or f.api in self.apis)
                and (self.providers is None or f.provider in self.providers)
                and (self.paths is None or self.paths.match(f.path))
                and (self.surfaces is None or self.surfaces.match(f.surface)))

    def candidates(self, f: _Facts) -> list[_Rule]:
        """Rules that can match, in declaration order (so ``matched`` is stable)."""
        found: list[_Rule] = list(self.always)
        for facet, bucket in self.index:
            if facet == "labels":
                keys: Any = f.labels
            elif facet in ("roles", "groups", "scopes"):
                keys = getattr(f, facet)
            elif facet == "actor":
                keys = ("present",) if f.actors else ("absent",)
            elif facet == "auth_methods":
                keys = (f.auth_method,)
            elif facet == "apis":
                keys = (f.api,)
            else:
                if facet == "actors":
                    for a in f.actors:
                        bucket.lookup(a, found)
                else:
                    bucket.lookup(getattr(f, _FACET_ATTR[facet]), found)
                continue
            for k in keys:
                hit = bucket.get(k)
                if hit:
                    found.extend(hit)
        if len(found) > 1:
            found = sorted(set(found), key=_idx_of)
        return found


_FACET_ATTR = {"subjects": "subject", "tenants": "tenant", "models": "model"}


def _idx_of(r: _Rule) -> int:
    return r.idx


class _Role:
    __slots__ = ("models", "max_tokens")

    def __init__(self, spec: Mapping) -> None:
        self.models = GlobSet(spec["models"])
        self.max_tokens = spec["max_tokens"]


class _ResponseRule:
    __slots__ = ("idx", "id", "priority", "matcher", "redact", "block", "marker")

    def __init__(self, idx: int, spec: Mapping) -> None:
        self.idx, self.id, self.priority = idx, spec["id"], spec["priority"]
        self.matcher = _Matcher(spec["when"], spec["unless"])
        self.redact = dict(spec["redact"])
        self.block = tuple(spec["block"])
        self.marker = dict(spec["marker_header"]) if spec["marker_header"] else None


class _Limit:
    __slots__ = ("matcher", "record")

    def __init__(self, spec: Mapping) -> None:
        self.matcher = _Matcher(spec["when"], spec["unless"])
        self.record = {k: spec[k] for k in ("id", "requests", "tokens", "window_s", "on_backend_error",
                                            "default_max_tokens")}
        self.record["key"] = tuple(spec["key"])


@dataclass
class _Result:
    """One evaluation pass (enforced or shadow) before it becomes a Decision."""

    outcome: str
    status: int
    code: str
    reason: str
    matched: list[dict]
    redact: dict[str, str]
    cap: int | None
    observed: str | None = None
    observe_rule: str | None = None
    serve_with: str | None = None     # the model the winning serve_with rule names


def _empty_response() -> dict:
    return {"redact": {}, "block": (), "marker_header": None, "rules": ()}


class Policy:
    """A validated, compiled policy. Build with ``load_policy``/``load_policy_text`` or
    ``Policy.from_compiled``; never half-built (the constructor raises before anything is exposed)."""

    def __init__(self, compiled: Mapping, *, sources: tuple = ()) -> None:
        self.compiled = compiled
        self.canonical = canonical_json(compiled)
        self.version = hashlib.sha256(self.canonical).hexdigest()
        self.id: str = compiled["id"]
        self.label: str | None = compiled["label"]
        self.sources = tuple(sources)
        self.dictionaries: Mapping[str, tuple[str, ...]] = {k: tuple(v) for k, v in compiled["dictionaries"].items()}
        d = compiled["defaults"]["deny"]
        self._default_deny = (d["status"], d["code"], d["reason"])
        self._rules = [_Rule(i, r) for i, r in enumerate(compiled["rules"])]
        self._shadow_rules = [r for r in self._rules if r.shadow]
        routes = compiled["routes"] or [{"id": "default", "paths": [], "apis": [], "surfaces": [],
                                         "providers": [], "mode": compiled["defaults"]["mode"]}]
        self._routes = tuple(_Route(r, self._rules) for r in routes)
        self._roles = {k: _Role(v) for k, v in compiled["roles"].items()}
        self._response = tuple(_ResponseRule(i, r) for i, r in enumerate(compiled["response_rules"]))
        self._limits = tuple(_Limit(x) for x in compiled["rate_limits"])
        self._redact_memo: dict[tuple, dict] = {}
        self._response_memo: dict[tuple, dict] = {}

    @classmethod
    def from_compiled(cls, compiled: Mapping, *, sources: tuple = ()) -> "Policy":
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

    def evaluate(self, input: Mapping) -> Decision:  # noqa: A002 - the name is the interface
        try:
            f = _facts(input)
        except _BadInput as exc:
            # A server bug, not the client's: fail closed, say so in the record.
            return self._decision(outcome="deny", observed=None, status=500, reason="the request could not be evaluated",
                                  code="policy_input_invalid",
                                  matched=({"rule": "$input", "effect": "deny", "priority": None, "why": [str(exc)]},),
                                  redact={}, max_tokens_cap=None, response=_empty_response(), limits=(),
                                  mode="enforce")
        route = next((r for r in self._routes if r.matches(f)), None)
        if route is None:
            status, _, _ = self._default_deny
            return self._decision(outcome="deny", observed=None, status=status, code="route_not_allowed",
                                  reason="no policy route covers this request",
                                  matched=({"rule": "$no_route", "effect": "deny", "priority": None,
                                            "why": ["no route matches this path and api"]},),
                                  redact={}, max_tokens_cap=None, response=_empty_response(), limits=(),
                                  mode="enforce")
        f.route_id = route.id
        res = self._pass(f, route, shadow=False)
        detail: dict[str, Any] = {}
        observed = res.observed
        if route.mode == "observe" and res.outcome != "observe":
            observed, res.observe_rule = res.outcome, None
            detail["observed"] = self._would(res)
            res = _Result("observe", 200, "policy_observed", "", res.matched, {}, None, observed)
        elif res.outcome == "observe":
            detail["observed"] = {"outcome": res.observed, "by_rule": res.observe_rule}
        matched = list(res.matched)
        if route.mode in SHADOW_MODES and self._shadow_rules:
            sh = self._pass(f, route, shadow=True)
            own = {m["rule"] for m in matched}
            matched += [dict(m, shadow=True) for m in sh.matched if m["rule"] not in own]
            detail["shadow"] = self._would(sh)
            if res.outcome != "observe":
                observed = sh.outcome

        if res.outcome in ("permit", "redact"):
            response = self._response_for(f)
            limits = tuple(dict(x.record) for x in self._limits if x.matcher.test(f))
        elif res.outcome == "observe":
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
                              serve_with=res.serve_with if res.outcome in ("permit", "redact") else None)

    @staticmethod
    def _would(res: _Result) -> dict:
        return {"outcome": res.outcome, "status": res.status, "code": res.code, "reason": res.reason,
                "redact": dict(res.redact), "max_tokens_cap": res.cap,
                "rules": [m["rule"] for m in res.matched]}

    def _pass(self, f: _Facts, route: _Route, *, shadow: bool) -> _Result:
        labels = f.labels
        entries: list[dict] = []
        deny_w: _Rule | None = None
        redacts: list[_Rule] = []
        permit_p = redact_p = None
        observe_w: _Rule | None = None
        rule_cap: int | None = None
        serve_w: _Rule | None = None
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
                e = r.effect
                # Candidates come in declaration order: on equal priority the earlier rule stays.
                if e == "deny":
                    if deny_w is None or r.priority > deny_w.priority:
                        deny_w = r
                    continue
                if r.max_tokens is not None:
                    rule_cap = r.max_tokens if rule_cap is None else min(rule_cap, r.max_tokens)
                if r.serve_with is not None and (serve_w is None or r.priority > serve_w.priority):
                    serve_w = r
                if e == "redact":
                    redacts.append(r)
                    if redact_p is None or r.priority > redact_p:
                        redact_p = r.priority
                elif e == "permit":
                    if permit_p is None or r.priority > permit_p:
                        permit_p = r.priority
                elif observe_w is None or r.priority > observe_w.priority:
                    observe_w = r

        # Role constraints: model allowlist and the max_tokens cap.
        synthetic: list[tuple[dict, tuple[int, str, str]]] = []
        cap: int | None = None
        if self._roles and f.model is not None:
            roles = self._roles
            caps = [roles[r].max_tokens for r in f.roles if r in roles and roles[r].models.match(f.model)]
            if not caps:
                synthetic.append(({"rule": "$roles.models", "effect": "deny", "priority": None,
                                   "why": ("none of the caller's roles allows this model",)},
                                  (403, "model_not_allowed", "the requested model is not allowed for your roles")))
            else:
                cap = None if None in caps else max(caps)      # roles add up: the most generous applies
        if rule_cap is not None:
            cap = rule_cap if cap is None else min(cap, rule_cap)   # rules only restrict
        if cap is not None and f.max_tokens is not None and f.max_tokens > cap:
            synthetic.append(({"rule": "$max_tokens", "effect": "deny", "priority": None,
                               "why": (f"max_tokens {f.max_tokens} > cap {cap}",)},
                              (400, "max_tokens_exceeded", f"max_tokens is above the cap of {cap} for your roles")))

        redact: dict[str, str] = {}
        win_priority: float
        if synthetic:
            status, code, reason = synthetic[0][1]
            entries = [e for e, _ in synthetic] + entries
            outcome, win_priority = "deny", _INF
        elif deny_w is not None:
            status, code, reason = deny_w.deny["status"], deny_w.deny["code"], deny_w.deny["reason"]
            outcome, win_priority = "deny", deny_w.priority
        elif redacts:
            redact = self._merged_redact(tuple(r.idx for r in redacts))
            status, code, reason = 200, "policy_redacted", ""
            outcome, win_priority = "redact", redact_p  # type: ignore[assignment]
        elif permit_p is not None:
            status, code, reason = 200, "policy_permitted", ""
            outcome, win_priority = "permit", permit_p
        else:
            status, code, reason = self._default_deny
            entries.append({"rule": "$default", "effect": "deny", "priority": None,
                            "why": ("no permit or redact rule matched",)})
            outcome, win_priority = "deny", _NEG_INF
        if observe_w is not None and observe_w.priority > win_priority:
            return _Result("observe", 200, "policy_observed", "", entries, {}, None,
                           observed=outcome, observe_rule=observe_w.id)
        return _Result(outcome, status, code, reason, entries, redact, cap if outcome != "deny" else None,
                       serve_with=serve_w.serve_with if serve_w is not None and outcome != "deny" else None)

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

    def _response_for(self, f: _Facts) -> dict:
        idxs = tuple(rr.idx for rr in self._response if rr.matcher.test(f))
        hit = self._response_memo.get(idxs)
        if hit is None:
            hit = self._merge_response(idxs)
            if len(self._response_memo) >= _MEMO_MAX:
                self._response_memo.clear()
            self._response_memo[idxs] = hit
        return {"redact": dict(hit["redact"]), "block": hit["block"],
                "marker_header": dict(hit["marker_header"]) if hit["marker_header"] else None, "rules": hit["rules"]}

    def _merge_response(self, idxs: tuple[int, ...]) -> dict:
        redact: dict[str, str] = {}
        block: set[str] = set()
        marker: tuple | None = None
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
