"""Verify audit segments: every stored line is byte for byte the canonical JSON that was hashed and
signed; every record's hash, signature, sequence and link to its predecessor; one genesis per
segment; checkpoints match the records before them; torn tails only where a later genesis attests
them; segments named by a later genesis are present and at least as long as attested; checkpoints
kept elsewhere (a file, a witness directory) are proven to be prefixes of the store (RFC 6962
consistency proofs).

Streaming: segments are read in bounded chunks (a byte range of a file, a page of PostgreSQL
rows) and only O(log n) Merkle state is kept per segment, so memory does not grow with the number
of records. Hashes and signatures (the expensive, independent part) run on a process pool when
there are enough records; the ordered checks run in this process, so the first problem reported is
the same whatever the parallelism.

The importable API (also used by the web console):

    verify_store(store, table=..., trusted_key_ids=..., checkpoints=..., progress=...) -> VerifyReport
    report.segment_status: one SegmentStatus per segment (records, closed, ok, first problem)
    report.first: the first Problem (segment, line, reason) or None
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ext_proc.audit.canonical import canonical_json_unchecked
from ext_proc.audit.chain import GENESIS_PREV, key_id, record_hash
from ext_proc.audit.checkpoint import Checkpoint, signature_problem
from ext_proc.audit.merkle import ConsistencyProofBuilder, MerkleFrontier, leaf_hash, verify_consistency

# lines_segment is used here and by the console through this module.
from ext_proc.audit.segments import Segment, StoreNotFound, file_segments, is_dsn, lines_segment  # noqa: F401


@dataclass
class Problem:
    segment: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.segment}:{self.line}: {self.reason}" if self.line is not None \
            else f"{self.segment}: {self.reason}"


@dataclass
class SegmentStatus:
    name: str
    writer_id: str | None = None
    segment_id: str | None = None
    key_id: str | None = None
    records: int = 0
    closed: bool = False          # ends with its closing checkpoint record
    tree_size: int = 0
    root: str | None = None       # base64 RFC 6962 root over every record of the segment
    ok: bool = True
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    ok: bool = True
    records: int = 0
    segments: int = 0
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)
    first: Problem | None = None
    problems: list[Problem] = field(default_factory=list)     # every problem found, first one first
    segment_status: list[SegmentStatus] = field(default_factory=list)
    checkpoints_checked: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "segments": self.segments, "problem": self.problem,
                "first_problem": None if self.first is None else vars(self.first),
                "problems": [str(p) for p in self.problems],
                "warnings": self.warnings, "key_ids": sorted(self.key_ids),
                "checkpoints_checked": self.checkpoints_checked,
                "segment_status": [{**{k: v for k, v in vars(s).items() if k != "problem"},
                                    "problem": None if s.problem is None else vars(s.problem)}
                                   for s in self.segment_status]}


def _fail(rep: VerifyReport, problem: Problem) -> VerifyReport:
    rep.problems.append(problem)
    if rep.first is None:
        rep.ok = False
        rep.first = problem
        rep.problem = str(problem)
    return rep


# --- Where segments come from -----------------------------------------------------------------

def open_segments(store: str, table: str | None = None) -> list[Segment]:
    """The segments of a store: a directory of the file sink, or a postgresql:// DSN."""
    if is_dsn(store):
        from ext_proc.audit.config import DEFAULT_TABLE
        from ext_proc.audit.postgres import stream_segments

        return stream_segments(store, table or DEFAULT_TABLE)
    path = Path(store)
    if not path.is_dir():
        raise StoreNotFound(f"audit store {store} not found (no such directory)")
    return file_segments(path)


# --- Per-line checks (run in worker processes) -----------------------------------------------

def sealed_hash(line: bytes, rec: dict[str, Any]) -> str:
    """The record's hash, computed from its stored bytes (which the caller has already found to be
    the canonical form): the seal members are cut out of the line and the rest hashed, which skips
    re-serialising the record. Anything else falls back to canonical JSON of the parsed record."""
    h, sig = rec.get("hash"), rec.get("signature")
    if isinstance(h, str) and isinstance(sig, str):
        cut = line
        for member in (b'"hash":' + json.dumps(h).encode(), b'"signature":' + json.dumps(sig).encode()):
            i = cut.find(member)
            if i < 0:
                break
            j = i + len(member)
            if cut[j:j + 1] == b",":
                cut = cut[:i] + cut[j + 1:]
            elif cut[i - 1:i] == b",":
                cut = cut[:i - 1] + cut[j:]
            else:
                cut = cut[:i] + cut[j:]
        else:
            digest = hashlib.sha256(cut).hexdigest()
            if digest == h:
                return digest
    return record_hash(rec)


