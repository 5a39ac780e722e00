"""The policy input as facts: the JSON document built from a request (pipeline/request.py's
``build_policy_input``, and what every decision record stores under ``input``), checked and
pre-digested once per evaluation so that matchers read typed attributes.

Reading is total: a value of the wrong type raises ``BadInput``, which evaluation turns into a
fail-closed deny (a server bug, never the client's). Order is normalised here (roles, groups and
labels become sets, actors a sorted tuple), which is what makes a decision independent of the
order of the input's lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload


class BadInput(ValueError):
    """The policy input does not have the documented shape."""


class Facts:
    """The policy input, checked and pre-digested once per evaluation. ``route_id`` is the one
    fact evaluation adds: the policy route the request fell on (rules may name it)."""

    __slots__ = ("subject", "issuer", "auth_method", "roles", "groups", "tenant", "scopes", "actors",
                 "path", "surface", "api", "provider", "inspectable", "model", "labels",
                 "bytes", "tokens", "max_tokens", "stream", "route_id")

    subject: str | None
    issuer: str | None
    auth_method: str | None
    roles: frozenset[str]
    groups: frozenset[str]
    tenant: str | None
    scopes: frozenset[str]
    actors: tuple[str, ...]          # sorted
    path: str
    surface: str
    api: str
    provider: str | None
    inspectable: bool
    model: str | None                # lower-cased
    labels: dict[str, tuple[int, int]]   # label -> (count, max_confidence), present labels only
    bytes: int
    tokens: int
    max_tokens: int | None
    stream: bool
    route_id: str | None


def _str_or_none(v: Any, what: str) -> str | None:
    if v is None or type(v) is str:
        return v
    raise BadInput(f"{what} must be a string or null")


def _str_set(v: Any, what: str) -> frozenset[str]:
    if not v:
        if v is None or isinstance(v, (list, tuple)):
            return _EMPTY_SET
        raise BadInput(f"{what} must be a list of strings")
    if type(v) is not list and type(v) is not tuple:
        raise BadInput(f"{what} must be a list of strings")
    for x in v:
        if type(x) is not str:
            raise BadInput(f"{what} must be a list of strings")
    return frozenset(v)


_EMPTY_SET: frozenset[str] = frozenset()


@overload
def _int(v: Any, what: str, *, optional: Literal[False] = False) -> int: ...


@overload
def _int(v: Any, what: str, *, optional: Literal[True]) -> int | None: ...


def _int(v: Any, what: str, *, optional: bool = False) -> int | None:
    if type(v) is int and v >= 0:
        return v
    if v is None and optional:
        return None
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BadInput(f"{what} must be a non-negative integer")
    return v


def _mapping(v: Any, what: str) -> Mapping[str, Any]:
    if type(v) is dict:          # the common case; isinstance on an ABC is slow
        return v
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise BadInput(f"{what} must be an object")
    return v


def read_facts(inp: Any) -> Facts:
    """The facts of one policy input; raises BadInput."""
    if type(inp) is not dict and not isinstance(inp, Mapping):
        raise BadInput("the policy input must be an object")
    f = Facts()
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
        raise BadInput("route.inspectable must be a boolean")
    f.inspectable = insp
    model = _str_or_none(inp.get("model"), "model")
    f.model = model.lower() if model is not None else None
    labels: dict[str, tuple[int, int]] = {}
    for label, summary in _mapping(inp.get("classification"), "classification").items():
        if type(label) is not str:
            raise BadInput("classification keys must be labels")
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
        raise BadInput("request.stream must be a boolean")
    f.stream = stream
    f.route_id = None
    return f
