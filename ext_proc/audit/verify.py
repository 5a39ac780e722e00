"""Verify audit segments: every record's hash, signature, sequence and link to its predecessor;
one genesis per segment; checkpoints match the records before them; torn tails only where a later
genesis attests them."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


def verify_dir(directory: str | Path, trusted_key_ids: set[str] | None = None) -> VerifyReport:
    """Verify the file sink's segment files."""
    parsed: list[tuple[str, list[bytes], bytes]] = []
    for f in sorted(Path(directory).glob("*.jsonl")):
        data = f.read_bytes()
        torn = b""
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            torn, data = data[cut:], data[:cut]
        parsed.append((f.name, data.splitlines(), torn))
    return verify_segments(parsed, trusted_key_ids)


def verify_segments(parsed: list[tuple[str, list[bytes], bytes]],
                    trusted_key_ids: set[str] | None = None) -> VerifyReport:
    """Verify segments given as (name, record lines, torn trailing bytes)."""
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
    for fname, lines, torn in parsed:
        rep.segments += 1
        pub: Ed25519PublicKey | None = None
        prev, expected_seq, genesis = GENESIS_PREV, 0, None
        leaves: list[bytes] = []
        for n, line in enumerate(lines, start=1):
            where = f"{fname}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                return _fail(rep, where, "not valid JSON")
            if not isinstance(rec, dict):
                return _fail(rep, where, "not a JSON object")
            if n == 1:
                if rec.get("kind") != "genesis":
                    return _fail(rep, where, "segment does not start with a genesis record")
                try:
                    raw = base64.b64decode(rec["public_key"], validate=True)
                    pub = Ed25519PublicKey.from_public_bytes(raw)
                except (KeyError, ValueError, TypeError):
                    return _fail(rep, where, "genesis public key unreadable")
                if key_id(pub) != rec.get("key_id"):
                    return _fail(rep, where, "genesis key_id does not match its public key")
                if trusted_key_ids is not None and rec["key_id"] not in trusted_key_ids:
                    return _fail(rep, where, f"segment signed by untrusted key {rec['key_id']}")
                genesis = rec
                rep.key_ids.add(rec["key_id"])
            elif rec.get("kind") == "genesis":
                return _fail(rep, where, "second genesis record inside a segment")
            assert genesis is not None and pub is not None
            if rec.get("writer_id") != genesis["writer_id"] or rec.get("segment_id") != genesis["segment_id"]:
                return _fail(rep, where, "record belongs to another segment (spliced)")
            if rec.get("key_id") != genesis["key_id"]:
                return _fail(rep, where, "record signed with a key other than the segment's")
            if rec.get("seq") != expected_seq:
                return _fail(rep, where, f"sequence {rec.get('seq')} where {expected_seq} was expected "
                                         "(record removed, reordered or inserted)")
            if rec.get("prev_hash") != prev:
                return _fail(rep, where, "prev_hash does not link to the previous record")
            h = record_hash(rec)
            if rec.get("hash") != h:
                return _fail(rep, where, "content does not match its hash (altered)")
            try:
                pub.verify(base64.b64decode(rec.get("signature", ""), validate=True), bytes.fromhex(h))
            except (InvalidSignature, ValueError, TypeError):
                return _fail(rep, where, "signature does not verify")
            if rec.get("kind") == "checkpoint":
                root = base64.b64encode(merkle_root(leaves)).decode()
                if rec.get("tree_size") != len(leaves) or rec.get("root") != root:
                    return _fail(rep, where, "checkpoint does not match the records before it")
            leaves.append(leaf_hash(bytes.fromhex(h)))
            prev, expected_seq = h, expected_seq + 1
            rep.records += 1
        if not lines and not torn:
            rep.warnings.append(f"{fname}: empty segment")
        if torn:
            offset = sum(len(x) + 1 for x in lines)
            digest = hashlib.sha256(torn).hexdigest()
            if attested.get((fname, offset)) == digest:
                rep.warnings.append(f"{fname}: torn final write of {len(torn)} bytes, attested by a later genesis")
            else:
                return _fail(rep, f"{fname}:{len(lines) + 1}", "torn or truncated final record not attested")
        if lines and json.loads(lines[-1]).get("kind") != "checkpoint":
            rep.warnings.append(f"{fname}: no closing checkpoint (writer still running or crashed)")
    return rep
