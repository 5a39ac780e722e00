"""RFC 6962 Merkle tree hash over record hashes (leaf = SHA-256(0x00 || leaf bytes))."""

from __future__ import annotations

import hashlib


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """Root of the tree over already-hashed leaves (RFC 6962 section 2.1 split rule)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    # Iterative form of the largest-power-of-two split: pair left to right, carry the odd one up.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
