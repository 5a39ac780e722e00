"""Verify audit segments: every record's hash, signature, sequence and link to its predecessor;
one genesis per segment; checkpoints match the records before them; torn tails only where a later
genesis attests them."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ext_proc.audit.chain import GENESIS_PREV, key_id, record_hash
from ext_proc.audit.merkle import leaf_hash, merkle_root


@dataclass
class VerifyReport:
    ok: bool = True
    records: int = 0
    segments: int = 0
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)


def _fail(rep: VerifyReport, where: str, what: str) -> VerifyReport:
    rep.ok = False
    rep.problem = f"{where}: {what}"
    return rep


def verify_dir(directory: str | Path, trusted_key_ids: set[str] | None = None, *,
               jobs: int | None = None) -> VerifyReport:
    """Verify the file sink's segment files."""
    parsed: list[tuple[str, list[bytes], bytes]] = []
    for f in sorted(Path(directory).glob("*.jsonl")):
        data = f.read_bytes()
        torn = b""
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            torn, data = data[cut:], data[:cut]
        parsed.append((f.name, data.splitlines(), torn))
    return verify_segments(parsed, trusted_key_ids, jobs=jobs)


# Below this many records a process pool costs more to start than it saves.
PARALLEL_THRESHOLD = 20_000
_MAX_CHUNK = 4_000


def sealed_hash(line: bytes, rec: dict) -> str:
    """The record's hash, computed from its stored bytes when they are the canonical form the
    writer produced (the file and PostgreSQL sinks store exactly that): the seal members are cut
    out of the line and the rest hashed, which skips re-serialising the record. Sound because a
    match means these bytes hash to what the writer signed; any other form (a line re-serialised by
    another tool) falls back to canonical JSON of the parsed record."""
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


def check_lines(public_key: bytes, lines: list[bytes]) -> list[tuple]:
    """The per-record work that needs no predecessor: parse, hash, signature. Returns, per line,
    (problem or None, hash, summary fields) so the ordered checks can run without re-parsing.
    A module-level function so a process pool can run it on slices of a segment."""
    # libsodium's verify (PyNaCl) is ~1.6x faster than OpenSSL's here, and it is the bulk of the
    # cost per record; it is also the stricter of the two (rejects small-order keys).
    verify = VerifyKey(public_key).verify
    out: list[tuple] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            out.append(("not valid JSON", None, None))
            continue
        if not isinstance(rec, dict):
            out.append(("not a JSON object", None, None))
            continue
        summary = tuple(rec.get(f) for f in _SUMMARY_FIELDS)
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


# With a forked pool the workers inherit the segments and are sent only slice bounds, instead of
# every record's bytes through a pipe.
_INHERITED: list[tuple[str, list[bytes], bytes]] = []


def _check_inherited_slice(segment: int, start: int, stop: int, public_key: bytes) -> list[tuple]:
    return check_lines(public_key, _INHERITED[segment][1][start:stop])


