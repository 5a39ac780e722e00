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


def _check(obj: Any, depth: int = 0) -> None:
    if depth > 64:
        raise ValueError("record nested too deeply")
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, int):
        if -_MAX_SAFE <= obj <= _MAX_SAFE:
            return
        raise ValueError("integer outside the interoperable range")
    if isinstance(obj, float):
        raise TypeError("floats are not allowed in audit records")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or not k.isascii():
                raise TypeError("record keys must be ASCII strings")
            _check(v, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for v in obj:
            _check(v, depth + 1)
        return
    raise TypeError(f"type {type(obj).__name__} is not allowed in audit records")


def canonical_json(obj: Any) -> bytes:
    _check(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
