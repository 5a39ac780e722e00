"""From verified claims (a JWT payload or an introspection answer) to an Identity: dotted-path
claim mapping, the RFC 8693 actor chain, and bounds on every string that may reach a header, a
log or an audit record. A claim of the wrong shape is an error, not silently dropped: dropping a
group could skip a policy rule that denies that group."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc.identity.model import Identity, IdentityError

MAX_VALUE_CHARS = 1024
MAX_LIST_ITEMS = 256
MAX_ACTOR_DEPTH = 8


def claim_at(claims: Mapping[str, Any], dotted: str | None) -> Any:
    """`realm_access.roles` -> claims["realm_access"]["roles"]; None when any step is missing. A
    claim whose own name contains a dot (`https://example.com/roles`) is tried whole first."""
    if not dotted:
        return None
    if dotted in claims:
        return claims[dotted]
    node: Any = claims
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def safe_string(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_VALUE_CHARS or not v.isprintable():
        raise IdentityError("invalid_claim", f"the {what} claim must be a printable string of at most "
                                             f"{MAX_VALUE_CHARS} characters")
    return v


def string_list(v: Any, what: str) -> tuple[str, ...]:
    """A list of strings, or one space-separated string (the OAuth `scope` convention)."""
    if v is None:
        return ()
    if isinstance(v, str):
        items: list[Any] = v.split()
    elif isinstance(v, list):
        items = v
    else:
        raise IdentityError("invalid_claim", f"the {what} claim must be a list of strings")
    if len(items) > MAX_LIST_ITEMS:
        raise IdentityError("invalid_claim", f"the {what} claim has more than {MAX_LIST_ITEMS} entries")
    return tuple(dict.fromkeys(safe_string(x, what) for x in items))


def tenant_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return safe_string(v, "tenant")


def actor_chain(act: Any) -> tuple[str, ...]:
    """RFC 8693 `act`: {"sub": agent, "act": {"sub": prior actor, ...}} -> (agent, prior, ...)."""
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, Mapping):
            raise IdentityError("invalid_claim", "the act claim must be an object")
        if len(chain) >= MAX_ACTOR_DEPTH:
            raise IdentityError("invalid_claim", f"the act chain is deeper than {MAX_ACTOR_DEPTH}")
        chain.append(safe_string(act.get("sub"), "act.sub"))
        act = act.get("act")
    return tuple(chain)


def identity_from_claims(claims: Mapping[str, Any], *, subject: Any, issuer: str, auth_method: str,
                         paths: Mapping[str, str], credential_id: str, expires_at: float | None) -> Identity:
    return Identity(
        subject=safe_string(subject, "sub"), issuer=issuer, auth_method=auth_method,
        roles=string_list(claim_at(claims, paths.get("roles")), "roles"),
        groups=string_list(claim_at(claims, paths.get("groups")), "groups"),
        tenant=tenant_value(claim_at(claims, paths.get("tenant"))),
        scopes=string_list(claim_at(claims, paths.get("scopes")), "scopes"),
        actor=actor_chain(claims.get("act")), credential_id=credential_id, expires_at=expires_at)