_SUMMARY_FIELDS = ("kind", "writer_id", "segment_id", "key_id", "seq", "prev_hash", "tree_size", "root")


def _duplicate_key(line: bytes) -> str | None:
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen = set()
        for k, _v in items:
            if k in seen and not found:
                found.append(k)
            seen.add(k)
        return dict(items)
    try:
        json.loads(line, object_pairs_hook=pairs)
    except ValueError:
        return None
    return found[0] if found else None


def not_canonical_reason(line: bytes) -> str:
    """Why a parsable line is not the canonical bytes the writer stored (for the report only)."""
    if line.endswith(b"\r"):
        return "CRLF line ending: the stored bytes are not the canonical bytes that were signed"
    dup = _duplicate_key(line)
    if dup is not None:
        return (f"duplicate key {dup!r}: readers that keep the first or the last value would see "
                "different records")
    return ("not the canonical JSON that was signed (reformatted, reordered, escaped or padded): "
            "the stored bytes must be exactly the signed form")


def check_lines(public_key: bytes, lines: list[bytes]) -> list[tuple[Any, ...]]:
    """The per-record work that needs no predecessor: byte-exact canonical form, hash, signature.
    Returns, per line, (problem or None, hash, summary fields) so the ordered checks can run
    without re-parsing. A module-level function so a process pool can run it."""
    # libsodium's verify (PyNaCl) is ~1.6x faster than OpenSSL's here, and it is the bulk of the
    # cost per record; it is also the stricter of the two (rejects small-order keys).
    verify = VerifyKey(public_key).verify
    out: list[tuple[Any, ...]] = []
    for line in lines:
        if not line or line == b"\r":
            out.append(("blank line (the writer never stores one)", None, None))
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(("not valid JSON", None, None))
            continue
        if not isinstance(rec, dict):
            out.append(("not a JSON object", None, None))
            continue
        summary = tuple(rec.get(f) for f in _SUMMARY_FIELDS)
        # Byte-exact: the one serialisation the writer produces (orjson, sorted keys, compact),
        # so a line that parses to the same record but is not these bytes is refused. A
        # duplicate key collapses on parsing, so it can never reproduce the line.
        try:
            exact = canonical_json_unchecked(rec) == line
        except (orjson.JSONEncodeError, TypeError):
            exact = False
        if not exact:
            out.append((not_canonical_reason(line), None, summary))
            continue
        h = sealed_hash(line, rec)
        if rec.get("hash") != h:
            out.append(("content does not match its hash (altered)", h, summary))
            continue
        try:
            verify(bytes.fromhex(h), base64.b64decode(rec.get("signature", ""), validate=True))
        except (BadSignatureError, ValueError, TypeError):
            out.append(("signature does not verify", h, summary))
            continue
        out.append((None, h, summary))
    return out


def check_chunk_lines(chunk: tuple[Any, ...]) -> list[bytes]:
    """The complete lines of a chunk: ("file", path, start, stop) is read here (in the worker,
    so record bytes never cross a pipe); ("lines", [bytes]) carries them."""
    if chunk[0] == "file":
        _kind, path, start, stop = chunk
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        lines = data.split(b"\n")
        lines.pop()   # the chunk ends with a newline: the last element is empty
        return lines
    carried: list[bytes] = chunk[1]
    return carried


