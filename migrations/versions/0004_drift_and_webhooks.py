"""prediction log, reference profiles, drift reports, webhook subscriptions and the delivery outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('webhook_subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('format', sa.String(length=20), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.CheckConstraint("format IN ('generic', 'slack')", name=op.f('ck_webhook_subscriptions_format')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_subscriptions'))
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subscription_id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('event_type', sa.String(length=100), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name=op.f('ck_webhook_deliveries_status')),
    sa.ForeignKeyConstraint(['subscription_id'], ['webhook_subscriptions.id'], name=op.f('fk_webhook_deliveries_subscription_id_webhook_subscriptions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('subscription_id', 'event_id', name='uq_webhook_deliveries_subscription_event')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_due', ['status', 'next_attempt_at'], unique=False)

    op.create_table('drift_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rows', sa.BigInteger(), nullable=False),
    sa.Column('columns', sa.JSON(), nullable=False),
    sa.Column('drift_share', sa.Double(), nullable=False),
    sa.Column('drifted', sa.Boolean(), nullable=False),
    sa.Column('severity', sa.String(length=20), nullable=True),
    sa.Column('evidently_html_uri', sa.Text(), nullable=True),
    sa.Column('evidently_json_uri', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_drift_reports_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_reports'))
    )
    with op.batch_alter_table('drift_reports', schema=None) as batch_op:
        batch_op.create_index('ix_drift_reports_version_created', ['model_version_id', 'created_at'], unique=False)

    op.create_table('prediction_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('prediction_id', sa.String(length=36), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('output', sa.Double(), nullable=False),
    sa.Column('latency_ms', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_prediction_log_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prediction_log')),
    sa.UniqueConstraint('prediction_id', name=op.f('uq_prediction_log_prediction_id'))
    )
    with op.batch_alter_table('prediction_log', schema=None) as batch_op:
        batch_op.create_index('ix_prediction_log_version_ts', ['model_version_id', 'ts'], unique=False)

    op.create_table('reference_profiles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('columns', sa.JSON(), nullable=False),
    sa.Column('positions', sa.JSON(), nullable=False),
    sa.Column('rows', sa.BigInteger(), nullable=False),
    sa.Column('stats', sa.JSON(), nullable=False),
    sa.Column('sample_uri', sa.Text(), nullable=False),
    sa.Column('sample_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_reference_profiles_model_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reference_profiles')),
    sa.UniqueConstraint('model_version_id', name=op.f('uq_reference_profiles_model_version_id'))
    )



def downgrade() -> None:

    op.drop_table('reference_profiles')
    with op.batch_alter_table('prediction_log', schema=None) as batch_op:
        batch_op.drop_index('ix_prediction_log_version_ts')

    op.drop_table('prediction_log')
    with op.batch_alter_table('drift_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_drift_reports_version_created')

    op.drop_table('drift_reports')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_due')

    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_subscriptions')

