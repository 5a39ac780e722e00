"""The per-writer hash chain (sans-I/O): each sealed record carries seq, prev_hash, hash and an
Ed25519 signature over the hash; a signed genesis record opens each segment with the public key."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ext_proc.audit.canonical import canonical_json
from ext_proc.audit.record import SCHEMA_VERSION

GENESIS_PREV = "0" * 64
SEAL_FIELDS = ("hash", "signature")


def public_key_raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key_raw(pub)).hexdigest()[:16]


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in SEAL_FIELDS}
    return hashlib.sha256(canonical_json(body)).hexdigest()


class ChainWriter:
    def __init__(self, signing_key: Ed25519PrivateKey, writer_id: str, segment_id: str) -> None:
        self._key = signing_key
        self.writer_id = writer_id
        self.segment_id = segment_id
        self.public_key = signing_key.public_key()
        self.key_id = key_id(self.public_key)
        self.seq = 0
        self.prev_hash = GENESIS_PREV

    def genesis(self, now_ms: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.seal({"schema": SCHEMA_VERSION, "kind": "genesis", "writer_id": self.writer_id,
                          "segment_id": self.segment_id, "started_ms": now_ms,
                          "public_key": base64.b64encode(public_key_raw(self.public_key)).decode(),
                          "alg": "Ed25519", **(extra or {})}, now_ms)

    def seal(self, body: dict[str, Any], committed_ms: int) -> dict[str, Any]:
        rec = dict(body)
        rec.update({"writer_id": self.writer_id, "segment_id": self.segment_id, "seq": self.seq,
                    "prev_hash": self.prev_hash, "committed_ms": committed_ms, "key_id": self.key_id})
        h = record_hash(rec)
        rec["hash"] = h
        rec["signature"] = base64.b64encode(self._key.sign(bytes.fromhex(h))).decode()
        self.seq += 1
        self.prev_hash = h
        return rec