def check_chunk(public_key: bytes, chunk: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    return check_lines(public_key, check_chunk_lines(chunk))


# --- Ordered checks --------------------------------------------------------------------------

PARALLEL_THRESHOLD_BYTES = 24 * 1024 * 1024
"""Below this much data (~7,000 records of 3.5 KB) a process pool costs more to start than it saves."""


def _genesis(seg: Segment) -> tuple[dict[str, Any], bytes] | None:
    if seg.first_line is None:
        return None
    try:
        g = json.loads(seg.first_line)
        raw = base64.b64decode(g["public_key"], validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
        return g, raw
    except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError):
        return None


def _unreadable_genesis(seg: Segment) -> Problem:
    """Why a segment's first line gave no genesis record with a usable public key."""
    try:
        first = json.loads(seg.first_line or b"")
    except json.JSONDecodeError:
        return Problem(seg.name, 1, "not valid JSON")
    if not isinstance(first, dict):
        return Problem(seg.name, 1, "not a JSON object")
    if first.get("kind") != "genesis":
        return Problem(seg.name, 1, "segment does not start with a genesis record")
    return Problem(seg.name, 1, "genesis public key unreadable")


# What later genesis records claim about a predecessor: {file: {(records, hash of the last)}}. Read
# from records, so a malformed claim keeps whatever JSON value it holds: it never matches and
# fails the check that reads it (a missing segment, a differing record).
_Claims = dict[Any, set[tuple[int, Any]]]


class _SegmentCheck:
    """The ordered checks of one segment, fed the per-line results chunk by chunk. Built only for
    a segment whose genesis record was read with its public key (`_genesis`)."""

    def __init__(self, seg: Segment, gen: tuple[dict[str, Any], bytes], status: SegmentStatus,
                 checkpoints: list[Checkpoint], claimed: _Claims) -> None:
        self.seg, self.st = seg, status
        self.genesis, self.public_key = gen
        self.prev, self.expected_seq, self.n, self.last_kind = GENESIS_PREV, 0, 0, None
        self.frontier = MerkleFrontier()
        self.done = False
        self.checkpoints = checkpoints
        # The largest checkpoint of this segment is checked with an RFC 6962 consistency proof
        # built while the leaves stream past (what a holder of only the two tree heads checks);
        # any others (a witness's history) against the root of the same prefix, O(1) each.
        self.by_size: dict[int, list[Checkpoint]] = {}
        self.largest: tuple[Checkpoint, ConsistencyProofBuilder | None] | None = None
        self.checked = 0
        # Claims of later genesis records: (records, hash of the last of them). Every claim must
        # hold, so a later restart cannot launder an earlier truncation.
        self.attested: set[tuple[int, Any]] = claimed.get(seg.name, set())
        self._claimed_at = {n for n, _h in self.attested}
        self.hash_at: dict[int, str] = {}

    def start(self) -> Problem | None:
        g = self.genesis
        where = Problem(self.seg.name, 1, "")
        if g.get("kind") != "genesis":
            where.reason = "segment does not start with a genesis record"
            return where
        kid = key_id(Ed25519PublicKey.from_public_bytes(self.public_key))
        if kid != g.get("key_id"):
            where.reason = "genesis key_id does not match its public key"
            return where
        self.st.writer_id, self.st.segment_id, self.st.key_id = g.get("writer_id"), g.get("segment_id"), kid
        mine = [c for c in self.checkpoints if (c.writer_id, c.segment_id) == (g.get("writer_id"), g.get("segment_id"))]
        for c in mine:
            bad = signature_problem(c, self.public_key, kid)
            if bad is not None:
                return Problem(self.seg.name, None, bad)
        if mine:
            top = max(mine, key=lambda c: c.size)
            n = self.seg.count() if self.seg.count else 0
            self.largest = (top, ConsistencyProofBuilder(top.size, n) if 0 < top.size <= n else None)
            for c in mine:
                if c is not top:
                    self.by_size.setdefault(c.size, []).append(c)
        return None

    def _not_extended(self, c: Checkpoint) -> Problem:
        return Problem(self.seg.name, None, f"not an extension of the checkpoint in {c.source} (size {c.size}): "
                                            "records before it were removed, rewritten or reordered")

    def feed(self, results: list[tuple[Any, ...]]) -> Problem | None:
        g = self.genesis
        for problem, h, summary in results:
            self.n += 1
            n = self.n
            if summary is None:
                return Problem(self.seg.name, n, problem)
            kind, writer_id, segment_id, kid, seq, prev_hash, tree_size, root = summary
            if n > 1 and kind == "genesis":
                return Problem(self.seg.name, n, "second genesis record inside a segment")
            if writer_id != g["writer_id"] or segment_id != g["segment_id"]:
                return Problem(self.seg.name, n, "record belongs to another segment (spliced)")
            if kid != g["key_id"]:
                return Problem(self.seg.name, n, "record signed with a key other than the segment's")
            if seq != self.expected_seq:
                return Problem(self.seg.name, n, f"sequence {seq} where {self.expected_seq} was expected "
                                                 "(record removed, reordered or inserted)")
            if prev_hash != self.prev:
                return Problem(self.seg.name, n, "prev_hash does not link to the previous record")
            if problem is not None:
                return Problem(self.seg.name, n, problem)
            if kind == "checkpoint":
                if tree_size != self.frontier.size or root != base64.b64encode(self.frontier.root()).decode():
                    return Problem(self.seg.name, n, "checkpoint does not match the records before it")
            leaf = leaf_hash(bytes.fromhex(h))
            self.frontier.append(leaf)
            if self.largest is not None and self.largest[1] is not None:
                self.largest[1].append(leaf)
            if self.frontier.size in self.by_size:
                prefix_root = self.frontier.root()
                for c in self.by_size[self.frontier.size]:
                    self.checked += 1
                    if c.root != prefix_root:
                        return self._not_extended(c)
            if n in self._claimed_at:
                self.hash_at[n] = h
            self.prev, self.expected_seq, self.last_kind = h, self.expected_seq + 1, kind
            self.st.records += 1
        return None

    def finish(self, rep: VerifyReport, attested_torn: dict[tuple[str, int], str]) -> Problem | None:
        seg, st = self.seg, self.st
        st.tree_size = self.frontier.size
        st.root = base64.b64encode(self.frontier.root()).decode()
        st.closed = self.last_kind == "checkpoint"
        root = self.frontier.root()
        rep.checkpoints_checked += self.checked
        if self.largest is not None:
            c, b = self.largest
            rep.checkpoints_checked += 1
            if c.size > self.frontier.size:
                return Problem(seg.name, None,
                               f"truncated: the checkpoint in {c.source} covers {c.size} records, the segment "
                               f"holds {self.frontier.size} (records removed from the end)")
            if b is None or not verify_consistency(c.size, self.frontier.size, c.root, root, b.proof()):
                return self._not_extended(c)
        for want, want_hash in sorted(self.attested, reverse=True):
            if self.n < want:
                return Problem(seg.name, None,
                               f"truncated: a later genesis attests {want} records, the segment holds {self.n}")
            if self.hash_at.get(want) != want_hash:
                return Problem(seg.name, want, "record differs from the one a later genesis attests")
        if seg.torn:
            digest = hashlib.sha256(seg.torn).hexdigest()
            if attested_torn.get((seg.name, seg.torn_offset)) == digest:
                st.warnings.append(f"{seg.name}: torn final write of {len(seg.torn)} bytes, attested by a later genesis")
            else:
                return Problem(seg.name, self.n + 1, "torn or truncated final record not attested")
        if not st.closed:
            if self.attested:
                st.warnings.append(f"{seg.name}: no closing checkpoint; the writer stopped (crash) after "
                                   f"{max(self.attested)[0]} records, attested by a later genesis")
            else:
                st.warnings.append(f"{seg.name}: no closing checkpoint and no later genesis attests its end: the "
                                   "writer is running or crashed, or records were removed from the end "
                                   "(verify against a checkpoint kept elsewhere: --checkpoint / --witness)")
        return None


def _chunk_bytes(chunk: tuple[Any, ...]) -> int:
    return chunk[3] - chunk[2] if chunk[0] == "file" else sum(len(x) + 1 for x in chunk[1])


def _chunk_stream(segments: list[Segment], genes: list[tuple[dict[str, Any], bytes] | None], pool: Any, depth: int,
                  finished: Callable[[int], bool]) -> Iterator[tuple[int, list[tuple[Any, ...]], int]]:
    """(segment index, per-line results, bytes) per chunk, in order; at most `depth` chunks in
    flight on the pool, so memory stays bounded whatever the store's size. The rest of a segment
    whose first problem is found (`finished`) is not read."""
    def chunk_tasks() -> Iterator[tuple[int, Any, Any]]:
        for i, s in enumerate(segments):
            gen = genes[i]
            if gen is None:
                continue
            for c in s.chunks():
                if finished(i):
                    break
                yield i, gen[1], c
    tasks = chunk_tasks()
    if pool is None:
        for i, key, c in tasks:
            yield i, check_chunk(key, c), _chunk_bytes(c)
        return
    window: deque[Any] = deque()
    for i, key, c in tasks:
        window.append((i, pool.submit(check_chunk, key, c), _chunk_bytes(c)))
        if len(window) >= depth:
            j, fut, nb = window.popleft()
            yield j, fut.result(), nb
    while window:
        j, fut, nb = window.popleft()
        yield j, fut.result(), nb


def _attestations(genes: list[tuple[dict[str, Any], bytes] | None],
                  sources: Iterable[int]) -> tuple[dict[tuple[str, int], str], _Claims]:
    """What the genesis records of the given segments attest about others: torn tails
    {(file, offset): sha256} and predecessors {file: (records, last hash)}."""
    torn: dict[tuple[str, int], str] = {}
    least: _Claims = {}
    for i in sources:
        gen = genes[i]
        if gen is None:  # callers pass only segments with a genesis; none means nothing attested
            continue
        g = gen[0]
        for t in g.get("recovered_torn_tails") or []:
            # Only a well-formed entry attests (a malformed one could never match a torn tail).
            if isinstance(t, dict) and isinstance(f := t.get("file"), str) \
                    and isinstance(off := t.get("offset"), int) and isinstance(digest := t.get("sha256"), str):
                torn[(f, off)] = digest
        for p in g.get("predecessors") or []:
            if isinstance(p, dict) and isinstance(p.get("records"), int):
                least.setdefault(p.get("file"), set()).add((p["records"], p.get("last_hash")))
    return torn, least


def _empty_segment(seg: Segment, st: SegmentStatus, attested_torn: dict[tuple[str, int], str]) -> None:
    if seg.torn:
        if attested_torn.get((seg.name, 0)) == hashlib.sha256(seg.torn).hexdigest():
            st.warnings.append(f"{seg.name}: torn first write of {len(seg.torn)} bytes, attested by a later genesis")
        else:
            st.ok, st.problem = False, Problem(seg.name, 1, "torn or truncated final record not attested")
    elif attested_torn.get((seg.name, 0)) == hashlib.sha256(b"").hexdigest():
        st.warnings.append(f"{seg.name}: empty segment (the writer crashed before its genesis), "
                           "attested by a later genesis")
    else:
        st.ok, st.problem = False, Problem(seg.name, None, "empty segment: no genesis, no records")


def verify_store_segments(segments: list[Segment], trusted_key_ids: set[str] | None = None, *,
                          jobs: int | None = None, checkpoints: Iterable[Checkpoint] = (),
                          progress: Callable[[int, int, int], None] | None = None,
                          store: str = "store") -> VerifyReport:
    """Verify segments; every segment gets a SegmentStatus, the report's `first` is the first
    problem in segment order. `progress(records, bytes_done, bytes_total)` is called per chunk."""
    rep = VerifyReport()
    checkpoints = list(checkpoints)
    if not segments:
        return _fail(rep, Problem(store, None, "nothing to verify: the store holds no audit segments"))
    genes = [_genesis(s) for s in segments]
    # Where a crashed segment ended, as its successors' genesis records claim: used while
    # streaming only to note the record at the claimed position; a claim counts only once the
    # genesis that makes it has verified (below).
    _, claimed_least = _attestations(genes, (i for i, g in enumerate(genes) if g is not None))
    total_bytes = sum(s.size_bytes for s in segments)
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    pool = None
    if jobs > 1 and total_bytes >= PARALLEL_THRESHOLD_BYTES:
        # fork only when this process has a single thread (the CLI): forking a threaded process
        # (a server, a test runner) can copy a held lock; spawn is slower to start but safe.
        method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() \
            else "spawn"
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method))
    checks: list[_SegmentCheck | None] = []
    c: _SegmentCheck | None

    def finished(i: int) -> bool:
        check = checks[i]
        return check is not None and check.done
    try:
        for i, (seg, gen) in enumerate(zip(segments, genes, strict=False)):
            st = SegmentStatus(seg.name)
            rep.segment_status.append(st)
            if seg.first_line is None:
                checks.append(None)
                continue
            if gen is None:
                problem: Problem | None = _unreadable_genesis(seg)
            else:
                c = _SegmentCheck(seg, gen, st, checkpoints, claimed_least)
                problem = c.start()
                if problem is None and trusted_key_ids is not None and gen[0]["key_id"] not in trusted_key_ids:
                    problem = Problem(seg.name, 1, f"segment signed by untrusted key {gen[0]['key_id']}")
            if problem is not None:
                st.ok, st.problem = False, problem
                checks.append(None)
                genes[i] = None   # nothing more to read in this segment
                continue
            checks.append(c)
        done_bytes = lines_read = 0
        for i, results, nbytes in _chunk_stream(segments, genes, pool, max(2, jobs * 3), finished):
            done_bytes += nbytes
            lines_read += len(results)
            c = checks[i]
            if c is not None and not c.done:
                problem = c.feed(results)
                if problem is not None:
                    c.done = True
                    c.st.ok, c.st.problem = False, problem
            if progress is not None:
                progress(lines_read, done_bytes, total_bytes)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    # Only genesis records whose whole segment verified (and whose key is trusted) attest.
    attested_torn, attested_least = _attestations(
        genes, [i for i, c in enumerate(checks) if c is not None and not c.done])
    for seg, c, st in zip(segments, checks, rep.segment_status, strict=False):
        if seg.first_line is None:
            _empty_segment(seg, st, attested_torn)
        elif c is not None and not c.done:
            c.attested = attested_least.get(seg.name, set())
            problem = c.finish(rep, attested_torn)
            if problem is not None:
                st.ok, st.problem = False, problem
        rep.records += st.records
    rep.segments = len(segments)
    for st in rep.segment_status:
        if st.key_id:
            rep.key_ids.add(st.key_id)
        rep.warnings.extend(st.warnings)
        if st.problem is not None:
            _fail(rep, st.problem)
    names = {s.name for s in segments}
    for name in attested_least:
        if name not in names:
            _fail(rep, Problem(store, None, f"gap: segment {name} is named by a later genesis but missing"))
    segment_ids = {(st.writer_id, st.segment_id) for st in rep.segment_status if st.writer_id is not None}
    for cp in checkpoints:
        if (cp.writer_id, cp.segment_id) not in segment_ids:
            _fail(rep, Problem(store, None, f"segment {cp.writer_id}/{cp.segment_id} of the checkpoint in "
                                            f"{cp.source} (size {cp.size}) is missing from the store"))
    if rep.ok and rep.records == 0:
        _fail(rep, Problem(store, None, "nothing to verify: no records"))
    return rep


