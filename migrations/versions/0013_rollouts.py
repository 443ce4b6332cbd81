"""deployments, deployment_tallies, prediction_log.shadow: shadow and canary rollouts with their guards

A deployment serves a newcomer beside a name's production version until it is promoted or rolled back (at
most one active per name); replicas report what they measured of it; shadow answers are flagged in the log.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 21:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

_ACTIVE = sa.text("status = 'active'")


def upgrade() -> None:
    op.create_table(
        'deployments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('model_name', sa.String(length=200), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('production_id', sa.Integer(), nullable=False),
        sa.Column('mode', sa.String(length=20), nullable=False),
        sa.Column('percent', sa.Double(), nullable=False),
        sa.Column('guards', sa.JSON(), nullable=False),
        sa.Column('min_requests', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_by_id', sa.Integer(), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('ended_by_id', sa.Integer(), nullable=True),
        sa.Column('end_reason', sa.Text(), nullable=True),
        sa.Column('measured', sa.JSON(), nullable=True),
        sa.CheckConstraint("mode IN ('shadow', 'canary')", name=op.f('ck_deployments_mode')),
        sa.CheckConstraint("status IN ('active', 'promoted', 'rolled_back')", name=op.f('ck_deployments_status')),
        sa.CheckConstraint('percent > 0 AND percent <= 100', name=op.f('ck_deployments_percent')),
        sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'],
                                name=op.f('fk_deployments_version_id_model_versions')),
        sa.ForeignKeyConstraint(['production_id'], ['model_versions.id'],
                                name=op.f('fk_deployments_production_id_model_versions')),
        sa.ForeignKeyConstraint(['started_by_id'], ['principals.id'],
                                name=op.f('fk_deployments_started_by_id_principals')),
        sa.ForeignKeyConstraint(['ended_by_id'], ['principals.id'], name=op.f('fk_deployments_ended_by_id_principals')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments')),
    )
    op.create_index(op.f('ix_deployments_model_name'), 'deployments', ['model_name'])
    op.create_index(op.f('ix_deployments_version_id'), 'deployments', ['version_id'])
    op.create_index('uq_deployments_active_name', 'deployments', ['model_name'], unique=True,
                    sqlite_where=_ACTIVE, postgresql_where=_ACTIVE)
    op.create_table(
        'deployment_tallies',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('deployment_id', sa.Integer(), nullable=False),
        sa.Column('replica', sa.String(length=64), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'],
                                name=op.f('fk_deployment_tallies_deployment_id_deployments')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_tallies')),
        sa.UniqueConstraint('deployment_id', 'replica', name='uq_deployment_tallies_replica'),
    )
    with op.batch_alter_table('prediction_log') as batch:
        batch.add_column(sa.Column('shadow', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('prediction_log') as batch:
        batch.drop_column('shadow')
    op.drop_table('deployment_tallies')
    op.drop_index('uq_deployments_active_name', table_name='deployments')
    op.drop_index(op.f('ix_deployments_version_id'), table_name='deployments')
    op.drop_index(op.f('ix_deployments_model_name'), table_name='deployments')
    op.drop_table('deployments')
