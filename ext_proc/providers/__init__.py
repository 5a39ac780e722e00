"""Provider surfaces: route matching, request adapters, error formats, mock providers."""

from ext_proc.providers.adapters import (
    BadRequestBody,
    ParsedRequest,
    TextSegment,
    parse_request,
    render_request,
)
from ext_proc.providers.errors import error_body
from ext_proc.providers.surfaces import Surface, match_surface

__all__ = ["BadRequestBody", "ParsedRequest", "Surface", "TextSegment", "error_body",
           "match_surface", "parse_request", "render_request"]
