"""A surface: one provider API as a request path names it. Each provider module matches its own
paths (ext_proc/providers/<name>.py); registry.match_surface asks them in turn.

Paths are matched exactly (after the query string is cut off); anything else is None, which the
policy sees as the surface "unknown" (default deny in the shipped policies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

MAX_PATH = 4096


@dataclass(frozen=True, slots=True)
class Surface:
    name: str
    provider: str
    api: str
    inspectable: bool = True
    model_from_path: str | None = None
    stream_from_path: bool = False

    def __post_init__(self) -> None:
        # A Provider member is a str subclass; records (canonical JSON) take exact strings only.
        object.__setattr__(self, "provider", str(self.provider))

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "provider": self.provider, "api": self.api,
                "inspectable": self.inspectable, "model_from_path": self.model_from_path,
                "stream_from_path": self.stream_from_path}


def model_segment(raw: str) -> str | None:
    """A model id or deployment taken from the path: percent-decoded, non-empty, printable."""
    model = unquote(raw, errors="strict") if "%" in raw else raw
    if not model or len(model) > 512 or not model.isprintable():
        return None
    return model


def under(path: str, prefix: str) -> bool:
    """PATH is PREFIX itself or below it (PREFIX written with or without its trailing slash)."""
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")
