"""Whether one request may be answered from the cache, and under which key (sans-I/O).

Everything here is a pure function of plain data: the policy's cache rules, the decision, the
verified identity's tenant, the surface and the request body *as forwarded* (after redaction).

The key is a SHA-256 over a canonical JSON of:
  * the scope: the tenant (or the subject when the identity has no tenant), or "*" only when the
    matching cache rule says ``share_across_tenants: true``;
  * provider and surface, and the model;
  * the forwarded body in canonical JSON, with the stream-only fields removed so the streamed and
    the non-streamed form of one request share an entry;
  * the request-side policy version (see ``request_policy_version``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ext_proc.providers import registry

# The surfaces whose answer ledgergate can replay in both forms (JSON and the provider's SSE).
REPLAYABLE_SURFACES = registry.replayable_surfaces()
# Fields that only say how the answer travels, not what it is.
STREAM_ONLY_FIELDS = ("stream", "stream_options")
DEFAULT_TTL_S = 300
MAX_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class CachePlan:
    """The cache's part of one request: bypass (with why) or a key to look up and maybe fill."""

    cacheable: bool
    reason: str                       # why not, or "cacheable"
    rule: str | None = None           # the policy cache rule that enabled caching
    key: str | None = None            # the store key: scope/model digests + key digest (no raw values)
    key_sha256: str | None = None     # the digest that goes into records
    scope_sha256: str | None = None
    model_sha256: str | None = None
    ttl_s: int = DEFAULT_TTL_S
    stream: bool = False

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": "bypass" if not self.cacheable else "lookup", "reason": self.reason}
        if self.rule:
            out["rule"] = self.rule
        if self.key_sha256:
            out["key_sha256"] = self.key_sha256
        return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


_VERSION_MEMO: dict[str, str] = {}


def request_policy_version(compiled: Mapping[str, Any], version: str) -> str:
    """The digest of everything in the compiled policy that decides a request (all of it but the
    response rules). A change there invalidates every entry; a change of the response rules does
    not, because the response policy in force is applied again to every answer served from cache."""
    memo = _VERSION_MEMO.get(version)
    if memo is None:
        memo = _digest(_canonical({k: v for k, v in compiled.items() if k != "response_rules"}))
        if len(_VERSION_MEMO) > 16:
            _VERSION_MEMO.clear()
        _VERSION_MEMO[version] = memo
    return memo


def client_refuses_cache(headers: Mapping[str, Sequence[str]]) -> str | None:
    """`cache-control: no-store` or `no-cache` from the client (any of its values, any case)."""
    for value in headers.get("cache-control", ()):
        for directive in value.lower().split(","):
            name = directive.strip().split("=", 1)[0].strip()
            if name in ("no-store", "no-cache"):
                return name
    return None


def matching_rule(cache_rules: Iterable[Mapping[str, Any]], route: str | None,
                  matched_rules: Iterable[str]) -> Mapping[str, Any] | None:
    matched = set(matched_rules)
    for rule in cache_rules:
        if (route is not None and route in rule.get("routes", ())) or matched & set(rule.get("rules", ())):
            return rule
    return None


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """Sampling turned off by the request itself: temperature 0 (and no n > 1)."""
    t = body.get("temperature")
    n = body.get("n", 1)
    return (isinstance(t, (int, float)) and not isinstance(t, bool) and t == 0) and n in (1, None)


def normalized_body(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in STREAM_ONLY_FIELDS}


def plan_request(*, cache_rules: Sequence[Mapping[str, Any]], route: str | None, matched_rules: Iterable[str],
                 outcome: str, surface: str | None, provider: str | None, model: str | None,
                 forwarded_body: bytes | None, tenant: str | None, subject_scope: str | None,
                 client_headers: Mapping[str, Sequence[str]], policy_request_version: str,
                 multiplexed: bool) -> CachePlan:
    if not cache_rules:
        return CachePlan(False, "off")
    rule = matching_rule(cache_rules, route, matched_rules)
    if rule is None:
        return CachePlan(False, "off")
    rid = rule.get("id")
    if outcome not in ("permit", "redact"):
        return CachePlan(False, f"outcome_{outcome}", rid)
    if surface not in REPLAYABLE_SURFACES:
        return CachePlan(False, "surface_not_replayable", rid)
    if multiplexed:
        return CachePlan(False, "multiplexed", rid)
    refused = client_refuses_cache(client_headers)
    if refused:
        return CachePlan(False, f"client_{refused.replace('-', '_')}", rid)
    try:
        body = json.loads(forwarded_body or b"")
    except ValueError:
        return CachePlan(False, "body_not_json", rid)
    if not isinstance(body, dict):
        return CachePlan(False, "body_not_json", rid)
    if not (rule.get("deterministic") or is_deterministic(body)):
        return CachePlan(False, "not_deterministic", rid)
    if rule.get("share_across_tenants"):
        scope = "*"
    elif tenant:
        scope = "tenant:" + tenant
    elif subject_scope:
        scope = "subject:" + subject_scope
    else:
        return CachePlan(False, "no_scope", rid)
    try:
        material = _canonical({"scope": scope, "provider": provider, "surface": surface, "model": model,
                               "body": normalized_body(body), "policy": policy_request_version})
    except ValueError:
        return CachePlan(False, "body_not_canonical", rid)
    key_sha = _digest(material)
    scope_sha, model_sha = scope_digest(scope), model_digest(model)
    return CachePlan(True, "cacheable", rid, key=f"{scope_sha}:{model_sha}:{key_sha}", key_sha256=key_sha,
                     scope_sha256=scope_sha, model_sha256=model_sha,
                     ttl_s=int(rule.get("ttl_s") or DEFAULT_TTL_S), stream=body.get("stream") is True)


def scope_digest(scope: str) -> str:
    """Short digest used in store key names (purge by tenant) so no tenant name is stored."""
    return _digest(b"scope\0" + scope.encode())[:16]


def model_digest(model: str | None) -> str:
    return _digest(b"model\0" + (model or "").encode())[:16]


def fillable(*, plan: CachePlan | None, status: int | None, outcome: Mapping[str, Any], error: str | None,
             finished: bool, content_type: str | None, body_len: int, max_entry_bytes: int) -> str | None:
    """None when the answer may fill the entry, else why not. Only a non-streamed 200 JSON answer
    that the response policy let through unchanged (no block, no redaction), complete, with its
    outcome record committed (the caller asks only then)."""
    if plan is None or not plan.cacheable:
        return "not_cacheable"
    if plan.stream:
        return "streamed"          # streamed misses do not fill (docs/cache.md)
    if status != 200:
        return "status"
    if error:
        return "error"
    if not finished:
        return "partial"
    if outcome.get("blocked"):
        return "blocked"
    if outcome.get("redactions"):
        return "redacted"
    if not (content_type or "").lower().startswith("application/json"):
        return "content_type"
    if body_len == 0 or body_len > max_entry_bytes:
        return "size"
    return None
