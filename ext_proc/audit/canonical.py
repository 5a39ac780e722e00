"""Canonical JSON (RFC 8785) for hashing and signing audit records.

Records hold only strings, booleans, null, integers within +-2**53, lists and objects with ASCII
keys, and for those orjson's compact output with sorted keys is byte-identical to RFC 8785 (and to
`json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`; the `rfc8785` package is
the oracle in the tests). Anything outside that subset is refused rather than serialised
differently. orjson because the decision record is the largest thing serialised per request: ~10x
faster than the stdlib encoder here (8 us against 81 us for a 6 KB record).
"""

from __future__ import annotations

from typing import Any

import orjson

_MAX_SAFE = 2**53 - 1


def _check(node: Any, depth: int = 0) -> None:
    """Refuse what JSON cannot carry canonically. Exact-type checks, with scalars in containers
    handled inline (the hot path: a decision record has a few hundred of them)."""
    t = type(node)
    if t is str or t is bool or node is None:
        return
    if t is int:
        if -_MAX_SAFE <= node <= _MAX_SAFE:
            return
        raise ValueError("integer outside the interoperable range")
    if depth > 64:
        raise ValueError("record nested too deeply")
    if t is dict:
        for k, v in node.items():
            if type(k) is not str or not k.isascii():
                raise TypeError("record keys must be ASCII strings")
            tv = type(v)
            if tv is str or tv is bool or v is None or (tv is int and -_MAX_SAFE <= v <= _MAX_SAFE):
                continue
            _check(v, depth + 1)
        return
    if t is list or t is tuple:
        for v in node:
            tv = type(v)
            if tv is str or tv is bool or v is None or (tv is int and -_MAX_SAFE <= v <= _MAX_SAFE):
                continue
            _check(v, depth + 1)
        return
    if t is float:
        raise TypeError("floats are not allowed in audit records")
    raise TypeError(f"type {t.__name__} is not allowed in audit records")


def canonical_json(obj: Any) -> bytes:
    _check(obj)
    return canonical_json_unchecked(obj)


check_canonical = _check


def canonical_json_unchecked(obj: Any) -> bytes:
    """For values already passed through `check_canonical` (or parts of one)."""
    return orjson.dumps(obj, option=_OPTIONS)


_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
