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

    def snapshot(self) -> list[tuple[int, bytes]]:
        """The (subtree size, subtree root) pairs, largest first: ProofWindow.mark takes them."""
        return list(self._stack)

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = node_hash(left, node)
        return node


# --- Consistency proofs (RFC 6962 section 2.1.2 / RFC 9162 section 2.1.4) --------------------
#
# A proof that the tree of size m is a prefix of the tree of size n is a list of roots of
# disjoint subtrees. Which subtrees is a function of (m, n) alone, so the proof can be built in
# one streaming pass over the leaves with O(log n) memory: `consistency_ranges` names the leaf
# ranges, `ConsistencyProofBuilder` feeds each leaf to the range that holds it.


def _largest_power_of_two_below(n: int) -> int:
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def consistency_ranges(m: int, n: int) -> list[tuple[int, int]]:
    """The leaf ranges [start, end) whose subtree roots form PROOF(m, D[0:n]), in proof order."""
    if not 0 < m <= n:
        raise ValueError("consistency proofs need 0 < m <= n")
    out: list[tuple[int, int]] = []

    def subproof(m: int, lo: int, hi: int, whole: bool) -> None:
        size = hi - lo
        if m == size:
            if not whole:
                out.append((lo, hi))
            return
        k = _largest_power_of_two_below(size)
        if m <= k:
            subproof(m, lo, lo + k, whole)
            out.append((lo + k, hi))
        else:
            subproof(m - k, lo + k, hi, False)
            out.append((lo, lo + k))

    subproof(m, 0, n, True)
    return out


class ConsistencyProofBuilder:
    """Collects PROOF(m, n) while leaves stream past in order (leaf i is the i-th append)."""

    def __init__(self, m: int, n: int) -> None:
        self.ranges = consistency_ranges(m, n)
        self._order = sorted(range(len(self.ranges)), key=lambda i: self.ranges[i][0])
        self._frontiers = [MerkleFrontier() for _ in self.ranges]
        self._cursor = 0
        self._index = 0

    def append(self, leaf: bytes) -> None:
        while self._cursor < len(self._order) and self.ranges[self._order[self._cursor]][1] <= self._index:
            self._cursor += 1
        if self._cursor < len(self._order):
            i = self._order[self._cursor]
            if self.ranges[i][0] <= self._index:
                self._frontiers[i].append(leaf)
        self._index += 1

    def proof(self) -> list[bytes]:
        return [f.root() for f in self._frontiers]


def consistency_proof(leaves: list[bytes], m: int) -> list[bytes]:
    b = ConsistencyProofBuilder(m, len(leaves))
    for leaf in leaves:
        b.append(leaf)
    return b.proof()


def verify_consistency(m: int, n: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2: does the tree of size n with `new_root` extend the tree of size m
    with `old_root`? Uses only the proof, never the leaves (what a witness holds)."""
    if m == n:
        return old_root == new_root and not proof
    if not 0 < m < n:
        return False
    path = list(proof)
    if m & (m - 1) == 0:           # m is a power of two: the old root is itself a proof node
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class ProofWindow:
    """Consistency proofs from recently published tree sizes to the current one, without keeping
    the whole segment: for each of the last `keep` published sizes, that tree's frontier (the
    roots of its perfect subtrees, which are exactly the proof nodes left of the old size), and
    the leaves appended since the oldest of them (the nodes right of it are subtrees of those).
    Memory: O(keep * log n) plus 32 bytes per leaf since the oldest size kept."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._base = 0                                       # tree size of leaves[0]
        self._leaves: list[bytes] = []
        self._snapshots: dict[int, list[tuple[int, bytes]]] = {0: []}

    def append(self, leaf: bytes) -> None:
        self._leaves.append(leaf)

    def mark(self, size: int, stack: list[tuple[int, bytes]]) -> None:
        """The tree of `size` leaves (its frontier `stack`, from MerkleFrontier.snapshot) was
        published: keep what proofs from it need."""
        self._snapshots[size] = list(stack)
        while len(self._snapshots) > self.keep:
            oldest = min(self._snapshots)
            del self._snapshots[oldest]
            base = min(self._snapshots)
            del self._leaves[:base - self._base]
            self._base = base

    def can_prove_from(self, m: int) -> bool:
        return m in self._snapshots

    def proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, n) for a size m given to `mark` (n: the current size, leaves appended so far)."""
        if m == 0 or m == n:
            return []
        stack = self._snapshots[m]
        left: dict[tuple[int, int], bytes] = {}
        offset = 0
        for count, root in stack:
            left[(offset, offset + count)] = root
            offset += count
        out = []
        for start, end in consistency_ranges(m, n):
            if end <= m:
                out.append(left[(start, end)])
            else:
                out.append(merkle_root(self._leaves[start - self._base:end - self._base]))
        return out
