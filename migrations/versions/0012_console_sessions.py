"""console_sessions: who is signed in to the console (/ui), held in the database so every API replica knows

Only the SHA-256 of a session id is stored; the credential the session acts with is sealed (AES-GCM).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 18:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_sessions',
        sa.Column('id_sha256', sa.String(length=64), nullable=False),
        sa.Column('principal_id', sa.Integer(), nullable=False),
        sa.Column('method', sa.String(length=20), nullable=False),
        sa.Column('credential', sa.Text(), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['principal_id'], ['principals.id'],
                                name=op.f('fk_console_sessions_principal_id_principals')),
        sa.PrimaryKeyConstraint('id_sha256', name=op.f('pk_console_sessions')),
    )
    op.create_index(op.f('ix_console_sessions_principal_id'), 'console_sessions', ['principal_id'])
    op.create_index(op.f('ix_console_sessions_expires_at'), 'console_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_console_sessions_expires_at'), table_name='console_sessions')
    op.drop_index(op.f('ix_console_sessions_principal_id'), table_name='console_sessions')
    op.drop_table('console_sessions')
