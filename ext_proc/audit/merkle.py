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


class MerkleFrontier:
    """The same root, kept incrementally in O(log n) memory: the roots of the perfect subtrees
    that make up the leaves so far (one per set bit of the size), largest first. A long-running
    segment must not keep every leaf in memory just to close with a checkpoint."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []   # (subtree leaf count, subtree root)

    def append(self, leaf: bytes) -> None:
        self.size += 1
        count, node = 1, leaf
        while self._stack and self._stack[-1][0] == count:
            left = self._stack.pop()[1]
            count, node = 2 * count, node_hash(left, node)
        self._stack.append((count, node))

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node
