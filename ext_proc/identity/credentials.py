"""Which credential the request carries. Pure string code over the header map.

SDKs put the same key in different places: the OpenAI SDK sends `authorization: Bearer <key>`,
the Anthropic SDK `x-api-key: <key>`, Gemini clients `x-goog-api-key: <key>`. Each may carry a JWT
or an API key. A header sent twice, or two different credentials, is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ext_proc.identity.model import IdentityError

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def _token_chars_ok(token: str) -> bool:
    # Visible ASCII only: no spaces, no controls (CR/LF would be header injection), no non-ASCII.
    return token.isascii() and token.isprintable() and " " not in token


def extract_credential(headers: Mapping[str, Sequence[str]], max_bytes: int) -> str | None:
    """The one credential of the request, or None when no credential header is present."""
    values: dict[str, list[str]] = {}
    for name, vals in headers.items():
        lname = name.lower()
        if lname in CREDENTIAL_HEADERS:
            # Names differing only in case are the same header (RFC 9110): they count as repeats.
            values.setdefault(lname, []).extend([vals] if isinstance(vals, str) else vals)
    found: list[str] = []
    for name in CREDENTIAL_HEADERS:
        sent = values.get(name)
        if not sent:
            continue
        if len(sent) > 1:
            raise IdentityError("duplicate_credential", f"the {name} header was sent more than once")
        raw = sent[0]
        if len(raw) > max_bytes + 64:  # checked before any other look at the value
            raise IdentityError("token_too_large", f"the credential is larger than {max_bytes} bytes")
        value = raw.strip(" \t")
        if name == "authorization":
            scheme, _, rest = value.partition(" ")
            if not scheme:
                raise IdentityError("empty_credential", "the authorization header is empty")
            if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110 11.1)
                raise IdentityError("malformed_credential", "authorization must use the Bearer scheme")
            value = rest.strip(" \t")
        if not value:
            raise IdentityError("empty_credential", f"the {name} header carries no credential")
        if not _token_chars_ok(value):
            raise IdentityError("malformed_credential", f"the {name} header's credential has invalid characters")
        if len(value) > max_bytes:
            raise IdentityError("token_too_large", f"the credential is larger than {max_bytes} bytes")
        found.append(value)
    if len(set(found)) > 1:
        raise IdentityError("conflicting_credentials", "more than one different credential was sent")
    return found[0] if found else None
