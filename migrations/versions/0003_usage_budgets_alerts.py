"""usage, budgets, budget changes and alerts: metered compute and energy, limits with four-eyes raises

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('severity', sa.String(length=20), nullable=False),
    sa.Column('dedupe_key', sa.String(length=300), nullable=False),
    sa.Column('subject_type', sa.String(length=50), nullable=False),
    sa.Column('subject_id', sa.String(length=200), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("severity IN ('info', 'warning', 'critical')", name=op.f('ck_alerts_severity')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index(op.f('ix_alerts_dedupe_key'), 'alerts', ['dedupe_key'], unique=False)
    op.create_table('budgets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('family', sa.String(length=20), nullable=False),
    sa.Column('metric', sa.String(length=20), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('hard_limit', sa.Double(), nullable=False),
    sa.Column('soft_limit', sa.Double(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("metric IN ('cpu_hours', 'gpu_hours', 'kwh', 'gco2e')", name=op.f('ck_budgets_metric')),
    sa.CheckConstraint('hard_limit > 0', name=op.f('ck_budgets_hard_positive')),
    sa.CheckConstraint('soft_limit IS NULL OR (soft_limit > 0 AND soft_limit <= hard_limit)', name=op.f('ck_budgets_soft_range')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_budgets_project_id_projects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budgets')),
    sa.UniqueConstraint('project_id', 'family', 'metric', 'period_start', name='uq_budgets_scope')
    )
    op.create_table('budget_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('budget_id', sa.Integer(), nullable=False),
    sa.Column('hard_limit', sa.Double(), nullable=False),
    sa.Column('soft_limit', sa.Double(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'applied', 'rejected')", name=op.f('ck_budget_changes_status')),
    sa.ForeignKeyConstraint(['budget_id'], ['budgets.id'], name=op.f('fk_budget_changes_budget_id_budgets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budget_changes'))
    )
    with op.batch_alter_table('budget_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_budget_changes_budget_id'), ['budget_id'], unique=False)

    op.create_table('usage',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('family', sa.String(length=20), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('step', sa.String(length=100), nullable=True),
    sa.Column('wall_s', sa.Double(), nullable=False),
    sa.Column('cpu_s', sa.Double(), nullable=False),
    sa.Column('gpu_s', sa.Double(), nullable=False),
    sa.Column('kwh', sa.Double(), nullable=False),
    sa.Column('gco2e', sa.Double(), nullable=False),
    sa.Column('peak_mem_mb', sa.Double(), nullable=True),
    sa.Column('predictions', sa.BigInteger(), nullable=True),
    sa.Column('method', sa.String(length=40), nullable=False),
    sa.Column('measured', sa.Boolean(), nullable=False),
    sa.Column('scope', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_usage_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_usage_project_id_projects')),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_runs.id'], name=op.f('fk_usage_run_id_pipeline_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage'))
    )
    with op.batch_alter_table('usage', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_model_version_id'), ['model_version_id'], unique=False)
        batch_op.create_index('ix_usage_project_created', ['project_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_run_id'), ['run_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('usage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_run_id'))
        batch_op.drop_index('ix_usage_project_created')
        batch_op.drop_index(batch_op.f('ix_usage_model_version_id'))

    op.drop_table('usage')
    with op.batch_alter_table('budget_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_budget_changes_budget_id'))

    op.drop_table('budget_changes')
    op.drop_table('budgets')
    op.drop_index(op.f('ix_alerts_dedupe_key'), table_name='alerts')
    op.drop_table('alerts')

