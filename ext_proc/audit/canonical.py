"""Canonical JSON (RFC 8785) for hashing and signing audit records.

Records hold only strings, booleans, null, integers within +-2**53, lists and objects with ASCII
keys, and for those `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)` is
byte-identical to RFC 8785 (the `rfc8785` package is the oracle in the tests). Anything outside
that subset is refused rather than serialised differently.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_SAFE = 2**53 - 1


def _check(obj: Any) -> None:
    """Refuse what JSON cannot carry canonically; iterative, exact-type checks (hot path)."""
    stack = [(obj, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        t = type(node)
        if t is str or t is bool or node is None:
            continue
        if t is int:
            if -_MAX_SAFE <= node <= _MAX_SAFE:
                continue
            raise ValueError("integer outside the interoperable range")
        if depth > 64:
            raise ValueError("record nested too deeply")
        if t is dict:
            for k, v in node.items():
                if type(k) is not str or not k.isascii():
                    raise TypeError("record keys must be ASCII strings")
                if type(v) is not str:
                    push((v, depth + 1))
            continue
        if t is list or t is tuple:
            for v in node:
                if type(v) is not str:
                    push((v, depth + 1))
            continue
        if t is float:
            raise TypeError("floats are not allowed in audit records")
        raise TypeError(f"type {t.__name__} is not allowed in audit records")


def canonical_json(obj: Any) -> bytes:
    _check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
