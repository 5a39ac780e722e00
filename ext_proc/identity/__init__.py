"""Verified identity: JWT/JWKS, API keys, mTLS peer certificates, agents acting for users."""

from ext_proc.identity.model import Identity, IdentityError
from ext_proc.identity.resolver import IdentityConfig, IdentityResolver, forwarded_identity_headers

IDENTITY_HEADER_PREFIX = "x-ledgergate-"

__all__ = ["IDENTITY_HEADER_PREFIX", "Identity", "IdentityConfig", "IdentityError", "IdentityResolver",
           "forwarded_identity_headers"]
