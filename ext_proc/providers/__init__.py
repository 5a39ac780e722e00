"""Provider surfaces: one module per provider (openai, azure, anthropic, gemini, bedrock), the
registry the rest of ledgergate looks them up in, and the shared body readers and adapters."""

from ext_proc.providers.adapters import (
    BadRequestBody,
    ParsedRequest,
    TextSegment,
    parse_request,
    render_request,
)
from ext_proc.providers.names import Provider
from ext_proc.providers.registry import error_body, match_surface
from ext_proc.providers.surfaces import Surface

__all__ = ["BadRequestBody", "ParsedRequest", "Provider", "Surface", "TextSegment", "error_body",
           "match_surface", "parse_request", "render_request"]
