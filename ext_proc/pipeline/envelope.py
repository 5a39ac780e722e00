"""Around the body: the request's headers, query string and method, as the provider will read them.

Sans-I/O: plain data in (method, path, headers, the provider's surface, the deployer's rules),
plain data out (headers to remove, the path to forward, the text segments to classify, what to
record). The gRPC servicer applies the result as a header mutation; the request pipeline feeds the
segments to the classifier with the body's.

- Headers: only those the provider's API reads go upstream (a per-provider allowlist the deployer
  extends in configuration); every other client header is removed and its name recorded. The
  values of the client headers that are forwarded are classified like body text, and so are the
  names let through by a prefix (a deployer's `x-mock-*`, Envoy's `x-envoy-`): the client chose
  them, they go upstream as written, and a redaction there refuses the request.
- Query string: parsed; the parameters the provider's API knows are kept and their values
  classified (and a name let through by a prefix pattern, the client's own text, too: it cannot
  be rewritten, so a redaction there refuses the request); unknown ones are stripped (or the
  request refused, by configuration); credentials
  (Gemini's `key`) are always stripped, never classified, never recorded.
- A body on GET, HEAD or DELETE is refused: the provider would not read it, but something on the
  way might (an HTTP/1.1 upstream reads it as the next request on a kept-alive connection).

Names that reach a record are either on an allowlist or a short token the classifier finds
nothing in and that looks like a word; anything else is recorded as "[unprintable]",
"[classified]" or "[withheld]", never verbatim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from ext_proc.pipeline.verdict import Verdict, overruled
from ext_proc.providers import Surface, registry

BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE"})
MAX_QUERY_BYTES = 16 * 1024
MAX_QUERY_PARAMS = 64
MAX_RECORDED_NAMES = 32
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.[]$")
MAX_RECORDED_NAME_CHARS = 64
MAX_RECORDED_PART_CHARS = 24
_NAME_SEPARATORS = str.maketrans({c: " " for c in "-_.[]$"})
_DROP_DIGITS = str.maketrans("", "", "0123456789")

# What every provider needs: framing and content negotiation. Envoy's own request id and
# forwarding headers are Envoy's (set by it, not by the client).
BASE_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "accept", "accept-encoding",
                          "x-request-id", "x-forwarded-proto", "idempotency-key"})
# The headers each provider's API reads, as the official SDKs send them (client credentials are
# handled by the identity layer and never forwarded; the provider credential comes from configuration).
PROVIDER_HEADERS: Mapping[str, frozenset[str]] = {s.name: s.headers for s in registry.SPECS}
_LISTED_HEADERS: Mapping[str, frozenset[str]] = {p: BASE_HEADERS | h for p, h in PROVIDER_HEADERS.items()}
# Headers Envoy owns or refuses to let a processor change (mutation_rules): kept, and their
# values classified when the client could have set them.
ENVOY_OWNED_PREFIXES = (":", "x-envoy-")
ENVOY_OWNED = frozenset({"host"})
# Set by Envoy itself on every request: nothing of the client's to classify.
NOT_CLASSIFIED = frozenset({"x-request-id", "x-forwarded-proto", "content-length", "transfer-encoding",
                            ":method", ":scheme", ":path", ":authority", "host"})

# The query parameters each provider's API reads.
PROVIDER_QUERY: Mapping[str, frozenset[str]] = {s.name: s.query for s in registry.SPECS}
# Credentials in the query string: never forwarded (the provider credential comes from
# configuration), never classified (a key is high-entropy noise), the name alone recorded.
CREDENTIAL_QUERY: Mapping[str, frozenset[str]] = {s.name: s.credential_query for s in registry.SPECS
                                                  if s.credential_query}


# Headers whose purpose is to carry network addresses, set or extended by proxies (Envoy's
# external address with use_remote_address, X-Forwarded-For): an IP address there is what the
# header is, not data the caller sends the model. Every other finding in them still counts.
ADDRESS_HEADERS = frozenset({"x-envoy-external-address", "x-forwarded-for", "x-real-ip", "forwarded"})


def expected_finding(segment: EnvelopeSegment, label: str) -> bool:
    """A finding that is the very thing SEGMENT exists to carry (an address in a forwarding header)."""
    return label == "pii.ip_address" and segment.where.startswith("header:") and segment.name in ADDRESS_HEADERS


def envoy_owned(name: str) -> bool:
    """A header a processor may neither remove nor rewrite (Envoy's mutation rules)."""
    return name in ENVOY_OWNED or name.startswith(ENVOY_OWNED_PREFIXES)


def rewritable(segment: EnvelopeSegment) -> bool:
    """Whether a redacted value of SEGMENT can be forwarded in its place."""
    if segment.where.startswith("query:"):
        return True
    return segment.where.startswith("header:") and not envoy_owned(segment.name)


class EnvelopeRejected(ValueError):
    """The request's envelope is refused; `code` and the message are safe to show and record."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class EnvelopeRules:
    """The deployer's configuration (`envelope:` section): extra headers and query parameters per
    provider ("*" for all), a trailing "*" makes a prefix (`x-mock-*`), and what to do with
    unknown query parameters ("strip" or "reject")."""

    extra_headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    extra_query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unknown_query: str = "strip"

    @classmethod
    def from_config(cls, section: Any) -> EnvelopeRules:
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError("envelope: must be a mapping")
        unknown = set(section) - {"headers", "query", "unknown_query"}
        if unknown:
            raise ValueError(f"envelope: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
        mode = section.get("unknown_query", "strip")
        if mode not in ("strip", "reject"):
            raise ValueError("envelope.unknown_query: one of strip, reject")
        return cls(extra_headers=_names_by_provider(section.get("headers"), "envelope.headers", lower=True),
                   extra_query=_names_by_provider(section.get("query"), "envelope.query", lower=False),
                   unknown_query=mode)

    def header_allowed(self, provider: str | None, name: str) -> bool:
        if name in _LISTED_HEADERS.get(provider or "", BASE_HEADERS):
            return True
        if not self.extra_headers:
            return False
        return any(_name_matches(name, p) for p in (*self.extra_headers.get("*", ()),
                                                    *self.extra_headers.get(provider or "", ())))

    def chosen_name(self, provider: str | None, name: str, *, query: bool = False) -> bool:
        """Whether NAME, allowed, is text the client chose: let through by a prefix (a deployer's
        `x-mock-*`, Envoy's `x-envoy-`), not named exactly by a list. Its name goes upstream as
        written, so it is classified like a value."""
        listed = PROVIDER_QUERY.get(provider or "", frozenset()) if query else \
            _LISTED_HEADERS.get(provider or "", BASE_HEADERS)
        extra = self.extra_query if query else self.extra_headers
        patterns = (*extra.get("*", ()), *extra.get(provider or "", ()))
        if name in listed or name in patterns or (not query and name in ENVOY_OWNED):
            return False
        return (not query and name.startswith("x-envoy-")) or any(p.endswith("*") and _name_matches(name, p)
                                                                 for p in patterns)

    def query_allowed(self, provider: str | None, name: str) -> bool:
        if name in PROVIDER_QUERY.get(provider or "", ()):
            return True
        if not self.extra_query:
            return False
        return any(_name_matches(name, p) for p in (*self.extra_query.get("*", ()),
                                                    *self.extra_query.get(provider or "", ())))


def _name_matches(name: str, pattern: str) -> bool:
    """An exact name, or a prefix when the pattern ends with "*" (plain string code: no regex
    over client input)."""
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _names_by_provider(section: Any, where: str, *, lower: bool) -> dict[str, tuple[str, ...]]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: a mapping of provider (or '*') to a list of names")
    out: dict[str, tuple[str, ...]] = {}
    for provider, names in section.items():
        if provider != "*" and provider not in PROVIDER_HEADERS:
            raise ValueError(f"{where}.{provider}: unknown provider")
        if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= 128 for n in names):
            raise ValueError(f"{where}.{provider}: a list of names")
        if any("*" in n[:-1] or "?" in n or "[" in n and n.endswith("*") for n in names):
            raise ValueError(f"{where}.{provider}: a name, or a prefix ending with '*'")
        out[provider] = tuple(n.lower() if lower else n for n in names)
    return out


@dataclass(frozen=True)
class EnvelopeSegment:
    """A piece of text the provider reads outside the body: a forwarded header's value or a kept
    query parameter's value. `where` is recordable ("header:anthropic-beta", "query:alt")."""

    where: str
    name: str
    text: str
    position: int = -1      # index of the parameter in the forwarded query (query segments)


@dataclass
class Envelope:
    path: str                                  # without the query string
    query: list[tuple[str, str]]               # forwarded parameters, in order
    query_changed: bool                        # the forwarded query differs from the client's
    removed_headers: list[str]                 # client headers not forwarded (lower-case names)
    removed_query: list[str]                   # recordable names of stripped parameters
    segments: list[EnvelopeSegment]

    def forwarded_path(self, replaced: Mapping[int, str] | None = None) -> str:
        """The path to send upstream, with redacted values for the query parameters in
        `replaced` (position -> new value)."""
        if not self.query:
            return self.path
        pairs = [(k, (replaced or {}).get(i, v)) for i, (k, v) in enumerate(self.query)]
        return self.path + "?" + "&".join(quote(k, safe="[]$") + "=" + quote(v, safe="") for k, v in pairs)

    def to_record(self, has_findings: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Names only, never values; a client-chosen name the classifier finds something in is
        not recorded verbatim."""
        return {"removed_headers": _bounded(recordable_names(self.removed_headers, has_findings)),
                "removed_query": _bounded(self.removed_query),
                "inspected": [s.where for s in self.segments][:MAX_RECORDED_NAMES]}


def _bounded(names: list[str]) -> list[str]:
    if len(names) <= MAX_RECORDED_NAMES:
        return names
    return names[:MAX_RECORDED_NAMES] + [f"... {len(names) - MAX_RECORDED_NAMES} more"]


def recordable_name(name: str, has_findings: Callable[[str], bool] | None = None) -> str:
    """A client-chosen name as it may appear in a record: a short, word-like token the classifier
    finds nothing in, or a placeholder (a name can carry a secret too)."""
    return recordable_names([name], has_findings)[0]


@functools.lru_cache(maxsize=4096)
def _name_shape(name: str) -> str | None:
    """The placeholder for a name that is not a short word-like token, else None."""
    if not name or len(name) > MAX_RECORDED_NAME_CHARS or not set(name) <= _NAME_CHARS:
        return "[unprintable]"
    # A word-like name is recorded; one with a long or digit-heavy part may be a token.
    for part in name.translate(_NAME_SEPARATORS).split():
        if len(part) > MAX_RECORDED_PART_CHARS or len(part) - len(part.translate(_DROP_DIGITS)) > 2:
            return "[withheld]"
    return None


def recordable_names(names: Sequence[str], has_findings: Callable[[str], bool] | None = None) -> list[str]:
    """`recordable_name` for many names with two classifier calls in the common case (all of
    them joined, as written and upper-cased: header names arrive lower-cased, and a key's prefix
    is upper-case); one name at a time only when the joined text holds a finding."""
    out = [_name_shape(n) or n for n in names]
    if has_findings is None:
        return out
    words = [i for i, n in enumerate(names) if out[i] == n]
    joined = "\n".join(names[i] for i in words)
    if not joined or not (has_findings(joined) or has_findings(joined.upper())):
        return out
    for i in words:
        if has_findings(names[i]) or has_findings(names[i].upper()):
            out[i] = "[classified]"
    return out


def body_refused(method: str, headers: Mapping[str, Sequence[str]], body_len: int | None) -> bool:
    """True when a method without a body semantics carries one: declared in the headers (a
    non-zero content-length or any transfer-encoding) or actually received (`body_len`)."""
    if method.upper() not in BODYLESS_METHODS:
        return False
    if body_len:
        return True
    length = [v.strip() for v in headers.get("content-length", ())]
    if any(v != "0" for v in length):
        return True
    return bool(headers.get("transfer-encoding"))


def inspect_envelope(method: str, path: str, headers: Mapping[str, Sequence[str]], surface: Surface | None,
                     rules: EnvelopeRules, *, keep: Iterable[str] = (),
                     has_findings: Callable[[str], bool] | None = None) -> Envelope:
    """What of METHOD PATH HEADERS goes upstream. `keep` names headers set by ledgergate itself
    (credential, identity) that must not be removed. Raises EnvelopeRejected."""
    provider = surface.provider if surface is not None else None
    keep_set = {k.lower() for k in keep}
    removed: list[str] = []
    segments: list[EnvelopeSegment] = []
    for name in sorted(headers):
        lname = name.lower()
        owned = envoy_owned(lname)
        if lname in keep_set:
            continue
        if owned or rules.header_allowed(provider, lname):
            if lname not in NOT_CLASSIFIED:
                for value in headers[name]:
                    if value:
                        segments.append(EnvelopeSegment(f"header:{lname}", lname, value))
            if rules.chosen_name(provider, lname):
                # A name let through by a prefix is the client's text, forwarded as written: it
                # cannot be rewritten, so a redaction there becomes a refusal. Header names arrive
                # lower-cased; a key's prefix is upper-case: read as written and upper-cased.
                segments.append(EnvelopeSegment(f"header-name:{lname}", lname, lname + "\n" + lname.upper()))
            continue
        removed.append(lname)

    if surface is not None and surface.model_from_path:
        # The model (or deployment) segment of the path is read by the provider too. It cannot be
        # redacted (it names the model): a finding there that the policy would redact denies.
        segments.append(EnvelopeSegment("path:model", "model", surface.model_from_path))
    raw_path, sep, raw_query = path.partition("?")
    raw_query = raw_query.split("#", 1)[0]
    query: list[tuple[str, str]] = []
    removed_query: list[str] = []
    changed = False
    if sep and raw_query:
        if len(raw_query.encode("utf-8", "surrogatepass")) > MAX_QUERY_BYTES:
            raise EnvelopeRejected(400, "invalid_query", f"the query string exceeds {MAX_QUERY_BYTES} bytes")
        try:
            pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False, encoding="utf-8",
                              errors="strict", max_num_fields=MAX_QUERY_PARAMS)
        except ValueError:   # too many fields, or percent-encoded bytes that are not UTF-8
            raise EnvelopeRejected(400, "invalid_query",
                                   f"the query string is not UTF-8 or has more than {MAX_QUERY_PARAMS} parameters") from None
        credentials = CREDENTIAL_QUERY.get(provider or "", frozenset())
        for name, value in pairs:
            if name in credentials:
                removed_query.append(name)
                changed = True
            elif rules.query_allowed(provider, name):
                segments.append(EnvelopeSegment(f"query:{name}", name, value, position=len(query)))
                if rules.chosen_name(provider, name, query=True):
                    segments.append(EnvelopeSegment(f"query-name:{name}", name, name))
                query.append((name, value))
            else:
                if rules.unknown_query == "reject":
                    raise EnvelopeRejected(400, "unknown_query_parameter",
                                           f"query parameter {recordable_name(name, has_findings)!r} is not "
                                           "accepted for this API")
                removed_query.append(name)
                changed = True
        if not query:
            changed = True     # "?" alone, or every parameter stripped
    elif sep:
        changed = True         # a bare "?"
    # Names that reach a record (a segment's `where`, a stripped parameter) in recordable form.
    kinds = [s.where.split(":", 1)[0] for s in segments]
    recorded = recordable_names([s.name for s in segments] + removed_query, has_findings)
    segments = [EnvelopeSegment(f"{kind}:{where}", s.name, s.text, s.position)
                for s, kind, where in zip(segments, kinds, recorded, strict=False)]
    removed_query = recorded[len(segments):]
    return Envelope(path=raw_path, query=query, query_changed=changed, removed_headers=removed,
                    removed_query=removed_query, segments=segments)



def refuse_unrewritable(verdict: Verdict, envelope: Envelope, provider: str) -> Verdict:
    """A permit whose decision redacts a header or path segment no processor can rewrite (Envoy
    lets none rewrite its own headers, and the model segment of the path names the model) is
    refused with a 403: what cannot be redacted is not forwarded."""
    stuck = [i for i in verdict.envelope_redacted if not rewritable(envelope.segments[i])]
    if not verdict.forward or not stuck:
        return verdict
    code = "unredactable_header" if envelope.segments[stuck[0]].where.startswith("header") else "unredactable_path"
    return overruled(verdict, 403, code, "a part of the request that cannot be rewritten holds classified data; "
                     "the request was not forwarded", provider)
