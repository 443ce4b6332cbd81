"""prediction log: inputs as float32 bytes from the serving hot path (features JSON becomes optional)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 12:03:35.037404
"""
from __future__ import annotations

import array
import json

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('prediction_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('features_f32', sa.LargeBinary(), nullable=True))
        batch_op.alter_column('features', existing_type=sa.JSON(), nullable=True)
        batch_op.create_check_constraint('features_present', 'features IS NOT NULL OR features_f32 IS NOT NULL')


def downgrade() -> None:
    # Nothing is lost going back: binary inputs are written out as the JSON lists the old schema needs.
    bind = op.get_bind()
    log = sa.table('prediction_log', sa.column('id', sa.Integer), sa.column('features', sa.JSON),
                   sa.column('features_f32', sa.LargeBinary))
    for row_id, raw in bind.execute(sa.select(log.c.id, log.c.features_f32).where(log.c.features.is_(None))).all():
        values = array.array('f')
        values.frombytes(raw)
        bind.execute(sa.update(log).where(log.c.id == row_id).values(features=json.loads(json.dumps(values.tolist()))))
    with op.batch_alter_table('prediction_log', schema=None) as batch_op:
        batch_op.drop_constraint('features_present', type_='check')
        batch_op.alter_column('features', existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column('features_f32')
