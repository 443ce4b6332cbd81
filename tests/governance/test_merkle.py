"""The ledger's RFC 6962 Merkle tree: published test vectors, every position of small trees, the stored tree
against a recomputation, and proofs that fail when any hash in them is flipped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from convergence.governance import EventIn, Subject, append, append_many, ledger
from convergence.governance._merkle import _path, _subproof, _subtree, list_subtrees
from convergence.governance.auditor import CompactRange, leaf_hash, verify_consistency, verify_inclusion
from convergence.platform.db import session_scope
from tests.people import detached

VECTORS = json.loads((Path(__file__).with_name("vectors") / "rfc6962.json").read_text())
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaf_inputs_hex"]]



def _flip(proof: list[bytes], i: int) -> list[bytes]:
    return [bytes([p[0] ^ 1]) + p[1:] if j == i else p for j, p in enumerate(proof)]


def test_roots_and_proofs_match_rfc6962_test_vectors() -> None:
    for n in range(1, 9):
        assert _subtree(0, n, list_subtrees(LEAVES[:n])).hex() == VECTORS["root_hashes_by_tree_size_hex"][n]
    for case in VECTORS["inclusion_proofs"]:
        tree = list_subtrees(LEAVES[:case["tree_size"]])
        assert [p.hex() for p in _path(case["leaf_index"], 0, case["tree_size"], tree)] == case["proof_hex"]
    for case in VECTORS["consistency_proofs"]:
        tree = list_subtrees(LEAVES[:case["size2"]])
        assert [p.hex() for p in _subproof(case["size1"], 0, case["size2"], True, tree)] == case["proof_hex"]


def test_every_proof_of_every_small_tree_verifies_and_fails_when_flipped() -> None:
    leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(64)]
    checked = 0
    for n in range(1, 65):
        tree = list_subtrees(leaves[:n])
        root = _subtree(0, n, tree)
        compact = CompactRange()
        for leaf in leaves[:n]:
            compact.append(leaf)
        assert compact.root() == root
        for i in range(n):
            proof = _path(i, 0, n, tree)
            assert verify_inclusion(i, n, leaves[i], proof, root)
            assert not verify_inclusion(i, n, leaves[(i + 1) % 64], proof, root)
            for j in range(len(proof)):
                assert not verify_inclusion(i, n, leaves[i], _flip(proof, j), root)
            checked += 1
        for m in range(1, n + 1):
            proof = _subproof(m, 0, n, True, tree)
            old = _subtree(0, m, tree)
            assert verify_consistency(m, n, proof, old, root)
            for j in range(len(proof)):
                assert not verify_consistency(m, n, _flip(proof, j), old, root)
            checked += 1
    assert checked == 2 * sum(range(1, 65))


def _events(count: int, *, single: int = 0) -> list[str]:
    """``count`` events in batches, then ``single`` one at a time; their hashes in order."""
    out: list[str] = []
    with session_scope() as s:
        out += [e.hash for e in append_many(session=s, events=[
            EventIn(detached("a"), "t.e", Subject("t", str(i))) for i in range(count)])]
    for i in range(single):
        with session_scope() as s:
            out.append(append(session=s, principal=detached("a"), action="t.one", subject=Subject("t", str(i))).hash)
    return out


def test_the_stored_tree_gives_the_same_roots_and_proofs_as_a_recomputation(db_url: str) -> None:
    """Batches and single appends across chunk boundaries (256, 512, 1024 leaves) store the same tree."""
    hashes = _events(700, single=330)
    leaves = [leaf_hash(bytes.fromhex(h)) for h in hashes]
    with session_scope(write=False) as s:
        for size in (1, 255, 256, 257, 511, 512, 700, 768, 1024, 1030):
            expected = _subtree(0, size, list_subtrees(leaves[:size]))
            assert ledger.root(session=s, size=size) == expected, size
        root = ledger.root(session=s, size=1030)
        for seq in (1, 256, 257, 600, 1024, 1030):
            proof = ledger.inclusion(session=s, seq=seq, size=1030)
            assert verify_inclusion(seq - 1, 1030, leaves[seq - 1], [bytes.fromhex(p) for p in proof.proof], root)
        for old in (1, 255, 256, 300, 1024):
            proof = ledger.consistency(session=s, old_size=old, new_size=1030)
            assert verify_consistency(old, 1030, [bytes.fromhex(p) for p in proof.proof],
                                      bytes.fromhex(proof.old_root), root)


def test_an_edited_tree_node_is_named_by_verify(adopted: str, unprotect, raw_sql) -> None:
    _events(300)
    unprotect("audit_tree_nodes")
    raw_sql("UPDATE audit_tree_nodes SET hash = '" + "0" * 64 + "' WHERE level = 8 AND idx = 0")
    with session_scope(write=False) as s:
        result = ledger.verify_ledger(session=s)
    assert (result.ok, result.problem, result.first_bad_seq) == (False, "tree mismatch", 256)


@pytest.mark.parametrize("seq,size", [(0, 5), (6, 5), (1, 0)])
def test_out_of_range_proofs_are_one_clear_error(db_url: str, seq: int, size: int) -> None:
    from convergence.platform.errors import InvalidInput

    _events(5)
    with pytest.raises(InvalidInput), session_scope(write=False) as s:
        ledger.inclusion(session=s, seq=seq, size=size)