def verify_store(store: str, *, table: str | None = None, trusted_key_ids: set[str] | None = None,
                 jobs: int | None = None, checkpoints: Iterable[Checkpoint] = (),
                 progress: Callable[[int, int, int], None] | None = None) -> VerifyReport:
    """Verify a store (directory or postgresql:// DSN). A missing store is a failed report."""
    try:
        segments = open_segments(store, table)
    except StoreNotFound as exc:
        return _fail(VerifyReport(), Problem(store, None, str(exc)))
    return verify_store_segments(segments, trusted_key_ids, jobs=jobs, checkpoints=checkpoints,
                                 progress=progress, store=store)


def verify_dir(directory: str | Path, trusted_key_ids: set[str] | None = None, *,
               jobs: int | None = None, checkpoints: Iterable[Checkpoint] = ()) -> VerifyReport:
    """Verify the file sink's segment files."""
    return verify_store(str(directory), trusted_key_ids=trusted_key_ids, jobs=jobs, checkpoints=checkpoints)


def verify_segments(parsed: list[tuple[str, list[bytes], bytes]],
                    trusted_key_ids: set[str] | None = None, *, jobs: int | None = None) -> VerifyReport:
    """Verify segments given in memory as (name, record lines, torn trailing bytes)."""
    return verify_store_segments([lines_segment(n, ls, t) for n, ls, t in parsed], trusted_key_ids, jobs=jobs)
