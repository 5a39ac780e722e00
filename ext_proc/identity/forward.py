"""Identity headers for the upstream, only as configured (`identity.forward_headers`), and the
header names a client must never be able to set itself."""

from __future__ import annotations

import urllib.parse

from ext_proc.identity.config import IDENTITY_HEADER_PREFIX, IdentityConfig
from ext_proc.identity.model import Identity

__all__ = ["IDENTITY_HEADER_PREFIX", "forwarded_identity_headers", "spoofable_headers"]

# Kept literally in header values; everything else (',' inside a list item, '%', non-ASCII) is
# percent-encoded so a value can neither split a list nor carry CR/LF.
_SAFE = "/:@!$&'()*+;=-._~ "


def _encode(v: str) -> str:
    return urllib.parse.quote(v, safe=_SAFE)


def forwarded_identity_headers(identity: Identity, config: IdentityConfig) -> dict[str, str]:
    """{header: value} for each configured identity field; lists are comma-joined, each item
    percent-encoded; a field with no value (no tenant, no actor) sends no header."""
    out: dict[str, str] = {}
    for fld, header in config.forward_headers.items():
        value = getattr(identity, fld)
        if value is None:
            continue
        if isinstance(value, tuple):
            if not value:
                continue
            out[header] = ",".join(_encode(v) for v in value)
        else:
            out[header] = _encode(str(value))
    return out


def spoofable_headers(config: IdentityConfig) -> frozenset[str]:
    """Every header ledgergate may set upstream to carry identity; the client must never be able
    to set them. All of them start with IDENTITY_HEADER_PREFIX (the configuration enforces it),
    so stripping that prefix covers them; the set is exposed for an explicit check."""
    return frozenset(config.forward_headers.values())
