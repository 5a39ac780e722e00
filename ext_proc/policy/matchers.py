"""Matchers: the compiled ``when``/``unless`` conditions of rules, response rules and rate
limits, and the routes with their per-route candidate indexes.

A condition is compiled once at load time into a closure over facts (facts.py), the hot path of
evaluation, plus a ``why`` that explains a match in the decision record. The index of a route
maps one necessary condition of each rule (a label, a role, an exact subject or a subject
prefix...) to the rule, so evaluation tries only the rules that can match.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from ext_proc.policy.facts import Facts
from ext_proc.policy.glob import GlobSet

# --- conditions ------------------------------------------------------------------------
# A condition is (test, why). test(facts) -> bool is the hot path. why explains a match: a
# string fixed at load time (the input itself is recorded next to the decision, so the record
# shows which value met it) or, for labels, a function of the facts (which labels, how many).
Cond = tuple[Callable[[Facts], bool], Any]


def _show(values: Any, limit: int = 8) -> str:
    vals = list(values)
    text = ", ".join(vals[:limit])
    return f"[{text}{', ...' if len(vals) > limit else ''}]"


def _glob_cond(attr: str, patterns: list[str]) -> Cond:
    gs = GlobSet(patterns)
    first = gs.first_match
    getter: Callable[[Facts], str | None]
    getter = {"subject": lambda f: f.subject, "issuer": lambda f: f.issuer, "tenant": lambda f: f.tenant,
              "path": lambda f: f.path, "surface": lambda f: f.surface, "model": lambda f: f.model}[attr]
    if len(gs.patterns) == 1 and not gs.globs:                 # one exact value
        (only,) = gs.patterns
        return (lambda f: getter(f) == only), f"{attr} is {only!r}"
    if not gs.globs:
        exact = gs.exact
        return (lambda f: getter(f) in exact), f"{attr} in {_show(gs.patterns)}"

    def test(f: Facts) -> bool:
        v = getter(f)
        return v is not None and first(v) is not None

    return test, f"{attr} matches one of {_show(gs.patterns)}"


def _labels_cond(spec: dict[str, Any]) -> list[Cond]:
    mc, mconf = spec["min_count"], spec["min_confidence"]
    plain = mc <= 1 and mconf <= 0
    qual = "" if plain else f" (count >= {mc}, confidence >= {mconf})"

    def present(f: Facts, label: str) -> bool:
        s = f.labels.get(label)
        return s is not None and (plain or (s[0] >= mc and s[1] >= mconf))

    out: list[Cond] = []
    if "any" in spec:
        anyl = tuple(spec["any"])
        anys = frozenset(anyl)
        if plain:
            test = lambda f: not anys.isdisjoint(f.labels)  # noqa: E731
        else:
            def test(f: Facts) -> bool:
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


# Cheap, selective checks first.
_WHEN_ORDER = ("routes", "apis", "providers", "roles", "roles_all", "groups", "groups_all", "scopes",
               "scopes_all", "auth_methods", "actor", "model", "inspectable", "stream", "labels",
               "bytes_over", "tokens_over", "max_tokens_over", "subjects", "issuers", "tenants",
               "actors", "paths", "surfaces", "models")
_GLOB_ATTR = {"subjects": "subject", "issuers": "issuer", "tenants": "tenant", "paths": "path",
              "surfaces": "surface", "models": "model"}


def compile_when(when: Mapping[str, Any]) -> tuple[Cond, ...]:
    conds: list[Cond] = []
    for key in _WHEN_ORDER:
        if key not in when:
            continue
        if key == "labels":
            conds.extend(_labels_cond(when[key]))
        else:
            conds.append(_cond(key, when[key]))
    return tuple(conds)


def _cond(key: str, v: Any) -> Cond:
    """One condition of a ``when`` (each call its own scope: the closures keep their own values)."""
    s: frozenset[str] = frozenset(v) if isinstance(v, list) else frozenset()
    if key == "routes":
        return (lambda f: f.route_id in s), f"route in {_show(v)}"
    if key == "apis":
        return (lambda f: f.api in s), f"api in {_show(v)}"
    if key == "providers":
        return (lambda f: f.provider in s), f"provider in {_show(v)}"
    if key == "auth_methods":
        return (lambda f: f.auth_method in s), f"auth_method in {_show(v)}"
    if key == "roles":
        return (lambda f: not s.isdisjoint(f.roles)), f"roles include one of {_show(v)}"
    if key == "groups":
        return (lambda f: not s.isdisjoint(f.groups)), f"groups include one of {_show(v)}"
    if key == "scopes":
        return (lambda f: not s.isdisjoint(f.scopes)), f"scopes include one of {_show(v)}"
    if key == "roles_all":
        return (lambda f: s <= f.roles), f"roles include all of {_show(v)}"
    if key == "groups_all":
        return (lambda f: s <= f.groups), f"groups include all of {_show(v)}"
    if key == "scopes_all":
        return (lambda f: s <= f.scopes), f"scopes include all of {_show(v)}"
    if key == "actor":
        if v == "present":
            return (lambda f: bool(f.actors)), "an actor (agent) acts for the subject"
        return (lambda f: not f.actors), "no actor (agent)"
    if key == "model":
        if v == "present":
            return (lambda f: f.model is not None), "a model is named"
        return (lambda f: f.model is None), "no model is named"
    if key == "inspectable":
        return (lambda f: f.inspectable is v), f"inspectable is {str(v).lower()}"
    if key == "stream":
        return (lambda f: f.stream is v), f"stream is {str(v).lower()}"
    if key == "bytes_over":
        return (lambda f: f.bytes > v), f"request bytes > {v}"
    if key == "tokens_over":
        return (lambda f: f.tokens > v), f"estimated tokens > {v}"
    if key == "max_tokens_over":
        return (lambda f: f.max_tokens is not None and f.max_tokens > v), f"max_tokens > {v}"
    if key in _GLOB_ATTR:
        return _glob_cond(_GLOB_ATTR[key], v)
    if key == "actors":
        gs = GlobSet(v)
        return ((lambda f: (gs.match(f.actors[0]) if len(f.actors) == 1 else any(gs.match(a) for a in f.actors))),
                f"an actor matches one of {_show(gs.patterns)}")
    raise ValueError(f"no condition for {key!r}")      # a key of _WHEN_ORDER without a branch above


class Matcher:
    """``when`` and ``unless`` of a rule, response rule or rate limit."""

    __slots__ = ("tests", "whys", "unless", "static_why")

    def __init__(self, when: Mapping[str, Any], unless: Mapping[str, Any] | None) -> None:
        conds = compile_when(when)
        self.tests = tuple(c[0] for c in conds)
        self.whys = tuple(c[1] for c in conds)
        self.unless = tuple(c[0] for c in compile_when(unless)) if unless else None
        static = list(self.whys) or ["no conditions (matches every request on its routes)"]
        if self.unless is not None:
            static.append("'unless' did not match")
        self.static_why = tuple(static) if all(type(w) is str for w in static) else None

    def test(self, f: Facts) -> bool:
        for t in self.tests:
            if not t(f):
                return False
        if self.unless is not None and all(t(f) for t in self.unless):
            return False
        return True

    def why(self, f: Facts) -> tuple[str, ...]:
        if self.static_why is not None:
            return self.static_why
        out = [w if type(w) is str else w(f) for w in self.whys]
        if self.unless is not None:
            out.append("'unless' did not match")
        return tuple(out)


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


def index_key(when: Mapping[str, Any], redact: Mapping[str, Any] | None) -> tuple[str, tuple[str, ...]] | None:
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

    def __init__(self, entries: dict[str, list[Any]]) -> None:
        self.exact = {k[1:]: tuple(v) for k, v in entries.items() if k[0] == "="}
        self.prefix = {k[1:]: tuple(v) for k, v in entries.items() if k[0] == "^"}
        self.lengths = tuple(sorted({len(k) for k in self.prefix}))

    def lookup(self, value: str | None, found: list[Any]) -> None:
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


class Indexed(Protocol):
    """What a route's index reads of a rule (policy/evaluation.py's Rule, which imports this
    module): its place in the policy, the routes it is limited to, the facet it is indexed under."""

    @property
    def idx(self) -> int: ...
    @property
    def routes(self) -> frozenset[str] | None: ...
    @property
    def index(self) -> tuple[str, tuple[str, ...]] | None: ...


R = TypeVar("R", bound=Indexed)


class Route(Generic[R]):
    __slots__ = ("id", "mode", "paths", "apis", "surfaces", "providers", "always", "index")

    def __init__(self, spec: Mapping[str, Any], rules: list[R]) -> None:
        self.id = spec["id"]
        self.mode = spec["mode"]
        self.paths = GlobSet(spec["paths"]) if spec["paths"] else None
        self.apis = frozenset(spec["apis"]) or None
        self.surfaces = GlobSet(spec["surfaces"]) if spec["surfaces"] else None
        self.providers = frozenset(spec["providers"]) or None
        always: list[R] = []
        index: dict[str, dict[str, list[R]]] = {}
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
        # (facet, bucket): a _GlobBucket for the glob facets, else a dict key -> rules.
        self.index: tuple[tuple[str, Any], ...] = tuple(
            (facet, _GlobBucket(b) if facet in _GLOB_FACETS else {k: tuple(v) for k, v in b.items()})
            for facet, b in sorted(index.items()))

    def matches(self, f: Facts) -> bool:
        return ((self.apis is None or f.api in self.apis)
                and (self.providers is None or f.provider in self.providers)
                and (self.paths is None or self.paths.match(f.path))
                and (self.surfaces is None or self.surfaces.match(f.surface)))

    def candidates(self, f: Facts) -> list[R]:
        """Rules that can match, in declaration order (so ``matched`` is stable)."""
        found: list[R] = list(self.always)
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


def _idx_of(r: Indexed) -> int:
    return r.idx
