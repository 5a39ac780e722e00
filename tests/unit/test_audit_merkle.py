"""The checkpoint Merkle root equals an independent RFC 6962 implementation (pymerkle)."""

import hashlib

import pymerkle
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.audit.merkle import MerkleFrontier, leaf_hash, merkle_root


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=40))
def test_root_matches_pymerkle(entries):
    tree = pymerkle.InmemoryTree(algorithm="sha256")
    for e in entries:
        tree.append_entry(e)
    assert merkle_root([leaf_hash(e) for e in entries]) == tree.get_root()


def test_empty_tree_is_the_hash_of_nothing():
    assert merkle_root([]) == hashlib.sha256(b"").digest()


def test_the_frontier_gives_the_same_root_at_every_size_in_log_memory():
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(300)]
    frontier = MerkleFrontier()
    assert frontier.root() == merkle_root([])
    for n, leaf in enumerate(leaves, 1):
        frontier.append(leaf)
        assert frontier.size == n
        assert frontier.root() == merkle_root(leaves[:n])
        assert len(frontier._stack) == bin(n).count("1")
