"""The per-request inspection budget: how much text (UTF-8 bytes, after any decoding) and how
many candidate matches (validated by Python code in the rules' checks) one request may make the
classifier look at. Work on untrusted input stays bounded per request, whatever its shape: past the
budget the request is refused with a 413 in the provider's format and a decision record.

The budget wraps the request's classifier, so every `scan` the pipeline makes for this request
(body segments, joined views, decoded attachments, header and query values) is counted.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ext_proc.classify.engine import Classifier, Finding, InspectionBudgetExceeded

DEFAULT_MAX_INSPECTION_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_INSPECTION_CANDIDATES = 10_000
# With a ScanPool: texts from this size up are scanned in its process; smaller ones locally
# (a round trip costs ~0.2 ms) until the request's local scans have validated this many
# candidates (the Python part of a scan), after which all of its texts go to the pool. Text made
# of near-misses thus costs the local process at most ~LOCAL_CANDIDATES x 60 us, in any shape.
REMOTE_SCAN_MIN_CHARS = 16 * 1024
LOCAL_CANDIDATES = 256
SCAN_NICENESS = 10


class ScanPool:
    """Classification in a separate process: the rules' checks are Python, and a thread cannot
    keep them from holding the GIL the event loop needs. One process ("spawn": no fork of a
    process with gRPC threads), started on first use, replaced when it dies (the scan that saw it
    die fails, and the request with it: fail closed). Scans are serialized through it."""

    def __init__(self, workers: int = 1) -> None:
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self._workers,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_lower_priority)
            return self._pool

    def scan(self, custom_terms: Mapping[str, Sequence[str]], max_input_chars: int, text: str,
             candidates_left: int, candidates_limit: int, fences: Sequence[int] | None = None) -> tuple[list[Any], int]:
        pool = self._executor()
        try:
            findings, left = pool.submit(_scan_in_child, _terms_key(custom_terms), max_input_chars, text,
                                         candidates_left, fences).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            raise
        if findings is None:
            raise InspectionBudgetExceeded("candidate matches", candidates_limit)
        return findings, left

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority() -> None:
    # The OS schedules the event loop, Envoy and the small requests first when the scans of
    # large bodies compete with them for the cores.
    try:
        os.nice(SCAN_NICENESS)
    except OSError:
        pass


def _terms_key(custom_terms: Mapping[str, Sequence[str]]) -> tuple[Any, ...]:
    return tuple(sorted((k, tuple(v)) for k, v in custom_terms.items()))


_CHILD_CLASSIFIERS: dict[tuple[Any, ...], Classifier] = {}


def _scan_in_child(terms_key: tuple[Any, ...], max_input_chars: int, text: str, candidates_left: int,
                   fences: Sequence[int] | None = None) -> tuple[Any, int]:
    """In the ScanPool's process: the same Classifier, built once per dictionary set; (None, 0)
    when the candidate budget runs out (exceptions with arguments do not cross processes well)."""
    key = (terms_key, max_input_chars)
    c = _CHILD_CLASSIFIERS.get(key)
    if c is None:
        if len(_CHILD_CLASSIFIERS) >= 2:
            _CHILD_CLASSIFIERS.pop(next(iter(_CHILD_CLASSIFIERS)))
        c = _CHILD_CLASSIFIERS[key] = Classifier({k: list(v) for k, v in terms_key},
                                                 max_input_chars=max_input_chars)
    budget = _Candidates(candidates_left)
    try:
        findings = c.scan(text, budget=budget, fences=fences)
    except InspectionBudgetExceeded:
        return None, 0
    return findings, budget.candidates_left


class _Candidates:
    __slots__ = ("candidates_left",)

    def __init__(self, left: int) -> None:
        self.candidates_left = left


class BudgetedClassifier:
    """A classifier for one request: `scan` counts against the budget; everything else is the
    shared classifier's."""

    def __init__(self, classifier: Classifier, *, max_bytes: int = DEFAULT_MAX_INSPECTION_BYTES,
                 max_candidates: int = DEFAULT_MAX_INSPECTION_CANDIDATES, pool: ScanPool | None = None,
                 custom_terms: Mapping[str, Sequence[str]] | None = None) -> None:
        """`pool` (with the `custom_terms` the classifier was built with): large texts are
        scanned in its process, with the same rules and the same budget."""
        if max_bytes <= 0 or max_candidates <= 0:
            raise ValueError("inspection budgets must be positive")
        self._classifier = classifier
        self._pool = pool
        self._custom_terms = custom_terms or {}
        self.bytes_limit = max_bytes
        self.bytes_left = max_bytes
        self.candidates_limit = max_candidates
        self.candidates_left = max_candidates    # decremented by Classifier.scan
        self._local_left = LOCAL_CANDIDATES      # with a pool: candidates still validated here

    @property
    def max_input_chars(self) -> int:
        return self._classifier.max_input_chars

    @property
    def max_match_chars(self) -> int:
        return self._classifier.max_match_chars

    def scan(self, text: str, *, fences: Sequence[int] | None = None, **kwargs: Any) -> list[Finding]:
        if not isinstance(text, str):
            raise TypeError("scan() takes a str")
        # len() is the UTF-8 size for ASCII; encode only the text that is not.
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise InspectionBudgetExceeded("bytes of text", self.bytes_limit)
        if self._pool is None or kwargs:
            return self._classifier.scan(text, budget=self, fences=fences, **kwargs)
        if len(text) > self._classifier.max_input_chars:
            return self._classifier.scan(text)     # raises InputTooLarge, as a local scan would
        if self._local_left > 0 and len(text) < REMOTE_SCAN_MIN_CHARS:
            local = _Candidates(min(self._local_left, self.candidates_left))
            try:
                findings = self._classifier.scan(text, budget=local, fences=fences)
            except InspectionBudgetExceeded:
                if self._local_left < self.candidates_left:
                    self._local_left = 0           # the local allowance ran out: the pool redoes it
                    return self._remote(text, fences)
                raise InspectionBudgetExceeded("candidate matches", self.candidates_limit) from None
            spent = min(self._local_left, self.candidates_left) - local.candidates_left
            self.candidates_left -= spent
            self._local_left -= spent
            return findings
        return self._remote(text, fences)

    def _remote(self, text: str, fences: Sequence[int] | None = None) -> list[Finding]:
        assert self._pool is not None
        findings, self.candidates_left = self._pool.scan(
            self._custom_terms, self._classifier.max_input_chars, text, self.candidates_left, self.candidates_limit,
            fences)
        return findings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._classifier, name)

    def to_record(self) -> dict[str, int]:
        return {"bytes": self.bytes_limit - max(self.bytes_left, 0),
                "candidates": self.candidates_limit - max(self.candidates_left, 0),
                "max_bytes": self.bytes_limit, "max_candidates": self.candidates_limit}
