"""Provider surfaces: route matching, request/response adapters, error formats, mock providers."""

from ext_proc.providers.adapters import (
    BadRequestBody,
    ParsedRequest,
    ParsedResponse,
    TextSegment,
    parse_request,
    parse_response,
    render_request,
    render_response,
)
from ext_proc.providers.errors import error_body
from ext_proc.providers.surfaces import Surface, match_surface

__all__ = ["BadRequestBody", "ParsedRequest", "ParsedResponse", "Surface", "TextSegment", "error_body",
           "match_surface", "parse_request", "parse_response", "render_request", "render_response"]
