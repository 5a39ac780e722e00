"""A cached (non-streamed) answer re-framed as the provider's own event stream (sans-I/O), so an
official SDK that asked for a stream reads it as it reads the provider's. How each surface's
stream looks is its provider's (`SurfaceRules.replay` in ext_proc/providers/<name>.py).

Text answers only: an answer with tool calls or non-text blocks is not replayed as a stream (the
request is forwarded instead) rather than approximated.
"""

from __future__ import annotations

import json

from ext_proc.providers import registry
from ext_proc.providers.events import NotReplayable

__all__ = ["NotReplayable", "replay_stream"]


def replay_stream(surface: str, body: bytes, *, include_usage: bool) -> bytes:
    try:
        answer = json.loads(body)
    except ValueError:
        raise NotReplayable("json") from None
    if not isinstance(answer, dict):
        raise NotReplayable("json")
    rules = registry.surface_rules(surface)
    if rules is None or rules.replay is None:
        raise NotReplayable("surface")
    return rules.replay(answer, include_usage)
