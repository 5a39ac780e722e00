"""What a released request looks like as it leaves for the provider: the header edit that goes
with the request headers (client credential and ledgergate's namespace stripped, the envelope's
allowlist applied, the provider credential and forwarded identity set), and the reply to the
request body (the decision's new body, redacted header and query values, and, when another
provider serves it, the translated path, headers and credential).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from ext_proc.identity import Identity, forwarded_identity_headers
from ext_proc.pipeline.envelope import Envelope, rewritable
from ext_proc.pipeline.multiplex import CHAIN_HEADER, FailoverChain, Translated
from ext_proc.pipeline.request import OWN_HEADER_PREFIX, RequestHead, strip_headers
from ext_proc.pipeline.verdict import Verdict
from ext_proc.providers.names import Provider
from ext_proc.server import replies
from ext_proc.server.replies import HeaderEdit

if TYPE_CHECKING:
    from ext_proc.server.runtime import Runtime


def own_header_names(rt: Runtime, head: RequestHead, identity: Identity | None) -> list[str]:
    """Headers ledgergate sets itself: never on the envelope's removal list."""
    names = ["accept-encoding", "content-length"]
    if head.surface is not None and (cred := rt.credential_header(head.surface.provider)) is not None:
        names.append(cred.lower())
    if identity is not None:
        names += [k.lower() for k in forwarded_identity_headers(identity, rt.identity.config)]
    return names


def has_findings(rt: Runtime) -> Callable[[str], bool]:
    """Whether a header name is safe to record as written. A classifier that fails here says
    yes to nothing: the name is recorded as a placeholder, and the decision itself (which
    scans again) fails closed in its own way."""
    def check(text: str) -> bool:
        try:
            return bool(rt.classifier_for(rt.policies.current).scan(text))
        except Exception:  # noqa: BLE001 - recording must not turn a clean refusal into a stream abort
            return True
    return check


def envelope_edit(envelope: Envelope | None, verdict: Verdict | None) -> HeaderEdit:
    """The edit that makes the forwarded headers and query what the envelope allows, with the
    decision's redactions of header and query values."""
    edit = HeaderEdit()
    if envelope is None:
        return edit
    query_redacted: dict[int, str] = {}
    for i, value in (verdict.envelope_redacted if verdict is not None else {}).items():
        seg = envelope.segments[i]
        if not rewritable(seg):
            continue        # the decision was turned into a deny (pipeline/envelope.refuse_unrewritable)
        if seg.where.startswith("query:"):
            query_redacted[seg.position] = value
        else:
            edit.put(seg.name, value)
    if envelope.query_changed or query_redacted:
        edit.put(":path", envelope.forwarded_path(query_redacted))
    edit.remove = list(envelope.removed_headers)
    return edit


def request_headers_reply(rt: Runtime, head: RequestHead, identity: Identity | None, envelope: Envelope | None,
                          verdict: Verdict | None) -> pb.ProcessingResponse:
    envelope_part = envelope_edit(envelope, verdict)
    edit = HeaderEdit(remove=sorted(set(strip_headers(head.headers)) | set(envelope_part.remove)))
    edit.put("accept-encoding", "identity")
    edit.inject_credential(rt, head.surface.provider if head.surface is not None else None)
    if identity is not None:
        for k, v in forwarded_identity_headers(identity, rt.identity.config).items():
            edit.put(k, v)
    for k, v in envelope_part.set.items():
        edit.put(k, v)
    # A route chosen with a header the client sent in our namespace (Envoy may have resolved
    # it already) is chosen again without it.
    spoofed = any(h.startswith(OWN_HEADER_PREFIX) for h in edit.remove)
    return replies.request_headers(edit, clear_route_cache=spoofed)


def request_body_reply(rt: Runtime, verdict: Verdict, envelope: Envelope | None,
                       multiplexed: Translated | FailoverChain | None) -> pb.ProcessingResponse:
    # Header and query values redacted by the decision (the envelope's removals went out with
    # the request headers already).
    redacted = HeaderEdit(set=envelope_edit(envelope, verdict).set if verdict.envelope_redacted else {})
    if verdict.new_body is None:
        return replies.request_body(redacted)
    edit = HeaderEdit().put("content-length", str(len(verdict.new_body)))
    for k, v in redacted.set.items():
        edit.put(k, v)
    if isinstance(multiplexed, FailoverChain):
        # The chain's upstream stage (server/upstream.py) sets each attempt's credential.
        edit.put(CHAIN_HEADER, multiplexed.route.name).inject_credential(rt, None, replacing=Provider.OPENAI)
    elif isinstance(multiplexed, Translated):
        # The new path routes it (Envoy's routes match the providers' own paths) once the
        # route cache is cleared; the target's credential replaces the one set for OpenAI.
        edit.put(":path", multiplexed.request.path)
        for k, v in multiplexed.request.headers.items():
            edit.put(k, v)
        edit.put("x-ledgergate-upstream", multiplexed.route.target.provider)
        edit.inject_credential(rt, multiplexed.route.target.provider, replacing=Provider.OPENAI)
    return replies.request_body(edit, verdict.new_body, clear_route_cache=multiplexed is not None)