def verify_segments(parsed: list[tuple[str, list[bytes], bytes]],
                    trusted_key_ids: set[str] | None = None, *, jobs: int | None = None) -> VerifyReport:
    """Verify segments given as (name, record lines, torn trailing bytes).

    Hashes and signatures (the expensive, independent part) run on `jobs` processes when there
    are enough records (default: one per CPU); sequence, links, splices and checkpoints are then
    checked in order, so the first bad record is the one reported whatever the parallelism."""
    rep = VerifyReport()
    attested: dict[tuple[str, int], str] = {}
    for _name, lines, _torn in parsed:
        for line in lines[:1]:
            try:
                g = json.loads(line)
            except json.JSONDecodeError:
                continue
            for t in g.get("recovered_torn_tails") or []:
                attested[(t.get("file"), t.get("offset"))] = t.get("sha256")
    geneses: list[tuple[dict, bytes] | None] = []
    for fname, lines, _torn in parsed:
        geneses.append(None)
        if not lines:
            continue
        try:
            g = json.loads(lines[0])
            raw = base64.b64decode(g["public_key"], validate=True)
            Ed25519PublicKey.from_public_bytes(raw)
            geneses[-1] = (g, raw)
        except (json.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError):
            pass
    total = sum(len(lines) for _n, lines, _t in parsed)
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    pool = None
    if jobs > 1 and total >= PARALLEL_THRESHOLD:
        # fork only when this process has a single thread (the CLI): forking a threaded process
        # (a server, a test runner) can copy a held lock; spawn is slower to start but safe.
        method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() \
            else "spawn"
        if method == "fork":
            _INHERITED[:] = parsed
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method))
    # Small enough slices that both workers stay busy to the end, large enough to amortise a task.
    chunk = max(min(250, _MAX_CHUNK), min(_MAX_CHUNK, total // (jobs * 8) + 1))
    try:
        checked: list = []
        for index, ((fname, lines, _torn), gen) in enumerate(zip(parsed, geneses)):
            if gen is None:
                checked.append(None)
            elif pool is None:
                checked.append([check_lines(gen[1], lines)])
            elif _INHERITED:
                checked.append([pool.submit(_check_inherited_slice, index, i, i + chunk, gen[1])
                                for i in range(0, len(lines), chunk)])
            else:
                checked.append([pool.submit(check_lines, gen[1], lines[i:i + chunk])
                                for i in range(0, len(lines), chunk)])
        for (fname, lines, torn), gen, parts in zip(parsed, geneses, checked):
            problem = _verify_segment(rep, fname, lines, torn, gen, parts, attested, trusted_key_ids)
            if problem is not None:
                return _fail(rep, *problem)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _INHERITED.clear()
    return rep


def _results(parts: list):
    for part in parts:
        yield from (part if isinstance(part, list) else part.result())


def _verify_segment(rep: VerifyReport, fname: str, lines: list[bytes], torn: bytes,
                    gen: tuple[dict, bytes] | None, parts: list | None,
                    attested: dict, trusted_key_ids: set[str] | None) -> tuple[str, str] | None:
    rep.segments += 1
    if lines:
        where = f"{fname}:1"
        if gen is None:
            try:
                first = json.loads(lines[0])
            except json.JSONDecodeError:
                return where, "not valid JSON"
            if not isinstance(first, dict):
                return where, "not a JSON object"
            if first.get("kind") != "genesis":
                return where, "segment does not start with a genesis record"
            return where, "genesis public key unreadable"
        genesis, raw = gen
        if genesis.get("kind") != "genesis":
            return where, "segment does not start with a genesis record"
        if key_id(Ed25519PublicKey.from_public_bytes(raw)) != genesis.get("key_id"):
            return where, "genesis key_id does not match its public key"
        if trusted_key_ids is not None and genesis["key_id"] not in trusted_key_ids:
            return where, f"segment signed by untrusted key {genesis['key_id']}"
        rep.key_ids.add(genesis["key_id"])
        prev, expected_seq = GENESIS_PREV, 0
        leaves: list[bytes] = []
        last_kind = None
        assert parts is not None
        for n, (problem, h, summary) in enumerate(_results(parts), start=1):
            where = f"{fname}:{n}"
            if summary is None:
                return where, problem
            kind, writer_id, segment_id, kid, seq, prev_hash, tree_size, root = summary
            if n > 1 and kind == "genesis":
                return where, "second genesis record inside a segment"
            if writer_id != genesis["writer_id"] or segment_id != genesis["segment_id"]:
                return where, "record belongs to another segment (spliced)"
            if kid != genesis["key_id"]:
                return where, "record signed with a key other than the segment's"
            if seq != expected_seq:
                return where, f"sequence {seq} where {expected_seq} was expected (record removed, reordered or inserted)"
            if prev_hash != prev:
                return where, "prev_hash does not link to the previous record"
            if problem is not None:
                return where, problem
            if kind == "checkpoint":
                if tree_size != len(leaves) or root != base64.b64encode(merkle_root(leaves)).decode():
                    return where, "checkpoint does not match the records before it"
            leaves.append(leaf_hash(bytes.fromhex(h)))
            prev, expected_seq, last_kind = h, expected_seq + 1, kind
            rep.records += 1
        if last_kind != "checkpoint":
            rep.warnings.append(f"{fname}: no closing checkpoint (writer still running or crashed)")
    elif not torn:
        rep.warnings.append(f"{fname}: empty segment")
    if torn:
        offset = sum(len(x) + 1 for x in lines)
        digest = hashlib.sha256(torn).hexdigest()
        if attested.get((fname, offset)) == digest:
            rep.warnings.append(f"{fname}: torn final write of {len(torn)} bytes, attested by a later genesis")
        else:
            return f"{fname}:{len(lines) + 1}", "torn or truncated final record not attested"
    return None
