"""Redaction of findings in the original text.

Spans are original-text offsets, so a card written with zero-width spaces or full-width digits
is replaced character for character, hidden characters included. Values never leave this module
except as a keyed hash (``hash``) or their last few characters (``partial``), both chosen by policy.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ext_proc.classify.engine import Finding
from ext_proc.classify.normalize import fold_plain

STRATEGIES = ("mask", "hash", "partial", "remove")
_DIGIT_LABELS = frozenset({"pci.card_number", "pii.us_ssn", "pii.phone", "phi.us_npi"})
PARTIAL_KEEP = 4


@dataclass(frozen=True, slots=True)
class Redaction:
    label: str
    start: int
    end: int
    strategy: str
    # What replaced the span (never in records: a partial strategy keeps some of the value).
    replacement: str = field(default="", repr=False, compare=False)
    # Every label whose findings this span masks (overlapping findings are masked as one span).
    labels: tuple[str, ...] = field(default=(), compare=False)

    def to_record(self) -> dict[str, Any]:
        rec = {"label": self.label, "start": self.start, "end": self.end, "strategy": self.strategy}
        if len(self.labels) > 1:
            rec["labels"] = list(self.labels)
        return rec


def normalized_value(label: str, value: str) -> str:
    """The form that is hashed: the same value written differently hashes the same."""
    folded = fold_plain(value)
    if label in _DIGIT_LABELS:
        return "".join(c for c in folded if c.isdigit())
    if label == "pii.iban":
        return "".join(folded.split()).upper()
    if label == "pii.email" or label.startswith("custom."):
        return " ".join(folded.split()).casefold()
    return "".join(folded.split())


def _meaningful(label: str, value: str) -> str:
    folded = fold_plain(value)
    if label in _DIGIT_LABELS:
        return "".join(c for c in folded if c.isdigit())
    return "".join(c for c in folded if c.isalnum())


def _replacement(label: str, strategy: str, value: str, hash_key: bytes, tenant: str | None) -> str:
    tag = label.upper()
    if strategy == "mask":
        return f"[{tag}]"
    if strategy == "remove":
        return ""
    if strategy == "hash":
        msg = f"{tenant or ''}|{label}|{normalized_value(label, value)}".encode("utf-8", "surrogatepass")
        return f"[{tag}:{hmac.new(hash_key, msg, hashlib.sha256).hexdigest()[:12]}]"
    meaningful = _meaningful(label, value)
    keep = min(PARTIAL_KEEP, len(meaningful) // 2)     # never reveal most of a short value
    return f"[{tag}:...{meaningful[len(meaningful) - keep:] if keep else ''}]"


def redact(text: str, findings: Sequence[Finding], strategies: Mapping[str, str], *,
           hash_key: bytes, tenant: str | None = None) -> tuple[str, list[Redaction]]:
    """Replace every finding whose label has a strategy (``"*"``: default for all labels).

    Overlapping selected findings (findings of different labels overlap: every label stands) are
    redacted as one span under the first one's label, so no character of either survives; the
    redaction lists every label it masks.
    """
    for label, strategy in strategies.items():
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown redaction strategy for {label!r}; expected one of {STRATEGIES}")
    default = strategies.get("*")
    selected: list[tuple[int, int, str, str]] = []
    for f in findings:
        if not 0 <= f.start < f.end <= len(text):
            raise ValueError(f"finding span {f.start}..{f.end} is outside the text ({len(text)} characters)")
        chosen = strategies.get(f.label)
        if chosen is None:
            chosen = default
        if chosen is not None:
            selected.append((f.start, f.end, f.label, chosen))
    if not selected:
        return text, []
    if any(s == "hash" for *_, s in selected) and not (isinstance(hash_key, bytes) and hash_key):
        raise ValueError("the hash strategy needs a non-empty hash_key")
    selected.sort()
    merged: list[list[Any]] = []
    for s, e, label, strategy in selected:
        if merged and s < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
            if label not in merged[-1][4]:
                merged[-1][4].append(label)
        else:
            merged.append([s, e, label, strategy, [label]])
    out: list[str] = []
    reds: list[Redaction] = []
    pos = 0
    for s, e, label, strategy, labels in merged:
        out.append(text[pos:s])
        replacement = _replacement(label, strategy, text[s:e], hash_key, tenant)
        out.append(replacement)
        reds.append(Redaction(label, s, e, strategy, replacement, tuple(labels)))
        pos = e
    out.append(text[pos:])
    return "".join(out), reds
