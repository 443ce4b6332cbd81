"""kill switches: whether each model may serve, in the database so every replica sees the same state

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 11:51:15.905165
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('kill_switches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=200), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('safe_output', sa.Double(), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kill_switches')),
    sa.UniqueConstraint('model_name', name=op.f('uq_kill_switches_model_name'))
    )


def downgrade() -> None:
    op.drop_table('kill_switches')
