"""Verified identity: JWT/JWKS, API keys, mTLS peer certificates, OAuth2 introspection, and the
agents acting for users (RFC 8693 act)."""

from ext_proc.configerror import ConfigError
from ext_proc.identity.config import IdentityConfig
from ext_proc.identity.credentials import CREDENTIAL_HEADERS
from ext_proc.identity.forward import IDENTITY_HEADER_PREFIX, forwarded_identity_headers, spoofable_headers
from ext_proc.identity.jwks import JwksError
from ext_proc.identity.model import Identity, IdentityError
from ext_proc.identity.resolver import IdentityResolver

__all__ = ["CREDENTIAL_HEADERS", "ConfigError", "IDENTITY_HEADER_PREFIX", "Identity", "IdentityConfig",
           "IdentityError", "IdentityResolver", "JwksError", "forwarded_identity_headers", "spoofable_headers"]
