"""The store's verification, run by the existing verifier over the records themselves (never over
the index), cached until the store changes, and the verdict on one record derived from it."""

from __future__ import annotations

import base64
import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Any

from ext_proc.console.evidence import StoreStatus, record_seal_checks, verify_store_with_witnesses


class ChainStatus:
    """Verifies in a background thread whenever the store's fingerprint changed; callers get the
    latest finished verdict (waiting a little for a fresh one, which a small store gives at once)."""

    def __init__(self, store, witnesses: list[str] | None = None, witness_table: str | None = None) -> None:
        self.store = store
        self.witnesses = list(witnesses or [])
        self.witness_table = witness_table
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._status: StoreStatus | None = None
        self._fingerprint = None
        self._running = False
        self.verified_at: float | None = None
        self.error: str | None = None
        self._child: Any = None
        self._closed = False
        self._started = 0.0

    def current(self, wait_s: float = 5.0) -> tuple[StoreStatus | None, bool]:
        """(the latest verdict or None, whether it is for the store as it is now)."""
        fp = self.store.fingerprint()
        with self._lock:
            if fp != self._fingerprint and not self._running:
                self._running = True
                self._started = time.time()
                threading.Thread(target=self._run, args=(fp,), daemon=True, name="console-verify").start()
            # Waiting is bounded from the start of the verification, not per caller: while a large
            # store is being verified, later views return at once with the last verdict.
            deadline = self._started + wait_s
            while self._running and time.time() < deadline:
                self._done.wait(max(0.0, deadline - time.time()))
            return self._status, (fp == self._fingerprint and not self._running)

    def _run(self, fp) -> None:
        """The verifier runs in a child process (spawned: this one has threads): the pages stay
        responsive while it works through a large store, and close() can stop it outright."""
        parent, child = _MP.Pipe(duplex=False)
        proc = _MP.Process(target=_verify_in_child, args=(child, self.store.spec, self.witnesses, self.witness_table),
                           daemon=True,
                           name="ledgergate-console-verify")
        status: Any = None
        error: str | None = "verification was stopped"
        try:
            with self._lock:
                if self._closed:
                    return
                proc.start()
                self._child = proc
            child.close()
            try:
                outcome, value = parent.recv()
            except EOFError:
                outcome, value = "error", "verification process ended without a verdict"
            status, error = (value, None) if outcome == "ok" else (None, f"verification could not run: {value}")
        finally:
            parent.close()
            if proc.pid is not None:
                proc.join(timeout=5)
            with self._lock:
                self._child = None
                if not self._closed:
                    self._status, self._fingerprint, self.error = status, fp, error
                    self.verified_at = time.time()
                self._running = False
                self._done.notify_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child = self._child
        if child is not None and child.is_alive():
            child.terminate()
            child.join(timeout=5)


_MP = multiprocessing.get_context("spawn")


def _verify_in_child(conn, spec: tuple[str, str], witnesses: list[str], witness_table: str | None) -> None:
    from ext_proc.console.store import open_store

    try:
        status = verify_store_with_witnesses(open_store(*spec).parsed(), witnesses, witness_table)
        conn.send(("ok", status))
    except Exception as exc:  # noqa: BLE001 - reported to the page as "could not run"
        conn.send(("error", type(exc).__name__))
    finally:
        conn.close()


@dataclass
class RecordVerdict:
    state: str            # "verified" | "broken" | "unverified"
    hash_ok: bool | None
    signature_ok: bool | None
    link_ok: bool | None
    segment_state: str | None
    detail: str
    checkpoint_line: int | None = None
    checkpoint_tree_size: int | None = None


def record_verdict(status: StoreStatus | None, fresh: bool, segment_row, line_no: int, raw: bytes,
                   rec: dict, prev_hash: str | None, checkpoint_row) -> RecordVerdict:
    """What the console can say about one record: its own seal checked here against its segment's
    genesis key, its link to the record before, and the whole-segment verdict of the verifier."""
    hash_ok = sig_ok = None
    problem = None
    key = segment_row["public_key"] if segment_row is not None else None
    if key:
        try:
            hash_ok, sig_ok, problem = record_seal_checks(base64.b64decode(key), raw)
        except ValueError:
            problem = "the segment's public key is unreadable"
    link_ok = None
    if isinstance(rec.get("prev_hash"), str):
        link_ok = (rec["prev_hash"] == prev_hash) if prev_hash is not None else \
            (line_no == 1 and set(rec["prev_hash"]) == {"0"})
    cp = (checkpoint_row["line"], checkpoint_row["tree_size"]) if checkpoint_row is not None else (None, None)
    seg = status.segments.get(segment_row["name"]) if (status and segment_row is not None) else None
    if seg is None:
        return RecordVerdict("unverified", hash_ok, sig_ok, link_ok, None,
                             "the segment has not been verified yet" if status is None else
                             "the segment is not in the last verification", *cp)
    if seg.state == "broken":
        if seg.broken_line is not None and line_no < seg.broken_line and hash_ok and sig_ok and link_ok is not False:
            return RecordVerdict("verified", hash_ok, sig_ok, link_ok, "broken",
                                 f"this record and the chain before it verify; the segment breaks later, "
                                 f"at record {seg.broken_line}: {seg.problem}", *cp)
        if seg.broken_line == line_no:
            return RecordVerdict("broken", hash_ok, sig_ok, link_ok, "broken",
                                 f"the chain breaks at this record: {seg.problem}", *cp)
        return RecordVerdict("broken", hash_ok, sig_ok, link_ok, "broken",
                             f"after the break at record {seg.broken_line} ({seg.problem}): nothing here is proven",
                             *cp)
    if not (hash_ok and sig_ok) or link_ok is False:
        # The store changed since the last verification (or the seal check disagrees): say so.
        return RecordVerdict("broken", hash_ok, sig_ok, link_ok, seg.state,
                             problem or "the record does not link to the one before it", *cp)
    detail = "hash, signature and chain link verify; the whole segment verifies"
    if not fresh:
        detail += " (as of the last verification; the store has grown since)"
    return RecordVerdict("verified", hash_ok, sig_ok, link_ok, seg.state, detail, *cp)
