"""The per-request inspection budget: how much text (UTF-8 bytes, after any decoding) and how
many candidate matches (validated by Python code in the rules' checks) one request may make the
classifier look at. Work on untrusted input stays bounded per request, whatever its shape: past the
budget the request is refused with a 413 in the provider's format and a decision record.

The budget wraps the request's classifier, so every `scan` the pipeline makes for this request
(body segments, joined views, decoded attachments, header and query values) is counted.
"""

from __future__ import annotations

from typing import Any

from ext_proc.classify.engine import Classifier, InspectionBudgetExceeded

DEFAULT_MAX_INSPECTION_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_INSPECTION_CANDIDATES = 10_000


class BudgetedClassifier:
    """A classifier for one request: `scan` counts against the budget; everything else is the
    shared classifier's."""

    def __init__(self, classifier: Classifier, *, max_bytes: int = DEFAULT_MAX_INSPECTION_BYTES,
                 max_candidates: int = DEFAULT_MAX_INSPECTION_CANDIDATES) -> None:
        if max_bytes <= 0 or max_candidates <= 0:
            raise ValueError("inspection budgets must be positive")
        self._classifier = classifier
        self.bytes_limit = max_bytes
        self.bytes_left = max_bytes
        self.candidates_limit = max_candidates
        self.candidates_left = max_candidates    # decremented by Classifier.scan

    def scan(self, text: str, **kwargs: Any):
        if not isinstance(text, str):
            raise TypeError("scan() takes a str")
        # len() is the UTF-8 size for ASCII; encode only the text that is not.
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise InspectionBudgetExceeded("bytes of text", self.bytes_limit)
        return self._classifier.scan(text, budget=self, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._classifier, name)

    def to_record(self) -> dict[str, int]:
        return {"bytes": self.bytes_limit - max(self.bytes_left, 0),
                "candidates": self.candidates_limit - max(self.candidates_left, 0),
                "max_bytes": self.bytes_limit, "max_candidates": self.candidates_limit}
