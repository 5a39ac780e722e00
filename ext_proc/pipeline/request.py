"""Decide one request: plain data in, a Verdict (what to send upstream or to the client, and the
decision record to commit) out. No I/O and no clock: the caller passes `now_ms`.

Everything here is replayable: the policy input built in `build_policy_input` is written into the
decision record, and `Policy.evaluate(input)` on the same policy version gives the same decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from ext_proc.audit.record import (
    Caller,
    Classification,
    DecisionRecord,
    Digests,
    PolicyRef,
    Routing,
    Ruling,
)
from ext_proc.classify import InputTooLarge, Scanner, redact
from ext_proc.identity import CREDENTIAL_HEADERS, Identity, IdentityError
from ext_proc.pipeline.envelope import EnvelopeSegment, expected_finding
from ext_proc.pipeline.inspect import DocumentFindings, classify_document, scan_whole
from ext_proc.pipeline.verdict import Verdict
from ext_proc.policy import Policy
from ext_proc.policy.effects import Effect
from ext_proc.providers import (
    BadRequestBody,
    ParsedRequest,
    Surface,
    parse_request,
    registry,
)
from ext_proc.providers.adapters import _get_path
from ext_proc.providers.document import Document, read_document, render_document

# Headers that carry the client's credential to ledgergate never travel to the provider (the
# provider credential, if any, is injected from configuration): the identity module's own list.
CLIENT_CREDENTIAL_HEADERS = tuple(CREDENTIAL_HEADERS)
OWN_HEADER_PREFIX = "x-ledgergate-"


@dataclass(frozen=True)
class RequestHead:
    """What the request headers message told us."""

    request_id: str
    method: str
    path: str
    headers: Mapping[str, list[str]]
    attributes: Mapping[str, str]
    received_ms: int
    surface: Surface | None

    def route_record(self) -> dict[str, Any]:
        if self.surface is None:
            return {"path": _path_only(self.path), "surface": "unknown", "api": "unknown",
                    "provider": None, "inspectable": False}
        rec = self.surface.to_record()
        return {"path": _path_only(self.path), "surface": rec.get("name", self.surface.name),
                "api": self.surface.api, "provider": self.surface.provider,
                "inspectable": self.surface.inspectable}

    @property
    def provider(self) -> str:
        return self.surface.provider if self.surface is not None else registry.DEFAULT.name


def sha256_hex(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _digests(body: bytes | None, forwarded: bytes | None) -> Digests:
    """The received and the forwarded body's digests; the same object (nothing rewritten) is
    hashed once."""
    request_sha256 = sha256_hex(body)
    return Digests(request_sha256, request_sha256 if forwarded is body else sha256_hex(forwarded))


def _path_only(path: str) -> str:
    # The query string can carry keys (Gemini's ?key=); it never goes into a record.
    return path.split("?", 1)[0]


def build_policy_input(head: RequestHead, identity: Identity, parsed: ParsedRequest | None,
                       classification: Mapping[str, dict[str, Any]], body_len: int) -> dict[str, Any]:
    model = None
    if parsed is not None:
        model = parsed.model
    elif head.surface is not None:
        model = head.surface.model_from_path
    return {
        "identity": identity.to_record(),
        "route": head.route_record(),
        "model": model,
        "classification": dict(classification),
        "request": {
            "bytes": body_len,
            "estimated_tokens": parsed.estimated_tokens if parsed else 0,
            "max_tokens": parsed.max_tokens if parsed else None,
            "stream": bool(parsed.stream) if parsed else bool(head.surface and head.surface.stream_from_path),
        },
    }


def masked_route(head: RequestHead, classifier: Scanner | None) -> RequestHead:
    """The head as a refusal's record shows it when no body was read: a model name in the path
    classified and masked there, as a decision's record has it. A classifier that fails (it may be
    why the request is refused) leaves no raw value either: the name is withheld."""
    if classifier is None:
        return head
    if head.surface is None:
        return _masked_unknown_path(head, classifier)
    if not head.surface.model_from_path:
        return head
    try:
        doc, found = inspect_request(classifier, head, None)
    except Exception:  # noqa: BLE001 - the refusal is recorded whatever the classifier does
        return replace(head, path="/[PATH NOT INSPECTED]",
                       surface=replace(head.surface, model_from_path="[NOT INSPECTED]"))
    return _masked_for_record(head, doc, found)


def _masked_unknown_path(head: RequestHead, classifier: Scanner) -> RequestHead:
    """A path no provider route names is recorded (and shown to policy) with its findings masked:
    its segments are free text the caller chose."""
    path = _path_only(head.path)
    try:
        findings = classifier.scan(path)
    except Exception:  # noqa: BLE001 - as in masked_route: withhold rather than record raw
        return replace(head, path="/[PATH NOT INSPECTED]")
    if not findings:
        return head
    return replace(head, path=redact(path, findings, {"*": "mask"}, hash_key=b"-")[0])


def reject_identity(head: RequestHead, error: IdentityError, now_ms: int, policy: Policy | None = None, *,
                    classifier: Scanner | None = None) -> Verdict:
    """A request whose credential could not be verified: 401, recorded, never forwarded. The
    record names the policy version in force, though no rule was evaluated."""
    head = masked_route(head, classifier)
    record = DecisionRecord(
        request_id=head.request_id, received_ms=head.received_ms, decided_ms=now_ms,
        caller=Caller(error=error.reason),
        routing=_routing(head, model_requested=head.surface.model_from_path if head.surface else None),
        decision=_refusal(401, error.reason, error.message), policy=_policy_ref(policy) if policy else None)
    return Verdict(forward=False, status=401, code=error.reason, message=error.message,
                   record=record).rejected(401, error.reason, error.message, head.provider)


def reject_unprocessable(head: RequestHead, identity: Identity | None, status: int, code: str,
                         message: str, now_ms: int, body: bytes | None,
                         policy: Policy | None = None, *, classifier: Scanner | None = None) -> Verdict:
    """Fail closed before a policy decision could be taken (bad body, classifier error...).
    With CLASSIFIER, a model name in the path is masked in the record (masked_route)."""
    head = masked_route(head, classifier)
    record = DecisionRecord(
        request_id=head.request_id, received_ms=head.received_ms, decided_ms=now_ms,
        caller=Caller(identity=identity.to_record() if identity else None), routing=_routing(head),
        decision=_refusal(status, code, message), policy=_policy_ref(policy) if policy else None,
        digests=Digests(request_sha256=sha256_hex(body)))
    return Verdict(forward=False, status=status, code=code, message=message, record=record,
                   identity=identity).rejected(status, code, message, head.provider)


def _policy_ref(policy: Policy) -> PolicyRef:
    return PolicyRef(policy.id, policy.version, policy.label)


def _refusal(status: int, code: str, reason: str) -> Ruling:
    """The decision of a refusal taken before any policy rule ran."""
    return Ruling({"outcome": Effect.DENY.value, "status": status, "code": code, "reason": reason})


def _routing(head: RequestHead, *, model_requested: str | None = None, model_routed: str | None = None,
             upstream: str | None = None) -> Routing:
    return Routing(head.route_record(), provider=head.surface.provider if head.surface else None,
                   model_requested=model_requested, model_routed=model_routed, upstream=upstream)


def inspect_request(classifier: Scanner, head: RequestHead,
                    parsed: ParsedRequest | None) -> tuple[Document, DocumentFindings]:
    """Everything the provider and its model will read of this request, classified as read
    (without a body, what the path says: a model or deployment name)."""
    route_texts = {}
    if head.surface is not None and head.surface.model_from_path:
        route_texts["model"] = head.surface.model_from_path
    doc = read_document(parsed, route_texts)
    return doc, classify_document(classifier, doc, parsed.body if parsed is not None else None)


def decide_request(head: RequestHead, identity: Identity, body: bytes | None, *, policy: Policy,
                   classifier: Scanner, hash_key: bytes, now_ms: int,
                   max_body_bytes: int, envelope_segments: Sequence[EnvelopeSegment] = ()) -> Verdict:
    """The whole request-side decision for an authenticated caller. `envelope_segments` are the
    header and query values the provider reads besides the body (pipeline/envelope.py)."""
    body = body or b""
    # --- envelope hook (pipeline/envelope.py): classified with the same classifier and policy ---
    try:
        # Each value is read whole: a secret longer than its rule's match is followed to its end
        # (classify/extent.py), as in the body.
        envelope_findings = [[f for f in scan_whole(classifier, seg.text) if not expected_finding(seg, f.label)]
                             for seg in envelope_segments]
    except InputTooLarge as exc:
        return reject_unprocessable(head, identity, 413, "request_too_large", str(exc), now_ms, body, policy,
                                    classifier=classifier)
    # --- end envelope hook ---
    parsed: ParsedRequest | None = None
    doc: Document | None = None
    found = DocumentFindings()
    if head.surface is not None and head.surface.inspectable and body:
        try:
            parsed = parse_request(head.surface, body, max_bytes=max_body_bytes)
            doc, found = inspect_request(classifier, head, parsed)
        except BadRequestBody as exc:
            return reject_unprocessable(head, identity, 400, "invalid_request_body", str(exc),
                                        now_ms, body, policy, classifier=classifier)
        except InputTooLarge as exc:
            return reject_unprocessable(head, identity, 413, "request_too_large", str(exc), now_ms,
                                        body, policy, classifier=classifier)
    elif head.surface is not None and head.surface.model_from_path:
        doc, found = inspect_request(classifier, head, None)   # GET /v1/models/{id}, Azure audio
    envelope_all = [f for seg in envelope_findings for f in seg]  # envelope hook
    classification = found.summary(doc.unscanned if doc is not None else {}, extra=envelope_all)
    head = _masked_for_record(head, doc, found) if head.surface is not None else masked_route(head, classifier)
    policy_input = build_policy_input(head, identity, parsed, classification, len(body))
    if parsed is not None and parsed.max_tokens is not None and doc is not None and _ceiling_holds_finding(doc, found):
        # The token ceiling the caller sent is a value the classifier found something in (a card
        # as `max_tokens`): policy input and record are one dict, and records never carry a raw
        # value, nor the estimate that adds the ceiling to the prompt's size.
        policy_input["request"].update(max_tokens=None,
                                       estimated_tokens=parsed.estimated_tokens - parsed.max_tokens)
    if doc is not None and parsed is not None and isinstance(parsed.model, str):
        policy_input["model"] = _masked_model(doc, found, parsed.model, head)
    decision = policy.evaluate(policy_input)

    new_body: bytes | None = None
    redactions: list[dict[str, Any]] = []
    set_fields: dict[tuple[Any, ...], Any] = {}
    usage_injected = False
    # A parsed body was read from a known surface, and inspected (parse and inspection succeed
    # or the request was refused above).
    if parsed is not None and doc is not None and head.surface is not None and decision.releases:
        rules = registry.surface_rules(head.surface.name)
        if rules is None:   # every surface a provider route names has its rules: fail closed
            raise LookupError(f"no rules for surface {head.surface.name!r}")
        if decision.max_tokens_cap is not None and parsed.max_tokens is None and rules.cap_field is not None:
            set_fields[rules.cap_field] = decision.max_tokens_cap
        if rules.usage_option is not None and parsed.stream:
            # Usage arrives only when asked for; the outcome record and the token budget need it.
            asked = _get_path(parsed.body, rules.usage_option) is True
            usage_injected = not asked
            set_fields[rules.usage_option] = True
        replacements: dict[int, str] = {}
        if decision.outcome == Effect.REDACT and decision.redact:
            for i in sorted(found.per_segment):
                seg = doc.segments[i]
                text, reds = redact(seg.text, found.per_segment[i], decision.redact, hash_key=hash_key,
                                    tenant=identity.tenant)
                if reds:
                    replacements[i] = text
                    redactions.extend({**r.to_record(), "segment": i, "where": seg.kind} for r in reds)
        if any(doc.segments[i].kind == "route" for i in replacements):
            # The request path cannot be rewritten: what policy wants masked there is refused.
            decision = decision.denied("unredactable_location",
                                       "the request path contains data the policy masks; it cannot be rewritten")
            replacements, set_fields, redactions = {}, {}, []
        elif replacements or set_fields:
            new_body = render_document(parsed, doc, replacements, set_fields)

    # --- envelope hook: redacted header / query values, applied by the servicer's header mutation ---
    envelope_redacted: dict[int, str] = {}
    if decision.outcome == Effect.REDACT and decision.redact:
        for i, (env_seg, findings) in enumerate(zip(envelope_segments, envelope_findings, strict=False)):
            if findings:
                text, reds = redact(env_seg.text, findings, decision.redact, hash_key=hash_key,
                                    tenant=identity.tenant)
                if reds:
                    envelope_redacted[i] = text
                    redactions.extend({**r.to_record(), "envelope": env_seg.where} for r in reds)
    # --- end envelope hook ---
    forwarded = new_body if new_body is not None else body
    envelope_found = [dict(f.to_record(), envelope=envelope_segments[i].where)  # envelope hook
                      for i, seg in enumerate(envelope_findings) for f in seg]
    model = policy_input["model"]
    record = DecisionRecord(
        request_id=head.request_id, received_ms=head.received_ms, decided_ms=now_ms,
        caller=Caller(identity.to_record()),
        routing=_routing(head, model_requested=model, model_routed=model,
                         upstream=head.surface.provider if head.surface else None),
        decision=Ruling(decision.to_record(), redactions=redactions), policy=_policy_ref(policy),
        classification=Classification(classification, found.records() + envelope_found), input=policy_input,
        digests=_digests(body, forwarded if decision.releases else None))
    v = Verdict(forward=decision.releases, status=200 if decision.releases else decision.status,
                code=decision.code, message=decision.reason, record=record, decision=decision,
                identity=identity, new_body=new_body, limits=tuple(decision.limits),
                estimated_tokens=policy_input["request"]["estimated_tokens"],
                model=policy_input["model"], stream=policy_input["request"]["stream"],
                usage_injected=usage_injected and decision.releases,
                envelope_redacted=envelope_redacted if decision.releases else {})
    return v if v.forward else v.rejected(decision.status, decision.code, decision.reason, head.provider)


def _masked(doc: Document, found: DocumentFindings, kind: str, path: tuple[Any, ...]) -> str | None:
    """The masked text of the segment at PATH when a finding lies in it, else None."""
    for i, seg in enumerate(doc.segments):
        if seg.kind == kind and seg.path == path and found.per_segment.get(i):
            return redact(seg.text, found.per_segment[i], {"*": "mask"}, hash_key=b"-")[0]
    return None


def _masked_for_record(head: RequestHead, doc: Document | None, found: DocumentFindings) -> RequestHead:
    """The request head as records and policy see it: a model name in the path that holds a
    finding is masked there (records never carry a raw value, wherever the caller put it)."""
    if doc is None or head.surface is None or not head.surface.model_from_path:
        return head
    masked = _masked(doc, found, "route", ("<route>", "model"))
    if masked is None:
        return head
    raw = head.surface.model_from_path
    # The name is the path's segment percent-decoded: replaced where it stands written as is, and
    # the whole path withheld when any form of it is left (written percent-encoded, the decoded
    # text can still stand in the query, where replacing it left the path's own copy raw).
    before, sep, query = head.path.partition("?")
    before = before.replace(raw, masked)
    path = before + sep + query.replace(raw, masked) if raw not in unquote(before) else "/[PATH WITH FINDINGS]"
    return replace(head, path=path, surface=replace(head.surface, model_from_path=masked))


def _ceiling_holds_finding(doc: Document, found: DocumentFindings) -> bool:
    """Whether a number in an output-token ceiling field holds a finding (one above the number
    floor: pipeline/inspect.py drops the hints a bare number gives)."""
    ceilings = set(registry.ceiling_fields())
    return any(seg.kind == "number" and seg.path in ceilings and found.per_segment.get(i)
               for i, seg in enumerate(doc.segments))


def _masked_model(doc: Document, found: DocumentFindings, model: str, head: RequestHead) -> str:
    if head.surface is not None and head.surface.model_from_path is not None:
        return head.surface.model_from_path
    masked = _masked(doc, found, "value", ("model",))
    return model if masked is None else masked


def strip_headers(headers: Mapping[str, Sequence[str]]) -> list[str]:
    """Client-sent headers removed before anything else: our own namespace and the client's
    credential (which is for ledgergate, not for the provider)."""
    return sorted(h for h in headers if h.startswith(OWN_HEADER_PREFIX) or h in CLIENT_CREDENTIAL_HEADERS)
