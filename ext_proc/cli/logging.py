"""structlog set-up: JSON lines on stderr. Callers log ids, codes and counts, never content.

Libraries that log through the standard library (httpx, grpc, asyncio) go through the same
renderer, so every line on stderr is one JSON object; httpx's per-request INFO lines (which name
URLs) are kept at WARNING and above."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Chatty at INFO (a line per HTTP request it makes, e.g. every JWKS refresh).
QUIET_LIBRARIES = ("httpx", "httpcore")


def configure(level: str = "info", *, json: bool = True) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
