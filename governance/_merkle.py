"""The ledger's RFC 6962 Merkle tree: leaves are the event hashes in ``seq`` order.

What is stored: the hash of every perfect subtree of 256 leaves or more (``audit_tree_nodes``, written by
``extend`` in the appending transaction); smaller subtrees are recomputed from at most one chunk of 256
event hashes. So a root, an inclusion proof or a consistency proof for any size reads a few dozen rows,
never the whole chain. Hashing and proof *checking* live in the standalone ``auditor.py``, which an
outsider runs: convergence verifies with the very code it hands to auditors.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from convergence.governance._models import AuditEvent, AuditTreeNode
from convergence.governance.auditor import (
    CompactRange,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from convergence.platform.db import is_postgres
from convergence.platform.errors import IntegrityError, InvalidInput
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

__all__ = [
    "CHUNK_LEVEL",
    "CompactRange",
    "ConsistencyProof",
    "InclusionProof",
    "compact_range",
    "consistency",
    "empty_root",
    "extend",
    "inclusion",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

CHUNK_LEVEL = 8  # subtrees of 2**8 = 256 leaves and up are stored
CHUNK = 1 << CHUNK_LEVEL
Perfect = Callable[[int, int], bytes]  # (level, index) -> hash of the aligned subtree of 2**level leaves


def empty_root() -> bytes:
    return hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree(lo: int, hi: int, perfect: Perfect) -> bytes:
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        level = n.bit_length() - 1
        return perfect(level, lo >> level)
    k = _split(n)
    return node_hash(_subtree(lo, lo + k, perfect), _subtree(lo + k, hi, perfect))


def _path(m: int, lo: int, hi: int, perfect: Perfect) -> list[bytes]:
    """RFC 6962 PATH(m, D[lo:hi]): the audit path of leaf ``lo + m``."""
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if m < k:
        return _path(m, lo, lo + k, perfect) + [_subtree(lo + k, hi, perfect)]
    return _path(m - k, lo + k, hi, perfect) + [_subtree(lo, lo + k, perfect)]


def _subproof(m: int, lo: int, hi: int, whole: bool, perfect: Perfect) -> list[bytes]:
    """RFC 6962 SUBPROOF(m, D[lo:hi], b)."""
    n = hi - lo
    if m == n:
        return [] if whole else [_subtree(lo, hi, perfect)]
    k = _split(n)
    if m <= k:
        return _subproof(m, lo, lo + k, whole, perfect) + [_subtree(lo + k, hi, perfect)]
    return _subproof(m - k, lo + k, hi, False, perfect) + [_subtree(lo, lo + k, perfect)]


def list_subtrees(leaves: Sequence[bytes]) -> Perfect:
    """A ``perfect`` provider over leaf hashes in memory (tests, small trees)."""
    def perfect(level: int, index: int) -> bytes:
        size = 1 << level
        return _mth(leaves[index * size:(index + 1) * size])
    return perfect


def _mth(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


# --- reading the stored tree -----------------------------------------------------------------------

class _Stored:
    """The subtree hashes one computation needs, fetched in two passes: record which, then read them in bulk."""

    def __init__(self, session: Session, size: int) -> None:
        self.session, self.size = session, size
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.chunks: dict[int, list[bytes]] = {}

    def run(self, compute: Callable[[Perfect], Any]) -> Any:
        wanted: set[tuple[int, int]] = set()

        def record(level: int, index: int) -> bytes:
            wanted.add((level, index))
            return b"\0" * 32
        compute(record)
        self._load(wanted)
        return compute(self.perfect)

    def _load(self, wanted: set[tuple[int, int]]) -> None:
        stored = [k for k in wanted if k[0] >= CHUNK_LEVEL]
        if stored:
            rows = self.session.execute(select(AuditTreeNode.level, AuditTreeNode.idx, AuditTreeNode.hash).where(
                tuple_(AuditTreeNode.level, AuditTreeNode.idx).in_(stored))).all()
            self.nodes.update({(r[0], r[1]): bytes.fromhex(r[2]) for r in rows})
        for chunk in {(i << level) >> CHUNK_LEVEL for level, i in wanted if level < CHUNK_LEVEL}:
            first = chunk * CHUNK
            last = min(first + CHUNK, self.size)
            hashes = self.session.execute(select(AuditEvent.hash).where(
                AuditEvent.seq > first, AuditEvent.seq <= last).order_by(AuditEvent.seq)).scalars().all()
            if len(hashes) != last - first:
                raise IntegrityError(f"the audit chain lacks events between seq {first + 1} and {last}",
                                     hint="run `cvg audit verify` to find the gap")
            self.chunks[chunk] = [leaf_hash(bytes.fromhex(h)) for h in hashes]

    def perfect(self, level: int, index: int) -> bytes:
        if level >= CHUNK_LEVEL:
            try:
                return self.nodes[(level, index)]
            except KeyError:
                raise IntegrityError(f"the Merkle tree lacks node ({level}, {index})",
                                     hint="run `cvg audit verify`: the tree table was edited") from None
        first = index << level
        leaves = self.chunks[first >> CHUNK_LEVEL]
        offset = first - (first >> CHUNK_LEVEL) * CHUNK
        return _mth(leaves[offset:offset + (1 << level)])


def root(*, session: Session, size: int) -> bytes:
    """The root of the tree of the first ``size`` events."""
    if size == 0:
        return empty_root()
    return _Stored(session, size).run(lambda perfect: _subtree(0, size, perfect))


def compact_range(*, session: Session, size: int) -> list[tuple[int, bytes]]:
    """The perfect subtrees (height, hash) that make up the tree of ``size`` events, largest first: where an
    incremental computation of later roots starts."""
    heights = [h for h in range(size.bit_length() - 1, -1, -1) if size >> h & 1]

    def compute(perfect: Perfect) -> list[tuple[int, bytes]]:
        out, lo = [], 0
        for h in heights:
            out.append((h, perfect(h, lo >> h)))
            lo += 1 << h
        return out
    return _Stored(session, size).run(compute) if size else []


@dataclasses.dataclass(frozen=True)
class InclusionProof:
    seq: int
    tree_size: int
    event_hash: str
    proof: list[str]
    root_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "leaf_index": self.seq - 1, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    old_root: str
    new_root: str
    proof: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inclusion(*, session: Session, seq: int, size: int) -> InclusionProof:
    """The audit path of event ``seq`` in the tree of ``size`` events (1 ≤ seq ≤ size)."""
    if not 1 <= seq <= size:
        raise InvalidInput(f"seq {seq} is not in a tree of {size} events (1..{size})")
    stored = _Stored(session, size)
    path, top = stored.run(lambda perfect: (_path(seq - 1, 0, size, perfect), _subtree(0, size, perfect)))
    digest = session.execute(select(AuditEvent.hash).where(AuditEvent.seq == seq)).scalar_one()
    return InclusionProof(seq, size, digest, [p.hex() for p in path], top.hex())


def consistency(*, session: Session, old_size: int, new_size: int) -> ConsistencyProof:
    """The proof that the tree of ``new_size`` events extends the tree of ``old_size`` (1 ≤ old ≤ new)."""
    if not 1 <= old_size <= new_size:
        raise InvalidInput(f"a consistency proof needs 1 ≤ old size ≤ new size, got {old_size} and {new_size}")
    stored = _Stored(session, new_size)
    path, old, new = stored.run(lambda perfect: (
        _subproof(old_size, 0, new_size, True, perfect), _subtree(0, old_size, perfect),
        _subtree(0, new_size, perfect)))
    return ConsistencyProof(old_size, new_size, old.hex(), new.hex(), [p.hex() for p in path])


# --- growing the stored tree ----------------------------------------------------------------------

def extend(*, session: Session, old_size: int, new_hashes: Sequence[str]) -> None:
    """Store the subtrees that the events after ``old_size`` complete (called inside the appending transaction)."""
    first_chunk, end_chunk = old_size // CHUNK, (old_size + len(new_hashes)) // CHUNK  # completed in (old, new]
    if first_chunk >= end_chunk:
        return
    conn = session.connection()
    start = first_chunk * CHUNK
    head: list[str] = []
    if start < old_size:  # the first chunk began in an earlier transaction
        head = list(conn.execute(select(AuditEvent.hash).where(
            AuditEvent.seq > start, AuditEvent.seq <= old_size).order_by(AuditEvent.seq)).scalars())
    hexes = head + list(new_hashes)  # hexes[i] is leaf start + i
    made: dict[tuple[int, int], bytes] = {}
    for chunk in range(first_chunk, end_chunk):
        offset = chunk * CHUNK - start
        digest = _mth([leaf_hash(bytes.fromhex(h)) for h in hexes[offset:offset + CHUNK]])
        level, index = CHUNK_LEVEL, chunk
        made[(level, index)] = digest
        while index & 1:
            left = made.get((level, index - 1)) or _stored_node(conn, level, index - 1)
            digest = node_hash(left, digest)
            level, index = level + 1, index >> 1
            made[(level, index)] = digest
    marks = ", ".join(["%s" if is_postgres(conn.engine) else "?"] * 3)
    conn.exec_driver_sql(f"INSERT INTO audit_tree_nodes (level, idx, hash) VALUES ({marks})",
                         [(lv, ix, h.hex()) for (lv, ix), h in made.items()])


def _stored_node(conn: Any, level: int, index: int) -> bytes:
    value = conn.execute(select(AuditTreeNode.hash).where(AuditTreeNode.level == level,
                                                          AuditTreeNode.idx == index)).scalar()
    if value is None:
        raise IntegrityError(f"the Merkle tree lacks node ({level}, {index}) while appending",
                             hint="run `cvg db upgrade` (it builds the tree) or `cvg audit verify`")
    return bytes.fromhex(value)
