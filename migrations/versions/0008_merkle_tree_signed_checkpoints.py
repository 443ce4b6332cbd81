"""ledger: RFC 6962 Merkle tree nodes over the events, signed checkpoints (C2SP notes) and where they were published

The tree is built here for the events already in the ledger, so proofs work for old events too. Checkpoints
taken before this revision keep their rows; they carry no root and no signature.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 14:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from convergence.governance.auditor import CompactRange, leaf_hash
from convergence.migrations._append_only import protect, unprotect

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

CHUNK_LEVEL = 8  # as convergence.governance._merkle: subtrees of 256 leaves and up are stored


def upgrade() -> None:
    op.create_table('audit_tree_nodes',
                    sa.Column('level', sa.SmallInteger(), autoincrement=False, nullable=False),
                    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
                    sa.Column('hash', sa.String(length=64), nullable=False),
                    sa.PrimaryKeyConstraint('level', 'idx', name=op.f('pk_audit_tree_nodes')))
    with op.batch_alter_table('audit_checkpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('root_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('key', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('anchors', sa.JSON(), nullable=True))
    _build_tree()
    protect('audit_tree_nodes')
    protect('audit_checkpoints')


def _build_tree() -> None:
    """Every perfect subtree of 256+ events already in the ledger, streamed in seq order."""
    bind = op.get_bind()
    nodes = sa.table('audit_tree_nodes', sa.column('level'), sa.column('idx'), sa.column('hash'))
    batch: list[dict[str, object]] = []
    tree = CompactRange()

    def keep(level: int, index: int, digest: bytes) -> None:
        batch.append({"level": level, "idx": index, "hash": digest.hex()})

    # Options on the statement, not the connection: Connection.execution_options() would change it in place.
    result = bind.execute(sa.text("SELECT hash FROM audit_events ORDER BY seq").execution_options(
        stream_results=True, yield_per=20_000))
    for (digest,) in result:
        tree.append(leaf_hash(bytes.fromhex(digest)), keep, CHUNK_LEVEL)
        if len(batch) >= 5000:
            bind.execute(nodes.insert(), batch)
            batch.clear()
    if batch:
        bind.execute(nodes.insert(), batch)


def downgrade() -> None:
    unprotect('audit_checkpoints')
    unprotect('audit_tree_nodes')
    with op.batch_alter_table('audit_checkpoints', schema=None) as batch_op:
        batch_op.drop_column('anchors')
        batch_op.drop_column('key')
        batch_op.drop_column('note')
        batch_op.drop_column('root_hash')
    op.drop_table('audit_tree_nodes')
